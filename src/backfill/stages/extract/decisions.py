"""decisions: the person's action per group, labelled from located boxes and tolerances.

The backfill guide's rules: 'approve' when every coordinate of the kept final's box is within
``approve_tolerance`` of the full frame [0, 0, 1, 1], 'crop' otherwise, 'reject' when no
image of the group was kept (there is no 'skip'). A decision the evidence does not
support firmly (low confidence, an ambiguous match, several kept images, unreadable
files) is kept and flagged ``needs_review`` with the reason: never trusted silently,
never dropped.

A kept image whose box cannot be recovered from the files has none: its final (or
original) cannot be read ("final unreadable: ..."), or the readable final is not found
in its original ("not located: ..."). Its action is 'unreadable' (the box is unreadable
from the files), flagged with the reason. The merge leaves such a group out of
ai_decisions and reports it; the run after the file is fixed labels it. Never a 'crop'
without coordinates, which the DB's own check refuses.

A decision stands only on readable renders: a group with a render that cannot be read
(truncated, a format not read) is flagged with which and why. With nothing kept, it is
no 'reject' (the person may not have seen that render, or may have kept it and lost
it): its action is 'broken_reject', which the merge reports and leaves out of
ai_decisions, like 'unreadable'.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from backfill.contracts.schemas import (
    BROKEN_REJECT,
    CROP_BOX,
    FULL_FRAME,
    UNREADABLE,
    TruthTable,
)
from backfill.contracts.tables import typed_frame
from backfill.db.cells import iso_utc
from backfill.files.filetimes import FileTimes

Numbers = float | np.ndarray | pd.Series  # one value, or one per pair


@dataclass(frozen=True)
class LabelSettings:
    approve_tolerance: float
    min_confidence: float
    ambiguity_margin: float
    file_times: FileTimes | None = None  # a final's time outside it is no decision time


def ambiguous(confidence: Numbers, runner_up: Numbers, margin: float) -> Numbers:
    """Whether a clearly different place in the original matches within ``margin`` of
    the located one (scalars, or arrays element-wise): the location may be a guess."""
    return (runner_up > 0) & (runner_up >= confidence - margin)


def label(located: pd.DataFrame, s: LabelSettings) -> pd.DataFrame:
    """The truth table from pairs joined to their locations (pure, vectorised).

    ``located`` holds pairing's columns (``unreadable``, ``unreadable_members`` and
    ``pair_method`` among them)
    plus the location in original pixels (x1, y1, x2, y2, scale, confidence, runner_up,
    support, method) and ``locate_error``.
    """
    df = located
    unreadable = df["user_selected_index"].notna() & df["unreadable"].notna()
    kept = df["user_selected_index"].notna() & ~unreadable  # a kept image with a box to find
    width = df["original_width"].astype("float64")
    height = df["original_height"].astype("float64")
    box = pd.DataFrame({
        "crop_x1": df["x1"] / width, "crop_y1": df["y1"] / height,
        "crop_x2": df["x2"] / width, "crop_y2": df["y2"] / height,
    }).astype("float64").clip(0.0, 1.0)
    located_ok = box.notna().all(axis=1)
    full = (box.sub(list(FULL_FRAME), axis=1).abs() <= s.approve_tolerance).all(axis=1)
    boxless = unreadable | (kept & ~located_ok)
    # Nothing kept, but renders that cannot be seen: no reject the files can prove.
    broken = df["unreadable_members"].notna().to_numpy()
    action = np.where(boxless, UNREADABLE, np.where(
        ~kept, np.where(broken, BROKEN_REJECT, "reject"),
        np.where(full, "approve", "crop")))
    # An approve keeps the whole image: its box is the full frame exactly, as the
    # backfill guide's check requires, not the located box's last bits of float noise.
    box.loc[action == "approve", list(box.columns)] = list(FULL_FRAME)

    mtime = df["final_mtime_ns"]
    odd_time = np.zeros(len(df), dtype=bool)
    if s.file_times is not None:
        believed = s.file_times.believable(mtime)
        odd_time = df["user_selected_index"].notna().to_numpy() & mtime.notna().to_numpy() \
            & ~believed
        mtime = mtime.where(believed)
    confidence = df["confidence"].astype("float64")
    runner_up = df["runner_up"].astype("float64").fillna(0.0)
    reasons = pd.DataFrame({
        "unreadable": df["unreadable"].where(unreadable),
        "members": df["unreadable_members"],
        "pairing": df["review"],
        "error": df["locate_error"].map(lambda e: f"not located: {e}", na_action="ignore"),
        "low": np.where(
            located_ok & (confidence < s.min_confidence),
            "match confidence " + confidence.round(3).astype(str)
            + f" is below min_confidence {s.min_confidence}", None),
        "ambiguous": np.where(
            located_ok & ambiguous(confidence, runner_up, s.ambiguity_margin),
            "another place matches almost as well (" + runner_up.round(3).astype(str) + ")",
            None),
        "unconfirmed": np.where(
            located_ok & (df["support"].astype("float64") == 0),
            "no detail of the final could be confirmed at full resolution", None),
        "missing": np.where(kept & ~located_ok & df["locate_error"].isna()
                            & df["review"].isna(), "not located", None),
        "time": [f"the kept final's {s.file_times.problem(t)}" if odd else None
                 for t, odd in zip(df["final_mtime_ns"], odd_time, strict=True)],
    }, index=df.index)
    review = reasons.apply(lambda r: "; ".join(v for v in r if isinstance(v, str)) or None,
                           axis=1) if len(df) else pd.Series(dtype="object")
    truth = typed_frame(TruthTable, {
        "group_id": df["group_id"],
        "user_action": action,
        "user_selected_index": df["user_selected_index"].astype("Int64"),
        "kept_stage": df["kept_stage"].astype("float64"),
        "original_path": df["original_path"],
        "original_width": df["original_width"].astype("Int64"),
        "original_height": df["original_height"].astype("Int64"),
        "final_path": df["final_path"],
        "final_copies": df["final_copies"].astype("int64"),
        **{c: box[c].where(kept) for c in CROP_BOX},
        "scale": df["scale"].astype("float64"),
        "confidence": confidence,
        "support": df["support"].astype("float64"),
        "pair_method": df["pair_method"],
        "match_method": df["method"],
        "needs_review": review.notna().to_numpy(),
        "review_reason": review.to_numpy(),
        "final_modified_at": mtime.map(iso_utc),
        "crop_timestamp": mtime.map(iso_utc).where(action == "crop"),
        "decided_by": "files",  # your answers in review are applied after (review.apply)
        "reviewed_at": None,
    })
    return truth.sort_values("group_id", kind="stable").reset_index(drop=True)
