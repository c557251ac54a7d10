"""A Mac drive's copy end to end: names decomposed on disk, composed in the live DB.
`dvc repro`, `backfill publish`, `dvc repro` again: every live row matched, no image
name claimed by two rows, validate clean; the case setting re-runs only what compares."""

from __future__ import annotations

import json
import sqlite3
import unicodedata

import pytest

from backfill.db.cells import image_names
from tests.conftest import run
from tests.helpers.mac_names import mac_copied_project

pytestmark = pytest.mark.slow


def test_a_mac_drives_copy_merges_and_publishes_each_decision_once(repo_copy, tmp_path):
    gen, live = mac_copied_project(tmp_path)
    run(["backfill", "project", "add", "p", "--original-dir", str(gen.original_dir),
         "--final-dir", str(gen.final_dir), "--real-db", str(live.path),
         "embed.pretrained=null"], repo_copy)
    first = run(["dvc", "repro"], repo_copy).stdout
    summary = json.loads((repo_copy / "metrics" / "p" / "merge_summary.json").read_text())
    assert f"Added {len(gen.groups) - len(live.rows)} new records" in first, summary
    assert f"({len(live.rows)} matched)" in first
    assert "0 warning(s) on production rows" in first
    report = (repo_copy / "data" / "p" / "report.html").read_text()
    assert "rows naming images the scan did not find" not in report
    run(["backfill", "publish", "p"], repo_copy)
    with sqlite3.connect(live.path) as db:
        rows = db.execute("SELECT group_id, images FROM ai_decisions").fetchall()
    db.close()
    assert len(rows) == len(gen.groups)
    names = [unicodedata.normalize("NFC", n).lower() for _, s in rows for n in image_names(s)]
    assert len(names) == len(set(names))  # no image claimed by two rows
    again = run(["dvc", "repro"], repo_copy).stdout  # re-planned against the published DB
    assert "Added 0 new records, filled 0, corrected 0, preserved " in again
    assert f"({len(gen.groups)} matched)" in again
    assert f"validate p: 9 tables and {len(gen.groups)} DB rows pass; 0 warning(s)" in again
    assert "nothing to publish" in run(["backfill", "publish", "p"], repo_copy).stdout

    # The case setting changes what is compared, so it re-runs what compares names.
    conf = repo_copy / "conf" / "project" / "p.yaml"
    conf.write_text(conf.read_text() + "names:\n  case_sensitive: false\n")
    run(["backfill", "compose"], repo_copy)
    status = set(json.loads(run(["dvc", "status", "--json"], repo_copy).stdout or "{}"))
    assert status == {"watch", "group@p", "extract@p", "merge@p", "validate@p"}
