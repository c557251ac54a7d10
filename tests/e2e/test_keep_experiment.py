"""Tune, then keep, the DVC way: a new project committed as `project add` says, an
experiment whose commit holds the project's config, `dvc exp apply`, then `backfill
compose` refuses to revert it and `backfill compose --keep` writes it into conf/, after
which composing gives the experiment's params.yaml."""

from __future__ import annotations

import subprocess

import pytest
import yaml

from backfill.demo.synthetic import make_project
from tests.conftest import run

pytestmark = pytest.mark.slow


def test_an_experiment_on_a_new_project_is_reproducible_and_kept(repo_copy, tmp_path):
    repo = repo_copy
    project = make_project(tmp_path / "p", n_groups=4, seed=5, scale=0.05)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-q", "-m", "pipeline"], repo)
    out = run(["backfill", "project", "add", "p", "--original-dir", str(project.original_dir),
               "--final-dir", str(project.final_dir), "embed.pretrained=null"], repo).stdout
    line = next(x for x in out.splitlines() if "git add" in x)
    subprocess.run(line.split("track): ", 1)[1], shell=True, cwd=repo, check=True)  # as told
    assert run(["git", "status", "--porcelain", "conf", "params.yaml"], repo).stdout == ""

    run(["dvc", "exp", "run", "-n", "short", "-S", "projects.p.group.lookahead=10"], repo)
    run(["dvc", "exp", "branch", "short", "short-branch"], repo)
    # The experiment's commit holds everything the project needs to be reproduced.
    held = run(["git", "ls-tree", "-r", "--name-only", "short-branch"], repo).stdout.split()
    assert {"conf/project/p.yaml", "conf/config.yaml", "params.yaml"} <= set(held)
    exp_params = yaml.safe_load(run(["git", "show", "short-branch:params.yaml"], repo).stdout)
    assert exp_params["projects"]["p"]["group"]["lookahead"] == 10

    run(["git", "checkout", "--", "params.yaml"], repo)  # back to the baseline
    run(["dvc", "exp", "apply", "short"], repo)
    applied = (repo / "params.yaml").read_text()
    proc = run(["backfill", "compose"], repo, check=False)
    assert proc.returncode == 2
    assert "projects.p.group.lookahead: 10 (conf/ gives 50)" in proc.stderr
    assert "`backfill compose --keep`" in proc.stderr
    assert (repo / "params.yaml").read_text() == applied  # not reverted

    out = run(["backfill", "compose", "--keep"], repo).stdout
    assert "kept in conf/project/p.yaml: projects.p.group.lookahead = 10" in out
    assert "git add conf/project/p.yaml" in out
    run(["backfill", "compose"], repo)
    assert yaml.safe_load((repo / "params.yaml").read_text()) == exp_params
    assert "group@p" not in run(["dvc", "status", "group@p"], repo).stdout
