"""End to end on a drive as it is found: every odd entry kind among a project's renders,
unreadable kept finals, and a production DB. `dvc repro` is green, every normal file is
`ok`, every odd one is recorded with its reason; the groups whose kept image cannot be
read are reported, never written, and recovered once the file is fixed."""

import json
import re
import sqlite3

import pandas as pd
import pytest

from backfill.demo.production import make_production_db
from backfill.demo.synthetic import make_project
from tests.conftest import run
from tests.helpers.odd_files import EXPECTED, add_odd, readable_as_root

pytestmark = [pytest.mark.slow,
              pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")]


def test_a_project_holding_every_odd_entry_builds_green_and_recovers_fixed_finals(
        repo_copy, tmp_path):
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("1", (30000, 30000)).save(buf, format="PNG")
    bomb = buf.getvalue()
    gen = make_project(tmp_path / "p", n_groups=14, seed=21, scale=0.06, variants=False)
    live = make_production_db(gen, tmp_path / "live" / "p.db", seed=21).path
    folder = gen.original_dir / "batch_00"
    odd = {}
    for i, kind in enumerate(EXPECTED):
        rel = add_odd(kind, folder, i, bomb)
        if rel is not None and kind != "unlistable folder":
            odd[f"batch_00/{rel}"] = kind
    for locked in folder.glob("locked*"):  # dvc and git must be able to clean up
        if not readable_as_root(locked):
            pytest.skip("an unlistable folder is covered by test_hostile_files")
    # Three kept finals become unreadable: emptied, cut short, replaced by a bomb.
    kept = [g for g in gen.groups if g.final_rel_path][:3]
    originals = {}
    for g, bad in zip(kept, (b"", None, bomb), strict=True):
        path = gen.final_dir / g.final_rel_path
        originals[g.first_timestamp] = path.read_bytes()
        path.write_bytes(originals[g.first_timestamp][:200] if bad is None else bad)
    unreadable = {f"p_group_{g.first_timestamp}" for g in kept}

    run(["backfill", "project", "add", "p", "--original-dir", str(gen.original_dir),
         "--final-dir", str(gen.final_dir), "--real-db", str(live),
         "embed.pretrained=null"], repo_copy)
    out = run(["dvc", "repro"], repo_copy).stdout
    assert "validate p:" in out
    data = repo_copy / "data" / "p"

    scan = pd.read_parquet(data / "scan.parquet")
    originals_scan = scan[scan["source"] == "original"].set_index("rel_path")
    for rel, kind in odd.items():
        status, reason = EXPECTED[kind]
        assert originals_scan.loc[rel, "status"] == status, (kind, rel)
        if reason:
            assert originals_scan.loc[rel, "reason"].startswith(reason), kind
    normal = [r for g in gen.groups for r in g.rel_paths]
    assert (originals_scan.loc[normal, "status"] == "ok").all()

    truth = pd.read_parquet(data / "truth.parquet").set_index("group_id")
    assert set(truth.index[truth["user_action"] == "unreadable"]) == unreadable
    issues = pd.read_parquet(data / "merge_issues.parquet")
    assert set(issues.loc[issues["kind"] == "final_unreadable", "group_id"]) == unreadable
    metrics = json.loads((repo_copy / "metrics" / "p" / "metrics.json").read_text())
    assert metrics["unreadable_finals"] == 3
    with sqlite3.connect(data / "ai_decisions.db") as db:
        merged = dict(db.execute("SELECT group_id, user_action FROM ai_decisions"))
    assert not (unreadable - set(_live_ids(live))) & set(merged)  # never written
    assert set(merged.values()) <= {"approve", "crop", "reject"}
    report = (data / "report.html").read_text()
    assert all(g in report for g in unreadable)
    detail = run(["backfill", "summary", "p", "-v"], repo_copy).stdout
    assert re.search(r"\n  unreadable\s+3\n", detail)

    run(["backfill", "publish", "p"], repo_copy)
    again = run(["dvc", "repro"], repo_copy).stdout
    assert "validate p:" in again or "didn't change" in again
    assert "nothing to publish" in run(["backfill", "publish", "p"], repo_copy).stdout

    # The person restores the three finals from a backup: the next run recovers them.
    for g in kept:
        (gen.final_dir / g.final_rel_path).write_bytes(originals[g.first_timestamp])
    run(["dvc", "repro"], repo_copy)
    truth = pd.read_parquet(data / "truth.parquet").set_index("group_id")
    for g in kept:
        assert truth.loc[f"p_group_{g.first_timestamp}", "user_action"] == g.action
    issues = pd.read_parquet(data / "merge_issues.parquet")
    assert "final_unreadable" not in set(issues["kind"])
    run(["backfill", "publish", "p"], repo_copy)
    with sqlite3.connect(live) as db:
        actions = dict(db.execute("SELECT group_id, user_action FROM ai_decisions"))
        assert db.execute("SELECT count(*) FROM ai_decisions").fetchone()[0] == len(gen.groups)
    for g in kept:
        assert actions[f"p_group_{g.first_timestamp}"] == g.action


def _live_ids(path) -> list[str]:
    with sqlite3.connect(path) as db:
        return [r[0] for r in db.execute("SELECT group_id FROM ai_decisions")]
