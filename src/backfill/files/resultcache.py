"""Results of costly work keyed by the content they were computed from.

Keys are content hashes (never paths), so a result is reused across runs, renames and
projects. One store per kind of work and settings: the caller puts everything that
changes the result (settings, a version constant) into the file name.

A store is a main Parquet file plus append-only part files beside it
(``<stem>.part-*.parquet``). A periodic save writes only the rows added since the last
one, as a new part: it never re-reads the store, so a run's memory and I/O do not grow
with the store (re-reading and re-writing the whole store every 30 s made embed's memory
grow with every image). Opening a store reads the main file and every part and, when
there are parts, writes them into the main file and removes exactly the parts it read.
Every write is atomic, so a killed run keeps every part it saved; two runs at once lose
at most each other's newest rows, never the file.
"""

from __future__ import annotations

import itertools
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TypeVar

import pandas as pd
import pyarrow.parquet as pq

from backfill.files.atomic import write_parquet

_PART_NUMBERS = itertools.count()  # unique part names within one process
R = TypeVar("R")


class ResultCache:
    """``lookup`` what is known, then ``fill`` with the work it left: ``add`` saves by
    itself every ``save_every`` seconds, so a long run that is killed loses at most that
    much work, and ``fill`` saves the rest in a ``finally``.

    ``lookup`` answers from the store as it was when opened: rows added by this run are
    written, not looked up again (a run computes each key once)."""

    def __init__(self, path: Path, keys: list[str], dtypes: dict[str, str],
                 save_every: float = 30.0) -> None:
        self.path = path
        self.keys = keys
        self.dtypes = dtypes  # every column, keys included
        self.save_every = save_every
        self.pending: dict[str, list] = {c: [] for c in dtypes}  # plain lists: no frame per row
        self.known = self._load()
        self.saved_at = time.monotonic()

    def frame(self, columns: Mapping[str, list] | None = None) -> pd.DataFrame:
        """A table of this store's columns and dtypes (empty when ``columns`` is None)."""
        columns = columns or {}
        return pd.DataFrame({c: pd.Series(columns.get(c, []), dtype=t)
                             for c, t in self.dtypes.items()})

    def parts(self) -> list[Path]:
        return sorted(self.path.parent.glob(f"{self.path.stem}.part-*.parquet"))

    def _read(self, path: Path) -> pd.DataFrame | None:
        try:
            return pq.read_table(path).to_pandas().astype(self.dtypes)[list(self.dtypes)]
        except Exception as exc:  # a damaged cache only costs recomputing
            print(f"backfill: ignoring unreadable cache {path}: {exc}", file=sys.stderr)
            return None

    def _load(self) -> pd.DataFrame:
        parts = self.parts()
        paths = ([self.path] if self.path.exists() else []) + parts
        frames = [f for f in map(self._read, paths) if f is not None]
        known = pd.concat(frames, ignore_index=True) if frames else self.frame()
        known = known.drop_duplicates(self.keys, keep="last").sort_values(self.keys)
        known = known.reset_index(drop=True)
        if parts:  # compact: the rows are in memory already, so this costs one write
            write_parquet(known, self.path)
            for part in parts:
                part.unlink(missing_ok=True)  # another run may have compacted it too
        return known

    def lookup(self, wanted: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Split ``wanted`` (with the key columns) into (found rows with their results,
        rows still to compute)."""
        keys = wanted[self.keys].drop_duplicates().astype(
            {k: self.dtypes[k] for k in self.keys})
        merged = keys.merge(self.known, on=self.keys, how="left", indicator=True)
        hit = merged["_merge"] == "both"
        return (merged[hit].drop(columns="_merge").reset_index(drop=True),
                keys[~hit.to_numpy()].reset_index(drop=True))

    def add(self, row: Mapping) -> None:
        """Remember one result (a value for every column of ``dtypes``); written by
        ``save``, or by this call when ``save_every`` seconds have passed."""
        for column, values in self.pending.items():
            values.append(row[column])
        if time.monotonic() - self.saved_at > self.save_every:
            self.save()

    def save(self) -> None:
        """Write the rows added since the last save as a new part; nothing is re-read."""
        self.saved_at = time.monotonic()
        if not self.pending[self.keys[0]]:
            return
        part = self.path.with_name(f"{self.path.stem}.part-{time.time_ns()}-{os.getpid()}-"
                                   f"{next(_PART_NUMBERS)}.parquet")
        write_parquet(self.frame(self.pending), part)
        self.pending = {c: [] for c in self.dtypes}

    def fill(self, results: Iterable[R], remember: Callable[[R], Iterable[Mapping]]) -> None:
        """Run the work ``lookup`` left: ``results`` computes as it is read, and each
        result goes to ``remember``, which uses it and returns the rows to add (none for
        a failure, which is never cached: the file may be fixed). Saved in a ``finally``,
        so an interrupted run (Ctrl-C) keeps every result it computed."""
        try:
            for result in results:
                for row in remember(result):
                    self.add(row)
        finally:
            self.save()
