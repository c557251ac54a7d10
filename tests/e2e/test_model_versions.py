"""Model versions are incremental: each project's predict depends on its own version's
files only, and `backfill train --stage` adds its stage without touching the rest of
dvc.yaml."""

import difflib
import json
import re

import pytest
import yaml

from backfill.demo.synthetic import make_project
from tests.conftest import run

pytestmark = pytest.mark.slow

ALWAYS = ("watch",)  # the always-run stage (see tests/e2e/test_pipeline.py)


def changed(repo) -> set[str]:
    """Stages `dvc status` finds changed, the always-run ones aside."""
    out = run(["dvc", "status", "--json"], repo).stdout
    return {s for s in json.loads(out or "{}") if not s.startswith(ALWAYS)}


def ran(out: str) -> set[str]:
    return {s for s in re.findall(r"Running stage '([\w@-]+)'", out) if not s.startswith(ALWAYS)}


def use_version(repo, project: str, version: str) -> None:
    conf = repo / "conf" / "project" / f"{project}.yaml"
    conf.write_text(re.sub(r"/model@model: \S+", f"/model@model: {version}", conf.read_text()))
    run(["backfill", "compose"], repo)


def train_stage(repo, name: str, *args: str) -> list[str]:
    """`backfill train NAME --stage ...`; the lines of dvc.yaml it removed or changed."""
    before = (repo / "dvc.yaml").read_text().splitlines()
    out = run(["backfill", "train", name, "--stage", *args], repo).stdout
    assert f"added stage train-{name}" in out
    after = (repo / "dvc.yaml").read_text().splitlines()
    return [line for line in difflib.unified_diff(before, after, lineterm="", n=0)
            if line.startswith("-") and not line.startswith("---")]


@pytest.fixture
def two_projects(repo_copy, tmp_path):
    for name, seed in (("alpha", 1), ("beta", 2)):
        project = make_project(tmp_path / name, n_groups=6, seed=seed, scale=0.1)
        run(["backfill", "project", "add", name, "--original-dir", str(project.original_dir),
             "--final-dir", str(project.final_dir), "embed.pretrained=null"], repo_copy)
    return repo_copy


def test_a_model_version_reruns_only_the_predictions_that_use_it(two_projects):
    repo = two_projects
    run(["dvc", "repro"], repo)  # both projects on the baseline, which has no files
    assert changed(repo) == set()

    # A stage for version t1: dvc.yaml gains its lines and loses none.
    removed = train_stage(repo, "t1", "--projects", "alpha", "beta", "ranker.epochs=1",
                          "crop.epochs=1")
    assert removed == [], f"train --stage removed or changed {len(removed)} lines of dvc.yaml"
    stage = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]["train-t1"]
    assert "data/beta/embeddings.parquet" in stage["deps"]
    out = run(["dvc", "repro", "train-t1"], repo).stdout
    assert "Running stage 'train-t1'" in out
    # A new version is used by no project yet: no prediction is out of date.
    assert changed(repo) == set()

    use_version(repo, "beta", "t1")
    assert changed(repo) == {"predict@beta"}
    out = run(["dvc", "repro"], repo).stdout
    assert "predict@beta" in ran(out) and "predict@alpha" not in ran(out)
    dag = run(["dvc", "dag", "--dot"], repo).stdout
    assert '"train-t1" -> "predict@beta"' in dag and '"train-t1" -> "predict@alpha"' not in dag

    # Adding a second version's files touches neither project.
    assert train_stage(repo, "t2", "--projects", "alpha", "ranker.epochs=1",
                       "crop.epochs=1") == []
    run(["dvc", "repro", "train-t2"], repo)
    assert changed(repo) == set()

    # Retraining t1 (another seed) re-runs beta's predictions only.
    conf = repo / "conf" / "train" / "default.yaml"
    conf.write_text(conf.read_text().replace("seed: 0", "seed: 1"))
    run(["backfill", "compose"], repo)
    out = run(["dvc", "repro"], repo).stdout
    assert {"train-t1", "train-t2", "predict@beta"} <= ran(out)
    assert "predict@alpha" not in ran(out)
    assert changed(repo) == set()

    # Replacing a stage (--force semantics) rewrites only its own lines.
    text = (repo / "dvc.yaml").read_text()
    run(["backfill", "train", "t2", "--stage", "--projects", "beta"], repo)
    new = (repo / "dvc.yaml").read_text()
    stages = yaml.safe_load(new)["stages"]
    assert stages["train-t2"]["cmd"] == "backfill train t2 --force --projects beta"
    assert stages["train-t1"] == yaml.safe_load(text)["stages"]["train-t1"]
    assert new.split("  train-t1:")[0] == text.split("  train-t1:")[0]
