"""The report's sections on generated data: what it counts is what the evaluation says."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from backfill.config.settings import EvaluateConfig
from backfill.contracts.schemas import BOX
from backfill.models.evaluate import evaluate
from backfill.reports.report import disagreements, gallery
from backfill.reports.resolve import GENERAL, how_to_resolve


def no_thumbnail(*_args) -> None:
    return None  # the counts need no image decoded


def right_picks_whole_frames(truth: pd.DataFrame, groups: pd.DataFrame) -> pd.DataFrame:
    """An AI that picks what the person kept and never crops: it misses every real crop."""
    picks = truth.set_index("group_id")["user_selected_index"].fillna(0)
    return pd.DataFrame({"group_id": groups["group_id"],
                         "ai_selected_index": groups["group_id"].map(picks).astype("Int64"),
                         **dict(zip(BOX, (0.0, 0.0, 1.0, 1.0), strict=True))})


def test_the_disagreement_count_includes_crop_misses(recovered):
    settings = EvaluateConfig(crop_tolerance=0.05, include_needs_review=False)
    tables = {"truth": recovered.truth, "groups": recovered.groups,
              "predictions": right_picks_whole_frames(recovered.truth, recovered.groups)}
    quality = evaluate(*tables.values(), settings)
    assert quality["selection_accuracy"] == 1.0 and quality["crop_accuracy"] < 1.0
    crop_misses = round(quality["crop_n"] * (1 - quality["crop_accuracy"]))
    strips, n = disagreements(tables, settings, Path("/"), 32, no_thumbnail, limit=5)
    assert n == {"all": crop_misses, "picks": 0, "crops": crop_misses}
    assert len(strips) == min(5, crop_misses)
    assert all(s["why"].startswith("crop off (IoU ") for s in strips)


def test_the_gallery_shows_every_kept_decision_worst_crop_first_and_counts_the_rest(recovered):
    settings = EvaluateConfig(crop_tolerance=0.05, include_needs_review=False)
    tables = {"truth": recovered.truth, "groups": recovered.groups,
              "predictions": right_picks_whole_frames(recovered.truth, recovered.groups)}
    items, n = gallery(tables, settings, Path("/"), 32, no_thumbnail, limit=4)
    kept = recovered.truth["original_path"].notna()
    assert n == kept.sum() and len(items) == 4
    ious = [i["iou"] for i in items]
    assert ious == sorted(ious) and all(i["ai_box"] == [0.0, 0.0, 1.0, 1.0] for i in items)
    assert {i["needs_review"] for i in gallery(tables, settings, Path("/"), 32, no_thumbnail,
                                               limit=n)[0]} == {True, False}


def test_each_review_reason_gets_advice_in_the_users_words():
    low = "match confidence 0.41 is below min_confidence 0.8"
    assert "extract.min_confidence" in how_to_resolve(low)
    both = how_to_resolve(f"{low}; another place matches almost as well (0.40)")
    assert "extract.ambiguity_margin" in both and both.count("; ") == 1
    assert how_to_resolve("something new") == GENERAL[0].upper() + GENERAL[1:] + \
        ", then run dvc repro again."
    assert "seed" not in how_to_resolve(low).lower()
