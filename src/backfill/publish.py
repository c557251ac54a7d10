"""publish: apply a project's merge plan to its production DB, on request only.

First a verified online backup (SQLite's backup API, so a reviewer writing at the same
moment cannot tear it), then one IMMEDIATE transaction that re-checks every planned
value and applies the plan or nothing. The reviewer app may keep the DB open: it can
read throughout, and its writes wait (busy timeout) for the few milliseconds of commit.
"""

from __future__ import annotations

import os
import sqlite3
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from backfill.applyplan import PlanConflict, apply_changes, check_changes
from backfill.decisiondb import DecisionDBError, explain, open_production
from backfill.project import ConfigError, Project
from backfill.schemas import MergePlanTable
from backfill.tables import read_table

# Header fields the backup API rewrites in the copy (file change counter, schema cookie,
# version-valid-for); every other byte of the copy equals the DB it was taken from.
REWRITTEN_HEADER = [(24, 28), (40, 44), (92, 96)]


@dataclass
class Published:
    backup: Path | None
    applied: Counter
    rows_after: int


def _masked(image: bytes) -> bytes:
    data = bytearray(image)
    for start, end in REWRITTEN_HEADER:
        data[start:end] = bytes(end - start)
    return bytes(data)


def backup_path(db: Path, now: datetime) -> Path:
    stamp = now.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    path, n = db.with_name(f"{db.name}.backup-{stamp}"), 1
    while path.exists() or path.with_name(path.name + ".partial").exists():
        n += 1
        path = db.with_name(f"{db.name}.backup-{stamp}-{n}")
    return path


def verified_backup(db: Path, now: datetime | None = None) -> Path:
    """``<db>.backup-<UTC>``: taken with the backup API inside one read transaction, and
    compared byte for byte with what that transaction sees before it is kept."""
    target = backup_path(db, now or datetime.now(UTC))
    partial = target.with_name(target.name + ".partial")
    reader = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None)
    try:
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM sqlite_master").fetchone()  # pins the snapshot
        copy = sqlite3.connect(partial)
        reader.backup(copy)
        copy.close()
        image = reader.serialize()
        reader.execute("COMMIT")
    finally:
        reader.close()
    with open(partial, "rb") as f:
        data = f.read()
        os.fsync(f.fileno())
    if _masked(data) != _masked(image):
        partial.unlink()
        raise DecisionDBError(f"the backup of {db} did not match the DB byte for byte; "
                              "nothing was written. Check the disk, then publish again.")
    os.replace(partial, target)
    return target


def publish_plan(db: Path, changes: pd.DataFrame, lock_timeout: float = 10.0,
                 now: datetime | None = None) -> Published:
    """Back up ``db``, then apply ``changes`` in one transaction, or nothing at all."""
    open_production(db, lock_timeout).close()  # exists, is SQLite, has the table
    conn = sqlite3.connect(db, timeout=lock_timeout, isolation_level=None)
    try:
        try:
            conn.execute("BEGIN IMMEDIATE")  # no other writer until COMMIT; readers go on
            check_changes(conn, changes)  # before the backup: a stale plan leaves no trace
            backup = verified_backup(db, now) if len(changes) else None
            applied = apply_changes(conn, changes, checked=True)  # same transaction
            rows = conn.execute("SELECT count(*) FROM ai_decisions").fetchone()[0]
            conn.execute("COMMIT")
        except sqlite3.IntegrityError as exc:  # the DB is fine; the plan is not
            conn.execute("ROLLBACK")
            raise DecisionDBError(f"the plan breaks {db.name}'s constraints ({exc}); nothing "
                                  "was written. Re-plan with `dvc repro`, then publish again.")\
                from None
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise explain(exc, db) from None
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    finally:
        conn.close()
    return Published(backup, applied, rows)


def describe_plan(changes: pd.DataFrame, limit: int = 20) -> str:
    """The plan for a person: counts by rule and column, then the first changes."""
    if not len(changes):
        return "the plan is empty: production already holds everything the files show."
    counts = changes.groupby(["rule", "column"]).size().rename("changes").reset_index()
    lines = [f"{len(changes):,} planned changes:"]
    lines += [f"  {r.rule:<13} {r.column:<20} {r.changes:>8,}" for r in counts.itertuples()]
    shown = changes.head(limit)
    lines.append(f"first {len(shown)}:")
    for c in shown.itertuples():
        new = c.new if len(c.new) <= 60 else c.new[:57] + "..."
        lines.append(f"  {c.group_id}  {c.column}: {c.old} -> {new}  ({c.rule})")
    return "\n".join(lines)


def run_publish(project: Project, dry_run: bool) -> str:
    """`backfill publish NAME [--dry-run]`."""
    if not project.cfg.get("real_db"):
        raise ConfigError(
            f"project '{project.name}' has no real_db, so there is nothing to publish to. "
            f"Its merged DB is {project.out_dir / 'ai_decisions.db'}; to make that the "
            f"production DB, copy it and set real_db in conf/project/{project.name}.yaml.")
    db = project.path("real_db")
    changes = read_table(project.output("merge_plan"), MergePlanTable, "merge_plan")
    if dry_run:
        return (f"{describe_plan(changes)}\ndry run: {db} not touched. "
                f"`backfill publish {project.name}` backs it up and applies this plan.")
    try:
        done = publish_plan(db, changes, float(project.cfg.merge.lock_timeout_s))
    except PlanConflict as exc:
        raise DecisionDBError(str(exc).replace("<project>", project.name)) from None
    if done.backup is None:
        return f"nothing to publish: the plan for {project.name} is empty; {db} not touched."
    applied = ", ".join(f"{n:,} {rule}" for rule, n in sorted(done.applied.items()))
    return (f"published {project.name}: backed up {db.name} to {done.backup.name} (verified), "
            f"then applied {applied} in one transaction; {db} now holds "
            f"{done.rows_after:,} rows. Undo: copy the backup back over it.")
