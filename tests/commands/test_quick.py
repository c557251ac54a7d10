"""The no-change check of the always-run stages (backfill.quick): it ends a run only when
everything the stage reads is as its last full run saw it, and its outputs are as that
run left them; anything else, or anything it cannot judge, goes to the full command."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path

import pytest
import yaml

from backfill.config.composed import COMPOSED_FROM, conf_digest
from backfill.quick import CannotTell, check_for, quick_check, walk

HOUR_NS = 3_600 * 10**9


def _params(root: Path, **changes) -> None:
    cfg = {"original_dir": "images/original", "final_dir": "images/final",
           "real_db": "live/p.db", "legacy_csv": None, "review_dir": None,
           "scan": {"future_file_time_hours": 24, "workers": 2}, **changes}
    other = {"original_dir": "elsewhere", "final_dir": "elsewhere",
             "scan": {"future_file_time_hours": 24}}
    (root / "params.yaml").write_text(yaml.safe_dump(
        {"cache_dir": "data/cache", "projects": {"p": cfg, "other": other}}))


def _compose(root: Path) -> None:
    """What `backfill compose` notes: conf/ as params.yaml was composed from it."""
    (root / COMPOSED_FROM).parent.mkdir(parents=True, exist_ok=True)
    (root / COMPOSED_FROM).write_text(json.dumps({"conf": conf_digest(root), "params": ""}))


@pytest.fixture
def repo(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "repo"
    for folder in ("conf/project", "images/original/sub", "images/final", "live",
                   "data/p", "metrics/p"):
        (root / folder).mkdir(parents=True)
    (root / "conf" / "config.yaml").write_text("defaults: []\n")
    for name in ("a_stage1.png", "sub/b_stage2.png"):
        (root / "images/original" / name).write_bytes(b"\x89PNG" + name.encode())
    (root / "images/final/a.png").write_bytes(b"\x89PNGfinal")
    sqlite3.connect(root / "live/p.db").close()
    for out in ("data/p/scan.parquet", "data/p/groups.parquet", "data/p/truth.parquet",
                "data/p/predictions.parquet", "data/p/ai_decisions.db",
                "data/p/merge_plan.parquet", "data/p/merge_issues.parquet",
                "metrics/p/merge_summary.json"):
        (root / out).write_bytes(out.encode())
    _params(root)
    _compose(root)
    monkeypatch.chdir(root)
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    monkeypatch.delenv("BACKFILL_QUICK", raising=False)
    return root


def _ran(root: Path, stage: str = "scan") -> None:
    """A full run that succeeded: it notes what it saw."""
    check_for(stage, "p", root).save(time.time_ns())


def _unchanged(root: Path, stage: str = "scan") -> bool:
    return check_for(stage, "p", root).unchanged()


def _later(path: Path) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))


def test_nothing_changed_is_told_and_every_change_is_seen(repo):
    assert not _unchanged(repo), "no full run yet"
    _ran(repo)
    assert _unchanged(repo)
    changes = [
        lambda: _later(repo / "images/original/sub/b_stage2.png"),  # re-saved
        lambda: (repo / "images/original/sub/c_stage3.png").write_bytes(b"new"),  # added
        lambda: (repo / "images/final/a.png").rename(repo / "images/final/a2.png"),
        lambda: (repo / "images/final/a2.png").unlink(),  # a final removed
        lambda: (repo / "data/p/scan.parquet").write_bytes(b"other bytes"),  # its output
        lambda: _params(repo, scan={"future_file_time_hours": 24, "workers": 3}),
        lambda: os.environ.__setitem__("BACKFILL_SOMETHING", "1"),
    ]
    try:
        for change in changes:
            change()
            assert not _unchanged(repo), change
            _ran(repo)
            assert _unchanged(repo)
    finally:
        os.environ.pop("BACKFILL_SOMETHING", None)


def test_outputs_moved_into_dvcs_cache_and_copied_back_are_the_same(repo):
    """After a run DVC moves each output into its cache and copies it back: another
    inode and time, the same bytes."""
    _ran(repo)
    _ran(repo, "merge")
    for out in ("data/p/scan.parquet", "data/p/ai_decisions.db"):
        data = (repo / out).read_bytes()
        (repo / out).unlink()
        (repo / out).write_bytes(data)
    assert _unchanged(repo) and _unchanged(repo, "merge")


def test_another_projects_settings_change_nothing(repo):
    _ran(repo)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["projects"]["other"]["final_dir"] = "moved"
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    assert _unchanged(repo)


def test_a_stale_params_yaml_goes_to_the_full_command(repo, monkeypatch):
    """conf/ edited without `backfill compose`: only the full command can say so."""
    _ran(repo)
    (repo / "conf/project/p.yaml").write_text("extract: {}\n")
    with pytest.raises(CannotTell):
        check_for("scan", "p", repo)
    assert quick_check(["scan", "p"]) is None
    monkeypatch.setenv("DVC_EXP_NAME", "exp-1")  # inside `dvc exp run`: params.yaml holds
    assert _unchanged(repo)


def test_a_file_time_ahead_of_the_clock_is_judged_again_every_run(repo):
    """Scan warns of a file time over future_file_time_hours ahead: later, the clock
    catches up and the warning goes, so such a run never stands for the next."""
    ahead = time.time_ns() + 48 * HOUR_NS
    os.utime(repo / "images/final/a.png", ns=(ahead, ahead))
    _ran(repo)
    assert not _unchanged(repo)
    _ran(repo, "merge")
    assert not _unchanged(repo, "merge"), "merge judges render times too"


def test_merge_sees_the_db_its_journal_and_its_tables(repo):
    _ran(repo)
    _ran(repo, "merge")
    assert _unchanged(repo, "merge")
    (repo / "live/p.db-wal").write_bytes(b"a write not yet checkpointed")
    assert not _unchanged(repo, "merge")
    _ran(repo, "merge")
    with sqlite3.connect(repo / "live/p.db") as conn:
        conn.execute("CREATE TABLE t (x)")
    conn.close()
    assert not _unchanged(repo, "merge")
    _ran(repo, "merge")
    (repo / "data/p/truth.parquet").write_bytes(b"new truth")
    assert not _unchanged(repo, "merge")
    _ran(repo, "merge")
    (repo / "data/p/scan.parquet").write_bytes(b"a new scan")
    assert not _unchanged(repo, "merge"), "a table it reads changed"
    _ran(repo, "merge")
    assert not _unchanged(repo, "merge"), "scan's note no longer describes its table"
    _ran(repo)
    assert _unchanged(repo, "merge")


def test_odd_folders_are_listed_or_left_to_the_full_command(repo, tmp_path):
    folder = repo / "images/original"
    (folder / "broken.png").symlink_to(tmp_path / "nowhere.png")
    os.mkfifo(folder / "pipe.png")  # listed, never opened
    (folder / os.fsdecode(b"caf\xe9.png")).write_bytes(b"latin-1 name")
    first = walk(folder)
    assert walk(folder) == first and first.entries == 6
    (tmp_path / "nowhere.png").write_bytes(b"now it exists")
    assert walk(folder).digest != first.digest, "a broken link mended"
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / "loop").symlink_to(folder, target_is_directory=True)  # back: cut, as scan does
    (folder / "elsewhere").symlink_to(linked, target_is_directory=True)
    before = walk(folder)
    (linked / "x_stage1.png").write_bytes(b"in a linked folder")
    assert walk(folder).digest != before.digest, "scan follows linked folders"
    assert walk(folder, follow_links=False).entries == 7, "...unless told not to"
    with pytest.raises(CannotTell):
        walk(repo / "not-mounted")


@pytest.mark.parametrize("argv", [["group", "p"], ["scan", "--help"], ["scan"],
                                  ["scan", "p", "x"], ["scan", "nobody"]])
def test_other_commands_go_to_the_full_command(repo, argv):
    assert quick_check(argv) is None


def test_turned_off_by_backfill_quick_0(repo, monkeypatch):
    _ran(repo)
    assert quick_check(["scan", "p"]).unchanged()
    monkeypatch.setenv("BACKFILL_QUICK", "0")
    assert quick_check(["scan", "p"]) is None
