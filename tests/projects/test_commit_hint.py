"""Commands that write conf/ say the exact git line that commits what they wrote, while
git does not hold it: `dvc exp run` leaves untracked files out of an experiment, so a
new project's config would be missing from it. Outside a git repository, nothing about
git is said. Nothing is ever committed for the user."""

import shutil
import subprocess

import pytest
from PIL import Image

from backfill import cli

ADD_LINE = ("git add conf/project/p.yaml conf/config.yaml params.yaml && git commit -m "
            "'Add project p'")


@pytest.fixture
def repo(repo_copy, tmp_path, monkeypatch):
    for name in ("orig", "final"):
        (tmp_path / name).mkdir()
    monkeypatch.chdir(repo_copy)
    return repo_copy


def add(tmp_path, name="p", *more) -> list[str]:
    return ["project", "add", name, "--original-dir", str(tmp_path / "orig"),
            "--final-dir", str(tmp_path / "final"), *more]


def git(repo, *args) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True,
                          text=True).stdout


def commit_all(repo) -> None:
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "all")


def test_project_add_says_what_to_commit(repo, tmp_path, capsys):
    commit_all(repo)  # conf/ as a user's repository holds it
    head = git(repo, "rev-parse", "HEAD")

    assert cli.main(add(tmp_path)) == 0
    out = capsys.readouterr().out
    assert f"next: commit what git does not hold yet, so that experiments and clones have " \
           f"it (`dvc exp run` leaves out files git does not track): {ADD_LINE}" \
        in out.splitlines()
    assert git(repo, "rev-parse", "HEAD") == head  # nothing committed for the user
    assert "?? conf/project/p.yaml" in git(repo, "status", "--porcelain", "-uall")

    subprocess.run(ADD_LINE, shell=True, cwd=repo, check=True, capture_output=True)
    assert git(repo, "status", "--porcelain", "conf", "params.yaml") == ""
    assert cli.main(add(tmp_path, "p", "--force")) == 0  # the same config again
    assert "git add" not in capsys.readouterr().out  # nothing left to commit


def test_only_what_git_does_not_hold_is_named(repo, tmp_path, capsys):
    assert cli.main(add(tmp_path)) == 0
    commit_all(repo)
    capsys.readouterr()
    assert cli.main(add(tmp_path, "p", "--force", "group.lookahead=25")) == 0
    assert "git add conf/project/p.yaml params.yaml && git commit" in capsys.readouterr().out


def test_outside_a_git_repository_git_is_not_mentioned(repo, tmp_path, capsys):
    shutil.rmtree(repo / ".git")
    assert cli.main(add(tmp_path)) == 0
    assert "git" not in capsys.readouterr().out


def test_discover_yes_says_what_to_commit(repo, tmp_path, capsys):
    commit_all(repo)
    for folder in ("past/a_raw", "past/a_final"):
        (tmp_path / folder).mkdir(parents=True)
        Image.new("RGB", (4, 4)).save(tmp_path / folder / "20250708_060711_stage1.png")
    assert cli.main(["project", "discover", str(tmp_path / "past"), "--yes"]) == 0
    assert "git add conf/project/a.yaml conf/config.yaml params.yaml && git commit -m " \
           "'Add projects a'" in capsys.readouterr().out


def test_compose_keep_says_what_to_commit(repo, tmp_path, capsys):
    from dvc.utils.hydra import compose_and_dump

    assert cli.main(add(tmp_path)) == 0
    commit_all(repo)
    compose_and_dump(repo / "params.yaml", str(repo / "conf"), None, "config", str(repo),
                     ["projects.p.group.lookahead=10"])  # as `dvc exp apply` leaves it
    capsys.readouterr()
    assert cli.main(["compose", "--keep"]) == 0
    # params.yaml is as committed by the experiment: only the conf/ file is named.
    assert "git add conf/project/p.yaml params.yaml && git commit -m 'Keep experiment " \
           "settings'" in capsys.readouterr().out
