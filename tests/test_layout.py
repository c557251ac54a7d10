"""The layout holds: dvc.yaml, the CLI and pipeline.STAGES agree; each stage's code deps
cover every module it imports; no module imports itself round a cycle; each DB cell
format is written out in one module only."""

from __future__ import annotations

import re
from pathlib import Path

import grimp
import pytest
import yaml

from backfill.cli import backfill
from backfill.contracts.tables import STAGE_OF
from backfill.pipeline import SRC, STAGES, TRAIN_CODE, train_stage

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "backfill"


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph("backfill")


@pytest.fixture(scope="module")
def dvc_stages() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def module_file(name: str) -> Path:
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def test_dvc_yaml_has_exactly_the_registered_stages(dvc_stages):
    assert list(dvc_stages) == ["watch", *(s.name for s in STAGES)]
    for stage in STAGES:
        do = dvc_stages[stage.name]["do"]
        assert do["cmd"] == f"backfill {stage.name} ${{key}}"
        code = [d for d in do["deps"] if d.startswith(SRC)]
        assert code == stage.deps, f"dvc.yaml's {stage.name} deps differ from pipeline.STAGES"
        for dep in code:
            assert (REPO / dep).exists(), dep


def test_each_table_is_an_output_of_the_stage_that_writes_it(dvc_stages):
    for table, stage in STAGE_OF.items():
        # An output is a path, or {path: options} (scan's persist: true).
        outs = [o if isinstance(o, str) else next(iter(o)) for o in dvc_stages[stage]["do"]["outs"]]
        assert f"data/${{key}}/{table}.parquet" in outs, (table, stage)


def test_the_cli_has_one_subcommand_per_stage():
    for stage in STAGES:
        command = backfill.commands[stage.name]
        assert [p.name for p in command.params] == ["project"], stage.name


def _declared(do: dict) -> set[str]:
    """Every path a stage declares it writes: outs, metrics and plots."""
    entries = [*do.get("outs", []), *do.get("metrics", []), *do.get("plots", [])]
    return {e if isinstance(e, str) else next(iter(e)) for e in entries}


def test_every_file_a_project_names_is_declared_by_the_stage_that_writes_it(dvc_stages):
    from types import SimpleNamespace

    from backfill.config.project import (
        MERGE_SUMMARY,
        METRICS,
        MODEL_METRICS,
        PLOTS,
        Project,
    )

    project = Project("${key}", REPO, SimpleNamespace(), REPO)
    written = {"merge": [project.merged_db, project.metrics(MERGE_SUMMARY)],
               "validate": [project.report, project.metrics(METRICS),
                            *(project.metrics(f"plots/{name}.csv") for name in PLOTS)],
               "predict": [project.metrics(MODEL_METRICS)]}
    for stage, paths in written.items():
        declared = _declared(dvc_stages[stage]["do"])
        for path in paths:
            assert path.relative_to(REPO).as_posix() in declared, (stage, path)
    # and nothing declared is left unnamed: every metrics and plots file is one of them
    named = {p.relative_to(REPO).as_posix() for paths in written.values() for p in paths}
    for stage in written:
        do = dvc_stages[stage]["do"]
        for entry in [*do.get("metrics", []), *do.get("plots", [])]:
            assert (entry if isinstance(entry, str) else next(iter(entry))) in named, entry


def _covered(path: Path, deps: list[str]) -> bool:
    rel = path.relative_to(REPO).as_posix()
    return any(rel == d or rel.startswith(d + "/") for d in deps)


def _bare_init(path: Path) -> bool:
    """A package's __init__ holding only its docstring: importing it runs no code."""
    return path.name == "__init__.py" and "import" not in path.read_text()


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.name)
def test_a_stage_imports_only_what_its_deps_cover(graph, stage):
    module = f"backfill.{stage.module}"
    used = {module, *graph.find_upstream_modules(module)}
    if module_file(module).name == "__init__.py":  # a stage package: all of it runs
        used |= {m for m in graph.modules if m.startswith(module + ".")}
        used |= {u for m in list(used) for u in graph.find_upstream_modules(m)}
    outside = sorted(m for m in used if not _covered(module_file(m), stage.deps)
                     and not _bare_init(module_file(m)))
    assert not outside, f"{stage.name} imports {outside}, which its dvc.yaml deps miss"


def test_the_train_stage_depends_on_what_training_imports(graph):
    deps = [d for d in train_stage("v", ["p"], [])["deps"] if d.startswith(SRC)]
    used = {"backfill.models.train", *graph.find_upstream_modules("backfill.models.train")}
    outside = sorted(m for m in used if not _covered(module_file(m), deps)
                     and not _bare_init(module_file(m)))
    assert not outside
    assert f"{SRC}/{TRAIN_CODE[0]}" in deps


def test_no_import_cycles(graph):
    """Tarjan's strongly connected components over every import, lazy ones included."""
    index, low, stack, on, cycles = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.find_modules_directly_imported_by(v):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    # A package's __init__ re-exporting its own modules is not a cycle of code.
    cycles = [c for c in cycles
              if not all(m.startswith(c[0] + ".") or m == c[0] for m in c)]
    assert not cycles


# Each cell format's tell-tale, and the one module allowed to write it out.
ONE_HOME = {
    r"round\(float\(v\), ": "db/cells.py",  # a box
    r"%Y-%m-%dT%H:%M:%SZ": "db/cells.py",  # a DB time
    r"ast\.literal_eval": "db/cells.py",  # an older tool's images list
    r'"true": True': "db/cells.py",  # a flag as text
    r'^ACTIONS = ': "db/schema.py",  # the actions the CHECK allows
    r"object_hook=": "contracts/plan.py",  # a plan value
    r"indent=2, sort_keys=True": "files/atomic.py",  # a metrics file
}


@pytest.mark.parametrize("pattern", ONE_HOME)
def test_each_format_is_written_out_once(pattern):
    homes = sorted(p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py")
                   if re.search(pattern, p.read_text(), re.M))
    assert homes == [ONE_HOME[pattern]]



def test_the_watch_stage_stamps_what_scan_and_merge_read_from_outside(dvc_stages):
    """One always-run stage for every project (its YAML lock rewritten once per repro,
    not once per project); each stage that reads from outside depends on its stamp."""
    from backfill.watch import STAMPS, WATCHED

    watch = dvc_stages["watch"]
    assert watch["cmd"] == "backfill watch" and watch["always_changed"] is True
    assert [next(iter(o)) for o in watch["outs"]] == [STAMPS.as_posix()]
    assert [n for n, s in dvc_stages.items() if s.get("always_changed")
            or s.get("do", {}).get("always_changed")] == ["watch"]
    for name in WATCHED:
        assert f"{STAMPS.as_posix()}/${{key}}/{name}.json" in dvc_stages[name]["do"]["deps"]
