"""The Hydra composition, project registration and the stale-params guard."""

import os
import re
import time

import pytest
import yaml

from backfill.config.errors import UserError
from backfill.config.project import check_params_fresh, compose, load_project
from backfill.projects.registry import add_project, registered
from tests.conftest import REPO


def test_the_real_config_composes_every_project_with_pipeline_defaults():
    cfg = compose(REPO)
    demo = cfg.projects.demo
    assert demo.group.method == "nearest_up" and demo.group.lookahead == 50
    assert demo.scan.extensions[:3] == [".png", ".jpg", ".jpeg"]
    assert {".webp", ".tif", ".gif"} <= set(demo.scan.extensions)
    assert ".heic" in demo.scan.unread_extensions
    assert demo.original_dir == "data/demo/original"


def test_every_pipeline_setting_is_commented():
    lines = (REPO / "conf" / "pipeline" / "default.yaml").read_text().splitlines()
    for i, line in enumerate(lines):
        if re.match(r"^\s+\w+:\s*\S", line):  # a leaf setting
            assert lines[i - 1].strip().startswith("#"), f"uncommented setting: {line.strip()}"


def test_committed_params_yaml_is_the_composition():
    # What `backfill compose` would write now is what the repository holds.
    from omegaconf import OmegaConf

    committed = yaml.safe_load((REPO / "params.yaml").read_text())
    assert OmegaConf.to_container(compose(REPO)) == committed


@pytest.fixture
def folders(tmp_path):
    for name in ("orig", "final"):
        (tmp_path / name).mkdir()
    return str(tmp_path / "orig"), str(tmp_path / "final")


def test_project_add_stores_overrides_registers_and_composes(repo_copy, folders):
    path = add_project(repo_copy, "mojo3", *folders, overrides=["group.lookahead=25",
                                                               "group.time_gap_minutes=null"])
    assert "lookahead: 25" in path.read_text()
    assert registered(repo_copy) == ["mojo3"]
    params = yaml.safe_load((repo_copy / "params.yaml").read_text())
    assert params["projects"]["mojo3"]["group"]["lookahead"] == 25
    assert params["projects"]["mojo3"]["group"]["min_group_size"] == 2  # pipeline default
    assert load_project("mojo3", repo_copy).cfg.original_dir == folders[0]
    add_project(repo_copy, "other", *folders)
    assert registered(repo_copy) == ["mojo3", "other"]


@pytest.mark.parametrize(
    ("name", "overrides", "message"),
    [
        ("ok", ["group.lookahed=3"], "did you mean group.lookahead"),
        ("ok", ["lookahead"], "KEY=VALUE"),
        ("bad name", [], "letters, digits"),
    ],
)
def test_project_add_refuses_bad_input_and_leaves_conf_unchanged(repo_copy, folders, name,
                                                                 overrides, message):
    before = (repo_copy / "conf" / "config.yaml").read_text()
    with pytest.raises(UserError, match=message):
        add_project(repo_copy, name, *folders, overrides=overrides)
    assert (repo_copy / "conf" / "config.yaml").read_text() == before
    assert not (repo_copy / "conf" / "project" / "ok.yaml").exists()


def test_project_add_needs_existing_folders_and_force_to_replace(repo_copy, folders, tmp_path):
    with pytest.raises(UserError, match="not a folder"):
        add_project(repo_copy, "p", str(tmp_path / "nope"), folders[1])
    add_project(repo_copy, "p", *folders)
    with pytest.raises(UserError, match="--force"):
        add_project(repo_copy, "p", *folders)
    add_project(repo_copy, "p", *folders, overrides=["group.lookahead=7"], force=True)
    assert registered(repo_copy) == ["p"]
    assert load_project("p", repo_copy).cfg.group.lookahead == 7


def _bump(path):
    later = time.time() + 5
    os.utime(path, (later, later))


def test_stale_params_stop_a_stage_with_the_command_to_run(repo_copy, folders):
    add_project(repo_copy, "p", *folders)
    check_params_fresh(repo_copy)
    conf = repo_copy / "conf" / "project" / "p.yaml"
    conf.write_text(conf.read_text() + "group:\n  lookahead: 9\n")
    _bump(conf)
    with pytest.raises(UserError, match="backfill compose"):
        load_project("p", repo_copy)
    from backfill.config.project import write_params

    write_params(repo_copy)
    assert load_project("p", repo_copy).cfg.group.lookahead == 9


def test_a_touched_but_unchanged_conf_is_not_stale(repo_copy, folders):
    add_project(repo_copy, "p", *folders)
    _bump(repo_copy / "conf" / "pipeline" / "default.yaml")
    check_params_fresh(repo_copy)


def test_dvc_exp_overrides_in_params_are_trusted(repo_copy, folders):
    # `dvc exp run -S` composes with overrides into params.yaml: newer than conf/, and
    # different from it on purpose.
    from dvc.utils.hydra import compose_and_dump

    add_project(repo_copy, "p", *folders)
    compose_and_dump(repo_copy / "params.yaml", str(repo_copy / "conf"), None, "config",
                     str(repo_copy), ["projects.p.group.lookahead=3"])
    assert load_project("p", repo_copy).cfg.group.lookahead == 3


def test_unknown_project_names_the_known_ones(repo_copy, folders):
    add_project(repo_copy, "p", *folders)
    with pytest.raises(UserError, match=r"known: p\)"):
        load_project("q", repo_copy)
