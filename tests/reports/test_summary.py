"""`backfill summary`'s one-row-per-project table and `backfill report`'s index page, on a
generated project merged against a partial production DB beside one not built yet."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest
from omegaconf import OmegaConf

from backfill.config.project import Project
from backfill.contracts.schemas import ACTIONS
from backfill.demo.production import make_production_db
from backfill.production.publish import planned_rows, run_publish
from backfill.reports.index import index_html, write_index
from backfill.reports.summary import Figures, figures, table
from tests.helpers.stage_project import make_stage_project


@pytest.fixture
def two(tmp_path, recovered) -> tuple[Project, Project]:
    """p: merged against a production DB (its plan not published yet); q: not built."""
    from backfill.stages.merge import run

    prod = make_production_db(recovered.gen, tmp_path / "live" / "ai_decisions.db", seed=5)
    p = make_stage_project(tmp_path, recovered, real_db=prod.path)
    run(p)
    q = Project("q", tmp_path, OmegaConf.merge(recovered.cfg, {"real_db": None}),
                tmp_path / "cache")
    return p, q


def _row(text: str, name: str) -> list[str]:
    """A table line's cells (the columns are separated by two spaces or more)."""
    line = next(x for x in text.splitlines() if x.startswith(f"{name} "))
    return re.split(r"\s{2,}", line.strip())


def test_one_row_per_project_with_totals(two, recovered):
    p, q = two
    plan = pd.read_parquet(p.output("merge_plan"))
    issues = json.loads(p.metrics("merge_summary.json").read_text())
    n_issues = sum(v for k, v in issues.items() if k.startswith("issues_"))
    errors = int((recovered.scan["status"] == "error").sum()) + n_issues
    actions = recovered.truth["user_action"].value_counts()
    waiting = planned_rows(plan)
    assert waiting > 0

    f = figures(p)
    assert f == Figures("p", True, len(recovered.groups),
                        tuple(int(actions.get(a, 0)) for a in ACTIONS),
                        int(recovered.truth["needs_review"].sum()), errors, waiting, True, True)
    assert figures(q) == Figures("q", built=False)

    out = table([f, figures(q)])
    lines = out.splitlines()
    assert all(len(x) <= 120 for x in lines), out
    assert _row(out, "project") == ["project", "groups", "approve/crop/reject", "needs review",
                                    "errors", "to publish"]
    expected = [f"{len(recovered.groups):,}", "/".join(f"{n:,}" for n in f.actions),
                f"{f.needs_review:,}", f"{errors:,}", f"{waiting:,}"]
    assert _row(out, "p") == ["p", *expected]
    assert _row(out, "q") == ["q", "not built yet: run `dvc repro`"]
    assert _row(out, "total") == ["total", *expected]  # q adds nothing
    # Numbers right-aligned: each ends where its header ends.
    header, row = lines[0], next(x for x in lines if x.startswith("p "))
    assert header.index("to publish") + len("to publish") == len(row.rstrip())
    assert "*" not in out
    long = table([Figures("x" * 150, True, 10**6, (10**6,) * 3, 10**6, 10**6, 10**6), f])
    assert all(len(x) <= 120 for x in long.splitlines()), long  # a long name is cut
    assert "x..." in long and "1,000,000/1,000,000/1,000,000" in long

    # Once published, the plan's rows are in the DB: the figure says the plan is stale.
    run_publish(p, dry_run=False)
    assert figures(p).current is False
    after = table([figures(p)])
    assert _row(after, "p")[-1] == f"{waiting:,}*" and "plans again" in after
    assert "total" not in after  # one project: no totals row


def test_a_project_without_production_db_has_nothing_to_publish(tmp_path, recovered):
    from backfill.stages.merge import run

    p = make_stage_project(tmp_path, recovered, real_db=None)
    run(p)
    f = figures(p)
    assert (f.has_db, f.waiting) == (False, None)
    assert _row(table([f]), "p")[-1] == "no DB"


def test_the_index_links_each_report_that_exists(two, tmp_path):
    p, q = two
    (p.out_dir / "report.html").write_text("<html></html>")
    index = write_index([p, q], tmp_path)
    assert index == tmp_path / "data" / "index.html"
    html = index.read_text()
    assert '<a href="p/report.html">p</a>' in html  # relative: the folder can move
    assert "q/report.html" not in html and "not built yet" in html
    assert "<script" not in html and "<link" not in html  # self-contained

    escaped = index_html([(Figures('<b>&"x', built=False), 'a"b/report.html')])
    assert '<b>&"x' not in escaped and "&lt;b&gt;&amp;&quot;x" in escaped
    assert 'href="a&quot;b/report.html"' in escaped


def test_the_commands_in_process(repo_copy, tmp_path, monkeypatch, capsys):
    """`backfill summary` is the table (alpha scanned only, beta not built), `--detail`
    today's full view; `backfill report` also writes data/index.html."""
    from backfill import cli
    from backfill.config.project import load_project
    from backfill.demo.synthetic import make_project
    from backfill.projects.registry import add_project
    from backfill.stages import scan

    for name, seed in (("alpha", 1), ("beta", 2)):
        gen = make_project(tmp_path / name, n_groups=2, seed=seed, scale=0.05, variants=False,
                           bad_files=False, companions=False)
        add_project(repo_copy, name, str(gen.original_dir), str(gen.final_dir))
    scan.run(load_project("alpha", repo_copy))
    monkeypatch.chdir(repo_copy)

    assert cli.main(["summary"]) == 0
    out = capsys.readouterr().out
    assert _row(out, "alpha") == ["alpha", "-", "-", "-", "0", "no DB"]  # scanned only
    assert _row(out, "beta") == ["beta", "not built yet: run `dvc repro`"]
    assert _row(out, "total")[0] == "total"
    assert cli.main(["summary", "alpha", "-v"]) == 0
    assert "== alpha ==" in capsys.readouterr().out

    assert cli.main(["report", "alpha"]) == 0
    assert "index of all projects" in capsys.readouterr().out
    html = (repo_copy / "data" / "index.html").read_text()
    assert ">alpha" in html and ">beta<" in html  # every project, even when one is named
    assert "report.html" not in html  # neither has a report yet
