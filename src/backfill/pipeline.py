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
import re
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
    Stage("extract", "stages.extract", ("stages/extract", "executors", "review/store.py",
                                        "review/queue.py", "review/apply.py"),
          "recover each group's decision from the final folder; apply your review answers"),
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


def train_stage(name: str, projects: list[str], overrides: list[str]) -> dict:
    """Stage ``train-<name>`` as dvc.yaml holds it, training version ``name`` on
    ``projects``: deps and outs exact, so `dvc repro train-<name>` re-trains when its data,
    code or settings change, and feeds the predictions of the projects that use it."""
    deps = [f"{SRC}/{c}" for c in (*TRAIN_CODE, *SHARED)]
    deps += [f"data/{p}/{t}.parquet" for p in projects for t in TRAIN_TABLES]
    cmd = ["backfill", "train", name, "--force", "--projects", *projects, *overrides]
    # persist: DVC deletes a stage's outputs before running it, and a project that uses
    # the version could not even be composed without its conf/model/<name>.yaml.
    config = {f"conf/model/{name}.yaml": {"cache": False, "persist": True}}
    return {"cmd": shlex.join(cmd), "deps": deps, "params": ["train"],
            "outs": [f"data/models/{name}", config]}


def with_stage(text: str, name: str, stage: dict) -> str:
    """dvc.yaml's ``text`` with stage ``name`` set to ``stage``, every other line kept as
    it is (DVC's own `dvc stage add` re-indents the whole file): an existing stage of
    that name is replaced in place, a new one goes at the end of ``stages:``."""
    import yaml

    from backfill.config.errors import UserError

    class Indented(yaml.SafeDumper):  # lists indented under their key, as dvc.yaml's are
        def increase_indent(self, flow: bool = False, indentless: bool = False):
            return super().increase_indent(flow, False)

    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    at = next((i for i, line in enumerate(lines) if re.match(r"stages:\s*(#.*)?$", line)),
              None)
    if at is None:
        if any(line.startswith("stages:") for line in lines):
            raise UserError("dvc.yaml's stages are not a block mapping: add the stage by hand.")
        lines += ["stages:\n"]
        at = len(lines) - 1
    # The stages block: up to the next top-level line (a key or a comment at column 0).
    end = next((i for i in range(at + 1, len(lines)) if re.match(r"[^\s]", lines[i])),
               len(lines))
    firsts = [line for line in lines[at + 1:end] if re.match(r" +[^\s#]", line)]
    indent = " " * (len(firsts[0]) - len(firsts[0].lstrip(" "))) if firsts else "  "
    body = yaml.dump({name: stage}, Dumper=Indented, sort_keys=False, width=10**6,
                     default_flow_style=False, allow_unicode=True)
    block = [indent + line + "\n" for line in body.splitlines()]
    start = next((i for i in range(at + 1, end)
                  if re.match(rf"{indent}{re.escape(name)}:\s*(#.*)?$", lines[i])), None)
    if start is not None:  # replaced: up to the next line at the stage's indent or less
        stop = next((i for i in range(start + 1, end)
                     if re.match(rf" {{0,{len(indent)}}}[^\s]", lines[i])), end)
        while stop > start + 1 and not lines[stop - 1].strip():
            stop -= 1
        new = lines[:start] + block + lines[stop:]
    else:  # appended after the last stage, one blank line apart as the others are
        stop = end
        while stop > at + 1 and not lines[stop - 1].strip():
            stop -= 1
        gap = ["\n"] if stop > at + 1 else []
        new = lines[:stop] + gap + block + lines[stop:]
    out = "".join(new)
    # What YAML reads must be the old file plus this stage, nothing else.
    old_doc, new_doc = yaml.safe_load(text) or {}, yaml.safe_load(out)
    want = {**old_doc, "stages": {**(old_doc.get("stages") or {}), name: stage}}
    if new_doc != want:
        raise UserError(f"could not add stage {name} to dvc.yaml without changing other "
                          "lines: add it by hand.")
    return out


def add_train_stage(root: Path, name: str, projects: list[str], overrides: list[str]) -> str:
    """Register a training as a DVC stage (replacing one of that name); what to run next."""
    from backfill.config.errors import UserError
    from backfill.config.project import NAME_PATTERN
    from backfill.files.atomic import write_text

    if not NAME_PATTERN.match(name):
        raise UserError(f"version name '{name}' must be letters, digits, '_' or '-'.")
    path = root / "dvc.yaml"
    before = path.read_text(encoding="utf-8")
    write_text(with_stage(before, f"train-{name}", train_stage(name, projects, overrides)), path)
    # DVC's own check of the whole pipeline (overlapping outputs, cycles); undone if it fails.
    proc = subprocess.run(["dvc", "dag", "--dot"], cwd=root,
                          capture_output=True, text=True)
    if proc.returncode:
        write_text(before, path)
        raise UserError(f"dvc rejects stage train-{name}: "
                          f"{proc.stderr.strip() or proc.stdout.strip()}")
    return (f"added stage train-{name} to dvc.yaml: `dvc repro train-{name}` trains it, and "
            "re-trains when its data or the train settings change.")
