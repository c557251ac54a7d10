"""One project's trouble costs only itself: commands that read (summary, report, query,
project list) work for every project whose own config is valid, and SIGTERM stops a
command as Ctrl-C does. In-process (`backfill.cli.main`), so they run in seconds."""

import os
import signal

import pytest

from backfill import cli
from backfill.demo.synthetic import make_project
from backfill.projects.registry import add_project


@pytest.fixture
def two(repo_copy, tmp_path, monkeypatch):
    """alpha and beta registered (alpha scanned), then beta's config broken by hand."""
    from backfill.config.project import load_project
    from backfill.stages import scan

    for name, seed in (("alpha", 1), ("beta", 2)):
        gen = make_project(tmp_path / name, n_groups=2, seed=seed, scale=0.05, variants=False,
                           bad_files=False, companions=False)
        add_project(repo_copy, name, str(gen.original_dir), str(gen.final_dir))
    scan.run(load_project("alpha", repo_copy))
    monkeypatch.chdir(repo_copy)
    return repo_copy


BROKEN = {
    "not YAML": "group:\n  lookahead: [25\n",
    "a wrong setting": "group:\n  lookahead: -3\n",
}


@pytest.mark.parametrize("kind", list(BROKEN))
def test_a_broken_project_config_does_not_stop_reading_another(two, capsys, kind):
    conf = two / "conf" / "project" / "beta.yaml"
    conf.write_text(conf.read_text() + BROKEN[kind])

    assert cli.main(["summary", "alpha", "--detail"]) == 0
    assert "== alpha ==" in capsys.readouterr().out
    assert cli.main(["query", "alpha", "SELECT count(*) AS n FROM scan", "--csv"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] != "0"

    # Every project: alpha printed, beta one line naming what to fix, exit 2.
    assert cli.main(["summary"]) == 2
    out, err = capsys.readouterr()
    assert "\nalpha " in out and "beta" not in out  # the table: alpha's row only
    assert len(err.strip().splitlines()) == 1, err
    assert "project 'beta' skipped" in err
    assert ("conf/project/beta.yaml" if kind == "not YAML" else "projects.beta.group") in err
    assert cli.main(["project", "list"]) == 2
    assert "alpha: original=" in capsys.readouterr().out

    # The broken project itself: its own error, exit 2.
    assert cli.main(["summary", "beta"]) == 2
    assert "beta" in capsys.readouterr().err


def test_a_stage_still_refuses_while_any_config_is_broken(two, capsys):
    # Stages write: they run only on a params.yaml that is today's whole composition.
    conf = two / "conf" / "project" / "beta.yaml"
    conf.write_text(conf.read_text() + BROKEN["not YAML"])
    assert cli.main(["group", "alpha"]) == 2
    assert "conf/project/beta.yaml is not valid YAML" in capsys.readouterr().err


def test_sigterm_stops_a_command_as_ctrl_c_does(two, capsys, monkeypatch):
    def killed(rows):
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("SIGTERM did not stop the command")

    monkeypatch.setattr("backfill.reports.summary.table", killed)
    before = signal.getsignal(signal.SIGTERM)
    assert cli.main(["summary"]) == 143
    assert capsys.readouterr().err.strip() == "backfill: terminated"
    assert signal.getsignal(signal.SIGTERM) is before  # the process's own handler is back

    def interrupted(rows):
        raise KeyboardInterrupt

    monkeypatch.setattr("backfill.reports.summary.table", interrupted)
    assert cli.main(["summary"]) == 130
    assert capsys.readouterr().err.strip() == "backfill: interrupted"
