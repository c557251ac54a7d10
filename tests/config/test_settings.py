"""Settings are checked where they enter (project add, compose, every stage, train's
overrides), and the CLI's errors are one line with exit 2, with nothing written."""

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from backfill.config.errors import UserError
from backfill.config.project import check_params_fresh, compose, load_project
from backfill.config.settings import SettingError, check
from backfill.projects.registry import add_project
from tests.conftest import REPO, run


@pytest.fixture(scope="module")
def composed() -> dict:
    return OmegaConf.to_container(compose(REPO))


def _with(base: dict, key: str, value) -> dict:
    cfg = OmegaConf.create(base)
    OmegaConf.update(cfg, key, value, force_add=True)
    return OmegaConf.to_container(cfg)


def test_the_committed_composition_passes(composed):
    s = check(composed, REPO)
    assert s.projects["demo"].extract.match.min_scale == 0.3
    assert s.train.ranker.hidden == [256, 64]


@pytest.mark.parametrize(("key", "value", "says"), [
    ("extract.approve_tolerance", "abc", "approve_tolerance='abc' is not allowed: use a number"),
    ("group.lookahead", "abc", "lookahead='abc' is not allowed: use a number >= 1"),
    ("extract.approve_tolerance", -0.5, "use a number from 0 to 0.5"),
    ("scan.extensions", ".png", "extensions='.png' is not allowed: use a list of extensions"),
    ("scan.extensions", [], "use at least one extension"),
    ("scan.extensions", ["png"], "use a list of extensions"),
    ("scan.unread_extensions", [".png"], "no extension that is also in extensions"),
    ("scan.unread_extensions", ["heic"], "use a list of extensions such as [.heic]"),
    ("group.min_group_size", 1, "min_group_size=1 is not allowed: use 2 to 4"),
    ("group.id_format", "{stamp}", "id_format='{stamp}'"),
    ("embed.device", "gpu", "use auto, cpu, mps, cuda or cuda:N"),
    ("embed.precision", "fp8", "use one of fp32, fp16, bf16"),
    ("extract.match.scale_step", 1.0, "scale_step=1.0 is not allowed: use a number > 1"),
    ("scan.follow_symlinks", "maybe", "use true or false"),
    ("group.time_gap_minutes", "soon", "use a number > 0 or null"),
    ("nosuch", 1, "unknown setting 'projects.demo.nosuch'"),
    ("extract.match.nope", 3, "unknown setting 'projects.demo.extract.match.nope'"),
])
def test_a_wrong_value_is_named_with_what_is_allowed(composed, key, value, says):
    with pytest.raises(SettingError) as err:
        check(_with(composed, f"projects.demo.{key}", value))
    assert says in str(err.value)
    assert f"projects.demo.{key.split('.')[0]}" in str(err.value)


@pytest.mark.parametrize(("key", "value", "says"), [
    ("executor", "slurm", "executor='slurm' is not allowed: use one of local, ray"),
    ("ray.address", "my-cluster", "use auto, ray://host:port, host:port, or null"),
    ("ray.address", "ray://head", "use auto, ray://host:port"),
    ("ray.actor_cpus", 0, "ray.actor_cpus=0.0 is not allowed: use a number > 0"),
    ("ray.in_flight", 0, "ray.in_flight=0 is not allowed: use a number >= 1"),
    ("ray.ship_bytes", "sometimes", "use true or false"),
])
def test_a_wrong_executor_setting_is_named_with_what_is_allowed(composed, key, value, says):
    with pytest.raises(SettingError) as err:
        check(_with(composed, key, value))
    assert says in str(err.value)


@pytest.mark.parametrize("address", ["auto", "ray://head.lan:10001", "10.0.0.5:6379",
                                     "[::1]:6379", None])
def test_every_documented_ray_address_is_accepted(composed, address):
    assert check(_with(composed, "ray.address", address)).ray.address == address


def test_a_setting_missing_from_an_older_composition_says_to_compose(composed):
    older = OmegaConf.create(composed)
    del older.projects.demo.validate["workers"]  # params.yaml from before the setting
    with pytest.raises(SettingError) as err:
        check(OmegaConf.to_container(older))
    assert "setting 'projects.demo.validate.workers' is missing" in str(err.value)
    assert "run `backfill compose`" in str(err.value)


# The numeric range checks: a value is accepted exactly when it lies in the range.
RANGES = [
    ("extract.approve_tolerance", lambda v: 0 <= v <= 0.5),
    ("extract.min_confidence", lambda v: 0 <= v <= 1),
    ("evaluate.crop_tolerance", lambda v: 0 <= v <= 1),
    ("merge.coord_tolerance", lambda v: 0 <= v <= 1),
    ("merge.lock_timeout_s", lambda v: v >= 0),
    ("extract.match.min_scale", lambda v: 0 < v <= 1),
    ("extract.match.max_scale", lambda v: v >= 1),
    ("group.time_gap_minutes", lambda v: v > 0),
]
INT_RANGES = [
    ("group.lookahead", lambda v: v >= 1),
    ("group.max_group_size", lambda v: 2 <= v <= 4),
    ("scan.workers", lambda v: v >= 1),
    ("scan.max_pixels", lambda v: 1 <= v <= 2 * 89_478_485),  # Pillow's guard stays on
    ("embed.batch_size", lambda v: v >= 1),
    ("validate.max_cases", lambda v: v >= 0),
]


@pytest.mark.slow  # a property run of 120 examples
@settings(max_examples=120, deadline=None)
@given(st.one_of(st.tuples(st.sampled_from(RANGES), st.floats(-10, 10, allow_nan=False)),
                 st.tuples(st.sampled_from(INT_RANGES), st.integers(-5, 10**9))))
def test_number_settings_are_accepted_exactly_in_their_range(composed, case):
    (key, ok), value = case
    cfg = _with(composed, f"projects.demo.{key}", value)
    if ok(value):
        check(cfg)
    else:
        with pytest.raises(SettingError, match=key.split(".")[-1]):
            check(cfg)


@pytest.mark.slow  # a property run
@settings(max_examples=40, deadline=None)
@given(st.sampled_from([k for k, _ in RANGES + INT_RANGES]),
       st.one_of(st.text(min_size=1).filter(lambda t: not _numeric(t)), st.lists(st.integers()),
                 st.dictionaries(st.text(min_size=1), st.integers(), min_size=1)))
def test_a_number_setting_refuses_text_lists_and_sections(composed, key, value):
    with pytest.raises(SettingError, match=key.split(".")[-1]):
        check(_with(composed, f"projects.demo.{key}", value))


def _numeric(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return text.strip().lower() in {"true", "false", "null", "none", "~", ""}


@pytest.fixture
def folders(tmp_path):
    for name in ("orig", "final"):
        (tmp_path / name).mkdir()
    return str(tmp_path / "orig"), str(tmp_path / "final")


def _conf_state(repo: Path) -> dict:
    files = sorted((repo / "conf").rglob("*.yaml")) + [repo / "params.yaml"]
    return {p: p.read_bytes() for p in files if p.exists()}


@pytest.mark.slow  # runs the CLI in a subprocess
@pytest.mark.parametrize(("overrides", "says"), [
    (["extract.approve_tolerance=abc"], "approve_tolerance='abc' is not allowed"),
    (["group.lookahead=abc"], "lookahead='abc' is not allowed"),
    (["extract.approve_tolerance=-0.5"], "use a number from 0 to 0.5"),
    (["scan.extensions=.png"], "extensions='.png' is not allowed"),
])
def test_project_add_refuses_a_wrong_setting_in_one_line_and_writes_nothing(
        repo_copy, folders, overrides, says):
    run(["backfill", "compose"], repo_copy)
    before = _conf_state(repo_copy)
    proc = run(["backfill", "project", "add", "p", "--original-dir", folders[0],
                "--final-dir", folders[1], *overrides], repo_copy, check=False)
    assert proc.returncode == 2, proc.stderr
    assert says in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert _conf_state(repo_copy) == before


def test_project_add_refuses_finals_inside_or_equal_to_the_originals(repo_copy, tmp_path):
    renders = tmp_path / "renders"
    (renders / "kept").mkdir(parents=True)
    with pytest.raises(UserError, match="is inside original_dir"):
        add_project(repo_copy, "p", str(renders), str(renders / "kept"))
    with pytest.raises(UserError, match="one folder"):
        add_project(repo_copy, "p", str(renders), str(renders) + "/")
    with pytest.raises(UserError, match="original_dir .* is inside final_dir"):
        add_project(repo_copy, "p", str(renders / "kept"), str(renders))
    assert not (repo_copy / "conf" / "project" / "p.yaml").exists()


@pytest.mark.slow  # runs the CLI in a subprocess
def test_a_folder_named_like_an_interpolation_registers_literally(repo_copy, tmp_path):
    odd = tmp_path / "${oops}" / "orig"
    odd.mkdir(parents=True)
    (tmp_path / "final").mkdir()
    add_project(repo_copy, "p", str(odd), str(tmp_path / "final"))
    project = load_project("p", repo_copy)
    assert project.path("original_dir") == odd
    run(["backfill", "scan", "p"], repo_copy)  # the stage reads the same literal path


@pytest.mark.slow  # runs the CLI in a subprocess
def test_stale_params_are_found_by_content_not_modification_time(repo_copy, folders):
    add_project(repo_copy, "p", *folders)
    conf = repo_copy / "conf" / "project" / "p.yaml"
    old = os.stat(conf).st_mtime - 3600
    conf.write_text(conf.read_text() + "group:\n  lookahead: 9\n")
    os.utime(conf, (old, old))  # as `cp -p`, `rsync -t` or `tar x` leave it
    with pytest.raises(UserError, match="stale"):
        load_project("p", repo_copy)
    run(["backfill", "compose"], repo_copy)
    assert load_project("p", repo_copy).cfg.group.lookahead == 9


def test_inside_dvc_exp_run_the_composed_params_are_trusted(repo_copy, folders, monkeypatch):
    from dvc.utils.hydra import compose_and_dump

    add_project(repo_copy, "p", *folders)
    conf = repo_copy / "conf" / "project" / "p.yaml"
    conf.write_text(conf.read_text() + "group:\n  lookahead: 9\n")
    # dvc exp run composes today's conf/ with its -S values, then runs the stages.
    compose_and_dump(repo_copy / "params.yaml", str(repo_copy / "conf"), None, "config",
                     str(repo_copy), ["projects.p.group.min_group_size=3"])
    with pytest.raises(UserError, match="stale"):
        check_params_fresh(repo_copy)
    monkeypatch.setenv("DVC_EXP_NAME", "exp-1")
    cfg = load_project("p", repo_copy).cfg.group
    assert (cfg.lookahead, cfg.min_group_size) == (9, 3)


@pytest.mark.slow  # runs the CLI in a subprocess
def test_a_dvc_exp_value_out_of_range_stops_the_stage_in_one_line(repo_copy, folders):
    from dvc.utils.hydra import compose_and_dump

    add_project(repo_copy, "p", *folders)
    compose_and_dump(repo_copy / "params.yaml", str(repo_copy / "conf"), None, "config",
                     str(repo_copy), ["projects.p.extract.approve_tolerance=-0.5"])
    proc = run(["backfill", "scan", "p"], repo_copy, check=False)
    assert proc.returncode == 2 and "approve_tolerance=-0.5 is not allowed" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow  # runs the CLI in a subprocess
def test_invalid_yaml_in_conf_is_one_line(repo_copy, folders):
    add_project(repo_copy, "p", *folders)
    (repo_copy / "conf" / "project" / "p.yaml").write_text("group: [lookahead: 3\n")
    for cmd in (["backfill", "compose"], ["backfill", "summary", "p"], ["backfill", "scan", "p"]):
        proc = run(cmd, repo_copy, check=False)
        assert proc.returncode == 2, (cmd, proc.stderr)
        assert "conf/project/p.yaml is not valid YAML (line" in proc.stderr
        assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.slow  # runs the CLI in a subprocess
def test_a_stage_before_its_inputs_says_which_stage_to_run(repo_copy, folders):
    add_project(repo_copy, "p", *folders)
    proc = run(["backfill", "group", "p"], repo_copy, check=False)
    assert proc.returncode == 2 and "run `dvc repro scan@p` first" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow  # runs the CLI in a subprocess
def test_train_overrides_are_checked(repo_copy, folders):
    add_project(repo_copy, "p", *folders)
    proc = run(["backfill", "train", "v1", "ranker.epochs=abc"], repo_copy, check=False)
    assert proc.returncode == 2 and "train.ranker.epochs='abc' is not allowed" in proc.stderr
    proc = run(["backfill", "train", "v1", "nosuch.key=1"], repo_copy, check=False)
    assert proc.returncode == 2 and "unknown setting 'train.nosuch'" in proc.stderr
    assert not (repo_copy / "data" / "models" / "v1").exists()
