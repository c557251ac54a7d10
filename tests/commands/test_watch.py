"""The watch stage: a project's stamp changes exactly when what its scan or merge reads
from outside the repository changed, and on every run when a stat cannot judge it."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from backfill.watch import STAMPS, CannotTell, run, walk
from tests.conftest import BIN

HOUR_NS = 3_600 * 10**9


def _params(root: Path, **changes) -> None:
    cfg = {"original_dir": "images/original", "final_dir": "images/final",
           "real_db": "live/p.db", "legacy_csv": None, "review_dir": None,
           "scan": {"future_file_time_hours": 24, "follow_symlinks": True}, **changes}
    other = {"original_dir": "other/original", "final_dir": "other/final",
             "scan": {"future_file_time_hours": 24}}
    (root / "params.yaml").write_text(yaml.safe_dump(
        {"cache_dir": "data/cache", "projects": {"p": cfg, "other": other}}))


@pytest.fixture
def repo(tmp_path) -> Path:
    root = tmp_path / "repo"
    for folder in ("conf", "images/original/sub", "images/final", "live",
                   "other/original", "other/final"):
        (root / folder).mkdir(parents=True)
    (root / "conf" / "config.yaml").write_text("defaults: []\n")
    for name in ("a_stage1.png", "sub/b_stage2.png"):
        (root / "images/original" / name).write_bytes(b"\x89PNG" + name.encode())
    (root / "images/final/a.png").write_bytes(b"\x89PNGfinal")
    sqlite3.connect(root / "live/p.db").close()
    _params(root)
    return root


def _stamped(root: Path) -> dict[str, str]:
    """Each stamp's text after one run."""
    run(root)
    return {p.relative_to(root / STAMPS).as_posix(): p.read_text()
            for p in sorted((root / STAMPS).rglob("*.json"))}


def _changed(before: dict[str, str], after: dict[str, str]) -> set[str]:
    return {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}


def _later(path: Path) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))


def test_nothing_changed_rewrites_nothing(repo):
    first = _stamped(repo)
    assert set(first) == {"p/scan.json", "p/merge.json", "other/scan.json",
                          "other/merge.json"}
    times = {p: p.stat().st_mtime_ns for p in (repo / STAMPS).rglob("*.json")}
    assert _stamped(repo) == first
    assert {p: p.stat().st_mtime_ns for p in (repo / STAMPS).rglob("*.json")} == times
    assert "nothing changed outside the repository" in run(repo)


@pytest.mark.parametrize("change,stamp", [
    (lambda r: _later(r / "images/original/sub/b_stage2.png"), "p/scan.json"),  # re-saved
    (lambda r: (r / "images/original/sub/c_stage3.png").write_bytes(b"new"), "p/scan.json"),
    (lambda r: (r / "images/final/a.png").rename(r / "images/final/a2.png"), "p/scan.json"),
    (lambda r: (r / "images/final/a.png").unlink(), "p/scan.json"),
    (lambda r: (r / "live/p.db-wal").write_bytes(b"a write not checkpointed"), "p/merge.json"),
    (lambda r: sqlite3.connect(r / "live/p.db").execute("CREATE TABLE t (x)"), "p/merge.json"),
    (lambda r: _params(r, real_db="live/q.db"), "p/merge.json"),
])
def test_each_change_outside_stamps_its_own_project_and_stage(repo, change, stamp):
    before = _stamped(repo)
    change(repo)
    assert _changed(before, _stamped(repo)) == {stamp}


def test_a_file_time_ahead_of_the_clock_is_judged_in_full_every_run(repo):
    """Scan warns of a file time over future_file_time_hours ahead, merge passes over
    it: later the clock catches up, so such a project's stages run every time."""
    ahead = time.time_ns() + 48 * HOUR_NS
    os.utime(repo / "images/final/a.png", ns=(ahead, ahead))
    first = _stamped(repo)
    assert _changed(first, _stamped(repo)) == {"p/scan.json", "p/merge.json"}
    assert "run in full every time: scan@p (a file time is ahead" in run(repo)


def test_a_missing_drive_runs_in_full_so_scan_can_say_so(repo):
    first = _stamped(repo)
    (repo / "images/original").rename(repo / "unmounted")
    second = _stamped(repo)
    assert _changed(first, second) == {"p/scan.json", "p/merge.json"}
    assert _changed(second, _stamped(repo)) == {"p/scan.json", "p/merge.json"}
    (repo / "unmounted").rename(repo / "images/original")
    assert _stamped(repo) == first, "back as it was: nothing to do again"


def test_odd_folders_are_listed_without_reading(repo, tmp_path):
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


def test_the_console_script_serves_watch_without_the_heavy_libraries(repo):
    """`backfill watch` runs on every `dvc repro`: it must not load pandas and the rest."""
    code = ("import runpy, sys; sys.argv = ['backfill', 'watch']\n"
            "try:\n    runpy.run_module('backfill.entry', run_name='x')['main']()\n"
            "except SystemExit as e:\n    assert e.code == 0, e.code\n"
            "heavy = [m for m in ('pandas', 'pandera', 'torch', 'omegaconf', 'pyarrow')"
            " if m in sys.modules]\nassert not heavy, heavy")
    proc = subprocess.run([str(BIN / "python"), "-c", code], cwd=repo, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
    assert "watch: 2 project(s)" in proc.stdout
    assert (repo / STAMPS / "p" / "scan.json").is_file()


def test_a_project_no_longer_registered_loses_only_its_stamps(repo):
    _stamped(repo)
    (repo / STAMPS / "other" / "notes.txt").write_text("the user's own file")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    del params["projects"]["other"]
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    assert set(_stamped(repo)) == {"p/scan.json", "p/merge.json"}
    assert (repo / STAMPS / "other" / "notes.txt").read_text() == "the user's own file"


def test_a_stamp_that_cannot_be_written_is_one_line_not_a_traceback(repo):
    (repo / "data").mkdir()
    (repo / STAMPS).write_text("a file where the stamps' folder should be")
    code = ("import runpy, sys; sys.argv = ['backfill', 'watch']\n"
            "runpy.run_module('backfill.entry', run_name='x')['main']()")
    proc = subprocess.run([str(BIN / "python"), "-c", code], cwd=repo, capture_output=True,
                          text=True)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("backfill: error: ") and len(proc.stderr.splitlines()) == 1
