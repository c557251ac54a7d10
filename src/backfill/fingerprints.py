"""A cache of what is known about each file, keyed by path and (size, mtime, inode).

A warm scan of an unchanged folder only lists and stats its files: every row whose
identity is unchanged comes from here in one vectorised join, so no byte is re-read and
no name re-parsed. One Parquet file per scanned folder: it loads in milliseconds, and
is replaced atomically, so a crash leaves the old one.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import blake3
import numpy as np
import pandas as pd

from backfill.imageinfo import PROBE_VERSION

IDENTITY = ["path", "size_bytes", "mtime_ns", "inode"]
# What the cache remembers of a file: its facts and what its name says.
KNOWN = ["format", "width", "height", "mode", "content_hash", "timestamp", "stage",
         "stage_label", "status", "reason"]
_DTYPES = {"size_bytes": "int64", "mtime_ns": "int64", "inode": "int64", "width": "Int64",
           "height": "Int64", "stage": "float64"}


def _typed(df: pd.DataFrame) -> pd.DataFrame:
    return df.astype({c: _DTYPES.get(c, "str") for c in IDENTITY + KNOWN})


class FingerprintCache:
    """What is known about the files under one folder."""

    def __init__(self, cache_dir: Path, root: Path) -> None:
        key = blake3.blake3(str(root).encode()).hexdigest()[:20]
        # The probe version is in the name: facts from older checks are never reused.
        self.path = cache_dir / f"{key}-v{PROBE_VERSION}.parquet"
        self.known = _typed(pd.DataFrame(columns=IDENTITY + KNOWN))
        if self.path.exists():
            try:
                self.known = _typed(pd.read_parquet(self.path))
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

    def replace(self, rows: pd.DataFrame) -> None:
        """Make ``rows`` (IDENTITY + KNOWN columns) all that is known of the folder."""
        rows = _typed(rows[IDENTITY + KNOWN]).reset_index(drop=True)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        rows.to_parquet(tmp, index=False)
        os.replace(tmp, self.path)
        self.known = rows
