"""How well a model version's predictions agree with the recovered decisions.

The v3 decisions plan's measures: selection accuracy (the AI picked the image the person kept),
anomaly accuracy (the same, on groups where the person kept a lower stage than the
highest: the cases a "highest stage wins" rule gets wrong), crop accuracy (every
coordinate of the AI's box within ``crop_tolerance`` of the final's) and mean IoU.
Rejected groups have no kept image and count for none of them. Decisions flagged
needs_review are left out unless asked for, since their truth may be wrong.

A group whose kept final cannot be read (action 'unreadable') is always flagged, so it
is left out by default. When needs_review decisions are counted, its pick is known and
counts for selection (and anomaly) accuracy; its box is not, so it never counts for
crop accuracy or IoU.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from backfill.config.settings import EvaluateConfig
from backfill.contracts.schemas import BOX, CROP_BOX, UNREADABLE


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise intersection over union of [x1, y1, x2, y2] boxes; NaN boxes give 0."""
    w = np.clip(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0, None)
    h = np.clip(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0, None)
    inter = w * h
    union = ((a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
             + (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) - inter)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = inter / union
    return np.nan_to_num(out, nan=0.0)


def crop_match(ai: np.ndarray, final: np.ndarray, tolerance: float) -> np.ndarray:
    """The v3 decisions plan's crop_match: every coordinate within ``tolerance``; a
    missing box fails."""
    return (np.abs(ai - final) <= tolerance).all(axis=1)


def anomalies(truth: pd.DataFrame, groups: pd.DataFrame) -> pd.Series:
    """Per truth row: the person kept a lower stage than the group's highest."""
    # float: an empty map would keep the ids' str dtype
    n = truth["group_id"].map(groups.set_index("group_id")["n_images"]).astype("float64")
    return (truth["user_selected_index"] < n - 1).fillna(False).astype(bool)


def has_box(truth: pd.DataFrame) -> pd.Series:
    """Decisions whose kept image has a known box: what crop measures count. An
    unreadable final has none (and no crop metric), whatever its other columns say."""
    return truth[CROP_BOX].notna().all(axis=1) & (truth["user_action"] != UNREADABLE)


def _share(hits: pd.Series) -> float | None:
    return float(hits.mean()) if len(hits) else None


def scored(truth: pd.DataFrame, groups: pd.DataFrame, predictions: pd.DataFrame,
           settings: EvaluateConfig) -> pd.DataFrame:
    """Per measured decision (kept, and not needs_review unless asked for): the truth
    with the AI's pick and box beside it, and whether they agree (``right``, ``anomaly``,
    ``boxed``, ``iou``, ``crop_ok``); the stages of both picks, for plots and reports."""
    t = truth.assign(anomaly=anomalies(truth, groups))
    if not settings.include_needs_review:
        t = t[~t["needs_review"]]
    t = t[t["user_selected_index"].notna()].merge(
        predictions[["group_id", "ai_selected_index", *BOX]], on="group_id", how="left")
    t["right"] = (t["ai_selected_index"] == t["user_selected_index"]).fillna(False).astype(bool)
    t["boxed"] = has_box(t) & t[BOX].notna().all(axis=1)
    t["iou"] = np.where(t["boxed"], iou(t[BOX].to_numpy(float), t[CROP_BOX].to_numpy(float)),
                        np.nan)
    t["crop_ok"] = t["boxed"] & crop_match(t[BOX].to_numpy(float), t[CROP_BOX].to_numpy(float),
                                           settings.crop_tolerance)
    stages = t["group_id"].map(groups.set_index("group_id")["stages"])
    t["ai_stage"] = [None if pd.isna(i) else float(s[int(i)])
                     for s, i in zip(stages, t["ai_selected_index"], strict=True)]
    return t


def evaluate(truth: pd.DataFrame, groups: pd.DataFrame, predictions: pd.DataFrame,
             settings: EvaluateConfig) -> dict:
    """Counts and accuracies (None where there is nothing to measure)."""
    excluded = 0 if settings.include_needs_review else int(truth["needs_review"].sum())
    t = scored(truth, groups, predictions, settings)
    right = t["right"]
    boxed = has_box(t)  # a kept box without an AI box counts as wrong
    return {
        "groups": int(len(truth)),
        "excluded_needs_review": excluded,
        "selection_n": int(len(t)),
        "selection_accuracy": _share(right),
        "anomaly_n": int(t["anomaly"].sum()),
        "anomaly_accuracy": _share(right[t["anomaly"]]),
        "crop_n": int(boxed.sum()),
        "crop_accuracy": _share(t.loc[boxed, "crop_ok"]),
        "mean_iou": float(t.loc[boxed, "iou"].fillna(0).mean()) if boxed.any() else None,
    }


def percent(x: float | None) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.1%}"


def describe_metrics(m: dict) -> str:
    iou_text = "n/a" if m["mean_iou"] is None else f"{m['mean_iou']:.3f}"
    return (f"selection {percent(m['selection_accuracy'])} of {m['selection_n']:,}, anomaly "
            f"{percent(m['anomaly_accuracy'])} of {m['anomaly_n']:,}, crop "
            f"{percent(m['crop_accuracy'])} of {m['crop_n']:,}, mean IoU {iou_text}")
