"""Results of costly work keyed by the content they were computed from.

Keys are content hashes (never paths), so a result is reused across runs, renames and
projects. One Parquet file per kind of work and settings: the caller puts everything
that changes the result (settings, code version) into the file name. Writes are atomic
and merge with what is on disk, so two runs at once lose at most each other's newest
rows, never the file.
"""

from __future__ import annotations

import inspect
import sys
import time
from pathlib import Path
from types import ModuleType

import blake3
import pandas as pd

from backfill.tables import write_parquet


def code_version(*modules: ModuleType) -> str:
    """A short hash of the modules' source: results made by other code are never reused."""
    source = "".join(inspect.getsource(m) for m in modules)
    return blake3.blake3(source.encode()).hexdigest()[:12]


class ResultCache:
    """``add`` saves by itself every ``save_every`` seconds, so a long run that is killed
    loses at most that much work; call ``save`` at the end (in a ``finally``)."""

    def __init__(self, path: Path, keys: list[str], dtypes: dict[str, str],
                 save_every: float = 30.0) -> None:
        self.path = path
        self.keys = keys
        self.dtypes = dtypes  # every column, keys included
        self.save_every = save_every
        self.pending: list[pd.DataFrame] = []
        self.known = self._load()
        self.saved_at = time.monotonic()

    def _empty(self) -> pd.DataFrame:
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in self.dtypes.items()})

    def _load(self) -> pd.DataFrame:
        if not self.path.exists():
            return self._empty()
        try:
            return pd.read_parquet(self.path).astype(self.dtypes)[list(self.dtypes)]
        except Exception as exc:  # a damaged cache only costs recomputing
            print(f"backfill: ignoring unreadable cache {self.path}: {exc}", file=sys.stderr)
            return self._empty()

    def lookup(self, wanted: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Split ``wanted`` (with the key columns) into (found rows with their results,
        rows still to compute)."""
        keys = wanted[self.keys].drop_duplicates()
        merged = keys.merge(self.known, on=self.keys, how="left", indicator=True)
        hit = merged["_merge"] == "both"
        return (merged[hit].drop(columns="_merge").reset_index(drop=True),
                keys[~hit.to_numpy()].reset_index(drop=True))

    def add(self, rows: pd.DataFrame) -> None:
        """Remember ``rows`` (every column of ``dtypes``); written by ``save``."""
        if len(rows):
            self.pending.append(rows[list(self.dtypes)].astype(self.dtypes))
        if time.monotonic() - self.saved_at > self.save_every:
            self.save()

    def save(self) -> None:
        self.saved_at = time.monotonic()
        if not self.pending:
            return
        merged = pd.concat([self._load(), *self.pending], ignore_index=True)
        merged = merged.drop_duplicates(self.keys, keep="last").sort_values(self.keys)
        write_parquet(merged, self.path)
        self.known, self.pending = merged.reset_index(drop=True), []
