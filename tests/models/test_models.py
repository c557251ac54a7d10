"""The person's checkpoints load as they are, and predict with their own normalisation."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from backfill.config.errors import UserError
from backfill.models.predictor import predict_groups
from backfill.models.versions import ModelVersion, build, mlp, read_state_dict
from tests.conftest import REPO

# Key names and shapes read from the person's files (reference-notes.md).
RANKER_V3 = {"net.0.weight": (256, 512), "net.0.bias": (256,), "net.3.weight": (64, 256),
             "net.3.bias": (64,), "net.5.weight": (1, 64), "net.5.bias": (1,)}
CROP_V2 = {"net.0.weight": (512, 514), "net.0.bias": (512,), "net.3.weight": (256, 512),
           "net.3.bias": (256,), "net.6.weight": (128, 256), "net.6.bias": (128,),
           "net.8.weight": (4, 128), "net.8.bias": (4,)}

_SAVE_AS_MPS = False


def _tag(storage):
    return "mps" if _SAVE_AS_MPS else None


torch.serialization.register_package(0, _tag, lambda storage, location: None)


@contextlib.contextmanager
def saved_on_mps():
    """torch.save records every tensor as living on Apple's "mps" device, as the
    person's Mac did; loading such a file needs map_location off a Mac."""
    global _SAVE_AS_MPS
    _SAVE_AS_MPS = True
    try:
        yield
    finally:
        _SAVE_AS_MPS = False


def person_state(shapes: dict, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(*s, generator=g) * 0.05 for k, s in shapes.items()}


def write_person_models(folder: Path, ranker_format: str = "state_dict") -> tuple[dict, dict]:
    folder.mkdir(parents=True, exist_ok=True)
    ranker, crop = person_state(RANKER_V3, 1), person_state(CROP_V2, 2)
    blob = ranker if ranker_format == "state_dict" else {
        "model_state_dict": ranker, "epoch": 12, "val_accuracy": 0.668}
    with saved_on_mps():
        torch.save(blob, folder / "ranker_v3_w10.pt")
        torch.save(crop, folder / "crop_proposer_v2.pt")
    return ranker, crop


def person_version(root: Path) -> ModelVersion:
    """conf/model/person.yaml as shipped, its checkpoint paths taken under ``root``."""
    return ModelVersion.from_config(OmegaConf.load(REPO / "conf/model/person.yaml"), root)


def test_checkpoints_saved_on_mps_really_need_a_map_location(tmp_path):
    write_person_models(tmp_path)
    with pytest.raises(RuntimeError):
        torch.load(tmp_path / "ranker_v3_w10.pt", weights_only=True)  # as a naive loader would
    state = read_state_dict(tmp_path / "ranker_v3_w10.pt")
    assert {k: tuple(v.shape) for k, v in state.items()} == RANKER_V3


@pytest.mark.parametrize("ranker_format", ["state_dict", "model_state_dict"])
def test_person_checkpoints_load_unchanged_and_score_like_their_own_network(tmp_path,
                                                                          ranker_format):
    ranker_state, crop_state = write_person_models(tmp_path / "data/models/person",
                                                   ranker_format)
    version = person_version(tmp_path)
    ranker = build(version.ranker, 512, 1, sigmoid=False)
    crop = build(version.crop, 514, 4, sigmoid=True)
    # The person's own networks, written out layer by layer from reference-notes.md.
    theirs = torch.nn.Sequential(
        torch.nn.Linear(512, 256), torch.nn.ReLU(), torch.nn.Dropout(0.3),
        torch.nn.Linear(256, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1)).eval()
    theirs.load_state_dict({k.removeprefix("net."): v for k, v in ranker_state.items()})
    x = torch.randn(5, 512) * 3
    with torch.inference_mode():
        assert torch.allclose(ranker(x), theirs(x))
        box = crop(torch.randn(5, 514))
    assert box.shape == (5, 4) and bool(((box >= 0) & (box <= 1)).all())
    assert set(dict(crop.state_dict())) == set(crop_state)


def _one_group(embeddings: np.ndarray, sizes: list[tuple[int, int]]) -> tuple:
    hashes = [f"{i:064x}" for i in range(len(embeddings))]
    groups = pd.DataFrame({
        "group_id": ["p_group_1"], "content_hashes": [hashes],
        "stages": [[1.0, 1.5, 2.0][:len(hashes)]],
        "widths": [[w for w, _ in sizes]], "heights": [[h for _, h in sizes]],
        "n_images": [len(hashes)],
    })
    table = pd.DataFrame({"content_hash": hashes, "embedding": list(embeddings.astype(np.float32)),
                          "model_id": "ViT-B-32/openai"})
    return groups, table


def test_predictions_use_the_versions_own_normalisation_and_size_divisor(tmp_path):
    write_person_models(tmp_path / "data/models/person")
    version = person_version(tmp_path)
    rng = np.random.default_rng(0)
    emb = rng.normal(0, 1, (3, 512)) * np.array([[1.0], [7.0], [0.2]])  # very different norms
    groups, table = _one_group(emb, [(832, 1216), (832, 1216), (1664, 2432)])
    pred = predict_groups(groups, table, version).iloc[0]
    ranker = build(version.ranker, 512, 1, sigmoid=False)
    with torch.inference_mode():
        raw = ranker(torch.tensor(emb, dtype=torch.float32)).squeeze(1).numpy()
    assert pred["ai_selected_index"] == int(np.argmax(raw))  # raw, not L2-normalised
    assert np.allclose(pred["ai_scores"], raw, atol=1e-5)
    p = np.exp(raw - raw.max())
    assert pred["ai_confidence"] == pytest.approx(p.max() / p.sum(), rel=1e-5)
    k = int(pred["ai_selected_index"])
    crop = build(version.crop, 514, 4, sigmoid=True)
    w, h = [(832, 1216), (832, 1216), (1664, 2432)][k]
    x = np.concatenate([emb[k], [w / 2048, h / 2048]]).astype(np.float32)[None]
    with torch.inference_mode():
        box = crop(torch.from_numpy(x)).numpy()[0]
    expect = [min(box[0], box[2]), min(box[1], box[3]), max(box[0], box[2]), max(box[1], box[3])]
    got = pred[["ai_crop_x1", "ai_crop_y1", "ai_crop_x2", "ai_crop_y2"]].to_numpy(float)
    assert np.allclose(got, expect, atol=1e-6)
    assert "sha256:" in pred["ranker"] and pred["embedding_model"] == "ViT-B-32/openai"


def test_an_l2_version_normalises_so_scale_does_not_change_the_pick(tmp_path):
    write_person_models(tmp_path / "data/models/person")
    cfg = OmegaConf.load(REPO / "conf/model/person.yaml")
    cfg.ranker.normalization = "l2"
    version = ModelVersion.from_config(cfg, tmp_path)
    emb = np.random.default_rng(1).normal(0, 1, (3, 512))
    groups, table = _one_group(emb, [(832, 1216)] * 3)
    a = predict_groups(groups, table, version).iloc[0]
    groups, table = _one_group(emb * np.array([[10.0], [0.1], [3.0]]), [(832, 1216)] * 3)
    b = predict_groups(groups, table, version).iloc[0]
    assert np.allclose(a["ai_scores"], b["ai_scores"], atol=1e-4)


def test_a_checkpoint_of_other_shapes_is_refused_with_what_differs(tmp_path):
    folder = tmp_path / "data/models/person"
    write_person_models(folder)
    torch.save(person_state({**RANKER_V3, "net.0.weight": (256, 768)}, 3),
               folder / "ranker_v3_w10.pt")
    with pytest.raises(UserError, match=r"net.0.weight: checkpoint \(256, 768\), expected "
                                          r"\(256, 512\)"):
        build(person_version(tmp_path).ranker, 512, 1, sigmoid=False)


def test_missing_checkpoint_says_where_to_put_it(tmp_path):
    with pytest.raises(UserError, match="ranker_v3_w10.pt is missing: copy the model file"):
        build(person_version(tmp_path).ranker, 512, 1, sigmoid=False)


def test_embeddings_of_another_clip_model_are_refused(tmp_path):
    write_person_models(tmp_path / "data/models/person")
    groups, table = _one_group(np.zeros((2, 512)), [(832, 1216)] * 2)
    table["model_id"] = "ViT-B-32/random-seed0"
    with pytest.raises(UserError, match="reads ViT-B-32/openai embeddings, but these were "
                                          "made by ViT-B-32/random-seed0"):
        predict_groups(groups, table, person_version(tmp_path))


def test_baseline_picks_the_highest_readable_stage_and_keeps_the_whole_image():
    version = ModelVersion.from_config(OmegaConf.load(REPO / "conf/model/baseline.yaml"), REPO)
    groups, table = _one_group(np.zeros((3, 512)), [(832, 1216)] * 3)
    pred = predict_groups(groups, table.iloc[:0], version).iloc[0]  # needs no embeddings
    assert pred["ai_selected_index"] == 2 and pd.isna(pred["ai_confidence"])
    assert pred[["ai_crop_x1", "ai_crop_y1", "ai_crop_x2", "ai_crop_y2"]].tolist() == [0, 0, 1, 1]
    groups.at[0, "content_hashes"] = [*groups.at[0, "content_hashes"][:2], None]  # unreadable
    assert predict_groups(groups, table.iloc[:0], version).iloc[0]["ai_selected_index"] == 1


def test_the_layout_builder_reproduces_both_key_sets():
    assert {k: tuple(v.shape) for k, v in mlp(512, (256, 64), 1, 0.2, False)
            .state_dict().items()} == RANKER_V3
    assert {k: tuple(v.shape) for k, v in mlp(514, (512, 256, 128), 4, 0.2, True)
            .state_dict().items()} == CROP_V2
