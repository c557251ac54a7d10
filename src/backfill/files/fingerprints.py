"""A cache of what is known about each file, keyed by path and (size, mtime, inode).

A warm scan of an unchanged folder only lists and stats its files: every row whose
identity is unchanged comes from here in one vectorised join, so no byte is re-read and
no name re-parsed. One Parquet file per scanned folder: it loads in milliseconds, and
is replaced atomically, so a crash leaves the old one.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import blake3
import numpy as np
import pandas as pd

from backfill.files.atomic import write_parquet

# Bump when what is known of a file changes (imageinfo.probe's facts or hash,
# filenames.parse_name, scan.file_row): rows of other versions are never reused. Not a
# hash of the code: an edited comment must not re-read 200k renders.
FINGERPRINT_VERSION = 1

IDENTITY = ["path", "size_bytes", "mtime_ns", "inode"]
# What the cache remembers of a file: its facts and what its name says.
KNOWN = ["format", "width", "height", "mode", "content_hash", "timestamp", "stage",
         "stage_label", "status", "reason"]
# Numeric columns; every other column is text. Shared with the scan table, so a row
# reads the same whether it came from the cache or was just described.
DTYPES = {"size_bytes": "int64", "mtime_ns": "int64", "inode": "int64", "width": "Int64",
          "height": "Int64", "stage": "float64"}


def typed(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with the cache's dtypes: numbers as in DTYPES, text as pandas strings."""
    return df.astype({c: DTYPES.get(c, "str") for c in df.columns})


class FingerprintCache:
    """What is known about the files under one folder."""

    def __init__(self, cache_dir: Path, root: Path) -> None:
        key = blake3.blake3(str(root).encode()).hexdigest()[:20]
        self.path = cache_dir / f"{key}-v{FINGERPRINT_VERSION}.parquet"
        self.known = typed(pd.DataFrame(columns=IDENTITY + KNOWN))
        if self.path.exists():
            try:
                self.known = typed(pd.read_parquet(self.path))
            except Exception as exc:  # a damaged cache only costs a cold scan
                print(f"backfill: ignoring unreadable cache {self.path}: {exc}", file=sys.stderr)

    def lookup(self, found: pd.DataFrame) -> pd.DataFrame:
        """``found`` (with the IDENTITY columns) joined to what is known; NaN where unknown
        or where the file's identity changed."""
        known = self.known.set_index("path").reindex(found["path"])
        same = np.ones(len(found), dtype=bool)
        for col in IDENTITY[1:]:
            same &= known[col].to_numpy() == found[col].to_numpy()
        facts = known[KNOWN].where(pd.Series(same, index=known.index), axis=0)
        return pd.concat([found.reset_index(drop=True), facts.reset_index(drop=True)], axis=1)

    def update(self, rows: pd.DataFrame, described: bool,
               selected: Callable[[str], bool]) -> None:
        """Make ``rows`` (IDENTITY + KNOWN columns, every file the scan now selects under
        the folder) what is known of the files ``selected`` (a file name test) picks;
        ``described`` says whether any row was just described.

        Known files that ``selected`` does not pick are kept: a scan with other
        extensions or ignore patterns (an experiment, a typo) must not throw away what
        the folder's usual scan knows, and each file is known once, whatever the
        settings. Rows in error are never kept: a read error may pass (a drive
        remounted, a permission fixed) without the file's identity changing. Nothing is
        written when nothing was described and no known file went away.
        """
        rows = rows[rows["status"] != "error"]
        if not described and len(rows) == len(self.known):
            return  # every row came from here (rows are a subset): all is as it was
        names = self.known["path"].str.rsplit("/", n=1).str[-1]
        others = ~np.fromiter(map(selected, names), dtype=bool, count=len(names))
        kept = self.known[others]
        if not described and len(rows) + len(kept) == len(self.known):
            return
        rows = typed(pd.concat([rows[IDENTITY + KNOWN], kept[IDENTITY + KNOWN]])
                     ).reset_index(drop=True)
        write_parquet(rows, self.path)
        self.known = rows
