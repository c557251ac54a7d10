"""Which file times are believable: a file's modification time stands for when a person
decided only when it lies between an earliest date and a little past now. A drive with
a wrong clock, a copy tool that stamps 1970, or a year typed as 2150 gives times that
are none; scan warns of them and no stage takes them as decision times."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, date, datetime

import numpy as np
import pandas as pd

NS_PER_HOUR = 3_600 * 10**9


def _shown_ns(ns: int) -> str:
    """A time in ns since the epoch, in words (dates Python cannot hold stay numbers)."""
    try:
        return datetime.fromtimestamp(ns / 1e9, tz=UTC).strftime("%Y-%m-%d %H:%M UTC")
    except (OverflowError, OSError, ValueError):
        return f"{ns} ns since 1970"


@dataclass(frozen=True)
class FileTimes:
    """The believable range of file times (scan.earliest_file_time and
    scan.future_file_time_hours)."""

    earliest: date
    ahead_hours: float  # how far past the clock of the machine that reads it

    @classmethod
    def from_config(cls, scan_cfg) -> FileTimes:
        return cls(date.fromisoformat(str(scan_cfg.earliest_file_time)),
                   float(scan_cfg.future_file_time_hours))

    def bounds(self, now_ns: int | None = None) -> tuple[int, int]:
        """(earliest, latest) believable time in ns since the epoch."""
        start = datetime(self.earliest.year, self.earliest.month, self.earliest.day, tzinfo=UTC)
        now = time.time_ns() if now_ns is None else now_ns
        return int(start.timestamp()) * 10**9, now + int(self.ahead_hours * NS_PER_HOUR)

    def believable(self, mtime_ns, now_ns: int | None = None) -> np.ndarray:
        """Per time (a missing one is not believable), whether it lies in the range."""
        low, high = self.bounds(now_ns)
        values = pd.to_numeric(pd.Series(mtime_ns, dtype="object"), errors="coerce")
        return (values.notna() & (values >= low) & (values <= high)).to_numpy(dtype=bool)

    def problem(self, mtime_ns: int) -> str:
        """Why a time is not believed, in one phrase (its kind before the colon)."""
        return (f"file time not believable: {_shown_ns(int(mtime_ns))} is before "
                f"{self.earliest.isoformat()} or over {self.ahead_hours:g} h ahead of this "
                "machine's clock, so it is not used as a decision time")
