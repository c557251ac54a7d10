"""The pipeline's wiring, in one place: its stages in order, the module each runs and the
code each depends on. dvc.yaml lists exactly these stages with exactly these code deps,
and the CLI has one subcommand per stage from here (tests/test_layout.py checks both,
and that every module a stage imports lies inside its deps).

A stage depends on whole folders: its own module (or package) and the layers it may
import, so a dependency list cannot drift from the imports again. Every stage may
import the shared layers; the layers above them only where the stage names them.
"""

from __future__ import annotations

import importlib
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

SRC = "src/backfill"
# What every stage may import: contracts, settings, the DB's format and files on disk.
SHARED = ("contracts", "config", "db", "files")


@dataclass(frozen=True)
class Stage:
    name: str  # as in dvc.yaml and `backfill <name> PROJECT`
    module: str  # under backfill; its run(project) -> str does the work
    code: tuple[str, ...]  # folders and modules under src/backfill beside SHARED
    help: str

    @property
    def deps(self) -> list[str]:
        """The stage's code deps in dvc.yaml, in order."""
        return [f"{SRC}/{c}" for c in (*self.code, *SHARED)]

    def run(self, project) -> str:
        # Imported only when run, so that `backfill summary` does not load torch.
        return importlib.import_module(f"backfill.{self.module}").run(project)


STAGES = (
    Stage("scan", "stages.scan", ("stages/scan.py",), "find and fingerprint every image"),
    Stage("group", "stages.group", ("stages/group.py",),
          "group renders by the nearest-up rule"),
    Stage("extract", "stages.extract", ("stages/extract", "executors"),
          "recover each group's decision from the final folder"),
    Stage("embed", "stages.embed", ("stages/embed.py", "executors", "models"),
          "CLIP embeddings of every grouped image (cached)"),
    Stage("predict", "stages.predict", ("stages/predict.py", "models"),
          "the model version's picks and crops, and its accuracy"),
    Stage("merge", "stages.merge", ("stages/merge.py", "production", "models"),
          "plan the merge into the production DB; write the merged DB"),
    Stage("validate", "stages.validate", ("stages/validate.py", "reports", "executors", "models"),
          "check every table and the DB; metrics, plots, report"),
)
BY_NAME = {s.name: s for s in STAGES}

# `backfill train --stage`: the code a training depends on, and the tables it reads.
TRAIN_CODE = ("models",)
TRAIN_TABLES = ("truth", "groups", "embeddings")


def train_stage_command(name: str, projects: list[str], overrides: list[str]) -> list[str]:
    """`dvc stage add` for training version ``name`` on ``projects``: deps and outs exact,
    so `dvc repro train-<name>` re-trains when its data, code or settings change."""
    deps = [f"{SRC}/{c}" for c in (*TRAIN_CODE, *SHARED)]
    deps += [f"data/{p}/{t}.parquet" for p in projects for t in TRAIN_TABLES]
    cmd = ["backfill", "train", name, "--force", "--projects", *projects, *overrides]
    return ["dvc", "stage", "add", "--force", "-n", f"train-{name}",
            *[a for d in deps for a in ("-d", d)],
            "-p", "train", "-o", f"data/models/{name}",
            "-O", f"conf/model/{name}.yaml", shlex.join(cmd)]


def add_train_stage(root: Path, name: str, projects: list[str], overrides: list[str]) -> str:
    """Register a training as a DVC stage; what to run next."""
    from backfill.config.errors import ConfigError

    proc = subprocess.run(train_stage_command(name, projects, overrides), cwd=root,
                          capture_output=True, text=True)
    if proc.returncode:
        raise ConfigError(f"dvc stage add failed: {proc.stderr.strip() or proc.stdout.strip()}")
    return (f"added stage train-{name} to dvc.yaml: `dvc repro train-{name}` trains it, and "
            "re-trains when its data or the train settings change.")
