"""Shared fixtures: generated projects with known truth, and throwaway repo copies."""

from __future__ import annotations

import copy
import dataclasses
import functools
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from backfill.demo.synthetic import make_project

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's bin: backfill and dvc live here


@functools.cache
def _composed(overrides: tuple[str, ...]) -> dict:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from backfill.config.settings import ProjectConfig, section

    with initialize_config_dir(str(REPO / "conf"), version_base=None):
        # A config in a group folder lands under the group's name.
        cfg = compose(config_name="pipeline/default",
                      overrides=[f"pipeline.{o}" for o in overrides]).pipeline
    for f in dataclasses.fields(ProjectConfig):
        if f.name in cfg and f.default_factory is not dataclasses.MISSING:  # each section, typed
            section(f.default_factory, cfg[f.name], f.name)
    # What a registered project holds besides (its folders are each test's own): no DBs,
    # no older logs, and the baseline model version, as `project add` writes them.
    model = OmegaConf.load(REPO / "conf" / "model" / "baseline.yaml")
    return {**OmegaConf.to_container(cfg, resolve=True), "real_db": None, "legacy_csv": None,
            "review_dir": None, "model": OmegaConf.to_container(model)}


def pipeline_config(*overrides: str):
    """The pipeline's settings as every project starts from them: the real
    conf/pipeline/default.yaml composed by Hydra (with a project's own keys but its
    folders: no DBs, the baseline model version), with overrides as on the command line
    (``"group.lookahead=25"``), and each section checked against its typed settings.
    Composed once per set of overrides; each call returns a copy to change freely."""
    from omegaconf import OmegaConf

    return OmegaConf.create(copy.deepcopy(_composed(tuple(overrides))))


@pytest.fixture(scope="session")
def small_project(tmp_path_factory) -> object:
    """A generated project shared by read-only tests (12 groups, every bad-file kind)."""
    return make_project(tmp_path_factory.mktemp("small"), n_groups=12, seed=3, scale=0.1)


@pytest.fixture(scope="session")
def recovered(tmp_path_factory) -> SimpleNamespace:
    """A generated project (30 groups) taken through scan, group and extract: the
    backfill side of a merge, with the generator's truth beside it."""
    from backfill.config.settings import GroupConfig, section
    from backfill.stages.extract.stage import ExtractSettings, extract_project
    from backfill.stages.group import group_table
    from backfill.stages.scan import ScanSettings, scan_project

    root = tmp_path_factory.mktemp("recovered")
    cfg = pipeline_config()
    gen = make_project(root / "p", n_groups=30, seed=4, scale=0.05)
    scan = scan_project({"original": gen.original_dir, "final": gen.final_dir},
                        ScanSettings.from_config(cfg.scan), root / "cache").table
    groups, ungrouped = group_table(scan, section(GroupConfig, cfg.group, "group"), "p")
    settings = ExtractSettings.from_config(cfg.extract, cfg.scan.max_pixels)
    truth = extract_project(groups, scan, ungrouped, settings,
                            gen.original_dir, gen.final_dir, root / "cache").truth
    return SimpleNamespace(gen=gen, scan=scan, groups=groups, truth=truth, cfg=cfg)


def add_renders(folder: Path, when: str, seed: int = 5) -> list[Path]:
    """Three new renders of one new picture (stages 1, 1.5, 2), saved 15 s apart, named
    ``<when><seconds>_<stage label>.png`` with ``when`` = ``YYYYMMDD_HHMM``."""
    import numpy as np

    from backfill.demo.synthetic import STAGE_LABELS, render_stages

    images = render_stages(np.random.default_rng(seed), (1.0, 1.5, 2.0), 0.05, False)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for (stage, img), seconds in zip(images.items(), ("00", "15", "30"), strict=True):
        paths.append(folder / f"{when}{seconds}_{STAGE_LABELS[stage]}.png")
        img.save(paths[-1])
    return paths


def run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


@pytest.fixture
def repo_copy(tmp_path) -> Path:
    """A copy of this repository's pipeline (config, dvc.yaml, code) with no projects."""
    from backfill.demo.workspace import scratch_repo

    return scratch_repo(REPO, tmp_path / "repo")


@pytest.fixture(scope="module")
def ray_cluster() -> str:
    """The address of a Ray instance on this machine (2 CPUs, no dashboard), started by
    this process for one test module and stopped after it (the rest of the suite runs
    without it); other processes (dvc's stages) join it there."""
    import ray

    context = ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield context.address_info["gcs_address"]
    ray.shutdown()
