"""The README's quickstart, pasted as a user would: every shell block marked
``<!-- quickstart -->`` runs, in order, in one bash session in a scratch repository, on
a generated project with a partial production DB. Only the lines that set the user's
own paths (ORIGINALS, FINALS, LIVE_DB) and SETTINGS (offline: random CLIP weights) are
replaced; every command runs as written."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess

import pytest

from backfill.demo.production import make_production_db
from backfill.demo.synthetic import make_project
from tests.conftest import BIN, REPO

pytestmark = pytest.mark.slow

MARK = "<!-- quickstart -->"
SET_BY_TEST = ("ORIGINALS", "FINALS", "LIVE_DB", "SETTINGS")


def quickstart_blocks(text: str) -> list[str]:
    """The bash blocks right after each quickstart mark, in order."""
    return re.findall(rf"{re.escape(MARK)}\n```bash\n(.*?)```", text, flags=re.S)


def test_the_readme_marks_its_quickstart_blocks():
    blocks = quickstart_blocks((REPO / "README.md").read_text())
    assert len(blocks) >= 2
    script = "\n".join(blocks)
    for command in ("backfill project add", "dvc repro", "backfill summary",
                    "backfill report", "backfill publish", "backfill export"):
        assert command in script, command
    assert "<" not in script.replace("<<", ""), "a placeholder the user must fill in"


def test_the_quickstart_runs_as_pasted_from_add_to_export(repo_copy, tmp_path):
    gen = make_project(tmp_path / "mojo3", n_groups=6, seed=11, scale=0.05)
    live = make_production_db(gen, tmp_path / "live" / "mojo3.db", seed=11)
    given = {"ORIGINALS": gen.original_dir, "FINALS": gen.final_dir, "LIVE_DB": live.path,
             "SETTINGS": "embed.pretrained=null"}
    lines = []
    for block in quickstart_blocks((REPO / "README.md").read_text()):
        for line in block.splitlines():
            name = line.split("=", 1)[0]
            if name in SET_BY_TEST:
                line = f'{name}="{given[name]}"'
            lines.append(line)
    script = "set -euo pipefail\n" + "\n".join(lines) + "\n"
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run(["bash", "-c", script], cwd=repo_copy, env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, f"{script}\n{proc.stdout}\n{proc.stderr}"
    out = proc.stdout
    assert "merge mojo3: " in out and "published mojo3: backed up" in out
    assert (repo_copy / "data" / "mojo3" / "report.html").is_file()
    assert list(live.path.parent.glob("mojo3.db.backup-*")), "publish backs up first"
    with sqlite3.connect(live.path) as db:
        rows = db.execute("SELECT COUNT(*) FROM ai_decisions").fetchone()[0]
    db.close()
    assert rows == len(gen.groups)
    exported = (repo_copy / "data" / "export" / "mojo3.jsonl").read_text().splitlines()
    assert {json.loads(e)["project"] for e in exported} == {"mojo3"}
