"""`backfill compose --discard` replaces params.yaml with the composition of conf/: a value
changed in params.yaml since the last compose is named, with both values and where a
lasting change goes, never dropped silently (plain `compose` stops instead: test_keep)."""

import pytest
import yaml

from backfill import cli
from backfill.config.project import COMPOSED_FROM, load_project, write_params
from backfill.projects.registry import add_project


@pytest.fixture
def repo(repo_copy, tmp_path, monkeypatch):
    for name in ("orig", "final"):
        (tmp_path / name).mkdir()
    add_project(repo_copy, "p", str(tmp_path / "orig"), str(tmp_path / "final"))
    monkeypatch.chdir(repo_copy)
    return repo_copy


def edit_params(repo, change) -> None:
    path = repo / "params.yaml"
    params = yaml.safe_load(path.read_text())
    change(params["projects"]["p"])
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def test_compose_names_each_value_edited_in_params_yaml(repo, capsys):
    edit_params(repo, lambda p: p["group"].update(lookahead=10))
    assert load_project("p", repo).cfg.group.lookahead == 10  # the stages use the edit

    assert cli.main(["compose", "--discard"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1, err
    assert "params.yaml held projects.p.group.lookahead: 10; conf/ gives 50" in err[0]
    assert "conf/project/p.yaml" in err[0]
    assert load_project("p", repo).cfg.group.lookahead == 50


def test_a_conf_change_is_not_named_and_an_edit_beside_it_is(repo):
    conf = repo / "conf" / "project" / "p.yaml"
    conf.write_text(conf.read_text() + "group:\n  lookahead: 25\n")
    said = []
    write_params(repo, said.append, "discard")
    assert said == []  # conf/ changed, params.yaml was not edited

    edit_params(repo, lambda p: (p["extract"].update(min_confidence=0.9),
                                 p.update(extra_key=1)))
    conf.write_text(conf.read_text().replace("lookahead: 25", "lookahead: 30"))
    write_params(repo, said.append, "discard")
    assert [line.split(";")[0] for line in said] == [
        "params.yaml held projects.p.extra_key: 1",
        "params.yaml held projects.p.extract.min_confidence: 0.9",
    ]
    assert "conf/ gives (absent)" in said[0]


def test_without_a_record_every_differing_value_is_named(repo):
    (repo / COMPOSED_FROM).unlink()
    edit_params(repo, lambda p: p["group"].update(lookahead=10))
    said = []
    write_params(repo, said.append, "discard")
    assert len(said) == 1 and "projects.p.group.lookahead: 10; conf/ gives 50" in said[0]
    write_params(repo, said.append, "discard")
    assert len(said) == 1  # nothing more to name
