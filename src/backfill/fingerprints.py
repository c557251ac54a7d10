"""A cache of file facts keyed by path and (size, mtime, inode), kept between runs.

A warm scan of an unchanged folder only stats its files: the facts of every file whose
identity is unchanged come from here, so no byte is re-read. SQLite, because it is a
single file that survives crashes and concurrent readers.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

from backfill.imageinfo import PROBE_VERSION, ImageFacts

_SCHEMA = """
CREATE TABLE IF NOT EXISTS facts (
    path TEXT PRIMARY KEY,
    size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, inode INTEGER NOT NULL,
    probe_version INTEGER NOT NULL,
    format TEXT, width INTEGER, height INTEGER, mode TEXT, content_hash TEXT,
    status TEXT NOT NULL, reason TEXT
)
"""
Identity = tuple[int, int, int]


class FingerprintCache:
    """Facts about files under one folder, loaded at once and saved at once."""

    def __init__(self, db_path: Path, root: Path) -> None:
        self.db_path = db_path
        self.prefix = str(root).rstrip("/") + "/"
        self._known: dict[str, tuple[Identity, ImageFacts]] = {}
        self._new: dict[str, tuple[Identity, ImageFacts]] = {}
        db_path.parent.mkdir(parents=True, exist_ok=True)
        with closing(self._connect()) as con, con:
            con.execute(_SCHEMA)
            # '/' + 1 == '0': the range holds exactly the paths under the prefix.
            rows = con.execute(
                "SELECT path, size, mtime_ns, inode, format, width, height, mode,"
                " content_hash, status, reason FROM facts"
                " WHERE path >= ? AND path < ? AND probe_version = ?",
                (self.prefix, self.prefix[:-1] + "0", PROBE_VERSION),
            )
            for path, size, mtime, inode, *facts in rows:
                self._known[path] = ((size, mtime, inode), ImageFacts(*facts))

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.db_path, timeout=60)
        con.execute("PRAGMA journal_mode=WAL")
        return con

    def get(self, path: str, identity: Identity) -> ImageFacts | None:
        hit = self._known.get(path)
        return hit[1] if hit is not None and hit[0] == identity else None

    def put(self, path: str, identity: Identity, facts: ImageFacts) -> None:
        self._new[path] = (identity, facts)

    def save(self) -> None:
        """Write what was learnt in one transaction."""
        if not self._new:
            return
        rows = [
            (path, *identity, PROBE_VERSION, f.format, f.width, f.height, f.mode,
             f.content_hash, f.status, f.reason)
            for path, (identity, f) in self._new.items()
        ]
        with closing(self._connect()) as con, con:
            con.executemany(
                "INSERT OR REPLACE INTO facts VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", rows
            )
        self._known.update(self._new)
        self._new.clear()
