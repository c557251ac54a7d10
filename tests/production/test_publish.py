"""The merge stage on a generated project with a partial production DB, and publish:
backup, one transaction, clear errors, the production DB untouched until asked."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from backfill.contracts.schemas import MergeIssuesTable, MergePlanTable
from backfill.contracts.tables import ContractError, read_table
from backfill.db.schema import COLUMNS, DecisionDBError
from backfill.demo.production import make_production_db
from backfill.files.atomic import write_parquet
from backfill.production.publish import REWRITTEN_HEADER, run_publish
from tests.helpers.stage_project import digest, make_stage_project, rows_of

AI = ["ai_selected_index", "ai_crop_coords", "ai_confidence"]










@pytest.fixture
def merged(tmp_path, recovered):
    from backfill.stages.merge import run

    prod = make_production_db(recovered.gen, tmp_path / "live" / "ai_decisions.db", seed=5)
    project = make_stage_project(tmp_path, recovered, real_db=prod.path)
    before = digest(prod.path)
    message = run(project)
    return project, prod, before, message


def test_merge_stage_fills_corrects_and_preserves_without_touching_production(merged,
                                                                               recovered):
    project, prod, before, message = merged
    assert digest(prod.path) == before  # `dvc repro` never writes production
    assert prod.wrong_coords and prod.close_coords and prod.null_cells  # the seed has each
    out = rows_of(project.out_dir / "ai_decisions.db")
    # Every group once: each group's renders are named by exactly one row.
    for g in recovered.gen.groups:
        names = {Path(p).name for p in g.rel_paths}
        holders = [gid for gid, images in out["images"].items() if names & set(json.loads(images))]
        assert len(holders) == 1, (g.first_timestamp, holders)
    assert len(out) == len(recovered.gen.groups)
    for gid, live in prod.rows.items():
        row = out.loc[gid]
        assert row["timestamp"] == live["timestamp"]
        if live["crop_timestamp"] is not None:
            assert row["crop_timestamp"] == live["crop_timestamp"]
        for col in AI:  # live AI predictions stay; NULL ones are filled from the model
            if live[col] is not None:
                assert row[col] == live[col]
            else:
                assert row[col] is not None
        for col in prod.null_cells.get(gid, []):
            assert row[col] is not None, (gid, col)
        g = next(g for g in recovered.gen.groups
                 if g.first_timestamp == prod.first_timestamp[gid])
        true = np.array([0, 0, 1, 1] if g.action == "approve" else g.crop, float)
        coords = np.array(json.loads(row["final_crop_coords"] or "null") or [np.nan] * 4)
        if gid in prod.wrong_coords:
            assert np.abs(coords - true).max() < 0.01, gid  # corrected to what images show
        if gid in prod.close_coords:
            assert row["final_crop_coords"] == live["final_crop_coords"]  # within 1%: kept
    plan = read_table(project.output("merge_plan"), MergePlanTable)
    assert set(plan.loc[plan["rule"] == "corrected", "group_id"]) == prod.wrong_coords
    read_table(project.output("merge_issues"), MergeIssuesTable)
    assert message.startswith("merge p: Added ")
    assert f"corrected {len(prod.wrong_coords)}, preserved " in message
    summary = json.loads(project.metrics("merge_summary.json").read_text())
    assert summary["rows_after"] == len(out) and summary["matched"] == len(prod.rows)


def masked(data: bytes) -> bytes:
    out = bytearray(data)
    for start, end in REWRITTEN_HEADER:
        out[start:end] = bytes(end - start)
    return bytes(out)


def test_publish_backs_up_then_applies_exactly_the_merged_rows(merged):
    project, prod, before, _ = merged
    image = prod.path.read_bytes()
    dry = run_publish(project, dry_run=True)
    assert "planned changes" in dry and "not touched" in dry and digest(prod.path) == before
    message = run_publish(project, dry_run=False)
    backups = list(prod.path.parent.glob("ai_decisions.db.backup-*"))
    assert len(backups) == 1 and backups[0].name in message
    assert masked(backups[0].read_bytes()) == masked(image)
    after, expected = rows_of(prod.path), rows_of(project.out_dir / "ai_decisions.db")
    pd.testing.assert_frame_equal(after, expected)
    # Publishing the same plan again: production moved on, so nothing is applied.
    with pytest.raises(DecisionDBError, match="changed since the merge was planned"):
        run_publish(project, dry_run=False)
    assert len(list(prod.path.parent.glob("ai_decisions.db.backup-*"))) == 1
    pd.testing.assert_frame_equal(rows_of(prod.path), expected)


def test_an_older_db_is_migrated_and_its_skip_rows_reported_or_fixed(tmp_path, recovered):
    from backfill.stages.merge import run

    prod = make_production_db(recovered.gen, tmp_path / "old.db", seed=5, schema="old")
    (skip,) = prod.skip_rows
    project = make_stage_project(tmp_path, recovered, real_db=prod.path)
    message = run(project)
    assert "migrated: added column ai_crop_accepted" in message and "1 invalid row" in message
    issues = read_table(project.output("merge_issues"), MergeIssuesTable)
    assert issues.loc[issues["kind"] == "invalid_row", "group_id"].tolist() == [skip]
    assert rows_of(project.out_dir / "ai_decisions.db").loc[skip, "user_action"] == "skip"
    run_publish(project, dry_run=False)
    with sqlite3.connect(prod.path) as conn:
        assert "ai_crop_accepted" in [r[1] for r in conn.execute("PRAGMA table_info(ai_decisions)")]
    fixed = make_stage_project(tmp_path / "fix", recovered, real_db=prod.path)
    fixed.cfg.merge.fix_invalid_actions = True
    run(fixed)
    assert rows_of(fixed.out_dir / "ai_decisions.db").loc[skip, "user_action"] == "reject"


def test_missing_corrupt_and_locked_production_dbs_fail_clearly(tmp_path, recovered):
    from backfill.stages.merge import run

    missing = make_stage_project(tmp_path / "m", recovered, real_db=tmp_path / "nope.db")
    with pytest.raises(DecisionDBError, match="does not exist"):
        run(missing)
    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(b"this is not a database" * 100)
    with pytest.raises(DecisionDBError, match="cannot be read as an SQLite DB"):
        run(make_stage_project(tmp_path / "c", recovered, real_db=corrupt))
    assert corrupt.read_bytes() == b"this is not a database" * 100
    prod = make_production_db(recovered.gen, tmp_path / "live.db", seed=5)
    project = make_stage_project(tmp_path / "l", recovered, real_db=prod.path)
    run(project)
    project.cfg.merge.lock_timeout_s = 0.2
    holder = sqlite3.connect(prod.path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another program mid-write
    try:
        before = digest(prod.path)
        with pytest.raises(DecisionDBError, match="locked by another program"):
            run_publish(project, dry_run=False)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert digest(prod.path) == before
    assert not list(tmp_path.glob("live.db.backup-*"))


def test_publish_is_safe_while_the_reviewer_writes(merged):
    """The reviewer keeps a connection open and logs a decision every few ms during the
    publish: both succeed, and the reviewer's rows are all there afterwards."""
    project, prod, _, _ = merged
    stop, logged, errors = threading.Event(), [], []

    def reviewer() -> None:
        conn = sqlite3.connect(prod.path, timeout=10)
        n = 0
        while not stop.is_set():
            try:
                gid = f"live_{n}"
                conn.execute("INSERT INTO ai_decisions (group_id, timestamp, project_id, "
                             "images, user_selected_index, user_action, image_width, "
                             "image_height) VALUES (?, 't', 'p', ?, 0, 'reject', 8, 8)",
                             (gid, json.dumps([f"{gid}.png"])))
                conn.commit()
                logged.append(gid)
                n += 1
                time.sleep(0.005)  # a person's pace would be seconds; this is stress
            except sqlite3.Error as exc:  # pragma: no cover - the failure being tested
                errors.append(exc)
        conn.close()

    thread = threading.Thread(target=reviewer)
    thread.start()
    try:
        run_publish(project, dry_run=False)
    finally:
        stop.set()
        thread.join()
    assert not errors and logged
    after = rows_of(prod.path)
    assert set(logged) <= set(after.index)
    expected = rows_of(project.out_dir / "ai_decisions.db")
    pd.testing.assert_frame_equal(after.drop(logged)[COLUMNS[1:]], expected[COLUMNS[1:]])
    with sqlite3.connect(prod.path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def to_legacy_csv(rows: pd.DataFrame, path: Path) -> None:
    """Rows as the person's older tools logged them: the v3 decisions plan's CSV header."""
    from backfill.production.legacy import AI_BOX, FINAL_BOX, IMAGE_COLUMNS

    out = rows.drop(columns=["images", "ai_crop_coords", "final_crop_coords",
                             "ai_crop_accepted"]).copy()
    names = rows["images"].map(json.loads)
    for i, col in enumerate(IMAGE_COLUMNS):
        out[col] = names.map(lambda n, i=i: n[i] if i < len(n) else None)
    for src, cols in (("ai_crop_coords", AI_BOX), ("final_crop_coords", FINAL_BOX)):
        boxes = rows[src].map(lambda b: json.loads(b) if isinstance(b, str) else [None] * 4)
        for i, col in enumerate(cols):
            out[col] = boxes.map(lambda b, i=i: b[i])
    out.to_csv(path, index=False)


def test_a_legacy_csv_is_one_more_production_source(tmp_path, recovered):
    from backfill.stages.merge import run

    logged = make_production_db(recovered.gen, tmp_path / "old.db", seed=5)
    live = rows_of(logged.path).reset_index()
    csv = tmp_path / "p_decisions.csv"
    to_legacy_csv(live, csv)
    project = make_stage_project(tmp_path / "csv", recovered, legacy_csv=csv)
    message = run(project)
    assert f"{len(live)} of the new from the legacy CSV" in message
    out = rows_of(project.out_dir / "ai_decisions.db")
    assert len(out) == len(recovered.gen.groups)
    for _, r in live.iterrows():  # CSV rows keep their times and AI predictions
        assert out.at[r["group_id"], "timestamp"] == r["timestamp"]
        for col in AI:
            if r[col] is not None:
                assert out.at[r["group_id"], col] == r[col]
    # With the DB as well, the CSV's rows are already there: reported, not doubled.
    both = make_stage_project(tmp_path / "both", recovered, real_db=logged.path, legacy_csv=csv)
    run(both)
    issues = read_table(both.output("merge_issues"), MergeIssuesTable)
    assert (issues["kind"] == "legacy_duplicate").sum() == len(live)
    assert len(rows_of(both.out_dir / "ai_decisions.db")) == len(recovered.gen.groups)


def test_a_plan_naming_unknown_columns_is_refused_before_any_sql(tmp_path):
    from backfill.db.schema import create
    from backfill.production.apply import apply_changes

    db = tmp_path / "d.db"
    with sqlite3.connect(db) as conn:
        create(conn)
        evil = pd.DataFrame({"group_id": ["g"], "column": ["user_action = 'x'; --"],
                             "old": ["null"], "new": ['"y"'], "rule": ["filled"]})
        with pytest.raises(DecisionDBError, match="unknown columns"):
            apply_changes(conn, evil)
        from backfill.contracts.tables import validate

        with pytest.raises(ContractError, match="column 'column'"):
            validate(evil, MergePlanTable, "merge_plan")
    conn.close()


def live_and_plan(tmp_path, **prod_values):
    """A tiny live DB (one matched row, one new group) and its plan."""
    from backfill.stages.merge import MergeSettings, plan_merge
    from tests.helpers.merge_rows import frame, row

    settings = MergeSettings(0.01, 0.05)
    live = frame(row("live1", ["a.png", "b.png"], user_action="crop", user_selected_index=1,
                     final_crop_coords=None, ai_selected_index=1, **prod_values))
    back = frame(row("g1", ["a.png", "b.png"], user_action="crop", user_selected_index=1,
                     final_crop_coords="[0.1, 0.1, 0.5, 0.5]", directory="d"),
                 row("g2", ["c.png"], user_action="reject"))
    db = tmp_path / "live.db"
    with sqlite3.connect(db) as conn:
        from backfill.db.schema import create, insert_rows

        create(conn)
        insert_rows(conn, live)
    conn.close()
    return db, plan_merge(back, live, settings)


@pytest.mark.parametrize("reviewer_sql", [
    "UPDATE ai_decisions SET user_action = 'reject' WHERE group_id = 'live1'",
    "INSERT INTO ai_decisions (group_id, timestamp, project_id, images, user_selected_index,"
    " user_action, image_width, image_height) VALUES ('live2', 't', 'p', '[\"c.png\"]', 0,"
    " 'reject', 8, 8)",
    # The same render logged by an older tool, as the merge would link it (stem, case).
    "INSERT INTO ai_decisions (group_id, timestamp, project_id, images, user_selected_index,"
    " user_action, image_width, image_height) VALUES ('live2', 't', 'p',"
    " '[\"batch_00/C.jpg\"]', 0, 'reject', 8, 8)",
])
def test_a_plan_is_stale_when_the_row_or_a_new_rows_images_moved(tmp_path, reviewer_sql):
    from backfill.production.apply import PlanConflict
    from backfill.production.publish import publish_plan

    db, plan = live_and_plan(tmp_path)
    with sqlite3.connect(db) as conn:
        conn.execute(reviewer_sql)  # the reviewer, after planning
    conn.close()
    before = rows_of(db)
    with pytest.raises(PlanConflict):
        publish_plan(db, plan.changes)
    pd.testing.assert_frame_equal(rows_of(db), before)


def test_a_row_that_picked_another_image_keeps_its_crop_and_is_reported(tmp_path):
    from backfill.stages.merge import MergeSettings, plan_merge
    from tests.helpers.merge_rows import frame, row

    live = frame(row("live1", ["a.png", "b.png"], user_action="crop", user_selected_index=0,
                     final_crop_coords="[0.1, 0.1, 0.5, 0.5]"))
    back = frame(row("g1", ["a.png", "b.png"], user_action="crop", user_selected_index=1,
                     final_crop_coords="[0.3, 0.3, 0.9, 0.9]"))
    plan = plan_merge(back, live, MergeSettings(0.01, 0.05))
    assert plan.merged.loc[0, "final_crop_coords"] == "[0.1, 0.1, 0.5, 0.5]"
    assert plan.issues["kind"].tolist() == ["pick_differs"]


def test_text_flags_and_malformed_boxes_in_production_do_not_break_the_merge(tmp_path):
    from backfill.production.publish import publish_plan

    db, plan = live_and_plan(tmp_path, selection_match="false", ai_crop_coords="not json")
    publish_plan(db, plan.changes)  # re-checks pass: the plan saw the stored values
    assert len(rows_of(db)) == 2


def test_publish_refuses_a_plan_no_merge_rule_allows(tmp_path):
    from backfill.production.publish import publish_plan

    db, plan = live_and_plan(tmp_path)
    forged = pd.concat([plan.changes, pd.DataFrame({
        "group_id": ["live1"], "column": ["timestamp"], "old": ['"2025-10-01T10:00:00Z"'],
        "new": ['"2000-01-01T00:00:00Z"'], "rule": ["filled"]})], ignore_index=True)
    with pytest.raises(DecisionDBError, match="only fills NULLs"):
        publish_plan(db, forged)
    assert rows_of(db).loc["live1", "timestamp"] == "2025-10-01T10:00:00Z"


def test_an_unreadable_final_at_the_merge_stage_is_reported_and_never_written(tmp_path,
                                                                               recovered):
    """Extract says a kept final cannot be read: the merge stage writes no row for that
    group, reports it with extract's reason, and leaves its live row as it is."""
    from backfill.stages.merge import run

    prod = make_production_db(recovered.gen, tmp_path / "live" / "ai_decisions.db", seed=5)
    project = make_stage_project(tmp_path, recovered, real_db=prod.path)
    truth = recovered.truth.copy()
    by_first = {f"p_group_{g.first_timestamp}": g for g in recovered.gen.groups}
    live_of = {f"p_group_{prod.first_timestamp[gid]}": gid for gid in prod.rows}
    kept = truth["user_action"].isin(["approve", "crop"])
    logged = truth["group_id"].isin(live_of)
    broken = [truth.loc[kept & logged, "group_id"].iloc[0],
              truth.loc[kept & ~logged, "group_id"].iloc[0]]
    at = truth["group_id"].isin(broken)
    truth.loc[at, "user_action"] = "unreadable"
    truth.loc[at, ["crop_x1", "crop_y1", "crop_x2", "crop_y2"]] = float("nan")
    truth.loc[at, "needs_review"] = True
    truth.loc[at, "review_reason"] = "final unreadable: 0 bytes"
    write_parquet(truth, project.output("truth"))
    message = run(project)
    assert "2 final unreadable (reported, left alone)" in message
    issues = read_table(project.output("merge_issues"), MergeIssuesTable)
    mine = issues[issues["kind"] == "final_unreadable"].set_index("group_id")["detail"]
    assert sorted(mine.index) == sorted(broken)
    assert all(d.startswith("final unreadable: 0 bytes") for d in mine)
    out = rows_of(project.out_dir / "ai_decisions.db")
    assert len(out) == len(recovered.gen.groups) - 1  # the unlogged one is not added
    names = {Path(p).name for p in by_first[broken[1]].rel_paths}
    assert not any(names & set(json.loads(i)) for i in out["images"])
    live = live_of[broken[0]]
    plan = read_table(project.output("merge_plan"), MergePlanTable)
    assert live not in set(plan["group_id"])  # no fill, no correction of its live row
    assert out.loc[live, "final_crop_coords"] == prod.rows[live]["final_crop_coords"]


def test_a_moved_cell_is_named_once_and_the_dry_run_shows_only_writes(tmp_path):
    """The cell a plan changes is in its row as seen and in its own change: a conflict
    names it once. The rows as seen are premises: the dry run neither counts nor shows
    them, and a new row is one line, not its every cell."""
    from backfill.production.apply import PlanConflict
    from backfill.production.publish import describe_plan, publish_plan

    db, plan = live_and_plan(tmp_path)
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE ai_decisions SET final_crop_coords = '[0.2, 0.2, 0.6, 0.6]' "
                     "WHERE group_id = 'live1'")
    conn.close()
    with pytest.raises(PlanConflict) as err:
        publish_plan(db, plan.changes)
    lines = [line for line in str(err.value).splitlines() if line.startswith("  ")]
    assert len(lines) == len(set(lines)) and any("final_crop_coords" in x for x in lines)
    shown = describe_plan(plan.changes)
    writes = plan.changes[~plan.changes["rule"].isin(["seen", "identity"])]
    assert shown.startswith(f"{len(writes):,} planned changes:")
    assert "(seen)" not in shown and "seen " not in shown
    assert "a new row  (added)" in shown and '"images"' not in shown
