"""Keeping an experiment: after `dvc exp apply`, params.yaml holds the experiment's
values and conf/ does not. `backfill compose` stops and names them (it never puts conf/'s
values back silently); `backfill compose --keep` writes them into their conf/ files,
changing only those keys, so that composing again gives the experiment's params.yaml."""

import difflib

import pytest
import yaml
from dvc.utils.hydra import compose_and_dump

from backfill import cli
from backfill.config.yamledit import EditError, set_keys
from backfill.projects.registry import add_project

EXPERIMENT = ["projects.p.group.lookahead=10", "projects.p.extract.approve_tolerance=0.2",
              "projects.p.extract.min_confidence=0.7", "projects.p.scan.extensions=[.png,.jpg]",
              "train.seed=3", "cache_dir=data/cache2"]


@pytest.fixture
def repo(repo_copy, tmp_path, monkeypatch):
    for name in ("orig", "final"):
        (tmp_path / name).mkdir()
    add_project(repo_copy, "p", str(tmp_path / "orig"), str(tmp_path / "final"),
                overrides=["group.lookahead=25"])
    monkeypatch.chdir(repo_copy)
    return repo_copy


def apply_experiment(repo, overrides) -> dict:
    """params.yaml as `dvc exp run -S ...` writes it and `dvc exp apply` brings it back:
    conf/ composed with the experiment's values, by DVC's own function."""
    compose_and_dump(repo / "params.yaml", str(repo / "conf"), None, "config", str(repo),
                     list(overrides))
    return yaml.safe_load((repo / "params.yaml").read_text())


def conf_files(repo) -> dict:
    return {p: p.read_text() for p in sorted((repo / "conf").rglob("*.yaml"))}


def changed_lines(before: str, after: str) -> list[str]:
    return [line for line in difflib.ndiff(before.splitlines(), after.splitlines())
            if line[:1] in "+-"]


def test_compose_after_an_applied_experiment_names_the_keys_and_what_to_run(repo, capsys):
    applied = (apply_experiment(repo, EXPERIMENT[:2]), (repo / "params.yaml").read_text())
    capsys.readouterr()

    assert cli.main(["compose"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1, err  # one line
    assert "projects.p.group.lookahead: 10 (conf/ gives 25)" in err[0]
    assert "projects.p.extract.approve_tolerance: 0.2 (conf/ gives " in err[0]
    assert "`backfill compose --keep`" in err[0] and "conf/project/p.yaml" in err[0]
    assert "`backfill compose --discard`" in err[0]
    assert (repo / "params.yaml").read_text() == applied[1]  # nothing reverted


def test_keep_round_trip_gives_the_experiments_params(repo, capsys):
    before = conf_files(repo)
    applied = apply_experiment(repo, EXPERIMENT)
    capsys.readouterr()

    assert cli.main(["compose", "--keep"]) == 0
    out = capsys.readouterr().out
    assert "kept in conf/project/p.yaml: " in out and "projects.p.group.lookahead = 10" in out
    assert yaml.safe_load((repo / "params.yaml").read_text()) == applied

    after = conf_files(repo)
    project = repo / "conf" / "project" / "p.yaml"
    # Only the kept keys changed; the header, defaults list and paths are as written.
    assert changed_lines(before[project], after[project]) == [
        "-   lookahead: 25", "+   lookahead: 10", "+ extract:", "+   approve_tolerance: 0.2",
        "+   min_confidence: 0.7", "+ scan:", "+   extensions: [.png, .jpg]"]
    train = repo / "conf" / "train" / "default.yaml"
    assert changed_lines(before[train], after[train]) == ["- seed: 0", "+ seed: 3"]
    config = repo / "conf" / "config.yaml"
    assert changed_lines(before[config], after[config]) == [
        "- cache_dir: data/cache", "+ cache_dir: data/cache2"]
    assert {p for p in after if after[p] != before[p]} == {project, train, config}

    assert cli.main(["compose"]) == 0  # conf/ now holds the experiment
    assert capsys.readouterr().err == ""
    assert yaml.safe_load((repo / "params.yaml").read_text()) == applied


def test_keep_refuses_a_wrong_value_in_one_line_and_changes_nothing(repo, capsys):
    before = conf_files(repo)
    apply_experiment(repo, ["projects.p.extract.approve_tolerance=-0.5", "train.seed=3"])
    params = (repo / "params.yaml").read_text()
    capsys.readouterr()

    assert cli.main(["compose", "--keep"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1, err
    assert "projects.p.extract.approve_tolerance=-0.5 is not allowed" in err[0]
    assert conf_files(repo) == before
    assert (repo / "params.yaml").read_text() == params


def test_keeping_another_model_version_sets_the_projects_model_line(repo, capsys):
    project = repo / "conf" / "project" / "p.yaml"
    text = project.read_text()
    applied = apply_experiment(repo, ["model@projects.p.model=person"])
    capsys.readouterr()

    assert cli.main(["compose"]) == 2  # one change of version, not each of its settings
    assert 'holds 1 value(s) that conf/ does not (from `dvc exp apply`, or an edit): ' \
        'projects.p.model: "person" (conf/ gives "baseline").' in capsys.readouterr().err
    assert cli.main(["compose", "--keep"]) == 0
    assert 'kept in conf/project/p.yaml: projects.p.model = "person"\n' \
        in capsys.readouterr().out
    assert changed_lines(text, project.read_text()) == [
        "-   - /model@model: baseline", "+   - /model@model: person"]
    assert yaml.safe_load((repo / "params.yaml").read_text()) == applied


def test_a_model_setting_beside_the_version_is_kept_as_a_setting(repo, capsys):
    applied = apply_experiment(repo, ["model@projects.p.model=person",
                                      "projects.p.model.crop.size_divisor=1024"])
    capsys.readouterr()
    assert cli.main(["compose", "--keep"]) == 0
    assert 'projects.p.model = "person"; projects.p.model.crop.size_divisor = 1024' \
        in capsys.readouterr().out
    text = (repo / "conf" / "project" / "p.yaml").read_text()
    assert "- /model@model: person" in text and "    size_divisor: 1024" in text
    assert yaml.safe_load((repo / "params.yaml").read_text()) == applied


def test_keep_with_nothing_to_keep_only_composes(repo, capsys):
    before, params = conf_files(repo), (repo / "params.yaml").read_text()
    assert cli.main(["compose", "--keep"]) == 0
    assert "kept" not in capsys.readouterr().out
    assert conf_files(repo) == before and (repo / "params.yaml").read_text() == params


def test_discard_puts_conf_values_back_and_names_them(repo, capsys):
    composed = (repo / "params.yaml").read_text()
    apply_experiment(repo, EXPERIMENT[:1])
    before = conf_files(repo)
    capsys.readouterr()

    assert cli.main(["compose", "--discard"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "params.yaml held projects.p.group.lookahead: 10; conf/ " \
        "gives 25" in err[0]
    assert (repo / "params.yaml").read_text() == composed
    assert conf_files(repo) == before


def test_project_add_after_an_applied_experiment_reverts_nothing(repo, tmp_path, capsys):
    apply_experiment(repo, EXPERIMENT[:1])
    params, before = (repo / "params.yaml").read_text(), conf_files(repo)
    capsys.readouterr()

    assert cli.main(["project", "add", "q", "--original-dir", str(tmp_path / "orig"),
                     "--final-dir", str(tmp_path / "final")]) == 2
    assert "`backfill compose --keep`" in capsys.readouterr().err
    assert (repo / "params.yaml").read_text() == params and conf_files(repo) == before


def test_a_key_conf_changed_too_is_not_kept(repo, capsys):
    apply_experiment(repo, EXPERIMENT[:1])
    project = repo / "conf" / "project" / "p.yaml"
    project.write_text(project.read_text().replace("lookahead: 25", "lookahead: 30"))
    before = conf_files(repo)

    assert cli.main(["compose", "--keep"]) == 2
    assert "changed in conf/ too" in capsys.readouterr().err
    assert conf_files(repo) == before


TEXT = """\
# a comment
a: 1  # one
b:
  c: [1, 2]
  d:
  - x
  - y
# the end
e: {}
"""


@pytest.mark.parametrize(("values", "lines"), [
    ({"a": 2}, ["- a: 1  # one", "+ a: 2  # one"]),
    ({"b.d": ["z"]}, ["-   d:", "-   - x", "-   - y", "+   d: [z]"]),
    ({"b.f.g": True}, ["+   f:", "+     g: true"]),
    ({"h": "text"}, ["+ h: text"]),
    ({"e.f": None}, ["- e: {}", "+ e: {f: null}"]),
    ({"a.x": 1}, ["- a: 1  # one", "+ a: {x: 1}  # one"]),
])
def test_set_keys_changes_only_those_keys(values, lines):
    assert sorted(changed_lines(TEXT, set_keys(TEXT, values))) == sorted(lines)


def test_set_keys_refuses_what_it_cannot_write_as_meant():
    with pytest.raises(EditError):
        set_keys("a: &x 1\nb: *x\n", {"a": 2})
