"""merge: backfilled v3 rows and the backfill guide's merge rules, cell by cell."""

from __future__ import annotations

import json
import sqlite3

import pandas as pd
import pytest

from backfill.db.schema import create, insert_rows
from backfill.production.legacy import crop_acceptance
from backfill.stages.merge import (
    MergeInputs,
    MergeSettings,
    match_rows,
    plan_merge,
    with_matches,
)
from tests.helpers.merge_rows import frame, row

SETTINGS = MergeSettings(coord_tolerance=0.01, crop_tolerance=0.05)






def test_matches_are_one_to_one_by_file_name_and_ambiguity_is_left_alone():
    back = frame(row("b1", ["a.png", "b.png"]), row("b2", ["c.png"]), row("b3", ["d.png"]),
                 row("b4", ["e.png"]))
    prod = frame(row("p1", ["b.png"]), row("p2", ["c.png"]), row("p3", ["c.png", "x.png"]),
                 row("p4", ["d.png", "e.png"]))
    m = match_rows(back, prod)
    assert m.pairs.values.tolist() == [["b1", "p1"]]
    assert set(m.conflicts["group_id"]) == {"b2", "p4"}  # b2 -> 2 rows; p4 <- 2 groups


def test_merge_fills_nulls_corrects_coordinates_and_never_touches_timestamps_or_ai():
    back = frame(
        row("b1", ["a.png"], user_action="crop", final_crop_coords="[0.1, 0.1, 0.5, 0.5]",
            crop_timestamp="2026-01-01T00:00:00Z", ai_selected_index=1,
            ai_crop_coords="[0.0, 0.0, 1.0, 1.0]", timestamp="2026-01-01T00:00:00Z"),
        row("b2", ["c.png"], user_action="crop", final_crop_coords="[0.2, 0.2, 0.6, 0.6]",
            ai_selected_index=0, ai_confidence=0.9, directory="d"),
        row("b3", ["new.png"], user_action="reject"),
    )
    prod = frame(
        row("p1", ["a.png"], user_action="crop", final_crop_coords="[0.1, 0.1, 0.505, 0.5]",
            crop_timestamp="2025-10-01T10:05:00Z", ai_selected_index=0,
            ai_crop_coords="[0.1, 0.1, 0.5, 0.5]"),
        row("p2", ["c.png"], user_action="crop", final_crop_coords="[0.2, 0.2, 0.9, 0.6]",
            ai_selected_index=None),
    )
    plan = plan_merge(back, prod, SETTINGS)
    merged = plan.merged.set_index("group_id")
    # p1: within 1%: coordinates kept; its timestamps and AI prediction are preserved.
    assert merged.loc["p1", "final_crop_coords"] == "[0.1, 0.1, 0.505, 0.5]"
    assert merged.loc["p1", "crop_timestamp"] == "2025-10-01T10:05:00Z"
    assert merged.loc["p1", "timestamp"] == "2025-10-01T10:00:00Z"
    assert merged.loc["p1", "ai_selected_index"] == 0
    # p2: coordinates 30% off are corrected; NULL AI fields and directory are filled.
    assert merged.loc["p2", "final_crop_coords"] == "[0.2, 0.2, 0.6, 0.6]"
    assert merged.loc["p2", "ai_selected_index"] == 0 and merged.loc["p2", "directory"] == "d"
    assert merged.loc["p2", "selection_match"] is True
    assert merged.loc["b3", "user_action"] == "reject"  # a new group is added
    rules = plan.changes.groupby("rule").size().to_dict()
    assert rules["corrected"] == 1 and rules["added"] == 1
    filled = set(plan.changes.loc[plan.changes["rule"] == "filled", "column"])
    assert {"ai_selected_index", "ai_confidence", "directory"} <= filled
    assert "crop_timestamp" not in set(plan.changes.loc[plan.changes["group_id"] == "p1",
                                                        "column"])
    assert plan.summary().startswith("Added 1 new records, filled ")
    assert "corrected 1, preserved 3 timestamps" in plan.summary()


def test_match_flags_are_null_for_rejects_and_five_percent_per_coordinate():
    rows = frame(
        row("a", ["a"], user_action="crop", ai_selected_index=0,
            ai_crop_coords="[0.1, 0.1, 0.5, 0.5]", final_crop_coords="[0.14, 0.1, 0.5, 0.5]"),
        row("b", ["b"], user_action="crop", ai_selected_index=1,
            ai_crop_coords="[0.1, 0.1, 0.5, 0.5]", final_crop_coords="[0.16, 0.1, 0.5, 0.5]"),
        row("c", ["c"], user_action="reject", ai_selected_index=0),
    )
    out = with_matches(rows, SETTINGS).set_index("group_id")
    assert out.loc["a", "crop_match"] is True and out.loc["b", "crop_match"] is False
    assert out.loc["b", "selection_match"] is False
    assert out.loc["c", "selection_match"] is None and out.loc["c", "crop_match"] is None


def test_backfilled_rows_of_a_generated_project_fit_the_v3_schema(tmp_path, recovered):
    from backfill.stages.merge import backfill_rows

    gen, groups = recovered.gen, recovered.groups
    rows, prov = backfill_rows("p", groups, recovered.truth, recovered.scan, None, SETTINGS)
    assert len(rows) == len(groups) == len(prov)
    by_id = rows.set_index("group_id")
    for g in gen.groups:
        r = by_id.loc[f"p_group_{g.first_timestamp}"]
        assert r.user_action == g.action
        if g.kept_index is None:  # reject: no AI pick here, so index 0; no match flags
            assert r.user_selected_index == 0 and pd.isna(r.selection_match)
        else:
            assert r.user_selected_index == g.kept_index
        assert pd.notna(r.final_crop_coords) == (g.kept_index is not None)
    assert rows["ai_selected_index"].isna().all()  # no predictions: AI columns NULL
    conn = sqlite3.connect(tmp_path / "d.db")
    create(conn)
    insert_rows(conn, rows)
    assert conn.execute("SELECT count(*) FROM ai_decisions").fetchone()[0] == len(groups)


def test_sidecars_set_ai_crop_accepted_by_seed_003s_rule(tmp_path):
    from backfill.production.legacy import read_review_folders

    def ai_approved(gid: str, name: str, **values) -> dict:
        values = {"ai_selected_index": 1, "user_selected_index": 1,
                  "ai_crop_coords": "[0.1, 0.1, 0.9, 0.9]", **values}
        return row(gid, [f"{name}_stage1.png", f"{name}_stage2.png"], **values)

    live = frame(ai_approved("auto", "a"), ai_approved("plain", "b"),
                 ai_approved("both", "c"), ai_approved("nowhere", "d"),
                 ai_approved("other", "e", ai_selected_index=0),  # approved another image
                 ai_approved("known", "f", ai_crop_accepted=False))
    for folder, stem in [("crop_auto", "a_stage2"), ("selected", "b_stage2"),
                         ("selected", "c_stage2"), ("crop_auto", "e_stage2"),
                         ("crop_auto", "f_stage2")]:
        (tmp_path / folder).mkdir(exist_ok=True)
        (tmp_path / folder / f"{stem}.png").write_bytes(b"png")
    (tmp_path / "crop_auto" / "a_stage2.decision").write_text('{"group_id": "auto"}')
    # c's sidecar in crop_auto/ names its group though the file sits in selected/
    (tmp_path / "crop_auto" / "x.decision").write_text('{"group_id": "both"}')
    (tmp_path / "crop_auto" / "e_stage2.decision").write_text('{"group_id": "other"}')
    (tmp_path / "crop_auto" / "f_stage2.decision").write_text('{"group_id": "known"}')
    (tmp_path / "crop_auto" / "broken.decision").write_text("{not json")
    folders, problems = read_review_folders(tmp_path, ["crop_auto", "selected"], [".png"])
    assert len(problems) == 1 and "broken.decision" in problems[0]

    def rule(rows):
        return crop_acceptance(rows, folders, "crop_auto", "selected")

    plan = plan_merge(frame(), live, SETTINGS, MergeInputs(crop_accepted=rule))
    got = plan.merged.set_index("group_id")["ai_crop_accepted"].to_dict()
    assert got == {"auto": True, "plain": False, "both": None, "nowhere": None,
                   "other": None, "known": False}
    assert set(plan.changes.loc[plan.changes["rule"] == "sidecar", "group_id"]) == {
        "auto", "plain"}


def test_the_reviewers_own_flags_stand_on_rows_the_merge_leaves_alone():
    live = frame(
        # The reviewer measured crop_match with its own tolerance: it stays.
        row("mine", ["a.png"], user_action="crop", ai_selected_index=0,
            ai_crop_coords="[0.1, 0.1, 0.5, 0.5]", final_crop_coords="[0.13, 0.1, 0.5, 0.5]",
            selection_match=True, crop_match=False),
        # Flags never logged: filled from the values, like any NULL cell.
        row("empty", ["b.png"], user_action="crop", ai_selected_index=1,
            ai_crop_coords="[0.1, 0.1, 0.5, 0.5]", final_crop_coords="[0.1, 0.1, 0.5, 0.5]"))
    plan = plan_merge(frame(), live, SETTINGS)
    merged = plan.merged.set_index("group_id")
    assert merged.loc["mine", "crop_match"] is False  # 0.03 is within 5%, but not ours
    assert merged.loc["empty", "selection_match"] is False
    assert merged.loc["empty", "crop_match"] is True
    assert set(plan.changes.loc[plan.changes["rule"] == "recomputed", "group_id"]) == {"empty"}


def publish_to(tmp_path, live: pd.DataFrame, changes: pd.DataFrame) -> pd.DataFrame:
    """Write ``live`` to a fresh v3 DB, publish ``changes`` to it, return its rows."""
    from backfill.db.schema import read_rows
    from backfill.production.publish import publish_plan

    db = tmp_path / "live.db"
    with sqlite3.connect(db) as conn:
        create(conn)
        insert_rows(conn, live)
    conn.close()
    publish_plan(db, changes)
    with sqlite3.connect(db) as conn:
        rows, _ = read_rows(conn)
    conn.close()
    return rows.set_index("group_id")


def test_an_empty_merge_keeps_its_contracts():
    """Nothing to change (the steady state after a publish), and no group at all."""
    from backfill.contracts.schemas import MergeIssuesTable, MergePlanTable
    from backfill.contracts.tables import validate

    live = frame(row("p1", ["a.png"], user_action="reject"))
    for back, prod in [(frame(), frame()), (frame(), live)]:
        plan = plan_merge(back, prod, SETTINGS)
        assert plan.changes.empty and plan.issues.empty
        validate(plan.changes, MergePlanTable, "merge_plan")
        validate(plan.issues, MergeIssuesTable, "merge_issues")
        assert len(plan.merged) == len(prod)


@pytest.mark.parametrize("logged", [
    ["batch_00/a.png", "batch_00/b.png"],  # a folder prefix
    "['a.png', 'b.png']",  # a Python repr list
    ["A.PNG", "B.PNG"],  # another case
    ["a.jpg", "b.jpg"],  # the render's stem under another extension
    ["C:\\renders\\a.png", "C:\\renders\\b.png"],  # a Windows path
])
def test_a_row_naming_its_images_in_an_older_form_matches_its_group(tmp_path, logged):
    from backfill.db.cells import image_names

    images = logged if isinstance(logged, str) else json.dumps(logged)
    assert [n.lower().split(".")[0] for n in image_names(images)] == ["a", "b"]
    live = frame({**row("live1", [], user_action="crop", user_selected_index=1,
                        final_crop_coords=None), "images": images})
    back = frame(row("g1", ["a.png", "b.png"], user_action="crop", user_selected_index=1,
                     final_crop_coords="[0.1, 0.1, 0.5, 0.5]"))
    plan = plan_merge(back, live, SETTINGS)
    assert plan.pairs.values.tolist() == [["g1", "live1"]]
    assert "added" not in set(plan.changes["rule"])  # no second decision for the renders
    after = publish_to(tmp_path, live, plan.changes)
    assert list(after.index) == ["live1"]
    assert after.loc["live1", "final_crop_coords"] == "[0.1, 0.1, 0.5, 0.5]"
    assert after.loc["live1", "images"] == images  # the row's own form is kept


def test_a_stem_two_groups_share_is_ambiguous_and_reported_not_guessed():
    live = frame(row("live1", ["a.jpg"]))
    back = frame(row("g1", ["a.png"]), row("g2", ["a.webp"]))
    plan = plan_merge(back, live, SETTINGS)
    assert plan.pairs.empty
    issues = plan.issues.set_index("group_id")
    assert issues["kind"].to_dict() == {"live1": "ambiguous_match", "g1": "ambiguous_group",
                                        "g2": "ambiguous_group"}
    assert "live1" in issues.at["g1", "detail"] and "g2" in issues.at["g1", "detail"]
    assert plan.changes.empty  # neither group is added beside the live row
    assert plan.endings(back["group_id"])["reported"].all()  # nor silently missing


def test_a_blob_cell_in_a_changed_row_survives_the_plan_and_publish(tmp_path):
    blob = b"\x00\x01legacy"
    live = frame(row("live1", ["a.png"], user_action="crop", directory=blob,
                     final_crop_coords=None))
    back = frame(row("g1", ["a.png"], user_action="crop",
                     final_crop_coords="[0.1, 0.1, 0.5, 0.5]"))
    plan = plan_merge(back, live, SETTINGS)
    from backfill.contracts.schemas import MergePlanTable
    from backfill.contracts.tables import validate

    validate(plan.changes, MergePlanTable, "merge_plan")
    after = publish_to(tmp_path, live, plan.changes)
    assert after.loc["live1", "directory"] == blob  # untouched, still bytes
    assert after.loc["live1", "final_crop_coords"] == "[0.1, 0.1, 0.5, 0.5]"


def test_a_live_approve_whose_final_is_a_crop_is_reported_never_given_crop_coords(tmp_path):
    live = frame(row("live1", ["a.png", "b.png"], user_action="approve", user_selected_index=1,
                     final_crop_coords="[0.0, 0.0, 1.0, 1.0]"),
                 row("live2", ["c.png"], user_action="approve", final_crop_coords=None))
    back = frame(row("g1", ["a.png", "b.png"], user_action="crop", user_selected_index=1,
                     final_crop_coords="[0.2, 0.2, 0.7, 0.7]"),
                 row("g2", ["c.png"], user_action="crop", final_crop_coords="[0.2, 0.2, 0.7, 0.7]"))
    plan = plan_merge(back, live, SETTINGS)
    merged = plan.merged.set_index("group_id")
    assert merged.loc["live1", "final_crop_coords"] == "[0.0, 0.0, 1.0, 1.0]"
    assert pd.isna(merged.loc["live2", "final_crop_coords"])
    assert (merged["user_action"] == "approve").all()
    assert sorted(plan.issues["group_id"]) == ["live1", "live2"]
    assert set(plan.issues["kind"]) == {"action_conflict"}
    assert "the row says approve, the final folder shows crop" in plan.issues["detail"][0]
    after = publish_to(tmp_path, live, plan.changes)
    approve = after[after["user_action"] == "approve"]["final_crop_coords"].dropna()
    assert (approve == "[0.0, 0.0, 1.0, 1.0]").all()


def test_an_unreadable_final_is_reported_not_written_and_its_live_row_left_alone(tmp_path):
    live = frame(row("live1", ["a.png", "b.png"], user_action="crop", user_selected_index=1,
                     final_crop_coords=None, directory=None, ai_selected_index=1))
    unreadable = dict(user_action="unreadable", user_selected_index=1, directory="d")
    back = frame(row("g1", ["a.png", "b.png"], **unreadable),
                 row("g2", ["c.png", "d.png"], **unreadable))
    why = {"g1": "final unreadable: 0 bytes", "g2": "final unreadable: truncated"}
    plan = plan_merge(back, live, SETTINGS, MergeInputs(reasons=why))
    assert plan.changes.empty  # no new row, no fill of live1's NULLs
    assert plan.issues["kind"].tolist() == ["final_unreadable"] * 2
    details = plan.issues.set_index("group_id")["detail"]
    assert details["g1"].startswith("final unreadable: 0 bytes")
    assert "live row live1 is left alone" in details["g1"]
    assert details["g2"].startswith("final unreadable: truncated")
    after = publish_to(tmp_path, live, plan.changes)
    assert list(after.index) == ["live1"] and pd.isna(after.loc["live1", "directory"])
    # Fixed on disk: the next merge fills and adds as usual.
    fixed = frame(row("g1", ["a.png", "b.png"], user_action="crop", user_selected_index=1,
                      final_crop_coords="[0.1, 0.1, 0.5, 0.5]", directory="d"),
                  row("g2", ["c.png", "d.png"], user_action="approve",
                      final_crop_coords="[0.0, 0.0, 1.0, 1.0]"))
    plan = plan_merge(fixed, live, SETTINGS)
    assert plan.issues.empty
    rules = plan.changes.drop_duplicates("group_id").set_index("group_id")["rule"]
    assert rules["g2"] == "added" and "live1" in rules.index


def test_a_legacy_skip_row_for_a_group_production_lacks_is_reported_or_fixed():
    """A CSV row the v3 CHECKs refuse is never imported as it is: reported (and the
    files' own row added), or fixed where merge.fix_invalid_actions says so."""
    from dataclasses import replace

    legacy = frame(row("old1", ["a.png", "b.png"], user_action="skip",
                       timestamp="2024-01-01T00:00:00Z"))
    back = frame(row("g1", ["a.png", "b.png"], user_action="reject"))
    plan = plan_merge(back, legacy, SETTINGS, MergeInputs(imported={"old1"}))
    assert plan.issues["kind"].tolist() == ["legacy_invalid"]
    assert "fix_invalid_actions" in plan.issues["detail"][0]
    assert plan.merged["group_id"].tolist() == ["g1"]  # one decision, the files'
    db = sqlite3.connect(":memory:")
    create(db)
    from backfill.production.apply import apply_changes

    apply_changes(db, plan.changes)  # no IntegrityError
    fix = plan_merge(back, legacy, replace(SETTINGS, fix_invalid_actions=True),
                     MergeInputs(imported={"old1"}))
    assert fix.merged[["group_id", "user_action", "timestamp"]].values.tolist() == [
        ["old1", "reject", "2024-01-01T00:00:00Z"]]
    assert db.execute("SELECT group_id, user_action FROM ai_decisions").fetchall() == [
        ("g1", "reject")]
    fresh = sqlite3.connect(":memory:")
    create(fresh)
    apply_changes(fresh, fix.changes)
    assert fresh.execute("SELECT group_id, user_action FROM ai_decisions").fetchall() == [
        ("old1", "reject")]


def test_a_broken_reject_is_reported_not_written_and_its_live_row_left_alone(tmp_path):
    live = frame(row("live1", ["a.png", "b.png"], user_action="approve", user_selected_index=0,
                     final_crop_coords=None, directory=None, ai_selected_index=1))
    broken = dict(user_action="broken_reject", user_selected_index=0, directory="d")
    back = frame(row("g1", ["a.png", "b.png"], **broken),
                 row("g2", ["c.png", "d.png"], **broken),
                 row("g3", ["e.png", "f.png"], user_action="reject", user_selected_index=0))
    why = {g: "unreadable renders in the group: b.png (truncated)" for g in ("g1", "g2")}
    plan = plan_merge(back, live, SETTINGS, MergeInputs(reasons=why))
    assert set(plan.changes["group_id"]) == {"g3"}  # only the provable reject is added
    issues = plan.issues.set_index("group_id")
    assert issues["kind"].to_dict() == {"g1": "broken_reject", "g2": "broken_reject"}
    assert "live row live1 is left alone" in issues.loc["g1", "detail"]
    assert "not written to ai_decisions" in issues.loc["g2", "detail"]
    assert plan.counts()["issues_broken_reject"] == 2
    after = publish_to(tmp_path, live, plan.changes)
    assert sorted(after.index) == ["g3", "live1"] and pd.isna(after.loc["live1", "directory"])
