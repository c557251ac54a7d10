"""merge: the backfilled decisions as v3 rows, and the plan that merges them into the
production DB by seed 000's rules.

Pure functions of tables. A backfilled group matches a production row when they share
an image file name; a group matching two rows, or two groups matching one row, is
reported and left alone, never guessed. For a matched pair: timestamps and existing AI
predictions are never overwritten; NULL fields are filled; final crop coordinates that
differ from what the images show by more than ``coord_tolerance`` are corrected; the
match flags are recomputed from the final values. Every change is a plan row (group,
column, old, new, rule), values JSON-encoded so that NULL, numbers and text survive.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import PurePosixPath

import numpy as np
import pandas as pd

from backfill.decisiondb import COLUMNS, DERIVED, PROVENANCE_COLUMNS, TIMESTAMPS
from backfill.decisions import iso_utc
from backfill.evaluate import crop_match
from backfill.schemas import BOX, CROP_BOX

PLAN_COLUMNS = ["group_id", "column", "old", "new", "rule"]


@dataclass(frozen=True)
class MergeSettings:
    coord_tolerance: float  # seed 000: coordinates differing by more are corrected
    crop_tolerance: float  # seed 003: crop_match, every coordinate within this

    @classmethod
    def from_config(cls, merge_cfg, evaluate_cfg) -> MergeSettings:
        return cls(float(merge_cfg.coord_tolerance), float(evaluate_cfg.crop_tolerance))


def _box_json(values) -> str | None:
    if values is None or any(v is None or pd.isna(v) for v in values):
        return None
    return json.dumps([round(float(v), 6) for v in values])


def _learned(predictions: pd.DataFrame | None) -> pd.DataFrame | None:
    """Predictions of a learned ranker; a rule such as the baseline is no AI prediction."""
    if predictions is None or not len(predictions):
        return None
    return predictions[predictions["ranker"] != "highest_stage"]


def backfill_rows(project: str, groups: pd.DataFrame, truth: pd.DataFrame,
                  scan: pd.DataFrame, predictions: pd.DataFrame | None,
                  settings: MergeSettings) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(ai_decisions rows, provenance rows), one per group, from the recovered truth and
    the AI's predictions (AI columns NULL without them)."""
    g = groups.set_index("group_id")
    t = truth.set_index("group_id").reindex(g.index)
    p = _learned(predictions)
    p = (p.set_index("group_id").reindex(g.index) if p is not None
         else pd.DataFrame(index=g.index, columns=["ai_selected_index", "ai_confidence", *BOX,
                                                   "model_version", "ranker",
                                                   "crop_proposer", "embedding_model"]))
    mtime = scan[scan["source"] == "original"].set_index("rel_path")["mtime_ns"]
    rows, prov = [], []
    for gid in g.index:
        grp, tr, pr = g.loc[gid], t.loc[gid], p.loc[gid]
        ai = None if pd.isna(pr["ai_selected_index"]) else int(pr["ai_selected_index"])
        kept = None if pd.isna(tr["user_selected_index"]) else int(tr["user_selected_index"])
        user = kept if kept is not None else (ai if ai is not None else 0)
        sizes = [(w, h) for w, h in zip(grp["widths"], grp["heights"], strict=True)]
        width, height = sizes[user]
        if width is None or pd.isna(width):  # the picked member is unreadable
            width, height = next(((w, h) for w, h in sizes if w is not None and not pd.isna(w)),
                                 (None, None))
        final_box = _box_json([tr[c] for c in CROP_BOX]) if kept is not None else None
        ai_box = _box_json([pr[c] for c in BOX])
        when = tr["final_modified_at"] if isinstance(tr["final_modified_at"], str) else \
            iso_utc(mtime.get(grp["image_paths"][-1]))
        rows.append({
            "group_id": gid, "timestamp": when, "project_id": project,
            "directory": str(PurePosixPath(grp["image_paths"][user]).parent),
            "batch_number": None, "images": json.dumps(list(grp["image_names"])),
            "ai_selected_index": ai, "ai_crop_coords": ai_box,
            "ai_confidence": None if pd.isna(pr["ai_confidence"]) else float(pr["ai_confidence"]),
            "user_selected_index": user, "user_action": tr["user_action"],
            "ai_crop_accepted": None, "final_crop_coords": final_box,
            "crop_timestamp": tr["crop_timestamp"] if isinstance(tr["crop_timestamp"], str)
            else None,
            "image_width": None if width is None else int(width),
            "image_height": None if height is None else int(height),
            "selection_match": None, "crop_match": None,
        })
        prov.append({
            "group_id": gid, "source": "backfill", "backfill_group_id": gid,
            "final_path": tr["final_path"] if isinstance(tr["final_path"], str) else None,
            "match_method": tr["match_method"] if isinstance(tr["match_method"], str) else None,
            "match_confidence": None if pd.isna(tr["confidence"]) else float(tr["confidence"]),
            "needs_review": bool(tr["needs_review"]),
            "review_reason": tr["review_reason"] if isinstance(tr["review_reason"], str)
            else None,
            **{c: (pr[c] if isinstance(pr[c], str) else None)
               for c in ("model_version", "ranker", "crop_proposer", "embedding_model")},
        })
    out = pd.DataFrame(rows, columns=COLUMNS)
    out = with_matches(out, settings)
    return out, pd.DataFrame(prov, columns=PROVENANCE_COLUMNS)


def with_matches(rows: pd.DataFrame, settings: MergeSettings) -> pd.DataFrame:
    """selection_match and crop_match from the row's final values (NULL for reject rows
    and where the AI made no prediction), so they never inflate accuracy."""
    rows = rows.copy()
    measured = (rows["user_action"] != "reject") & rows["ai_selected_index"].notna()
    rows["selection_match"] = np.where(
        measured, rows["ai_selected_index"] == rows["user_selected_index"], None)
    boxes = measured & rows["ai_crop_coords"].notna() & rows["final_crop_coords"].notna()
    match = [None] * len(rows)
    for i in np.flatnonzero(boxes.to_numpy()):
        ai = np.array(json.loads(rows["ai_crop_coords"].iat[i]), dtype=float)[None]
        final = np.array(json.loads(rows["final_crop_coords"].iat[i]), dtype=float)[None]
        match[i] = bool(crop_match(ai, final, settings.crop_tolerance)[0])
    rows["crop_match"] = match
    rows["selection_match"] = [None if v is None else bool(v) for v in rows["selection_match"]]
    return rows


def _names(images: str) -> list[str]:
    try:
        return [str(n) for n in json.loads(images)]
    except (TypeError, ValueError):
        return []


@dataclass
class Matching:
    pairs: pd.DataFrame  # backfill_id, production_id: one-to-one matches
    conflicts: pd.DataFrame  # group_id, side, other ids, reason: left alone


def match_rows(backfill: pd.DataFrame, production: pd.DataFrame) -> Matching:
    """Pairs that share an image file name, one to one; everything else is a conflict."""
    def by_name(rows: pd.DataFrame) -> pd.DataFrame:
        names = rows[["group_id", "images"]].assign(name=rows["images"].map(_names))
        return names.explode("name").dropna(subset=["name"])[["group_id", "name"]]

    links = by_name(backfill).merge(by_name(production), on="name",
                                    suffixes=("_b", "_p"))[["group_id_b", "group_id_p"]]
    links = links.drop_duplicates()
    per_b = links.groupby("group_id_b")["group_id_p"].agg(sorted)
    per_p = links.groupby("group_id_p")["group_id_b"].agg(sorted)
    conflicts = [
        {"group_id": b, "side": "backfill", "others": ps,
         "reason": f"shares image names with {len(ps)} production rows"}
        for b, ps in per_b.items() if len(ps) > 1
    ] + [
        {"group_id": p, "side": "production", "others": bs,
         "reason": f"shares image names with {len(bs)} backfilled groups"}
        for p, bs in per_p.items() if len(bs) > 1
    ]
    one_b = per_b[per_b.map(len) == 1].index
    one_p = per_p[per_p.map(len) == 1].index
    pairs = links[links["group_id_b"].isin(one_b) & links["group_id_p"].isin(one_p)]
    return Matching(
        pairs.rename(columns={"group_id_b": "backfill_id", "group_id_p": "production_id"})
        .sort_values("backfill_id").reset_index(drop=True),
        pd.DataFrame(conflicts, columns=["group_id", "side", "others", "reason"]),
    )


def _coords_differ(old: str | None, new: str | None, tolerance: float) -> bool:
    try:
        a, b = np.array(json.loads(old), float), np.array(json.loads(new), float)
    except (TypeError, ValueError):
        return True  # unreadable coordinates: what the images show wins
    return a.shape != b.shape or bool((np.abs(a - b) > tolerance).any())


def _enc(value) -> str:
    """A DB value as JSON: None, int, float and str each come back as they went in."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is not None and isinstance(value, float) and np.isnan(value):
        value = None
    return json.dumps(value)


@dataclass
class MergePlan:
    changes: pd.DataFrame  # PLAN_COLUMNS
    merged: pd.DataFrame  # the rows after the merge, COLUMNS
    conflicts: pd.DataFrame
    preserved_timestamps: int
    matched: int

    def summary(self) -> str:
        rules = self.changes.drop_duplicates(["group_id", "rule"])["rule"].value_counts()
        filled = int((self.changes["rule"] == "filled").sum())
        corrected = int((self.changes["rule"] == "corrected").sum())
        return (f"Added {int(rules.get('added', 0)):,} new records, filled {filled:,}, "
                f"corrected {corrected:,}, preserved {self.preserved_timestamps:,} timestamps"
                f" ({self.matched:,} matched, {len(self.conflicts):,} left alone as ambiguous)")


def plan_merge(backfill: pd.DataFrame, production: pd.DataFrame,
               settings: MergeSettings) -> MergePlan:
    """What merging ``backfill`` into ``production`` changes, cell by cell."""
    matching = match_rows(backfill, production)
    prod = production.set_index("group_id")
    back = backfill.set_index("group_id")
    changes, merged_rows, preserved = [], {}, 0
    for b_id, p_id in zip(matching.pairs["backfill_id"], matching.pairs["production_id"],
                          strict=True):
        old, new = prod.loc[p_id], back.loc[b_id]
        row = old.to_dict()
        for col in COLUMNS[1:]:
            if col in DERIVED or col not in row:
                continue
            have, want = old[col], new[col]
            if want is None or (not isinstance(want, str) and pd.isna(want)):
                continue
            if have is None or (not isinstance(have, str) and pd.isna(have)):
                row[col] = want
                changes.append((p_id, col, _enc(have), _enc(want), "filled"))
            elif col in TIMESTAMPS:
                preserved += 1
            elif col == "final_crop_coords" and _coords_differ(have, want,
                                                               settings.coord_tolerance):
                row[col] = want
                changes.append((p_id, col, _enc(have), _enc(want), "corrected"))
            # Anything else already set (AI predictions, user fields) stays as it is.
        merged_rows[p_id] = row
    merged = prod.copy()
    for p_id, row in merged_rows.items():
        merged.loc[p_id, list(row)] = pd.Series(row)
    merged = merged.reset_index()
    matched_b = set(matching.pairs["backfill_id"])
    conflicted_b = set(matching.conflicts.loc[matching.conflicts["side"] == "backfill",
                                              "group_id"])
    linked_b = matched_b | conflicted_b | _linked(backfill, production)
    added = backfill[~backfill["group_id"].isin(linked_b)]
    added = added[~added["group_id"].isin(prod.index)]  # never over an existing key
    for _, r in added.iterrows():
        changes.append((r["group_id"], "*", _enc(None), json.dumps(
            {c: (None if not isinstance(r[c], str) and pd.isna(r[c]) else r[c])
             for c in COLUMNS}, default=_plain), "added"))
    merged = pd.concat([merged, added[merged.columns.intersection(COLUMNS)]],
                       ignore_index=True)
    # The flags follow the merged values; rows whose flags change get a plan row too.
    recomputed = with_matches(merged, settings)
    new_ids = set(added["group_id"])
    for col in DERIVED:
        before, after = merged[col], recomputed[col]
        for gid, b, a in zip(merged["group_id"], before, after, strict=True):
            if gid in new_ids:
                continue
            if _norm(b) != _norm(a):
                changes.append((gid, col, _enc(_norm(b)), _enc(_norm(a)), "recomputed"))
    plan = pd.DataFrame(changes, columns=PLAN_COLUMNS)
    return MergePlan(plan.sort_values(["group_id", "column"], kind="stable")
                     .reset_index(drop=True), recomputed.sort_values("group_id")
                     .reset_index(drop=True), matching.conflicts, preserved,
                     len(matching.pairs))


def _linked(backfill: pd.DataFrame, production: pd.DataFrame) -> set[str]:
    """Backfilled groups sharing any image name with production (matched or not)."""
    names = set(n for images in production["images"] for n in _names(images))
    return {g for g, images in zip(backfill["group_id"], backfill["images"], strict=True)
            if names & set(_names(images))}


def _norm(value):
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    return bool(value)


def _plain(value):
    return value.item() if isinstance(value, np.generic) else str(value)
