"""Registering projects: one conf/project/<name>.yaml each, listed in conf/config.yaml."""

from __future__ import annotations

import difflib
import os
from pathlib import Path

from omegaconf import OmegaConf

from backfill.config.errors import UserError
from backfill.config.project import name_problem, registered_names, write_params
from backfill.config.settings import escape
from backfill.models.versions import check_version_name

_ENTRY = "  - project@projects.{name}: {name}\n"


def check_overrides(root: Path, overrides: list[str]) -> dict:
    """Parse KEY=VALUE overrides (YAML values) and reject keys the pipeline does not have."""
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise UserError(f"overrides must look like KEY=VALUE, e.g. group.lookahead=25: {bad}")
    parsed = OmegaConf.from_dotlist(overrides)
    defaults = OmegaConf.load(root / "conf" / "pipeline" / "default.yaml")
    known = {k for k, _ in _leaves(OmegaConf.to_container(defaults), "")}
    for key, _ in _leaves(OmegaConf.to_container(parsed), ""):
        if key not in known:
            hint = difflib.get_close_matches(key, sorted(known), n=1)
            tip = f"; did you mean {hint[0]}?" if hint else ""
            raise UserError(
                f"unknown setting '{key}'{tip} (see conf/pipeline/default.yaml)"
            )
    return OmegaConf.to_container(parsed)


def _leaves(tree: dict, prefix: str):
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            yield from _leaves(value, path + ".")
        else:
            yield path, value


def project_yaml(name: str, original_dir: str, final_dir: str, real_db: str | None,
                 overrides: dict, model: str = "baseline", legacy_csv: str | None = None,
                 review_dir: str | None = None) -> str:
    paths = {"original_dir": original_dir, "final_dir": final_dir, "real_db": real_db,
             "legacy_csv": legacy_csv, "review_dir": review_dir}
    # A folder may be named like an interpolation (`${x}`): stored literally.
    body = {k: None if v is None else escape(v) for k, v in paths.items()}
    body.update(overrides)
    return (
        f"# Project {name}, registered by `backfill project add`. Paths are absolute or\n"
        "# relative to the repository root; any setting of conf/pipeline/default.yaml\n"
        "# can be overridden here. The model version (conf/model/<version>.yaml) is the one\n"
        "# whose predictions the pipeline records.\n"
        "defaults:\n"
        "  - /pipeline/default@_here_\n"
        f"  - /model@model: {model}\n"
        "  - _self_\n\n"
        + OmegaConf.to_yaml(OmegaConf.create(body))
    )


def config_path(value: str | Path, root: Path) -> str:
    """A path as the user typed it (relative to the working folder), stored relative to
    the repository root when it lies inside, so the config moves with the repository."""
    p = Path(value).expanduser()
    p = p if p.is_absolute() else Path.cwd() / p
    p = Path(os.path.normpath(p))
    try:
        return p.relative_to(root).as_posix()
    except ValueError:
        return str(p)


def registered(root: Path) -> list[str]:
    return registered_names(root)


def _register(root: Path, name: str) -> None:
    """Append the project to conf/config.yaml's defaults list, keeping its comments."""
    path = root / "conf" / "config.yaml"
    lines = path.read_text().splitlines(keepends=True)
    try:
        start = next(i for i, line in enumerate(lines) if line.startswith("defaults:"))
    except StopIteration:
        raise UserError(f"{path} has no 'defaults:' list to register projects in.") from None
    end = start + 1
    while end < len(lines) and lines[end].lstrip().startswith("-"):
        end += 1
    lines.insert(end, _ENTRY.format(name=name))
    path.write_text("".join(lines))


def add_project(root: Path, name: str, original_dir: str, final_dir: str,
                real_db: str | None = None, overrides: list[str] | None = None,
                force: bool = False, model: str = "baseline", legacy_csv: str | None = None,
                review_dir: str | None = None, compose_params: bool = True) -> Path:
    """Write conf/project/<name>.yaml, register it, and compose params.yaml.

    ``compose_params=False`` skips composing (near a second each with 20 projects): a
    caller registering many projects composes once at the end, and restores the configs
    if that fails."""
    existing = [*registered(root), *(p.stem for p in (root / "conf" / "project").glob("*.yaml"))]
    problem = name_problem(name, existing)
    if problem:
        raise UserError(problem)
    path = root / "conf" / "project" / f"{name}.yaml"
    if path.exists() and not force:
        raise UserError(f"{path.relative_to(root)} exists: pass --force to replace it.")
    for label, given, kind in (("--original-dir", original_dir, "folder"),
                               ("--final-dir", final_dir, "folder"),
                               ("--real-db", real_db, "file"), ("--legacy-csv", legacy_csv, "file"),
                               ("--review-dir", review_dir, "folder")):
        if given is None:
            continue
        p = Path(given).expanduser()
        p = p if p.is_absolute() else root / p
        if not (p.is_dir() if kind == "folder" else p.is_file()):
            raise UserError(f"{label} {given} is not a {kind}.")
    check_version_name(root, model)
    values = check_overrides(root, overrides or [])
    previous = path.read_text() if path.exists() else None
    path.write_text(project_yaml(name, original_dir, final_dir, real_db, values, model,
                                 legacy_csv, review_dir))
    added = name not in registered(root)
    if added:
        _register(root, name)
    if not compose_params:
        return path
    try:
        write_params(root)  # types, ranges, layout checked before params.yaml is touched
    except BaseException as exc:  # Ctrl-C too: conf/ is left as it was
        if previous is None:
            path.unlink()
        else:
            path.write_text(previous)
        if added:
            cfg = root / "conf" / "config.yaml"
            cfg.write_text(cfg.read_text().replace(_ENTRY.format(name=name), ""))
        if isinstance(exc, UserError | KeyboardInterrupt):
            raise
        raise UserError(f"the project's config does not compose: {exc}") from exc
    return path
