"""Experiments and history the DVC way: metrics and plots live in metrics/<project>/,
committed to git, so every commit and experiment holds them. `dvc exp show` compares
the baseline with each `dvc exp run -S` experiment, and `dvc metrics diff` compares two
commits, on a fresh clone too."""

from __future__ import annotations

import json
import shutil

import pytest

from backfill.demo.synthetic import make_project
from tests.conftest import REPO, run

pytestmark = pytest.mark.slow

METRICS = "metrics/p/metrics.json"
SETTING = "projects.p.extract.approve_tolerance"  # a crop within it is labelled approve


def exp_metrics(shown: list[dict]) -> dict[str, dict]:
    """{baseline commit or experiment name: {metrics file: figures or error}} from
    `dvc exp show --json`."""
    out = {}
    for row in shown:
        if row["rev"] == "workspace":
            continue
        out["baseline"] = row["data"]["metrics"]
        for exp in row.get("experiments") or []:
            for rev in exp["revs"]:
                out[rev["name"]] = rev["data"]["metrics"]
    return out


# The first look at experiments: each one's name and the model's figures, no settings.
SHOW = ["dvc", "exp", "show", "--no-pager", "--drop", ".*", "--keep",
        "Experiment|Created|model_version|.*(selection|anomaly|crop)_accuracy|.*mean_iou"]


def test_exp_show_and_metrics_diff_compare_experiments_and_commits(repo_copy, tmp_path,
                                                                    monkeypatch):
    # The repository's own .gitignore: data/ is ignored there, as in a real checkout.
    shutil.copy2(REPO / ".gitignore", repo_copy / ".gitignore")
    gen = make_project(tmp_path / "p", n_groups=8, seed=1, scale=0.05)
    run(["backfill", "project", "add", "p", "--original-dir", str(gen.original_dir),
         "--final-dir", str(gen.final_dir), "embed.pretrained=null"], repo_copy)
    run(["dvc", "repro"], repo_copy)
    assert run(["git", "check-ignore", "-q", METRICS], repo_copy, check=False).returncode == 1
    run(["git", "add", "-A"], repo_copy)
    run(["git", "commit", "-qm", "project p"], repo_copy)
    assert METRICS in run(["git", "ls-files", "metrics"], repo_copy).stdout

    for name, value in (("tight", 0.0), ("loose", 0.5)):
        run(["dvc", "exp", "run", "-n", name, "-S", f"{SETTING}={value}"], repo_copy)
    shown = exp_metrics(json.loads(run(["dvc", "exp", "show", "--json"], repo_copy).stdout))
    assert set(shown) == {"baseline", "tight", "loose"}
    figures = {}
    for rev, files in shown.items():
        errors = {f: m["error"] for f, m in files.items() if "error" in m}
        assert not errors, (rev, errors)
        assert set(files) == {METRICS, "metrics/p/model_metrics.json",
                              "metrics/p/merge_summary.json"}
        figures[rev] = files[METRICS]["data"]
        assert isinstance(figures[rev]["groups"], int) and figures[rev]["groups"] == 8
        assert isinstance(figures[rev]["approve"], int)
    # A looser tolerance labels more crops approve (0.02 by default): the experiments
    # differ from the baseline and from each other.
    approved = {rev: f["approve"] for rev, f in figures.items()}
    assert approved["tight"] <= approved["baseline"] < approved["loose"], approved
    assert figures["loose"]["crop"] < figures["baseline"]["crop"], figures

    # The first look fits a 120-column terminal, every figure shown in full.
    monkeypatch.setenv("COLUMNS", "120")
    table = run(SHOW, repo_copy).stdout
    assert max(map(len, table.splitlines())) <= 120 and "…" not in table, table
    header = table.splitlines()[1].split()
    assert header == ["Experiment", "Created", "anomaly_accuracy", "crop_accuracy",
                      "mean_iou", "model_version", "selection_accuracy"], table
    assert "[tight]" in table and "[loose]" in table

    # Keep the loose one as a commit; a fresh clone compares the two commits.
    run(["dvc", "exp", "apply", "loose"], repo_copy)
    run(["git", "add", "-A"], repo_copy)
    run(["git", "commit", "-qm", "approve_tolerance 0.5"], repo_copy)
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(repo_copy), str(clone)], tmp_path)
    diff = json.loads(run(["dvc", "metrics", "diff", "HEAD~1", "HEAD", "--json"],
                          clone).stdout)
    assert diff[METRICS]["approve"] == {"old": approved["baseline"],
                                        "new": approved["loose"],
                                        "diff": approved["loose"] - approved["baseline"]}
    plots = run(["dvc", "plots", "diff", "HEAD~1", "--json"], clone).stdout
    assert "metrics/p/plots/iou.csv" in plots and "Error" not in plots, plots[:2000]
