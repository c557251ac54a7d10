"""publish: apply a project's merge plan to its production DB, on request only.

First a verified online backup (SQLite's backup API, so a reviewer writing at the same
moment cannot tear it), then one IMMEDIATE transaction that re-checks every planned
value and applies the plan or nothing. The reviewer app may keep the DB open: it can
read throughout, and its writes wait (busy timeout) for the few milliseconds of commit.

A publish that cannot finish (a full disk, a reader holding a transaction open) leaves
the DB untouched and no partial file; the backup it took is kept, and the next publish
reuses it as long as the DB has not changed since, so retries do not pile up backups.
"""

from __future__ import annotations

import os
import re
import sqlite3
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from backfill.config.errors import UserError
from backfill.config.project import Project
from backfill.contracts.plan import IDENTITY, SCHEMA_ROW, plan_identity, work, writes
from backfill.contracts.tables import read_stage_tables
from backfill.db.schema import (
    DecisionDBError,
    explain,
    identity,
    is_full,
    open_production,
    unwritable,
    write_blockers,
)
from backfill.files.atomic import free_text, is_disk_full, size_text
from backfill.production.apply import (
    PlanConflict,
    apply_changes,
    check_changes,
    refuse_blocked,
    refused,
)

# Header fields the backup API rewrites in the copy (file change counter, schema cookie,
# version-valid-for); every other byte of the copy equals the DB it was taken from.
REWRITTEN_HEADER = [(24, 28), (40, 44), (92, 96)]


@dataclass
class Published:
    backup: Path | None
    applied: Counter
    rows_after: int
    removed: list[Path] = field(default_factory=list)  # stale partial backups
    reused: bool = False  # the backup is an earlier one, of this same DB content


def leftover_partials(db: Path) -> list[Path]:
    """``<db>.backup-<UTC>[-n].partial`` files: backups an interrupted publish left
    half-written. Only names of exactly this form, which only this tool makes."""
    pattern = re.compile(re.escape(db.name) + r"\.backup-\d{8}T\d{6}Z(?:-\d+)?\.partial")
    try:
        found = [p for p in db.parent.iterdir() if pattern.fullmatch(p.name)]
    except OSError:
        return []
    return sorted(p for p in found if p.is_file() and not p.is_symlink())


def check_writable(db: Path) -> None:
    """Refuse, before any work, a DB or folder that cannot be written: publishing needs
    the DB, a journal beside it and a backup beside it."""
    for path, what in ((db, "the file is read-only"), (db.parent, "its folder is read-only")):
        if not os.access(path, os.W_OK):
            raise unwritable(db, what)


def _masked(image: bytes) -> bytes:
    data = bytearray(image)
    for start, end in REWRITTEN_HEADER:
        data[start:end] = bytes(end - start)
    return bytes(data)


def latest_backup(db: Path) -> Path | None:
    """The newest finished ``<db>.backup-<UTC>[-n]`` beside ``db``, if any."""
    pattern = re.compile(re.escape(db.name) + r"\.backup-(\d{8}T\d{6}Z)(?:-(\d+))?")
    try:
        found = [(m.group(1), int(m.group(2) or 1), p) for p in db.parent.iterdir()
                 if (m := pattern.fullmatch(p.name)) and p.is_file() and not p.is_symlink()]
    except OSError:
        return None
    return max(found, key=lambda f: f[:2])[2] if found else None


def _holds(backup: Path, image: bytes) -> bool:
    """Whether ``backup`` is a copy of ``image`` (the DB as it is now), byte for byte."""
    try:
        return backup.stat().st_size == len(image) and _masked(backup.read_bytes()) == \
            _masked(image)
    except OSError:
        return False


def backup_path(db: Path, now: datetime) -> Path:
    stamp = now.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    path, n = db.with_name(f"{db.name}.backup-{stamp}"), 1
    while path.exists() or path.with_name(path.name + ".partial").exists():
        n += 1
        path = db.with_name(f"{db.name}.backup-{stamp}-{n}")
    return path


def verified_backup(db: Path, now: datetime | None = None) -> tuple[Path, bool]:
    """``<db>.backup-<UTC>``: taken with the backup API inside one read transaction, and
    compared byte for byte with what that transaction sees before it is kept; or the
    latest backup, when it holds exactly what the DB holds now (True: reused)."""
    target = backup_path(db, now or datetime.now(UTC))
    partial = target.with_name(target.name + ".partial")
    reader = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None)
    try:
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM sqlite_master").fetchone()  # pins the snapshot
        image = reader.serialize()
        latest = latest_backup(db)
        if latest is not None and _holds(latest, image):
            reader.execute("COMMIT")
            return latest, True  # an earlier try's backup: nothing changed since
        try:
            copy = sqlite3.connect(partial)
            try:
                reader.backup(copy)
            finally:
                copy.close()
            reader.execute("COMMIT")
            with open(partial, "rb") as f:
                data = f.read()
                os.fsync(f.fileno())
        except BaseException:
            partial.unlink(missing_ok=True)  # a half backup is no backup: leave none
            raise
    finally:
        reader.close()
    if _masked(data) != _masked(image):
        partial.unlink()
        raise DecisionDBError(f"the backup of {db} did not match the DB byte for byte; "
                              "nothing was written. Check the disk, then publish again.")
    os.replace(partial, target)
    return target, False


def no_room(db: Path, step: str, backup: Path | None) -> DecisionDBError:
    """A full disk at publish: the DB is intact, so restoring a backup would only lose
    the writes made since; say what needs how much room instead."""
    size = size_text(db.stat().st_size)
    free = free_text(db.parent)
    need = (f"its backup needs {size} (the DB's size)" if step == "backup" else
            f"the transaction needs room for its journal, up to {size} (the DB's size), "
            "and for the new rows")
    kept = (f"; the backup {backup.name} is kept, and the next publish reuses it"
            if backup is not None else "")
    return DecisionDBError(
        f"the disk holding {db} is full: {need}{f' ({free} now)' if free else ''}. Nothing "
        f"was written and the DB is untouched (no need to restore a backup){kept}. Free at "
        f"least {size} on that disk, then publish again.")


def held_open(db: Path, timeout: float, backup: Path | None) -> DecisionDBError:
    """Publish holds the write lock, but a reader's open transaction keeps the commit
    from replacing pages it may still read."""
    kept = (f"; the backup {backup.name} is kept, and the next publish reuses it while "
            "the DB is unchanged" if backup is not None else "")
    return DecisionDBError(
        f"another program keeps a read transaction open on {db} (the reviewer app?), so "
        f"the publish could not commit within {timeout:g} s: nothing was written and "
        f"the DB is untouched{kept}. Close that program or let it finish reading, then "
        "publish again.")


def publish_plan(db: Path, changes: pd.DataFrame, lock_timeout: float = 10.0,
                 now: datetime | None = None) -> Published:
    """Back up ``db``, then apply ``changes`` in one transaction, or nothing at all; and
    remove the partial backups an interrupted publish left (``removed``)."""
    open_production(db, lock_timeout).close()  # exists, is SQLite, has the table
    check_writable(db)
    changes = work(changes)
    conn = sqlite3.connect(db, timeout=lock_timeout, isolation_level=None)
    step, backup, reused = "lock", None, False
    try:
        try:
            conn.execute("BEGIN IMMEDIATE")  # no other writer until COMMIT; readers go on
            # A publish writes its backup only while it holds this lock, so any partial
            # backup found now is one a killed publish left: stale.
            removed = leftover_partials(db)
            for path in removed:
                path.unlink(missing_ok=True)
            check_changes(conn, changes)  # before the backup: a stale plan leaves no trace
            refuse_blocked(write_blockers(conn), changes, db)  # a newer app's schema: same
            step = "backup"
            if len(changes):
                backup, reused = verified_backup(db, now)
            step = "transaction"
            applied = apply_changes(conn, changes, checked=True)  # same transaction
            rows = conn.execute("SELECT count(*) FROM ai_decisions").fetchone()[0]
            conn.execute("COMMIT")
        except sqlite3.IntegrityError as exc:  # the premises held: the DB's own rule
            conn.execute("ROLLBACK")
            if backup is not None and not reused:  # of a DB left as it was: no trace
                backup.unlink(missing_ok=True)
            raise refused(db, exc) from None
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if is_full(exc):
                raise no_room(db, step, backup) from None
            if step != "lock" and ("locked" in str(exc) or "busy" in str(exc)):
                # This publish holds the only write lock: what blocks it is a reader.
                raise held_open(db, lock_timeout, backup) from None
            raise explain(exc, db, writing=True) from None
        except OSError as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if is_disk_full(exc):
                raise no_room(db, step, backup) from None
            if isinstance(exc, PermissionError):  # the backup beside it could not be made
                raise unwritable(db, f"{exc.strerror}: {exc.filename}") from None
            raise
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    finally:
        conn.close()
    return Published(backup, applied, rows, removed, reused)


def describe_plan(changes: pd.DataFrame, limit: int = 20) -> str:
    """The plan for a person: counts by rule and column, then the first changes. The
    live rows as seen are premises publish re-checks, not changes: neither counted nor
    shown; a new row is one line, not its every cell."""
    changes = writes(changes)
    if not len(changes):
        return "the plan is empty: production already holds everything the files show."
    counts = changes.groupby(["rule", "column"]).size().rename("changes").reset_index()
    lines = [f"{len(changes):,} planned changes:"]
    lines += [f"  {r.rule:<13} {'(new row)' if r.column == '*' else r.column:<20} "
              f"{r.changes:>8,}" for r in counts.itertuples()]
    shown = changes.head(limit)
    lines.append(f"first {len(shown)}:")
    for c in shown.itertuples():
        if c.column == "*":
            lines.append(f"  {c.group_id}  a new row  ({c.rule})")
            continue
        new = c.new if len(c.new) <= 60 else c.new[:57] + "..."
        lines.append(f"  {c.group_id}  {c.column}: {c.old} -> {new}  ({c.rule})")
    return "\n".join(lines)


def check_identity(project: Project, db: Path, changes) -> None:
    """Refuse a plan made against another production DB than ``db`` (real_db changed
    since the merge: its rows are another DB's premises, and its new rows this
    project's), or one that does not say which DB it was made against."""
    planned = plan_identity(changes)
    redo = f"Run `dvc repro merge@{project.name}` to plan against {db}, then publish."
    if planned is None:
        raise UserError(f"the merge plan of '{project.name}' does not say which production "
                          f"DB it was planned against (rule '{IDENTITY}'): nothing was "
                          f"written. {redo}")
    # Compared resolved here: the plan holds real_db as configured (relative to the
    # repository when inside it), so a clone in another folder plans the same bytes.
    made = planned["path"] and project.locate(planned["path"]).resolve()
    if made != db.resolve():
        raise UserError(f"the merge plan of '{project.name}' was made against "
                          f"{made or 'no production DB'}, but real_db is now {db}: "
                          f"nothing was written. {redo}")


def planned_rows(changes: pd.DataFrame) -> int:
    """Production rows the plan would add or change: every group a change proper writes
    ('seen' rows only record what the plan saw; table migrations are not rows)."""
    written = writes(changes)
    return int(written.loc[written["group_id"] != SCHEMA_ROW, "group_id"].nunique())


def plan_is_current(project: Project, db: Path, changes: pd.DataFrame) -> bool:
    """Whether ``db`` still holds the rows the plan was made against (read-only): when
    not, it was written since (a publish, the reviewer app) and publishing re-checks."""
    planned = plan_identity(changes)
    with open_production(db, project.settings.merge.lock_timeout_s) as conn:
        now = identity(conn, planned["path"])  # the same DB (checked): by its rows
    conn.close()
    return now == planned


@dataclass(frozen=True)
class Waiting:
    """What `backfill publish NAME` would write now, as its dry run decides it."""

    rows: int
    current: bool | None  # the DB unchanged since planning; None: it cannot be read


def waiting(project: Project) -> Waiting | None:
    """The rows the merge plan would write to the production DB; None when there is no
    real_db or no plan yet. Reads the DB read-only, as the dry run does."""
    if not project.cfg.get("real_db") or not project.output("merge_plan").exists():
        return None
    db = project.path("real_db")
    changes = read_stage_tables(project, ["merge_plan"])["merge_plan"]
    try:
        check_identity(project, db, changes)
        current: bool | None = plan_is_current(project, db, changes)
    except (UserError, DecisionDBError):
        current = None  # planned against another DB, or one that cannot be read now
    return Waiting(planned_rows(changes), current)


def run_publish(project: Project, dry_run: bool) -> str:
    """`backfill publish NAME [--dry-run]`."""
    if not project.cfg.get("real_db"):
        raise UserError(
            f"project '{project.name}' has no real_db, so there is nothing to publish to. "
            f"Its merged DB is {project.merged_db}; to make that the "
            f"production DB, copy it and set real_db in conf/project/{project.name}.yaml.")
    db = project.path("real_db")
    changes = read_stage_tables(project, ["merge_plan"])["merge_plan"]
    check_identity(project, db, changes)
    if dry_run:
        planned = plan_identity(changes)
        moved = ("; unchanged since" if plan_is_current(project, db, changes) else
                 "; it has changed since (rows written or altered): publishing re-checks "
                 "every planned value and refuses if one moved")
        partials = leftover_partials(db)
        stale = (f"\n{len(partials)} partial backup(s) from an interrupted publish "
                 f"({', '.join(p.name for p in partials)}): publish removes them."
                 if partials else "")
        return (f"{describe_plan(changes)}\nplanned against {db} ({planned['rows']:,} rows)"
                f"{moved}.\ndry run: {db} not touched. "
                f"`backfill publish {project.name}` backs it up and applies this plan.{stale}")
    try:
        done = publish_plan(db, changes, project.settings.merge.lock_timeout_s)
    except PlanConflict as exc:
        raise DecisionDBError(str(exc).replace("<project>", project.name)) from None
    cleaned = (f" Removed {len(done.removed)} partial backup(s) an interrupted publish left: "
               f"{', '.join(p.name for p in done.removed)}." if done.removed else "")
    if done.backup is None:
        return (f"nothing to publish: the plan for {project.name} is empty; {db} not "
                f"touched.{cleaned}")
    applied = ", ".join(f"{n:,} {rule}" for rule, n in sorted(done.applied.items()))
    backed = (f"{db.name} unchanged since its backup {done.backup.name} (verified again)"
              if done.reused else f"backed up {db.name} to {done.backup.name} (verified)")
    return (f"published {project.name}: {backed}, "
            f"then applied {applied} in one transaction; {db} now holds "
            f"{done.rows_after:,} rows. Undo: copy the backup back over it.{cleaned}")
