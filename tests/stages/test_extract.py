"""extract: pairing rules, labelling tolerances, the cache, and whole generated projects."""

import dataclasses

import numpy as np
import pandas as pd
import pytest

from backfill.config.settings import GroupConfig, section
from backfill.contracts.schemas import CROP_BOX, FinalsTable, TruthTable
from backfill.contracts.tables import validate
from backfill.db.cells import iso_utc
from backfill.demo.synthetic import make_project
from backfill.stages.extract.decisions import LabelSettings, label
from backfill.stages.extract.stage import ExtractSettings, extract_project
from backfill.stages.group import group_table
from backfill.stages.scan import ScanSettings, scan_project
from tests.conftest import pipeline_config
from tests.helpers.extract_rows import file_row, group, pair, ungrouped_rows

PIPELINE = pipeline_config()
SETTINGS = ExtractSettings.from_config(PIPELINE.extract, PIPELINE.scan.max_pixels)


# --- pairing -------------------------------------------------------------------------











def test_a_group_with_nothing_kept_is_rejected_and_a_kept_name_is_its_decision():
    pairs, finals = pair([group("g1", ["a1.png", "a2.png"]), group("g2", ["b1.png", "b2.png"])],
                         [file_row("final", "x/b1.png")])
    assert pd.isna(pairs.loc["g1", "user_selected_index"])
    assert pairs.loc["g2", "user_selected_index"] == 0
    assert pairs.loc["g2", "final_path"] == "x/b1.png" and pd.isna(pairs.loc["g2", "review"])
    assert finals.loc["x/b1.png", "role"] == "kept"


def test_a_final_exported_as_jpeg_still_pairs_with_its_png_render():
    pairs, _ = pair([group("g", ["a1.png", "a2.png"])], [file_row("final", "a2.jpg")])
    assert pairs.loc["g", "user_selected_index"] == 1


def test_identical_copies_are_one_decision_and_reported():
    pairs, finals = pair([group("g", ["a1.png", "a2.png"])],
                         [file_row("final", "a2.png"), file_row("final", "sub/a2.png")])
    assert pairs.loc["g", "final_copies"] == 1 and pd.isna(pairs.loc["g", "review"])
    assert finals.loc["sub/a2.png", "role"] == "copy"
    assert "same content" in finals.loc["sub/a2.png", "reason"]


def test_copies_that_differ_take_the_latest_and_ask_for_review():
    pairs, finals = pair([group("g", ["a1.png", "a2.png"])],
                         [file_row("final", "a2.png", "b" * 64, mtime=5),
                          file_row("final", "v2/a2.png", "c" * 64, mtime=9)])
    assert pairs.loc["g", "final_path"] == "v2/a2.png"
    assert "differ in content" in pairs.loc["g", "review"]
    assert finals.loc["a2.png", "role"] == "copy"


def test_two_kept_images_of_one_group_take_the_highest_stage_for_review():
    pairs, finals = pair([group("g", ["a1.png", "a2.png", "a3.png"])],
                         [file_row("final", "a1.png"), file_row("final", "a3.png")])
    assert pairs.loc["g", "user_selected_index"] == 2
    assert "2 images of this group" in pairs.loc["g", "review"]
    assert finals.loc["a1.png", "role"] == "extra" and finals.loc["a3.png", "role"] == "kept"


def test_orphans_say_why():
    ungrouped = ungrouped_rows({"lone.png": "no higher stage followed it"})
    _, finals = pair([group("g", ["a1.png", "a2.png"])],
                     [file_row("final", "stray.png"), file_row("final", "lone.png")], ungrouped)
    assert finals.loc["stray.png", "reason"] == "no original render has this name"
    assert "in no group (no higher stage" in finals.loc["lone.png", "reason"]
    assert set(finals["role"]) == {"orphan"}


def test_an_unreadable_final_is_still_the_pick_and_says_why():
    pairs, finals = pair([group("g", ["a1.png", "a2.png"])],
                         [file_row("final", "a2.png", None, status="error", reason="truncated")])
    assert pairs.loc["g", "user_selected_index"] == 1 and pd.isna(pairs.loc["g", "final_hash"])
    assert pairs.loc["g", "unreadable"] == "final unreadable: truncated"
    assert pd.isna(pairs.loc["g", "review"])
    assert "unreadable: truncated" in finals.loc["a2.png", "reason"]


# --- labelling -----------------------------------------------------------------------

def located(box_px, confidence=0.99, runner_up=0.0, kept=True, support=1.0) -> dict:
    x1, y1, x2, y2 = box_px if box_px else (np.nan,) * 4
    return {"group_id": f"g{len(str(box_px))}{confidence}{kept}", "user_selected_index":
            1 if kept else None, "kept_stage": 2.0 if kept else None, "original_path": "o.png",
            "original_width": 1000, "original_height": 500, "final_path": "f.png",
            "final_copies": 0, "final_mtime_ns": 1_752_000_000 * 10**9 if kept else None,
            "pair_method": "name" if kept else None,
            "review": None, "x1": x1, "y1": y1, "x2": x2, "y2": y2, "scale": 1.0,
            "confidence": confidence if box_px else np.nan, "runner_up": runner_up,
            "support": support, "method": "1:1" if box_px else None, "locate_error": None,
            "unreadable": None, "unreadable_members": None}


def labels(rows: list[dict], **overrides) -> pd.DataFrame:
    s = dataclasses.replace(SETTINGS.labels, **overrides)
    return validate(label(pd.DataFrame(rows), s), TruthTable, "truth")


def test_seed_000_actions_with_tolerances():
    t = labels([located((15, 5, 990, 495)),  # within 2% of the full frame
                located((40, 20, 960, 480)),  # a 4% margin
                located(None, kept=False)])
    assert list(t["user_action"]) == ["approve", "crop", "reject"]
    assert t.loc[1, "crop_timestamp"] == "2025-07-08T18:40:00Z"
    assert pd.isna(t.loc[0, "crop_timestamp"]) and pd.isna(t.loc[2, "user_selected_index"])
    assert not t["needs_review"].any()
    assert list(labels([located((40, 20, 960, 480))], approve_tolerance=0.05)["user_action"]) \
        == ["approve"]
    # An approve's box is the full frame exactly; a crop's is where it was located.
    assert t.loc[0, CROP_BOX].tolist() == [0.0, 0.0, 1.0, 1.0]
    assert t.loc[1, CROP_BOX].tolist() == pytest.approx([0.04, 0.04, 0.96, 0.96])


def test_doubtful_matches_are_kept_and_flagged_never_dropped():
    t = labels([located((100, 50, 600, 400), confidence=0.6),
                located((100, 50, 600, 400), confidence=0.95, runner_up=0.94),
                located((100, 50, 600, 400), support=0.0)])
    assert list(t["user_action"]) == ["crop"] * 3 and t["needs_review"].all()
    reasons = " | ".join(t["review_reason"])
    assert "below min_confidence 0.8" in reasons and "almost as well" in reasons
    assert "confirmed at full resolution" in reasons


def test_iso_utc():
    assert iso_utc(0) == "1970-01-01T00:00:00Z" and iso_utc(None) is None


# --- whole projects ------------------------------------------------------------------

@pytest.fixture(scope="module")
def variant_project(tmp_path_factory):
    """Every crop kind and encoding, stages of different sizes, copies, orphans."""
    root = tmp_path_factory.mktemp("variants")
    project = make_project(root, n_groups=60, seed=21, scale=0.3)
    scan = scan_project({"original": project.original_dir, "final": project.final_dir},
                        ScanSettings.from_config(PIPELINE.scan), root / "cache" / "fp").table
    groups, ungrouped = group_table(scan, section(GroupConfig, PIPELINE.group, "group"), "v")
    return project, scan, groups, ungrouped, root / "cache"


def extract(variant_project, settings=SETTINGS):
    project, scan, groups, ungrouped, cache = variant_project
    return extract_project(groups, scan, ungrouped, settings, project.original_dir,
                           project.final_dir, cache)


def test_every_decision_of_a_generated_project_is_recovered(variant_project):
    project = variant_project[0]
    result = extract(variant_project)
    validate(result.finals, FinalsTable, "finals")
    truth = validate(result.truth, TruthTable, "truth").set_index("group_id")
    kinds = {(g.crop_kind, g.encoding) for g in project.groups if g.kept_index is not None}
    assert len(kinds) >= 12 and any(g.low_texture for g in project.groups)
    for g in project.groups:
        row = truth.loc[f"v_group_{g.first_timestamp}"]
        assert row.user_action == g.action, g
        if g.kept_index is None:
            continue
        assert row.user_selected_index == g.kept_index
        got = row[CROP_BOX].to_numpy(float)
        if g.action == "approve":  # the full frame exactly, however near-full the final
            assert got.tolist() == [0.0, 0.0, 1.0, 1.0], g
        else:
            assert np.abs(got - np.array(g.crop)).max() <= (0.01 if g.resize == 1 else 0.02), g
        assert row.scale == pytest.approx(g.resize, rel=0.02)
    # Approvals moved as they are need no decoding: the whole frame, by content hash.
    moved = [f"v_group_{g.first_timestamp}" for g in project.groups
             if (g.crop_kind, g.encoding) == ("whole", "png")]
    assert moved and result.identical == len(moved)
    assert (truth.loc[moved, "match_method"] == "identical").all()
    flagged = truth[truth["needs_review"]]
    assert all("images of this group" in r for r in flagged["review_reason"])
    finals = result.finals.set_index("rel_path")
    for rel, kind in project.other_finals.items():
        assert finals.loc[rel, "role"] == ("orphan" if kind == "unreadable" else kind)
    # Every final here is named like its render; the orphans were compared by content.
    assert set(truth["pair_method"].dropna()) == {"name"}
    assert truth["pair_method"].isna().sum() == sum(g.kept_index is None for g in project.groups)
    assert "no render matches its content" in finals.loc["misc/wallpaper.png", "reason"]


def test_results_are_cached_and_a_tolerance_change_matches_nothing(variant_project):
    first = extract(variant_project)
    again = extract(variant_project)
    assert again.matched == 0 and again.cached == first.matched + first.cached
    pd.testing.assert_frame_equal(first.truth, again.truth)

    loose = dataclasses.replace(SETTINGS, labels=dataclasses.replace(
        SETTINGS.labels, approve_tolerance=0.05, min_confidence=0.9999))
    relabelled = extract(variant_project, loose)
    assert relabelled.matched == 0
    actions = relabelled.truth.set_index("group_id")["user_action"]
    margin4 = [f"v_group_{g.first_timestamp}" for g in variant_project[0].groups
               if g.crop_kind == "margin4"]
    assert margin4 and (actions[margin4] == "approve").all()
    assert relabelled.truth["needs_review"].sum() > first.truth["needs_review"].sum()

    # A matcher setting is part of the cache key: everything is matched again.
    other = dataclasses.replace(SETTINGS, match=dataclasses.replace(SETTINGS.match,
                                                                    verify_size=200))
    assert extract(variant_project, other).matched == first.matched + first.cached


@pytest.mark.slow  # extracts a project twice
def test_workers_do_not_change_the_result(variant_project, tmp_path):
    project, scan, groups, ungrouped, _ = variant_project
    one = extract_project(groups, scan, ungrouped, dataclasses.replace(SETTINGS, workers=1),
                          project.original_dir, project.final_dir, tmp_path / "a")
    two = extract_project(groups, scan, ungrouped, dataclasses.replace(SETTINGS, workers=3),
                          project.original_dir, project.final_dir, tmp_path / "b")
    pd.testing.assert_frame_equal(one.truth, two.truth)


def test_label_settings_come_from_config():
    assert SETTINGS.labels == LabelSettings(0.02, 0.8, 0.02)


def test_a_kept_final_that_cannot_be_located_is_boxless_not_a_crop():
    """A readable final not found in its original (heavily edited, another picture) has
    no box: 'unreadable' with the reason, so the merge reports it; never a 'crop' row
    without coordinates, which would stop validate."""
    rows = [located(None) | {"group_id": "a", "locate_error": "larger than its original"},
            located(None) | {"group_id": "b"}, located((15, 5, 990, 495)) | {"group_id": "c"}]
    t = labels(rows).set_index("group_id")
    assert list(t["user_action"]) == ["unreadable", "unreadable", "approve"]
    assert t.loc["a", "review_reason"].startswith("not located: larger than its original")
    assert t.loc["b", "review_reason"] == "not located"
    assert t.loc[["a", "b"], "needs_review"].all() and t.loc[["a", "b"], "crop_x1"].isna().all()
    assert list(t.loc[["a", "b"], "user_selected_index"]) == [1, 1]
