"""The commands never lose what they did not make, and fail in one line: an output path
that is a file or cannot be made, a closed pipe, a demo folder holding someone's files."""

import sys

import pytest
import yaml

from backfill.projects.registry import add_project
from tests.conftest import REPO, run


@pytest.fixture
def folders(tmp_path):
    for name in ("orig", "final"):
        (tmp_path / name).mkdir()
    return str(tmp_path / "orig"), str(tmp_path / "final")


@pytest.mark.slow  # runs the CLI in a subprocess
def test_output_folders_that_are_files_or_cannot_be_made_are_refused(repo_copy, folders,
                                                                     tmp_path):
    add_project(repo_copy, "p", *folders)
    a_file = tmp_path / "out.txt"
    a_file.write_text("mine")
    for out in (a_file, a_file / "sub"):
        for cmd in (["backfill", "export", "p", "--out", str(out)],
                    ["backfill", "compare", "baseline", "--out", str(out)]):
            proc = run(cmd, repo_copy, check=False)
            assert proc.returncode == 2, (cmd, proc.stderr)
            assert str(a_file) in proc.stderr and "Traceback" not in proc.stderr
    assert a_file.read_text() == "mine"


@pytest.mark.slow  # runs the CLI in a subprocess
def test_a_closed_pipe_is_one_line_not_a_traceback(tmp_path):
    code = ("import sys\nfrom backfill import cli\n"
            "def spam(names, describe):\n"
            "    for _ in range(200000): print('x' * 60)\n    return 0\n"
            "cli._each_readable = spam\nsys.exit(cli.main(['project', 'list']))\n")
    script = tmp_path / "spam.py"
    script.write_text(code)
    proc = run(["bash", "-c", f"{sys.executable} {script} | head -1; "
                "echo rc=${PIPESTATUS[0]} >&2"], REPO, check=False)
    assert proc.stdout == "x" * 60 + "\n"
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr
    assert "output closed early" in proc.stderr and "rc=2" in proc.stderr


@pytest.mark.slow  # runs the CLI in a subprocess
def test_demo_generate_never_deletes_what_it_did_not_make(repo_copy, tmp_path):
    mine = tmp_path / "mine"
    (mine / "original").mkdir(parents=True)
    (mine / "original" / "render.png").write_bytes(b"precious")
    (mine / "live").mkdir()
    (mine / "live" / "ai_decisions.db").write_bytes(b"precious db")
    proc = run(["backfill", "demo", "generate", "--out", str(mine), "--groups", "2"],
               repo_copy, check=False)
    assert proc.returncode == 2 and "nothing was deleted" in proc.stderr
    assert (mine / "original" / "render.png").read_bytes() == b"precious"
    assert (mine / "live" / "ai_decisions.db").read_bytes() == b"precious db"
    proc = run(["backfill", "demo", "generate", "--groups", "-3"], repo_copy, check=False)
    assert proc.returncode == 2 and "use a whole number of 1 or more" in proc.stderr
    demo = tmp_path / "demo"
    run(["backfill", "demo", "generate", "--out", str(demo), "--groups", "2"], repo_copy)
    stale = demo / "original" / "stale.png"
    stale.write_bytes(b"from an older generation")
    run(["backfill", "demo", "generate", "--out", str(demo), "--groups", "3", "--force"],
        repo_copy)
    assert not stale.exists() and len(yaml.safe_load((demo / "truth.json").read_text())[
        "groups"]) == 3
