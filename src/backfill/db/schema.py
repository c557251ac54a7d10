"""The decision DB the person's tools read: the v3 plan's schema, in one place.

Table ``ai_decisions`` with exactly the v3 plan's columns and CHECKs, its six indexes and
three views; and ``backfill_provenance``, a side table (keyed by group_id) for what the
schema has no column for, so the person's tools never see a column they do not know.
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

COLUMNS = [
    "group_id", "timestamp", "project_id", "directory", "batch_number", "images",
    "ai_selected_index", "ai_crop_coords", "ai_confidence", "user_selected_index",
    "user_action", "ai_crop_accepted", "final_crop_coords", "crop_timestamp",
    "image_width", "image_height", "selection_match", "crop_match",
]
MAX_IMAGES = 4  # a group's images are indexed 0-3
TIMESTAMPS = ["timestamp", "crop_timestamp"]
ACTIONS = ["approve", "crop", "reject"]
DERIVED = ["selection_match", "crop_match"]  # recomputed from the final values

TABLE = """
CREATE TABLE IF NOT EXISTS ai_decisions (
    group_id TEXT PRIMARY KEY,
    timestamp TEXT NOT NULL,
    project_id TEXT NOT NULL,
    directory TEXT,
    batch_number INTEGER,
    images TEXT NOT NULL,
    ai_selected_index INTEGER,
    ai_crop_coords TEXT,
    ai_confidence REAL,
    user_selected_index INTEGER NOT NULL,
    user_action TEXT NOT NULL,
    ai_crop_accepted BOOLEAN,
    final_crop_coords TEXT,
    crop_timestamp TEXT,
    image_width INTEGER NOT NULL,
    image_height INTEGER NOT NULL,
    selection_match BOOLEAN,
    crop_match BOOLEAN,
    CHECK(user_action IN ('approve', 'crop', 'reject')),
    CHECK(ai_selected_index >= 0 AND ai_selected_index <= 3),
    CHECK(user_selected_index >= 0 AND user_selected_index <= 3),
    CHECK(ai_confidence IS NULL OR (ai_confidence >= 0.0 AND ai_confidence <= 1.0)),
    CHECK(image_width > 0 AND image_height > 0)
)"""

INDEXES = {
    "idx_project_id": "project_id",
    "idx_timestamp": "timestamp",
    "idx_selection_match": "selection_match",
    "idx_crop_match": "crop_match",
    "idx_user_action": "user_action",
    "idx_batch_number": "batch_number",
}

VIEWS = {
    # Per project: how often the AI's pick and crop agreed with the person (reject rows
    # have NULL matches and count for neither).
    "ai_performance": """
        SELECT project_id,
               COUNT(*) AS total_decisions,
               SUM(user_action = 'approve') AS approved,
               SUM(user_action = 'crop') AS cropped,
               SUM(user_action = 'reject') AS rejected,
               COUNT(selection_match) AS selection_measured,
               SUM(selection_match = 1) AS selection_correct,
               ROUND(100.0 * SUM(selection_match = 1) / NULLIF(COUNT(selection_match), 0), 1)
                   AS selection_accuracy_pct,
               COUNT(crop_match) AS crop_measured,
               SUM(crop_match = 1) AS crop_correct,
               ROUND(100.0 * SUM(crop_match = 1) / NULLIF(COUNT(crop_match), 0), 1)
                   AS crop_accuracy_pct
        FROM ai_decisions GROUP BY project_id""",
    # Marked for cropping, crop not done yet.
    "incomplete_crops": """
        SELECT group_id, project_id, timestamp, images, user_selected_index
        FROM ai_decisions
        WHERE user_action = 'crop' AND (final_crop_coords IS NULL OR crop_timestamp IS NULL)""",
    # Where the AI picked another image or proposed another crop: hard examples.
    "ai_mistakes": """
        SELECT group_id, project_id, timestamp, images, ai_selected_index,
               user_selected_index, ai_crop_coords, final_crop_coords, user_action,
               selection_match, crop_match
        FROM ai_decisions WHERE selection_match = 0 OR crop_match = 0""",
}

PROVENANCE = """
CREATE TABLE IF NOT EXISTS backfill_provenance (
    group_id TEXT PRIMARY KEY,
    source TEXT NOT NULL,  -- production | backfill | merged
    backfill_group_id TEXT,
    final_path TEXT,
    pair_method TEXT,  -- name | identity | content: how the kept final was paired
    match_method TEXT,
    match_confidence REAL,
    needs_review BOOLEAN,
    review_reason TEXT,
    model_version TEXT,
    ranker TEXT,
    crop_proposer TEXT,
    embedding_model TEXT,
    decided_by TEXT,  -- files | reviewed: you answered its case in `backfill review`
    reviewed_at TEXT
)"""
PROVENANCE_COLUMNS = [
    "group_id", "source", "backfill_group_id", "final_path", "pair_method", "match_method",
    "match_confidence", "needs_review", "review_reason", "model_version", "ranker",
    "crop_proposer", "embedding_model", "decided_by", "reviewed_at",
]
# Columns added to the side table since it was first written: an older DB gets them.
PROVENANCE_ADDED = {"pair_method": "TEXT", "decided_by": "TEXT", "reviewed_at": "TEXT"}


def create(conn: sqlite3.Connection) -> None:
    """The v3 schema, its indexes and views, and the provenance table (idempotent)."""
    conn.execute(TABLE)
    for name, column in INDEXES.items():
        conn.execute(f"CREATE INDEX IF NOT EXISTS {name} ON ai_decisions({column})")
    for name, body in VIEWS.items():
        conn.execute(f"CREATE VIEW IF NOT EXISTS {name} AS {body}")
    conn.execute(PROVENANCE)
    have = set(table_columns(conn, "backfill_provenance"))
    for column, kind in PROVENANCE_ADDED.items():
        if column not in have:
            conn.execute(f"ALTER TABLE backfill_provenance ADD COLUMN {column} {kind}")


def table_columns(conn: sqlite3.Connection, table: str = "ai_decisions") -> list[str]:
    return [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]


# Columns an older DB may lack and that can be added in place (nullable, no default).
ADDABLE = {"ai_crop_accepted": "BOOLEAN", "crop_timestamp": "TEXT", "selection_match": "BOOLEAN",
           "crop_match": "BOOLEAN", "batch_number": "INTEGER", "directory": "TEXT"}


class DecisionDBError(Exception):
    """A decision DB that cannot be used as asked; the message says what to do."""


def open_production(path: Path, timeout: float = 10.0) -> sqlite3.Connection:
    """The production DB, read-only, after checking that it exists and can be read."""
    path = Path(path)
    if not path.is_file():
        raise DecisionDBError(
            f"production DB {path} does not exist: fix real_db in the project's config "
            "(conf/project/<name>.yaml), or set it to null to build a DB from scratch.")
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=timeout)
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "ai_decisions" in tables:
            conn.execute("SELECT * FROM ai_decisions LIMIT 1").fetchall()
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise explain(exc, path) from None
    if "ai_decisions" not in tables:
        conn.close()
        raise DecisionDBError(f"{path} has no ai_decisions table: is real_db the project's "
                              "decision DB?")
    return conn


def unwritable(path: Path, why: str) -> DecisionDBError:
    """The DB is fine but cannot be written here: say so, and what to check."""
    return DecisionDBError(
        f"{path} cannot be written ({why}): nothing was written, and the DB itself is "
        "fine. Check the permissions of the file and of its folder (ls -l, lsattr: "
        "read-only or immutable?) or whether the drive is mounted read-only, then publish "
        "again.")


# SQLite's codes for a write the file system refused (the DB's content is not at fault).
WRITE_REFUSED = ("SQLITE_READONLY", "SQLITE_CANTOPEN", "SQLITE_PERM", "SQLITE_IOERR")


def is_full(exc: sqlite3.Error) -> bool:
    """SQLite found no room to write: the disk (or quota) is full; the DB is intact."""
    return getattr(exc, "sqlite_errorname", None) == "SQLITE_FULL" or "disk is full" in str(exc)


def explain(exc: sqlite3.Error, path: Path, writing: bool = False) -> DecisionDBError:
    """SQLite's error as a message that says what happened and what to do; ``writing``:
    it came while writing, where a refused write is not a damaged DB."""
    text = str(exc)
    if is_full(exc):  # never "restore a backup": that would lose the writes since
        return DecisionDBError(
            f"the disk holding {path} is full ({text}): nothing was written, and {path} is "
            "untouched. Free some room on that disk, then try again.")
    if "locked" in text or "busy" in text:
        return DecisionDBError(
            f"{path} is locked by another program (the reviewer or crop tool mid-write?): "
            "nothing was written. Try again in a moment, or close that tool.")
    code = getattr(exc, "sqlite_errorname", None) or ""
    if writing and (code.startswith(WRITE_REFUSED) or "readonly" in text):
        return unwritable(path, text)
    return DecisionDBError(
        f"{path} cannot be read as an SQLite DB ({text}): nothing was written. Restore it "
        "from its latest backup (<db>.backup-<UTC>) or check the path.")


def read_rows(conn: sqlite3.Connection) -> tuple[pd.DataFrame, list[str]]:
    """All ai_decisions rows with the v3 plan's columns (values exactly as stored), and the
    columns the DB lacks (filled with NULL here)."""
    have = table_columns(conn)
    used = [c for c in COLUMNS if c in have]
    data = conn.execute(f"SELECT {', '.join(used)} FROM ai_decisions ORDER BY group_id").fetchall()
    rows = pd.DataFrame({c: pd.Series([r[i] for r in data], dtype=object)
                         for i, c in enumerate(used)})
    missing = [c for c in COLUMNS if c not in have]
    for c in missing:
        rows[c] = pd.Series([None] * len(rows), dtype=object)
    return rows[COLUMNS], missing


@dataclass(frozen=True)
class Blocker:
    """A part of a newer app's schema that refuses what this tool writes."""

    statement: str  # INSERT or UPDATE: what it refuses
    kind: str  # column or trigger
    name: str


# CREATE TRIGGER [IF NOT EXISTS] name {BEFORE|AFTER} {INSERT|UPDATE [OF ..]|DELETE} ON ..
TRIGGER = re.compile(r"\s*CREATE\s+TRIGGER\s+(?:IF\s+NOT\s+EXISTS\s+)?"
                     r"(?:\"[^\"]*\"|`[^`]*`|\[[^\]]*\]|\S+)\s+(?P<when>.*?)\s+ON\s+"
                     r"(?P<body>.*)", re.IGNORECASE | re.DOTALL)


def write_blockers(conn: sqlite3.Connection) -> list[Blocker]:
    """What in the DB's own schema refuses rows or changes this tool would write: a
    column the v3 schema does not have, NOT NULL without a default (no value to give a
    new row), and a trigger on ai_decisions that RAISEs (ABORT refuses, IGNORE drops the
    row silently); a trigger that raises only sometimes is named too."""
    out = [Blocker("INSERT", "column", name)
           for _, name, kind, notnull, default, pk in conn.execute(
               "PRAGMA table_info(ai_decisions)")
           if name not in COLUMNS and notnull and default is None
           and not (pk and str(kind).upper() == "INTEGER")]  # a rowid alias fills itself
    for name, sql in conn.execute("SELECT name, sql FROM sqlite_master WHERE type = "
                                  "'trigger' AND tbl_name = 'ai_decisions' ORDER BY name"):
        parts = TRIGGER.match(sql or "")
        event = parts and re.search(r"\b(INSERT|UPDATE)\b", parts["when"], re.IGNORECASE)
        if event and re.search(r"\bRAISE\s*\(", parts["body"], re.IGNORECASE):
            out.append(Blocker(event.group(1).upper(), "trigger", name))
    return out


def identity(conn: sqlite3.Connection, path: str | None) -> dict:
    """Which DB a plan is made against: its path as the project records it (relative to
    the repository when inside it: the same in every clone), its schema version and a
    hash of every ai_decisions row as stored (None for all when there is no production
    DB)."""
    if path is None:
        return {"path": None, "schema_version": None, "rows": 0, "rows_sha256": None}
    digest, n = hashlib.sha256(), 0
    for row in conn.execute("SELECT * FROM ai_decisions ORDER BY group_id"):
        digest.update(repr(row).encode("utf-8", "backslashreplace"))
        n += 1
    return {"path": path,
            "schema_version": conn.execute("PRAGMA schema_version").fetchone()[0],
            "rows": n, "rows_sha256": digest.hexdigest()}


def violations(rows: pd.DataFrame) -> pd.DataFrame:
    """Rows that the v3 plan's CHECKs refuse (group_id, column, detail): older scripts wrote
    them (user_action='skip')."""
    def num(col: str) -> pd.Series:
        return pd.to_numeric(rows[col], errors="coerce")

    index_ok = num("ai_selected_index").between(0, 3) | rows["ai_selected_index"].isna()
    confidence_ok = num("ai_confidence").between(0, 1) | rows["ai_confidence"].isna()
    checks = {
        "user_action not in approve/crop/reject": rows["user_action"].isin(ACTIONS),
        "ai_selected_index outside 0-3": index_ok,
        "user_selected_index outside 0-3": num("user_selected_index").between(0, 3),
        "ai_confidence outside 0-1": confidence_ok,
        "image size not positive": (num("image_width") > 0) & (num("image_height") > 0),
    }
    columns = ["user_action", "ai_selected_index", "user_selected_index", "ai_confidence",
               "image_width"]
    found = [(gid, col, f"{why} ({col}={rows.at[i, col]!r})")
             for (why, ok), col in zip(checks.items(), columns, strict=True)
             for i, gid in rows.loc[~ok, "group_id"].items()]
    return pd.DataFrame(found, columns=["group_id", "column", "detail"], dtype=object)


def insert_rows(conn: sqlite3.Connection, rows: pd.DataFrame) -> None:
    """Insert v3 rows (any subset of COLUMNS the table has), NaN written as NULL."""
    cols = [c for c in rows.columns if c in COLUMNS]
    values = rows[cols].astype(object)
    conn.executemany(f"INSERT INTO ai_decisions ({', '.join(cols)}) VALUES "
                     f"({', '.join('?' * len(cols))})",
                     values.where(values.notna(), None).itertuples(index=False))
