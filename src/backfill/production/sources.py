"""The production side of a merge: reading the project's live decision records (the DB
named by ``real_db``, a legacy CSV log, the reviewer's sidecars) and writing the merged
DB the pipeline emits. Production itself is only ever opened read-only here.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from backfill.config.errors import UserError
from backfill.config.project import Project
from backfill.contracts.plan import ISSUE_COLUMNS, MergePlan
from backfill.db.cells import name_keys
from backfill.db.schema import (
    COLUMNS,
    PROVENANCE_COLUMNS,
    Blocker,
    create,
    explain,
    identity,
    is_full,
    open_production,
    read_rows,
    write_blockers,
)
from backfill.files.atomic import disk_full, is_disk_full, temp_beside
from backfill.production.apply import apply_changes, refused
from backfill.production.legacy import crop_acceptance, read_decisions_csv, read_review_folders


@dataclass
class Production:
    rows: pd.DataFrame  # COLUMNS: the DB's rows, then CSV rows the DB does not hold
    db_path: Path | None
    missing_columns: list[str] = field(default_factory=list)
    imported: set[str] = field(default_factory=set)  # group ids from the CSV only
    issues: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=ISSUE_COLUMNS))
    identity: dict | None = None  # the DB read (db.schema.identity), for the plan
    blockers: list[Blocker] = field(default_factory=list)  # a newer app's schema (apply)


def _names(images: pd.Series) -> pd.Series:
    return images.map(name_keys)


def _optional_path(project: Project, key: str) -> Path | None:
    return project.path(key) if project.cfg.get(key) else None


def load_production(project: Project) -> Production:
    """The production records of a project: its DB (read-only) and its legacy CSV."""
    db_path = _optional_path(project, "real_db")
    if db_path is not None:
        timeout = project.settings.merge.lock_timeout_s
        conn = open_production(db_path, timeout)
        try:
            conn.execute("BEGIN")  # one snapshot: the rows and their fingerprint agree
            rows, missing = read_rows(conn)
            read = identity(conn, project.recorded("real_db"))
            blockers = write_blockers(conn)
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise explain(exc, db_path) from None
        finally:
            conn.close()
    else:
        rows, missing = pd.DataFrame({c: pd.Series(dtype=object) for c in COLUMNS}), []
        read, blockers = identity(None, None), []
    csv_path = _optional_path(project, "legacy_csv")
    if csv_path is None:
        return Production(rows, db_path, missing, identity=read, blockers=blockers)
    if not csv_path.is_file():
        raise UserError(f"legacy_csv {csv_path} does not exist: fix the path in "
                          f"conf/project/{project.name}.yaml or set it to null.")
    try:
        legacy, problems = read_decisions_csv(csv_path, project.name)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    # The DB is the live record: a CSV row it already holds (same id, or a shared image
    # name) is reported, not merged a second time.
    held = set().union(*_names(rows["images"])) if len(rows) else set()
    dup = legacy["group_id"].isin(rows["group_id"]) | _names(legacy["images"]).map(
        lambda n: bool(n & held))
    issues = pd.concat([
        pd.DataFrame({"kind": "legacy_invalid", "group_id": problems["group_id"],
                      "detail": problems["detail"]}, columns=ISSUE_COLUMNS),
        pd.DataFrame({"kind": "legacy_duplicate", "group_id": legacy.loc[dup, "group_id"],
                      "detail": f"{csv_path.name}: already in the production DB"},
                     columns=ISSUE_COLUMNS)], ignore_index=True)
    legacy = legacy[~dup]
    both = pd.concat([rows, legacy[COLUMNS].astype(object)], ignore_index=True)
    return Production(both, db_path, missing, set(legacy["group_id"]), issues, read, blockers)


def review_rule(project: Project) -> tuple[Callable[[pd.DataFrame], pd.Series] | None,
                                           pd.DataFrame]:
    """The v3 decisions plan's ai_crop_accepted rule over the project's review
    folders, if it has any."""
    root = _optional_path(project, "review_dir")
    if root is None:
        return None, pd.DataFrame(columns=ISSUE_COLUMNS)
    if not root.is_dir():
        raise UserError(f"review_dir {root} is not a folder: fix it in "
                          f"conf/project/{project.name}.yaml or set it to null.")
    cfg = project.cfg.merge
    folders, problems = read_review_folders(root, [cfg.accepted_folder, cfg.declined_folder],
                                            list(project.cfg.scan.extensions))
    issues = pd.DataFrame({"kind": "sidecar_unreadable", "group_id": "", "detail": problems},
                          columns=ISSUE_COLUMNS)
    return (lambda rows: crop_acceptance(rows, folders, cfg.accepted_folder,
                                         cfg.declined_folder)), issues


def write_merged_db(out: Path, production_db: Path | None, plan: MergePlan,
                    provenance: pd.DataFrame, timeout: float = 10.0) -> None:
    """The merged DB: a copy of production (SQLite's backup API, consistent while the
    reviewer writes) or a fresh v3 DB, with the plan applied exactly as publish would,
    plus the v3 indexes and views where missing and the provenance side table."""
    tmp = temp_beside(out)
    tmp.unlink(missing_ok=True)
    dst = sqlite3.connect(tmp, isolation_level=None)
    try:
        if production_db is not None:
            src = open_production(production_db, timeout)
            src.backup(dst)
            src.close()
            dst.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
        dst.execute("BEGIN IMMEDIATE")
        if production_db is None:
            create(dst)
        apply_changes(dst, plan.changes)
        create(dst)  # indexes, views and the side table (a copy keeps its own table)
        dst.executemany(
            f"INSERT INTO backfill_provenance ({', '.join(PROVENANCE_COLUMNS)}) VALUES "
            f"({', '.join('?' * len(PROVENANCE_COLUMNS))})",
            provenance.astype(object).where(provenance.notna(), None).itertuples(index=False))
        dst.execute("COMMIT")
    except BaseException as exc:
        dst.close()
        tmp.unlink(missing_ok=True)
        if (isinstance(exc, sqlite3.Error) and is_full(exc)) or is_disk_full(exc):
            raise disk_full(out) from None
        if isinstance(exc, sqlite3.IntegrityError):  # the copy keeps production's rules
            raise refused(production_db, exc) from None
        raise
    dst.close()
    os.replace(tmp, out)
