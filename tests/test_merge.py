"""merge: backfilled v3 rows and seed 000's merge rules, cell by cell."""

from __future__ import annotations

import json
import sqlite3

import pandas as pd
import pytest

from backfill.decisiondb import COLUMNS, INDEXES, VIEWS, create, insert_rows
from backfill.legacy import crop_acceptance
from backfill.merge import MergeSettings, match_rows, plan_merge, with_matches

SETTINGS = MergeSettings(coord_tolerance=0.01, crop_tolerance=0.05)


def row(gid: str, images: list[str], **values) -> dict:
    base = dict.fromkeys(COLUMNS)
    base.update({"group_id": gid, "timestamp": "2025-10-01T10:00:00Z", "project_id": "p",
                 "images": json.dumps(images), "user_selected_index": 0,
                 "user_action": "approve", "image_width": 832, "image_height": 1216})
    base.update(values)
    return base


def frame(*rows: dict) -> pd.DataFrame:
    return pd.DataFrame(list(rows), columns=COLUMNS)


def test_the_schema_has_seed_003s_columns_checks_indexes_and_views(tmp_path):
    conn = sqlite3.connect(tmp_path / "d.db")
    create(conn)
    assert [r[1] for r in conn.execute("PRAGMA table_info(ai_decisions)")] == COLUMNS
    names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    assert set(INDEXES) | set(VIEWS) <= names
    with pytest.raises(sqlite3.IntegrityError):  # the old scripts' 'skip' is refused
        conn.execute("INSERT INTO ai_decisions (group_id, timestamp, project_id, images, "
                     "user_selected_index, user_action, image_width, image_height) VALUES "
                     "('g', 't', 'p', '[]', 0, 'skip', 1, 1)")


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
    from backfill.merge import backfill_rows

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
    from backfill.legacy import read_review_folders

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

    plan = plan_merge(frame(), live, SETTINGS, crop_accepted=rule)
    got = plan.merged.set_index("group_id")["ai_crop_accepted"].to_dict()
    assert got == {"auto": True, "plain": False, "both": None, "nowhere": None,
                   "other": None, "known": False}
    assert set(plan.changes.loc[plan.changes["rule"] == "sidecar", "group_id"]) == {
        "auto", "plain"}


def test_a_legacy_csv_reads_as_v3_rows_and_bad_lines_are_reported(tmp_path):
    from backfill.legacy import read_decisions_csv

    header = ("group_id,timestamp,project_id,directory,batch_number,image_1_filename,"
              "image_2_filename,image_3_filename,image_4_filename,ai_selected_index,"
              "ai_crop_x1,ai_crop_y1,ai_crop_x2,ai_crop_y2,ai_confidence,user_selected_index,"
              "user_action,final_crop_x1,final_crop_y1,final_crop_x2,final_crop_y2,"
              "crop_timestamp,image_width,image_height,selection_match,crop_match")
    lines = [header,
             "g1,2025-09-01T10:00:00Z,p,d,1,a.png,b.png,,,1,0.1,0.1,0.9,0.9,0.8,1,crop,"
             "0.2,0.2,0.8,0.8,2025-09-01T11:00:00Z,832,1216,True,False",
             "g2,2025-09-01T10:05:00Z,p,,,c.png,d.png,e.png,,,,,,,,0,reject,,,,,,832,1216,,",
             ",2025-09-01T10:09:00Z,p,,,f.png,,,,,,,,,,0,approve,,,,,,832,1216,,",
             "g4,2025-09-01T10:10:00Z,p,,,g.png,,,,,,,,,,x,approve,,,,,,832,1216,,"]
    path = tmp_path / "p_decisions.csv"
    path.write_text("\n".join(lines) + "\n")
    rows, problems = read_decisions_csv(path, "p")
    assert rows["group_id"].tolist() == ["g1", "g2"]
    g1 = rows.iloc[0]
    assert json.loads(g1["images"]) == ["a.png", "b.png"]
    assert g1["ai_crop_coords"] == "[0.1, 0.1, 0.9, 0.9]" and g1["ai_selected_index"] == 1
    assert g1["final_crop_coords"] == "[0.2, 0.2, 0.8, 0.8]" and g1["selection_match"] is True
    assert rows.iloc[1]["ai_selected_index"] is None and rows.iloc[1]["final_crop_coords"] is None
    assert [d.split(": ")[1] for d in problems["detail"]] == [
        "no group_id", "user_selected_index unreadable"]
    assert "line 4" in problems["detail"][0]


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
