"""The `backfill` command as a person uses it: messages, exit codes, summaries."""

import re

import pytest
import yaml

from backfill.demo.synthetic import make_project
from tests.conftest import run

pytestmark = pytest.mark.slow  # every test runs the CLI in a subprocess


def test_add_from_a_subfolder_scan_group_and_summarize(repo_copy, tmp_path):
    project = make_project(repo_copy / "inputs" / "p", n_groups=6, seed=5, scale=0.1)
    sub = repo_copy / "conf"
    out = run(["backfill", "project", "add", "p", "--original-dir", "../inputs/p/original",
               "--final-dir", "../inputs/p/final", "group.lookahead=20"], sub).stdout
    assert "dvc repro group@p" in out
    conf = yaml.safe_load((repo_copy / "conf" / "project" / "p.yaml").read_text())
    # Relative to where the command ran, stored relative to the repository root.
    assert conf["original_dir"] == "inputs/p/original"
    assert conf["group"] == {"lookahead": 20}
    assert "p: original=inputs/p/original" in run(["backfill", "project", "list"], repo_copy).stdout

    scan_line = run(["backfill", "scan", "p"], repo_copy).stdout
    assert re.search(r"read \d+, cached 0", scan_line)
    assert "cached 0" not in run(["backfill", "scan", "p"], repo_copy).stdout  # warm
    group_line = run(["backfill", "group", "p"], repo_copy).stdout
    assert f"group p: {len(project.groups)} groups" in group_line
    summary = run(["backfill", "summary", "p", "--detail"], repo_copy).stdout
    assert re.search(rf"groups\s+{len(project.groups)}\n", summary)
    assert "truncated" in summary and "no timestamp" in summary


def test_errors_say_what_to_do_and_exit_2(repo_copy, tmp_path):
    (tmp_path / "o").mkdir()
    (tmp_path / "f").mkdir()
    proc = run(["backfill", "scan", "nope"], repo_copy, check=False)
    assert proc.returncode == 2 and "run `backfill compose`" in proc.stderr
    run(["backfill", "compose"], repo_copy)
    proc = run(["backfill", "scan", "nope"], repo_copy, check=False)
    assert proc.returncode == 2 and "backfill project add" in proc.stderr
    proc = run(["backfill", "project", "add", "q", "--original-dir", str(tmp_path / "o"),
                "--final-dir", str(tmp_path / "f"), "group.lookahed=5"], repo_copy, check=False)
    assert proc.returncode == 2 and "did you mean group.lookahead" in proc.stderr
    proc = run(["backfill", "compose"], tmp_path, check=False)
    assert proc.returncode == 2 and "run backfill from the repository" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_version_and_help_exit_0(capsys):
    from importlib.metadata import version

    from backfill import cli

    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"backfill, version {version('backfill')}"
    assert cli.main(["-h"]) == 0
    out = capsys.readouterr().out
    # Commands are listed in the order of the work, not alphabetically.
    assert out.index("compose") < out.index("scan") < out.index("publish") < out.index("demo")


def test_the_parser_checks_types_and_says_which_value(capsys):
    from backfill import cli

    for argv, said in ((["demo", "generate", "--groups", "0"], "'--groups': '0': use a whole "
                        "number of 1 or more"),
                       (["query", "p", "select 1", "--limit", "x"], "'--limit': 'x'"),
                       (["export", "--all", "--format", "xml"], "'xml': choose from jsonl,csv"),
                       (["compose", "--nope"], "No such option '--nope'"),
                       (["nosuch"], "No such command 'nosuch'")):
        assert cli.main(argv) == 2, argv
        assert said in capsys.readouterr().err, argv


def test_projects_take_a_list_up_to_the_next_option_or_setting():
    from backfill.cli import _spread

    argv = ["train", "v9", "--projects", "a", "b", "ranker.epochs=3", "--force", "c=1"]
    assert _spread(argv, "--projects") == ["train", "v9", "--projects", "a", "--projects", "b",
                                           "ranker.epochs=3", "--force", "c=1"]
    assert _spread(["compare", "v1", "--projects=a"], "--projects") == [
        "compare", "v1", "--projects=a"]
