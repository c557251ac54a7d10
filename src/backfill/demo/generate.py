"""`backfill demo generate`: the demo project's images and partial production DB, in a
folder this command made (or a new one). It never deletes what it did not create."""

from __future__ import annotations

import shutil
from pathlib import Path

from backfill.config.errors import UserError
from backfill.demo.production import make_production_db
from backfill.demo.synthetic import make_project

DEMO_MARK = ".backfill-demo"  # written first into every folder the demo generates


def is_demo(out: Path) -> bool:
    """A folder this command made: only its mark says so (a real project can hold
    original/ and final/ too)."""
    return (out / DEMO_MARK).is_file()


def generate(out: Path, groups: int, seed: int, force: bool = False) -> str:
    """Write the demo project into ``out`` (once, unless ``force``); what was done."""
    live = out / "live" / "ai_decisions.db"
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file: choose a new or empty folder.")
    if out.is_dir() and any(out.iterdir()) and not is_demo(out):
        raise UserError(f"--out {out} is not empty and holds no demo made by backfill "
                          f"(no {DEMO_MARK}): nothing was deleted. Choose a new or empty "
                          "folder.")
    if (out / "truth.json").exists() and live.exists() and not force:
        return f"demo project already in {out} (pass --force to regenerate)"
    out.mkdir(parents=True, exist_ok=True)
    (out / DEMO_MARK).write_text("made by `backfill demo generate`; safe to regenerate\n")
    for folder in ("original", "final", "live"):  # ours (checked above): no stale files
        shutil.rmtree(out / folder, ignore_errors=True)
    project = make_project(out, n_groups=groups, seed=seed)
    logged = make_production_db(project, live, seed=seed)
    n_files = sum(len(g.rel_paths) for g in project.groups)
    return (f"generated demo project in {out}: {len(project.groups)} groups, {n_files} "
            f"renders, {len(project.bad_files)} bad files; a partial production DB of "
            f"{len(logged.rows)} rows in {live} (as the reviewer would have logged them)")
