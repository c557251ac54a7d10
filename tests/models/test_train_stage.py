"""`backfill train --stage` adds its stage to dvc.yaml and leaves every other line alone."""

import difflib
import os
from pathlib import Path

import pytest
import yaml

from backfill.config.errors import UserError
from backfill.pipeline import add_train_stage, train_stage, with_stage

REPO = Path(__file__).resolve().parents[2]


def removed_lines(before: str, after: str) -> list[str]:
    return [line for line in difflib.unified_diff(before.splitlines(), after.splitlines(),
                                                  lineterm="", n=0)
            if line.startswith("-") and not line.startswith("---")]


def test_the_stage_is_added_to_this_repository_dvc_yaml_without_touching_a_line():
    text = (REPO / "dvc.yaml").read_text()
    stage = train_stage("v9", ["alpha", "beta"], ["ranker.epochs=3", "crop.lr=1e-4"])
    out = with_stage(text, "train-v9", stage)
    assert removed_lines(text, out) == []
    assert out.startswith(text)
    added = out[len(text):]
    assert added.startswith("\n  train-v9:\n    cmd: backfill train v9 --force --projects")
    assert "    deps:\n      - src/backfill/models\n" in added  # lists indented as dvc.yaml's
    assert yaml.safe_load(out)["stages"]["train-v9"] == stage
    config = {"conf/model/v9.yaml": {"cache": False, "persist": True}}
    assert stage["outs"] == ["data/models/v9", config]
    assert "data/beta/embeddings.parquet" in stage["deps"] and stage["params"] == ["train"]


def test_a_stage_goes_inside_stages_when_another_section_follows_and_replaces_its_old_self():
    text = ("# a comment\nstages:\n  a:\n    cmd: echo a  # why\n\n  train-x:\n    cmd: old\n"
            "    deps:\n    - gone\n\n  b:\n    cmd: echo b\n\n# plots of all stages\n"
            "plots:\n  - p.csv\n")
    new = with_stage(text, "train-x", {"cmd": "new", "deps": ["d"]})
    # Only the old stage's own lines go.
    assert {"-    cmd: old", "-    - gone"} <= set(removed_lines(text, new)) <= {
        "-    cmd: old", "-    deps:", "-    - gone"}
    assert yaml.safe_load(new) == {"stages": {"a": {"cmd": "echo a"},
                                              "train-x": {"cmd": "new", "deps": ["d"]},
                                              "b": {"cmd": "echo b"}}, "plots": ["p.csv"]}
    added = with_stage(text, "train-y", {"cmd": "y"})
    assert removed_lines(text, added) == []
    assert added.index("train-y:") < added.index("# plots of all stages")
    assert yaml.safe_load(added)["plots"] == ["p.csv"]


@pytest.mark.parametrize("text", ["", "stages:\n", "vars:\n  - x: 1\n"])
def test_an_empty_or_stageless_dvc_yaml_gets_the_stage(text):
    out = with_stage(text, "train-x", {"cmd": "go"})
    assert yaml.safe_load(out)["stages"] == {"train-x": {"cmd": "go"}}
    assert removed_lines(text, out) == []


def test_a_flow_style_stages_mapping_is_refused_not_rewritten():
    with pytest.raises(UserError, match="add the stage by hand"):
        with_stage("stages: {a: {cmd: x}}\n", "train-x", {"cmd": "go"})


def test_a_bad_version_name_is_refused_before_dvc_yaml_is_read(tmp_path):
    with pytest.raises(UserError, match="letters, digits"):
        add_train_stage(tmp_path, "v9: x", ["p"], [])
    assert not (tmp_path / "dvc.yaml").exists()


@pytest.mark.slow
def test_a_stage_dvc_rejects_is_undone_with_dvc_s_reason(tmp_path, monkeypatch):
    from tests.conftest import BIN, run

    monkeypatch.setenv("PATH", f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    run(["git", "init", "-q"], tmp_path)
    run(["dvc", "init", "-q"], tmp_path)
    text = "stages:\n  other:\n    cmd: echo\n    outs:\n      - data/models/v9\n"
    (tmp_path / "dvc.yaml").write_text(text)
    with pytest.raises(UserError, match="dvc rejects stage train-v9: .*data/models/v9"):
        add_train_stage(tmp_path, "v9", ["p"], [])
    assert (tmp_path / "dvc.yaml").read_text() == text
