"""Applying a merge plan to a decision DB, inside the caller's transaction.

The same code builds the pipeline's merged DB (on a copy) and publishes to production,
so what `dvc repro` shows is exactly what `backfill publish` writes. Before changing
anything, every planned cell is re-checked against the value the plan saw, and every
new row against an existing one: a DB that moved on since planning is never half-merged.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from pathlib import Path

import pandas as pd

from backfill.config.errors import UserError
from backfill.contracts.plan import IDENTITY, SCHEMA_ROW, SEEN, decode, loads
from backfill.db.cells import name_keys
from backfill.db.schema import (
    ADDABLE,
    COLUMNS,
    DERIVED,
    Blocker,
    DecisionDBError,
    table_columns,
)

CHUNK = 500  # host parameters per query, well under SQLite's limit


class PlanConflict(DecisionDBError):
    """The DB no longer holds what the plan saw: nothing was applied."""


def _same(stored, planned) -> bool:
    """SQLite's IS, as Python sees the values (1 == 1.0 == True; NULL IS NULL)."""
    if stored is None or planned is None:
        return stored is None and planned is None
    if isinstance(stored, bytes) or isinstance(planned, bytes):
        return stored == planned
    if isinstance(stored, str) or isinstance(planned, str):
        return stored == planned
    return float(stored) == float(planned)


def _values(conn: sqlite3.Connection, column: str, ids: list[str]) -> dict[str, object]:
    found = {}
    for i in range(0, len(ids), CHUNK):
        part = ids[i:i + CHUNK]
        marks = ", ".join("?" * len(part))
        found.update(conn.execute(
            f"SELECT group_id, {column} FROM ai_decisions WHERE group_id IN ({marks})", part))
    return found


def stale_changes(conn: sqlite3.Connection, changes: pd.DataFrame) -> list[str]:
    """Each planned change whose premise no longer holds, in words (empty: all hold)."""
    unknown = set(changes["column"]) - {*COLUMNS, "*"}
    if unknown:  # names go into SQL text: only the schema's own are allowed
        raise DecisionDBError(f"the plan names unknown columns {sorted(unknown)}: it is not "
                              "a plan this tool wrote.")
    broken = rule_breaches(changes)
    if broken:
        raise DecisionDBError("the plan breaks the merge rules, so it is not one this tool "
                              "wrote; nothing was written:\n  " + "\n  ".join(broken[:10]))
    have = set(table_columns(conn))
    stale = []
    migrate = changes[changes["rule"] == "migrated"]
    stale += [f"column {c} exists already (the plan would add it)"
              for c in migrate["column"] if c in have]
    added = set(migrate["column"])
    rows = changes[changes["rule"].isin(NEW_ROWS)]
    present = _values(conn, "group_id", rows["group_id"].tolist())
    stale += [f"{g}: a row with this group_id exists now (the plan would add it)"
              for g in rows["group_id"] if g in present]
    # A new row's images must still be in no live row: else it is no longer new.
    # Keys as the merge links rows (case aside, stems): a live row the merge would have
    # linked to the new one makes the plan stale.
    names = {k: g for g, r in zip(rows["group_id"], rows["new"], strict=True)
             for k in name_keys(loads(r)["images"])}
    for gid, images in conn.execute("SELECT group_id, images FROM ai_decisions"):
        shared = names.keys() & name_keys(images)
        stale += [f"{names[k]}: {gid} holds one of its images now (the plan would add it)"
                  for k in sorted(shared)[:1]]
    for gid, seen in zip(*_seen(changes), strict=True):
        cols = [c for c in seen if c in have]  # a column the plan adds is not there yet
        now = conn.execute(f"SELECT {', '.join(cols)} FROM ai_decisions WHERE group_id = ?",
                           (gid,)).fetchone()
        if now is None:
            stale.append(f"{gid}: the row is gone")
            continue
        stale += [f"{gid}.{c} is {v!r} now, the plan saw {seen[c]!r}"
                  for c, v in zip(cols, now, strict=True) if not _same(v, seen[c])]
    cells = changes[(changes["column"] != "*") & (changes["group_id"] != SCHEMA_ROW)]
    for column, part in cells.groupby("column", sort=True):
        if column not in have:
            if column not in added:
                stale.append(f"column {column} is missing")
            continue  # added by the plan itself: NULL everywhere, as planned
        now = _values(conn, column, part["group_id"].tolist())
        for gid, old in zip(part["group_id"], part["old"], strict=True):
            if gid not in now:
                stale.append(f"{gid}: the row is gone")
            elif not _same(now[gid], decode(old)):
                stale.append(f"{gid}.{column} is {now[gid]!r} now, the plan saw {decode(old)!r}")
    # A changed cell is both in its row as seen and in its own change: say it once.
    return list(dict.fromkeys(stale))


def check_changes(conn: sqlite3.Connection, changes: pd.DataFrame) -> None:
    """Raise PlanConflict, naming what moved, unless every planned premise holds."""
    stale = stale_changes(conn, changes)
    if stale:
        shown = "\n  ".join(stale[:10])
        more = f"\n  (+{len(stale) - 10} more)" if len(stale) > 10 else ""
        raise PlanConflict(
            f"the DB changed since the merge was planned ({len(stale)} planned value(s) no "
            f"longer hold); nothing was written:\n  {shown}{more}\nRe-plan with `dvc repro` "
            "(merge@<project>), then publish again.")


NEW_ROWS = ["added", "imported"]
# Which columns each rule may change, and whether it needs the old value to be NULL.
RULES = {"filled": (None, True), "sidecar": (["ai_crop_accepted"], True),
         "corrected": (["final_crop_coords"], False), "recomputed": (DERIVED, False),
         "fixed_action": (["user_action"], False)}


def rule_breaches(changes: pd.DataFrame) -> list[str]:
    """Changes no merge rule allows (a hand-edited or foreign plan): publish refuses."""
    out = []
    for c in changes.itertuples(index=False):
        if c.rule in RULES:
            columns, needs_null = RULES[c.rule]
            if (columns is not None and c.column not in columns) or c.column == "*":
                out.append(f"{c.group_id}.{c.column}: rule {c.rule} cannot change it")
            elif needs_null and c.old != "null":
                out.append(f"{c.group_id}.{c.column}: rule {c.rule} only fills NULLs")
        elif c.rule == "migrated" and decode(c.new) != ADDABLE.get(c.column):
            out.append(f"column {c.column}: type {c.new} is not {ADDABLE.get(c.column)}")
        elif c.rule in [*NEW_ROWS, SEEN] and c.column != "*":
            out.append(f"{c.group_id}.{c.column}: rule {c.rule} is for whole rows")
        elif c.rule == IDENTITY and (c.group_id, c.column) != (SCHEMA_ROW, "*"):
            out.append(f"{c.group_id}.{c.column}: rule {c.rule} names the DB, not a cell")
    return out


def _seen(changes: pd.DataFrame) -> tuple[list[str], list[dict]]:
    s = changes[changes["rule"] == SEEN]
    return s["group_id"].tolist(), [loads(v) for v in s["old"]]


def apply_changes(conn: sqlite3.Connection, changes: pd.DataFrame,
                  checked: bool = False) -> Counter:
    """Re-check (unless already ``checked`` in this same transaction), then apply every
    change; the caller owns the transaction (BEGIN IMMEDIATE ... COMMIT) and rolls back
    on PlanConflict."""
    if not checked:
        check_changes(conn, changes)
    done: Counter = Counter()
    for column, sql_type in zip(*_migrations(changes), strict=True):
        conn.execute(f"ALTER TABLE ai_decisions ADD COLUMN {column} {sql_type}")
        done["migrated"] += 1
    have = table_columns(conn)
    rows = changes[changes["rule"].isin(NEW_ROWS)]
    for rule, part in rows.groupby("rule"):
        records = [loads(r) for r in part["new"]]
        for cols, batch in _by_columns(records, have).items():
            conn.executemany(
                f"INSERT INTO ai_decisions ({', '.join(cols)}) VALUES "
                f"({', '.join('?' * len(cols))})", batch)
        done[rule] += len(part)
    cells = changes[(changes["column"] != "*") & (changes["rule"] != "migrated")]
    for column, part in cells.groupby("column", sort=True):
        conn.executemany(f"UPDATE ai_decisions SET {column} = ? WHERE group_id = ?",
                         [(decode(v), g) for v, g in zip(part["new"], part["group_id"],
                                                         strict=True)])
    done.update(cells["rule"].value_counts().to_dict())
    return done


def refuse_blocked(blockers: list[Blocker], changes: pd.DataFrame, db: Path | None) -> None:
    """Stop in one line, before anything is written, when the DB's own schema (a newer
    app's) refuses what ``changes`` would write there: naming each column or trigger and
    what to do. A value for a column this tool does not know is never guessed."""
    writes = {"INSERT": changes["rule"].isin(NEW_ROWS).any(),
              "UPDATE": ((changes["column"] != "*") & (changes["rule"] != "migrated")).any()}
    found = [b for b in blockers if writes[b.statement]]
    if not found:
        return
    said = [f"its column {b.name} is NOT NULL without a default, so a new row needs a value "
            "this tool does not have and will not guess: the newer app's DB needs a default "
            f"for {b.name}, or add the rows with that app" if b.kind == "column" else
            f"its trigger {b.name} refuses {b.statement.lower()}s into ai_decisions "
            "(RAISE): publishing needs it dropped or disabled by the app that owns it"
            for b in found]
    raise UserError(f"the production DB {db} refuses what the merge would write, so "
                      f"nothing was written: {'; '.join(said)}.")


def refused(db: Path | None, exc: sqlite3.IntegrityError) -> UserError:
    """The DB's own rule refused a change the plan's premises allowed: one line. Only its
    owner can change that rule; planning again would meet it again."""
    return UserError(f"the production DB {db} refuses what the merge would write ({exc}), "
                       "so nothing was written: a rule of its own (a newer app's CHECK or "
                       "trigger?) that this tool does not know; the app that owns the DB "
                       "must allow it, or add these rows itself.")


def _migrations(changes: pd.DataFrame) -> tuple[list[str], list[str]]:
    m = changes[changes["rule"] == "migrated"]
    return m["column"].tolist(), [decode(v) for v in m["new"]]


def _by_columns(records: list[dict], have: list[str]) -> dict[tuple, list[tuple]]:
    """Rows grouped by the columns they set (only columns the table has)."""
    out: dict[tuple, list[tuple]] = {}
    for r in records:
        cols = tuple(c for c in have if c in r)
        out.setdefault(cols, []).append(tuple(r[c] for c in cols))
    return out
