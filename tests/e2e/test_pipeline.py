"""End to end: `backfill project add` + `dvc repro` in a throwaway copy of the repo."""

import json
import os
import re
import shutil

import pandas as pd
import pytest
import yaml

from backfill.demo.production import make_production_db
from backfill.demo.synthetic import make_project
from tests.conftest import add_renders, run

pytestmark = pytest.mark.slow


def stages_in_status(repo) -> set[str]:
    out = run(["dvc", "status", "--json"], repo).stdout
    return set(json.loads(out or "{}"))


# The stage that runs on every `dvc repro`: watch, which stamps what changed outside the
# repository (the image folders, production) and rewrites a stamp only when it did.
ALWAYS = ("watch",)
ALWAYS_CHANGED = {"watch"}


def ran(out: str) -> list[str]:
    """Stages a `dvc repro` ran, the ALWAYS ones aside."""
    return [s for s in re.findall(r"Running stage '([\w@-]+)'", out) if not s.startswith(ALWAYS)]


@pytest.fixture
def two_projects(repo_copy, tmp_path):
    truths = {}
    for name, seed in (("alpha", 1), ("beta", 2)):
        project = make_project(tmp_path / name, n_groups=8, seed=seed, scale=0.1)
        # alpha has a partial production DB; beta has none.
        live = ([] if name == "beta" else ["--real-db", str(make_production_db(
            project, tmp_path / "live" / f"{name}.db", seed=seed).path)])
        # Random CLIP weights: the whole pipeline runs offline.
        run(["backfill", "project", "add", name, "--original-dir", str(project.original_dir),
             "--final-dir", str(project.final_dir), *live, "embed.pretrained=null"], repo_copy)
        truths[name] = project
    return repo_copy, truths


def test_repro_builds_projects_and_reruns_only_what_a_change_touches(two_projects):
    repo, truths = two_projects
    live = repo.parent / "live" / "alpha.db"
    before = live.read_bytes()
    first = run(["dvc", "repro"], repo).stdout
    assert first.count("Running stage") == 15  # watch, then 7 stages for each project
    assert live.read_bytes() == before  # `dvc repro` never writes production
    assert "merge alpha: Added " in first and "merge beta: Added 8 new records" in first
    assert "validate alpha: 9 tables and 8 DB rows pass" in first
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], repo).stdout)
    assert '"db_rows": 8' in json.dumps(shown).replace(" ", "").replace(":", ": ")
    plots = run(["dvc", "plots", "show", "--json"], repo).stdout
    assert "metrics/alpha/plots/iou.csv" in plots and "metrics/beta/plots/picks.csv" in plots
    assert "model ViT-B-32/random-seed0" in first and "model version 'baseline'" in first
    # Two accuracies, each labelled for what it scores: today's version, or the DB's record.
    assert "'baseline', scored against the recovered decisions: selection" in first
    said = run(["backfill", "report", "alpha"], repo).stdout
    assert "as ai_decisions.db records it (each decision's AI pick as logged" in said
    html = (repo / "data" / "alpha" / "report.html").read_text()
    assert "model version baseline, scored against the recovered decisions" in html
    for name, project in truths.items():
        truth = pd.read_parquet(repo / "data" / name / "truth.parquet").set_index("group_id")
        for g in project.groups:
            row = truth.loc[f"{name}_group_{g.first_timestamp}"]
            assert row.user_action == g.action
            assert (pd.isna(row.user_selected_index) if g.kept_index is None
                    else row.user_selected_index == g.kept_index)
        groups = pd.read_parquet(repo / "data" / name / "groups.parquet")
        truth = {tuple(g.rel_paths) for g in project.groups}
        assert {tuple(p) for p in groups.image_paths} == truth
        ungrouped = pd.read_parquet(repo / "data" / name / "ungrouped.parquet")
        assert set(project.bad_files) <= set(ungrouped.rel_path)

    second = run(["dvc", "repro"], repo).stdout
    assert ran(second) == []
    # Only watch ran: it found nothing changed outside, so nothing after it did.
    assert "Running stage 'watch'" in second
    assert "nothing changed outside the repository" in second
    for stage in ("scan", "group", "extract", "embed", "merge"):
        assert f"Stage '{stage}@alpha' didn't change, skipping" in second
    assert stages_in_status(repo) == ALWAYS_CHANGED

    # One project's group setting changes: only its group stage is out of date.
    conf = repo / "conf" / "project" / "alpha.yaml"
    conf.write_text(conf.read_text() + "group:\n  lookahead: 10\n")
    run(["backfill", "compose"], repo)
    assert stages_in_status(repo) - ALWAYS_CHANGED == {"group@alpha"}
    third = run(["dvc", "repro"], repo).stdout
    # The same groups come out byte for byte, so extract is not run again.
    assert ran(third) == ["group@alpha"]

    # A labelling tolerance re-labels one project without matching any image again (and
    # re-measures its predictions only if a label changed).
    conf.write_text(conf.read_text() + "extract:\n  approve_tolerance: 0.05\n")
    run(["backfill", "compose"], repo)
    # validate checks approve rows against the same tolerance
    assert stages_in_status(repo) - ALWAYS_CHANGED == {"extract@alpha", "validate@alpha"}
    fourth = run(["dvc", "repro"], repo).stdout
    assert "Running stage 'extract@alpha'" in fourth and "pairs: 0 matched" in fourth
    assert not {"group", "embed"} & set(re.findall(r"Running stage '(\w+)@", fourth))


def test_new_renders_are_the_only_ones_embedded_and_a_trained_version_runs_by_exp(
        two_projects):
    repo, projects = two_projects
    run(["dvc", "repro"], repo)
    alpha = projects["alpha"].original_dir
    add_renders(alpha / "new", "20991231_2359")
    out = run(["dvc", "repro"], repo).stdout
    assert "3 embedded" in out and "Running stage 'embed@beta'" not in out

    run(["backfill", "train", "t1", "--projects", "alpha", "beta", "ranker.epochs=2",
         "crop.epochs=2"], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "trained t1"], repo)
    out = run(["dvc", "exp", "run", "-S", "model@projects.alpha.model=t1"], repo).stdout
    assert "Running stage 'predict@alpha'" in out and "Running stage 'embed" not in out
    metrics = json.loads((repo / "metrics" / "alpha" / "model_metrics.json").read_text())
    assert metrics["model_version"] == "t1"
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], repo).stdout)
    assert "t1" in json.dumps(shown)


def test_a_stage_refuses_stale_params_and_says_what_to_run(two_projects):
    repo, _ = two_projects
    conf = repo / "conf" / "pipeline" / "default.yaml"
    conf.write_text(conf.read_text().replace("lookahead: 50", "lookahead: 40"))
    proc = run(["backfill", "scan", "alpha"], repo, check=False)
    assert proc.returncode == 2
    assert "params.yaml is stale" in proc.stderr and "backfill compose" in proc.stderr


def test_a_missing_folder_is_a_clear_error(two_projects, tmp_path):
    repo, truths = two_projects
    shutil.rmtree(truths["beta"].final_dir)
    proc = run(["backfill", "scan", "beta"], repo, check=False)
    assert proc.returncode == 2
    assert f"final_dir {truths['beta'].final_dir} is missing: is the drive mounted?" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_dvc_exp_run_composes_through_hydra_and_reruns_only_group(two_projects):
    repo, _ = two_projects
    run(["dvc", "repro"], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "baseline"], repo)
    out = run(["dvc", "exp", "run", "-S", "projects.alpha.group.lookahead=10"], repo).stdout
    assert ran(out) == ["group@alpha"]
    params = (repo / "params.yaml").read_text()
    assert "lookahead: 10" in params
    # The stage trusts params.yaml written by DVC's own composition.
    run(["backfill", "group", "alpha"], repo)


def test_train_as_a_dvc_stage_has_exact_deps(two_projects):
    repo, _ = two_projects
    out = run(["backfill", "train", "v9", "--projects", "alpha", "--stage",
               "ranker.epochs=3"], repo).stdout
    assert "added stage train-v9" in out
    stage = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]["train-v9"]
    assert "data/alpha/truth.parquet" in stage["deps"]
    assert "data/beta/truth.parquet" not in stage["deps"]
    assert stage["cmd"] == "backfill train v9 --force --projects alpha ranker.epochs=3"
    assert stage["params"] == ["train"]
    # Each project's predictions depend on its own version's folder: none uses v9 yet.
    dag = run(["dvc", "dag", "--dot"], repo).stdout
    assert '"train-v9"' in dag and '"train-v9" -> "predict@' not in dag, dag


def test_dvc_never_reads_the_image_folders_so_odd_entries_cannot_stop_it(two_projects):
    # DVC could not hash these (and would block on the FIFO): only scan meets them now.
    repo, projects = two_projects
    folder = projects["alpha"].original_dir
    os.symlink(folder / "gone.png", folder / "20300101_000000_stage1.png")
    os.symlink("20300101_000100_stage1.png", folder / "20300101_000100_stage1.png")
    os.mkfifo(folder / "20300101_000200_stage1.png")
    (folder / os.fsdecode(b"20300101_000300_stage1_\xff.png")).write_bytes(b"")
    out = run(["timeout", "300", "dvc", "repro", "group@alpha"], repo).stdout
    assert "Running stage 'group@alpha'" in out
    scan = pd.read_parquet(repo / "data" / "alpha" / "scan.parquet").set_index("rel_path")
    odd = scan[scan.index.str.startswith("20300101_")]
    assert len(odd) == 4 and (odd.status == "error").all()
    renders = [p for g in projects["alpha"].groups for p in g.rel_paths]
    assert (scan.loc[renders, "status"] == "ok").all()
