"""An unmounted drive costs its own project only: `dvc repro --keep-going` builds the
others, and the missing project's tables stay as they were."""

import hashlib
import re

import pandas as pd
import pytest

from backfill.demo.synthetic import make_project
from tests.conftest import add_renders, run

pytestmark = pytest.mark.slow


def digests(folder) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.glob("*.parquet"))}


def test_a_missing_drive_stops_only_its_project_and_keeps_its_tables(repo_copy, tmp_path):
    projects = {}
    for name, seed in (("alpha", 1), ("beta", 2)):
        projects[name] = make_project(tmp_path / name, n_groups=4, seed=seed, scale=0.05,
                                      variants=False)
        run(["backfill", "project", "add", name, "--original-dir",
             str(projects[name].original_dir), "--final-dir", str(projects[name].final_dir),
             "embed.pretrained=null"], repo_copy)
    run(["dvc", "repro"], repo_copy)
    alpha = repo_copy / "data" / "alpha"
    before = digests(alpha)
    assert "scan.parquet" in before and "truth.parquet" in before

    # alpha's drive is unplugged; beta gets new renders.
    original = projects["alpha"].original_dir
    original.rename(original.with_name("unplugged"))
    add_renders(projects["beta"].original_dir / "new", "20991231_2359")
    proc = run(["dvc", "repro", "--keep-going"], repo_copy, check=False)
    out = proc.stdout + proc.stderr

    assert proc.returncode != 0
    # alpha: every table as it was, scan.parquet included.
    assert digests(alpha) == before
    said = [line for line in out.splitlines() if "is missing" in line]
    assert len(said) == 1, out
    assert f"original_dir {original} is missing: is the drive mounted?" in said[0]
    assert "Traceback" not in out
    # beta: built on, its new renders scanned and grouped.
    assert re.search(r"Running stage 'group@beta'", out)
    scan = pd.read_parquet(repo_copy / "data" / "beta" / "scan.parquet")
    assert scan.rel_path.str.startswith("new/").sum() == 3
