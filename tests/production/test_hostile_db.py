"""Hostile production-DB states at merge and publish (issue 12): each gives one clear
message or the right rows, and loses nothing. Already pinned elsewhere: an older schema
(test_publish: test_an_older_db_is_migrated_and_its_skip_rows_reported_or_fixed), a DB
changed between plan and publish (test_publish: test_a_plan_is_stale_when_the_row_or_a_
new_rows_images_moved, and the second publish in test_publish_backs_up_then_applies_
exactly_the_merged_rows), a missing or corrupt DB and a write lock at publish
(test_publish: test_missing_corrupt_and_locked_production_dbs_fail_clearly)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import sqlite3
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest

from backfill.config.errors import UserError
from backfill.contracts.schemas import (
    GroupsTable,
    MergeIssuesTable,
    MergePlanTable,
    PredictionsTable,
    ScanTable,
    TruthTable,
)
from backfill.contracts.tables import read_table, typed_frame
from backfill.db.schema import DecisionDBError, create
from backfill.demo.production import make_production_db
from backfill.files.atomic import DiskFull, size_text, write_parquet
from backfill.production.publish import run_publish
from backfill.stages.merge import run as merge_run
from tests.conftest import pipeline_config
from tests.helpers.stage_project import digest, make_stage_project, rows_of


@contextmanager
def read_only(path: Path):
    """``path`` made unwritable for this process: immutable when root (who ignores
    permission bits), else without write permission. Restored afterwards."""
    if os.geteuid() == 0:
        if shutil.which("chattr") is None or subprocess.run(
                ["chattr", "+i", str(path)], capture_output=True).returncode:
            pytest.skip("running as root without chattr +i: cannot make a file read-only")
        try:
            yield
        finally:
            subprocess.run(["chattr", "-i", str(path)], check=True)
    else:
        mode = path.stat().st_mode
        path.chmod(mode & ~0o222)
        try:
            yield
        finally:
            path.chmod(mode)


@pytest.fixture
def planned(tmp_path, recovered):
    """A live DB in its own folder and a merge plan for it."""
    prod = make_production_db(recovered.gen, tmp_path / "live" / "ai_decisions.db", seed=5)
    project = make_stage_project(tmp_path, recovered, real_db=prod.path)
    merge_run(project)
    return project, prod.path


@pytest.mark.parametrize("what", ["file", "folder"])
def test_a_db_that_cannot_be_written_is_reported_as_such_and_nothing_is_written(planned,
                                                                                 what):
    project, db = planned
    before = digest(db)
    with read_only(db if what == "file" else db.parent):
        with pytest.raises(DecisionDBError) as err:
            run_publish(project, dry_run=False)
        assert "dry run" in run_publish(project, dry_run=True)  # reading still works
    message = str(err.value)
    assert "cannot be written" in message and "nothing was written" in message
    assert "read-only" in message and "Restore" not in message and "cannot be read" not in message
    assert digest(db) == before
    assert sorted(p.name for p in db.parent.iterdir()) == ["ai_decisions.db"]
    run_publish(project, dry_run=False)  # writable again: it goes through
    assert len(rows_of(db)) == len(rows_of(project.out_dir / "ai_decisions.db"))


def test_partial_backups_an_interrupted_publish_left_are_reported_then_removed(planned):
    project, db = planned
    ours = [db.with_name(f"{db.name}.backup-20251101T101010Z.partial"),
            db.with_name(f"{db.name}.backup-20251101T101010Z-2.partial")]
    theirs = [db.with_name(f"{db.name}.backup-mine.partial"),  # not our exact form
              db.with_name("other.db.backup-20251101T101010Z.partial"),
              db.with_name(f"{db.name}.backup-20251101T101010Z")]  # a finished backup
    for p in ours + theirs:
        p.write_bytes(b"half a backup")
    dry = run_publish(project, dry_run=True)
    assert "2 partial backup(s) from an interrupted publish" in dry
    assert all(p.exists() for p in ours)  # a dry run removes nothing
    message = run_publish(project, dry_run=False)
    assert "Removed 2 partial backup(s)" in message and ours[0].name in message
    assert not any(p.exists() for p in ours) and all(p.exists() for p in theirs)
    assert not list(db.parent.glob("*.partial.*"))


def test_a_plan_for_another_db_is_refused_naming_both(planned, tmp_path, recovered):
    """real_db pointed elsewhere after the merge (`project add --force`): the plan's rows
    are this project's, so publishing them there is refused."""
    project, db = planned
    other = make_production_db(recovered.gen, tmp_path / "other" / "ai_decisions.db", seed=9)
    before = digest(other.path)
    project.cfg.real_db = str(other.path)
    for dry in (True, False):
        with pytest.raises(UserError) as err:
            run_publish(project, dry_run=dry)
        message = str(err.value)
        assert str(db.resolve()) in message and str(other.path) in message
        assert "dvc repro merge@p" in message and "nothing was written" in message
    assert digest(other.path) == before
    assert not list(other.path.parent.glob("*.backup-*"))
    merge_run(project)  # planned again against the new DB: accepted
    run_publish(project, dry_run=False)
    assert len(rows_of(other.path)) == len(rows_of(project.out_dir / "ai_decisions.db"))


def test_publish_without_a_plan_says_which_stage_to_run(planned):
    project, db = planned
    project.output("merge_plan").unlink()  # as `dvc repro` leaves it when merge failed
    for dry in (True, False):
        with pytest.raises(UserError, match=r"run `dvc repro merge@p` first"):
            run_publish(project, dry_run=dry)


def test_a_plan_without_identity_is_refused(planned):
    project, db = planned
    plan = read_table(project.output("merge_plan"), MergePlanTable)
    write_parquet(plan[plan["rule"] != "identity"], project.output("merge_plan"))
    before = digest(db)
    with pytest.raises(UserError, match="does not say which production DB"):
        run_publish(project, dry_run=False)
    assert digest(db) == before


def test_merge_waits_for_a_write_lock_then_says_so(tmp_path, recovered):
    prod = make_production_db(recovered.gen, tmp_path / "live.db", seed=5)
    project = make_stage_project(tmp_path, recovered, real_db=prod.path)
    project.cfg.merge.lock_timeout_s = 0.3
    holder = sqlite3.connect(prod.path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # the reviewer mid-write
    try:
        with pytest.raises(DecisionDBError, match="locked by another program"):
            merge_run(project)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert not project.output("merge_plan").exists()
    merge_run(project)  # the lock gone, it goes through


def test_a_wal_mode_db_with_the_reviewer_connected_merges_and_publishes(tmp_path, recovered):
    prod = make_production_db(recovered.gen, tmp_path / "live" / "ai_decisions.db", seed=5)
    reviewer = sqlite3.connect(prod.path, isolation_level=None)
    assert reviewer.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal"
    # A decision the reviewer logged, still only in the WAL (no checkpoint yet).
    reviewer.execute("INSERT INTO ai_decisions (group_id, timestamp, project_id, images, "
                     "user_selected_index, user_action, image_width, image_height) VALUES "
                     "('wal1', 't', 'p', '[\"wal1.png\"]', 0, 'reject', 8, 8)")
    project = make_stage_project(tmp_path, recovered, real_db=prod.path)
    try:
        merge_run(project)
        assert "wal1" in rows_of(project.out_dir / "ai_decisions.db").index
        run_publish(project, dry_run=False)
        after = reviewer.execute("SELECT count(*) FROM ai_decisions").fetchone()[0]
        assert reviewer.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        reviewer.close()
    assert after == len(recovered.gen.groups) + 1
    merge_run(project)
    assert run_publish(project, dry_run=False).startswith("nothing to publish")


def test_folder_prefixed_image_names_match_their_groups(tmp_path, recovered):
    """Production rows written with ``batch_00/<name>``: each matches its group, so the
    merged and published DB holds every group once."""
    prod = make_production_db(recovered.gen, tmp_path / "live.db", seed=5)
    with sqlite3.connect(prod.path) as conn:
        for gid, images in conn.execute("SELECT group_id, images FROM ai_decisions").fetchall():
            prefixed = [f"batch_00/{n}" for n in json.loads(images)]
            conn.execute("UPDATE ai_decisions SET images = ? WHERE group_id = ?",
                         (json.dumps(prefixed), gid))
    conn.close()
    project = make_stage_project(tmp_path, recovered, real_db=prod.path)
    merge_run(project)
    run_publish(project, dry_run=False)
    live = rows_of(prod.path)
    assert len(live) == len(recovered.gen.groups)
    for g in recovered.gen.groups:
        names = {Path(p).name for p in g.rel_paths}
        holders = [gid for gid, images in live["images"].items()
                   if names & {Path(n).name for n in json.loads(images)}]
        assert len(holders) == 1, (g.first_timestamp, holders)


@pytest.mark.parametrize("live", [False, True])
def test_a_project_with_no_group_merges_to_an_empty_plan_and_a_valid_db(tmp_path, live):
    """Only bad files: no group, no truth, no prediction."""
    from omegaconf import OmegaConf

    from backfill.config.project import Project

    cfg = pipeline_config()
    db = tmp_path / "live.db"
    if live:
        with sqlite3.connect(db) as conn:
            create(conn)
        conn.close()
    cfg = OmegaConf.merge(cfg, {"original_dir": str(tmp_path), "final_dir": str(tmp_path),
                                "real_db": str(db) if live else None})
    project = Project("p", tmp_path, cfg, tmp_path / "cache")
    for name, schema in [("scan", ScanTable), ("groups", GroupsTable), ("truth", TruthTable),
                         ("predictions", PredictionsTable)]:
        write_parquet(typed_frame(schema), project.output(name))
    message = merge_run(project)
    assert "Added 0 new records" in message
    plan = read_table(project.output("merge_plan"), MergePlanTable)
    assert set(plan["rule"]) == {"identity"}
    assert read_table(project.output("merge_issues"), MergeIssuesTable).empty
    with sqlite3.connect(project.out_dir / "ai_decisions.db") as conn:
        assert conn.execute("SELECT count(*) FROM ai_decisions").fetchone()[0] == 0
    conn.close()
    if live:
        assert run_publish(project, dry_run=False).startswith("nothing to publish")
        assert "the plan is empty" in run_publish(project, dry_run=True)
    assert isinstance(pd.read_parquet(project.output("merge_plan")), pd.DataFrame)


def test_a_dry_run_says_whether_production_moved_since_planning(planned):
    project, db = planned
    assert "unchanged since" in run_publish(project, dry_run=True)
    with sqlite3.connect(db) as conn:  # the reviewer logs a decision after the merge
        conn.execute("INSERT INTO ai_decisions (group_id, timestamp, project_id, images, "
                     "user_selected_index, user_action, image_width, image_height) VALUES "
                     "('late', 't', 'p', '[\"late.png\"]', 0, 'reject', 8, 8)")
    conn.close()
    assert "changed since" in run_publish(project, dry_run=True)
    run_publish(project, dry_run=False)  # a row no planned value depends on: it goes on
    assert "late" in rows_of(db).index


def backups(db: Path) -> list[str]:
    return sorted(p.name for p in db.parent.iterdir() if p.name != db.name)


@pytest.fixture
def disk_fills_at(monkeypatch):
    """``fill(which)``: SQLite finds the disk full when writing the backup ('backup') or
    the DB itself ('transaction'), as a real full disk makes it (SQLITE_FULL): the
    connection may not grow its file."""
    real = sqlite3.connect

    def fill(which: str) -> None:
        def connect(target, *args, **kwargs):
            conn = real(target, *args, **kwargs)
            name = str(target)
            if (which == "backup" and name.endswith(".partial")) or (
                    which == "transaction" and name.endswith("ai_decisions.db")
                    and "mode=ro" not in name and kwargs.get("isolation_level", "") is None):
                pages = conn.execute("PRAGMA page_count").fetchone()[0]
                conn.execute(f"PRAGMA max_page_count = {max(pages, 1)}")
            return conn

        monkeypatch.setattr(sqlite3, "connect", connect)
    return fill


@pytest.mark.parametrize("where", ["backup", "transaction"])
def test_a_full_disk_says_so_and_that_the_db_is_untouched(planned, disk_fills_at, where):
    """Not "cannot be read ... restore it from its latest backup": that advice would throw
    away every reviewer write since that backup."""
    project, db = planned
    before = digest(db)
    disk_fills_at(where)
    with pytest.raises(DecisionDBError) as err:
        run_publish(project, dry_run=False)
    message = str(err.value)
    assert "disk" in message and "full" in message
    assert "untouched" in message and "Restore" not in message and "cannot be read" not in message
    assert size_text(db.stat().st_size) in message  # the room a backup or journal needs
    assert digest(db) == before
    assert not [n for n in backups(db) if n.endswith(".partial")]
    assert len(backups(db)) == (0 if where == "backup" else 1)


def test_a_full_disk_from_the_os_at_the_backup_leaves_no_partial(planned, monkeypatch):
    project, db = planned
    before = digest(db)

    def no_room(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_room)
    with pytest.raises(DecisionDBError, match="disk holding .* is full") as err:
        run_publish(project, dry_run=False)
    assert "untouched" in str(err.value) and "Restore" not in str(err.value)
    assert digest(db) == before and backups(db) == []


def test_a_reader_holding_a_transaction_open_is_named_and_backups_do_not_pile_up(planned):
    """The reviewer app holds a read transaction open (rollback-journal mode): publish
    cannot commit. Each retry must not leave one more full backup."""
    project, db = planned
    project.cfg.merge.lock_timeout_s = 0.2
    before, rows_before = digest(db), rows_of(db)
    reader = sqlite3.connect(db, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM ai_decisions").fetchone()  # holds a read lock
    try:
        for _ in range(3):
            with pytest.raises(DecisionDBError) as err:
                run_publish(project, dry_run=False)
            assert "read transaction open" in str(err.value)
            assert "mid-write" not in str(err.value)
    finally:
        reader.execute("ROLLBACK")
        reader.close()
    assert digest(db) == before
    assert len(backups(db)) == 1  # one backup, reused by every retry
    message = run_publish(project, dry_run=False)
    assert backups(db) and len(backups(db)) == 1 and backups(db)[0] in message
    pd.testing.assert_frame_equal(rows_of(db.with_name(backups(db)[0])), rows_before)
    assert len(rows_of(db)) == len(rows_of(project.out_dir / "ai_decisions.db"))


def test_a_merge_that_fills_the_disk_names_the_db_it_was_writing(tmp_path, recovered,
                                                                 monkeypatch):
    prod = make_production_db(recovered.gen, tmp_path / "live.db", seed=5)
    project = make_stage_project(tmp_path, recovered, real_db=prod.path)
    real = sqlite3.connect

    def connect(target, *args, **kwargs):  # the merged DB's file may not grow: SQLITE_FULL
        conn = real(target, *args, **kwargs)
        if ".ai_decisions.db.tmp-" in str(target):
            conn.execute("PRAGMA max_page_count = 1")
        return conn

    monkeypatch.setattr(sqlite3, "connect", connect)
    out = project.out_dir / "ai_decisions.db"
    with pytest.raises(DiskFull, match="the disk is full") as err:
        merge_run(project)
    assert str(out) in str(err.value) and "\n" not in str(err.value)
    assert not list(project.out_dir.glob(".ai_decisions.db.tmp-*"))


# A newer app's production DB: a column this tool has no value for, a trigger that
# refuses inserts. Each is named in one line that says what to do; nothing is written.
NEWER = {
    "column": ("reviewer", "a default for reviewer"),
    "trigger": ("read_only_guard", "refuses inserts"),
    "check": ("needs_batch", "must allow it"),  # a rule known only when it refuses
}


def make_newer(db: Path, what: str) -> None:
    """``db`` as a newer app would leave it: rows kept, one hostile schema change."""
    if what == "trigger":
        with sqlite3.connect(db) as conn:
            conn.execute("CREATE TRIGGER read_only_guard BEFORE INSERT ON ai_decisions "
                         "BEGIN SELECT RAISE(ABORT, 'read only'); END")
        conn.close()
        return
    # SQLite cannot ADD a NOT NULL column without a default: the app rebuilt the table.
    extra, value = (("reviewer TEXT NOT NULL,", ", 'anna'") if what == "column" else
                    ("CONSTRAINT needs_batch CHECK (batch_number IS NOT NULL),", ""))
    with sqlite3.connect(db) as conn:
        sql = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'ai_decisions'"
                           ).fetchone()[0]
        conn.execute("ALTER TABLE ai_decisions RENAME TO old_decisions")
        conn.execute(sql.replace("crop_match BOOLEAN,", f"crop_match BOOLEAN,\n    {extra}", 1))
        conn.execute(f"INSERT INTO ai_decisions SELECT *{value} FROM old_decisions")
        conn.execute("DROP TABLE old_decisions")
    conn.close()


def one_line_cli(capsys, project, *argv: str) -> tuple[int, str]:
    from backfill import cli

    capsys.readouterr()
    code = cli.main(list(argv))
    err = capsys.readouterr().err
    return code, err


@pytest.mark.parametrize("what", sorted(NEWER))
def test_a_newer_apps_db_stops_the_merge_in_one_line_naming_what_to_do(tmp_path, recovered,
                                                                         what, capsys,
                                                                         monkeypatch):
    from backfill import cli

    prod = make_production_db(recovered.gen, tmp_path / "live" / "ai_decisions.db", seed=5)
    make_newer(prod.path, what)
    before = digest(prod.path)
    project = make_stage_project(tmp_path, recovered, real_db=prod.path)
    monkeypatch.setattr(cli, "load_project", lambda name, root=None: project)
    code, err = one_line_cli(capsys, project, "merge", "p")
    name, says = NEWER[what]
    assert (code, len(err.strip().splitlines())) == (2, 1), err
    assert name in err and says in err and "nothing was written" in err, err
    assert digest(prod.path) == before
    assert sorted(p.name for p in prod.path.parent.iterdir()) == ["ai_decisions.db"]
    for out in ("merge_plan", "merge_issues"):  # no half of a merge for dvc to cache
        assert not project.output(out).exists()
    assert not (project.out_dir / "ai_decisions.db").exists()
    assert not list(project.out_dir.glob("*.tmp*"))


@pytest.mark.parametrize("what", sorted(NEWER))
def test_a_db_a_newer_app_changed_after_the_merge_is_refused_at_publish(planned, what,
                                                                        capsys, monkeypatch):
    from backfill import cli

    project, db = planned
    make_newer(db, what)
    before = digest(db)
    monkeypatch.setattr(cli, "load_project", lambda name, root=None: project)
    code, err = one_line_cli(capsys, project, "publish", "p")
    name, says = NEWER[what]
    assert (code, len(err.strip().splitlines())) == (2, 1), err
    assert name in err and says in err and "nothing was written" in err, err
    assert "dvc repro" not in err  # re-planning would meet the same DB
    assert digest(db) == before
    assert sorted(p.name for p in db.parent.iterdir()) == ["ai_decisions.db"]  # no backup


def test_only_what_refuses_this_tools_writes_is_named(tmp_path):
    from backfill.db.schema import Blocker, write_blockers
    from backfill.production.apply import refuse_blocked

    conn = sqlite3.connect(tmp_path / "d.db")
    create(conn)
    sql = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'ai_decisions'").fetchone()[0]
    conn.execute("DROP TABLE ai_decisions")
    conn.execute(sql.replace("crop_match BOOLEAN,", "crop_match BOOLEAN, reviewer TEXT NOT NULL,"
                             " rank INTEGER NOT NULL DEFAULT 0, note TEXT,", 1))
    conn.executescript("""
        CREATE TRIGGER audit AFTER INSERT ON ai_decisions
            BEGIN INSERT INTO backfill_provenance (group_id, source) VALUES (new.group_id, 'x');
            END;
        CREATE TRIGGER no_delete BEFORE DELETE ON ai_decisions BEGIN SELECT RAISE(ABORT, 'no');
            END;
        CREATE TRIGGER IF NOT EXISTS "insert guard"
            before update of user_action
            on ai_decisions when new.user_action = 'crop' begin select raise ( ignore ); end;
    """)
    found = write_blockers(conn)
    conn.close()
    assert found == [Blocker("INSERT", "column", "reviewer"),
                     Blocker("UPDATE", "trigger", "insert guard")]
    fills = pd.DataFrame({"group_id": ["g"], "column": ["crop_match"], "old": ["null"],
                          "new": ["true"], "rule": ["recomputed"]})
    adds = fills.assign(column="*", rule="added")
    refuse_blocked(found[:1], fills, tmp_path / "d.db")  # no new row: the column is no bar
    refuse_blocked(found[1:], adds, tmp_path / "d.db")  # no update: nor is that trigger
    with pytest.raises(UserError, match="column reviewer .* trigger insert guard refuses "
                                          "updates"):
        refuse_blocked(found, pd.concat([fills, adds]), tmp_path / "d.db")
