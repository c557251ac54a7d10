"""The everyday cycle, end to end with DVC (issue 12, item 1): repro -> publish, three
times over, on a project with a partial production DB. Every repro is green; the first
publish writes, the others find nothing to publish; production then holds each group
once; a repro with nothing changed runs only the watch stage."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import pytest

from backfill.demo.production import make_production_db
from backfill.demo.synthetic import make_project
from tests.conftest import run

pytestmark = pytest.mark.slow


def test_repro_publish_three_times_over_is_green_and_then_changes_nothing(repo_copy,
                                                                          tmp_path):
    project = make_project(tmp_path / "cyc", n_groups=6, seed=7, scale=0.05)
    live = make_production_db(project, tmp_path / "live" / "cyc.db", seed=7)
    run(["backfill", "project", "add", "cyc", "--original-dir", str(project.original_dir),
         "--final-dir", str(project.final_dir), "--real-db", str(live.path),
         "embed.pretrained=null"], repo_copy)
    published, ran = [], []
    for _ in range(3):
        out = run(["dvc", "repro"], repo_copy).stdout  # raises unless green
        ran.append(re.findall(r"Running stage '([\w@-]+)'", out))
        published.append(run(["backfill", "publish", "cyc"], repo_copy).stdout)
        assert "dry run" in run(["backfill", "publish", "cyc", "--dry-run"], repo_copy).stdout
    # The first publish wrote production, so the second repro merged again; the second
    # publish found nothing to write, so the third repro ran only the watch stage.
    assert "merge@cyc" in ran[0] and "merge@cyc" in ran[1]
    assert ran[2] == ["watch"], ran[2]
    assert published[0].startswith("published cyc: backed up")
    for later in published[1:]:
        assert later.startswith("nothing to publish"), later
    assert len(list(live.path.parent.glob("cyc.db.backup-*"))) == 1
    with sqlite3.connect(live.path) as conn:
        rows = conn.execute("SELECT group_id, images FROM ai_decisions").fetchall()
    conn.close()
    assert len(rows) == len(project.groups)
    for g in project.groups:  # no group twice
        names = {Path(p).name for p in g.rel_paths}
        holders = [gid for gid, images in rows if names & set(json.loads(images))]
        assert len(holders) == 1, (g.first_timestamp, holders)
