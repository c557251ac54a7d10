"""Which projects a command works on: those named, or every registered one."""

from __future__ import annotations

import sys
from pathlib import Path

from backfill.config.errors import UserError
from backfill.config.project import Project, check_params_fresh, load_project
from backfill.projects.registry import registered


def readable(names: list[str], root: Path, warn: bool = True) -> tuple[list[Project], int]:
    """The projects named (all registered: none named), each judged on its own config: a
    project whose config is broken is one line on stderr (unless not ``warn``) and the
    others are still returned, with the number skipped. One project named: its error is
    the error."""
    names = names or registered(root)
    if len(names) == 1:
        return [load_project(names[0], root, alone=True)], 0
    try:  # the common case, one composition for all (or none: conf/ did not change)
        check_params_fresh(root)
        alone = False
    except UserError:
        alone = True
    projects, skipped = [], 0
    for name in names:
        try:
            projects.append(load_project(name, root, alone=alone))
        except UserError as exc:
            if warn:
                print(f"backfill: warning: project '{name}' skipped: {exc}", file=sys.stderr)
            skipped += 1
    return projects, skipped


def named(root: Path, names: list[str] | tuple[str, ...]) -> list[Project]:
    """The projects named, or every registered one; any broken config is the error (the
    command's result would be wrong without it)."""
    names = list(names) or registered(root)
    if not names:
        raise UserError("no projects registered: `backfill project add` first.")
    return [load_project(name, root) for name in names]
