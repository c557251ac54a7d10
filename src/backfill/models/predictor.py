"""What a model version picks and crops in a project's groups, from their embeddings.

The ranker scores each member from its embedding; the pick is the best score and the
confidence its softmax share within the group. The crop proposer boxes the picked image
from its embedding and size. Outputs name the version and each checkpoint's hash, so a
prediction can always be traced to the weights that made it. Pure: the predict stage,
train and compare all call predict_groups.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from backfill.config.errors import UserError
from backfill.contracts.schemas import BOX, FULL_FRAME, PredictionsTable
from backfill.contracts.tables import typed_frame
from backfill.models.versions import ModelVersion, build, crop_inputs, model_label, normalise


def check_embeddings(version: ModelVersion, embeddings: pd.DataFrame) -> None:
    """Refuse to feed a version embeddings of a CLIP model it was not trained on."""
    if not version.needs_embeddings or not len(embeddings):
        return
    made_by = embeddings["model_id"].iloc[0]
    if made_by != version.embedding_model:
        raise UserError(
            f"model version '{version.name}' reads {version.embedding_model} embeddings, but "
            f"these were made by {made_by}. Set the project's embed.model/embed.pretrained to "
            f"match (then `dvc repro`), or pick a version trained on {made_by}."
        )


def _members(groups: pd.DataFrame, embeddings: pd.DataFrame) -> pd.DataFrame:
    """One row per group member (in stage order) with its embedding row, -1 if none."""
    m = groups[["group_id", "content_hashes", "stages", "widths", "heights"]].explode(
        ["content_hashes", "stages", "widths", "heights"])
    m["position"] = m.groupby(level=0).cumcount()
    row_of = pd.Series(np.arange(len(embeddings)), index=embeddings["content_hash"])
    m["row"] = m["content_hashes"].map(row_of).fillna(-1).astype(int)
    return m.reset_index(drop=True)


def _softmax_pick(scores: np.ndarray) -> tuple[int | None, float | None]:
    ok = np.isfinite(scores)
    if not ok.any():
        return None, None
    s = np.where(ok, scores, -np.inf)
    p = np.exp(s - s[ok].max())
    p /= p.sum()
    best = int(np.argmax(s))
    return best, float(p[best])


def predict_groups(groups: pd.DataFrame, embeddings: pd.DataFrame, version: ModelVersion
                   ) -> pd.DataFrame:
    """One PredictionsTable row per group (pure: tables and a version in, a table out)."""
    import torch

    check_embeddings(version, embeddings)
    m = _members(groups, embeddings)
    vectors = (np.stack(embeddings["embedding"].to_numpy()).astype(np.float32)
               if len(embeddings) else np.zeros((0, 1), np.float32))
    has = m["row"].to_numpy() >= 0
    if version.ranker.learned:
        scores = np.full(len(m), np.nan)  # NaN: a member without an embedding
        if has.any():
            net = build(version.ranker, vectors.shape[1], 1, sigmoid=False)
            x = normalise(vectors[m.loc[has, "row"]], version.ranker.normalization)
            with torch.inference_mode():
                scores[has] = net(torch.from_numpy(x)).squeeze(1).double().numpy()
    else:  # highest_stage: the stage is the score; an unreadable member cannot win
        scores = np.where(m["content_hashes"].notna(), m["stages"].astype(float), np.nan)
    m["score"] = scores
    picks = []
    for gid, part in m.groupby("group_id", sort=False):
        s = part["score"].to_numpy()
        best, conf = _softmax_pick(s)
        if not version.ranker.learned:
            conf = None  # a rule has no confidence to report
        picks.append((gid, best, conf, s.tolist()))
    out = pd.DataFrame(picks, columns=["group_id", "ai_selected_index", "ai_confidence",
                                       "ai_scores"])
    out["ai_selected_index"] = out["ai_selected_index"].astype("Int64")
    out["ai_confidence"] = out["ai_confidence"].astype(float)
    box = np.full((len(out), 4), np.nan)
    # The picked member of each group, with the position of its group's row in ``out``.
    at = m.merge(out[["group_id", "ai_selected_index"]].reset_index(), on="group_id")
    at = at[at["position"] == at["ai_selected_index"]]
    if version.crop.learned:
        at = at[at["row"] >= 0]
        if len(at):
            net = build(version.crop, vectors.shape[1] + 2, 4, sigmoid=True)
            x = crop_inputs(vectors[at["row"]], at["widths"].to_numpy(float),
                            at["heights"].to_numpy(float), version.crop)
            with torch.inference_mode():
                raw = net(torch.from_numpy(x)).double().numpy().clip(0, 1)
            ordered = np.column_stack([np.minimum(raw[:, 0], raw[:, 2]),
                                       np.minimum(raw[:, 1], raw[:, 3]),
                                       np.maximum(raw[:, 0], raw[:, 2]),
                                       np.maximum(raw[:, 1], raw[:, 3])])
            box[at["index"].to_numpy()] = ordered
    else:  # full_frame: keep the whole picked image
        box[at["index"].to_numpy()] = FULL_FRAME
    out[BOX] = box
    out["model_version"] = version.name
    out["ranker"] = model_label(version.ranker)
    out["crop_proposer"] = model_label(version.crop)
    used = version.embedding_model if version.needs_embeddings else None
    out["embedding_model"] = pd.Series([used] * len(out), dtype="str")
    return typed_frame(PredictionsTable, out.sort_values("group_id"))
