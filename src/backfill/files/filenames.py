"""What a render's file name says: its timestamp and its stage.

Names look like ``20250708_060711_stage2_upscaled.png``. The person's tools detect the
stage by substring; we accept their labels plus plain ``stageN`` / ``stageN.M`` and any
suffix after them (``stage2_upscaled``, ``stage3_enhanced_v2``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import datetime

# Digits must not touch the timestamp on either side, so ``120250708_060711`` is no match.
_TIMESTAMP = re.compile(r"(?<!\d)(\d{8})_(\d{6})(?!\d)")
# ``stage`` then a number, then an optional suffix such as ``_upscaled``.
_STAGE = re.compile(r"(?i)(?<![a-z])stage(\d+(?:\.\d+)?)([a-z0-9_\-]*)")


@dataclass(frozen=True)
class ParsedName:
    timestamp: str | None  # "YYYYMMDD_HHMMSS", the sort key the person's tools use
    taken_at: datetime | None
    stage: float  # 0.0 when the name carries no stage, as in the person's tools
    stage_label: str | None
    problem: str | None  # why the name cannot be grouped, if it cannot


def _parse(stem: str) -> tuple[str | None, datetime | None, str | None, int]:
    """Timestamp, its datetime, why there is none, and where the name's rest begins."""
    first = None
    for match in _TIMESTAMP.finditer(stem):
        first = first or match
        d, t = match.group(1), match.group(2)
        try:  # datetime() checks the calendar; much cheaper than strptime per file
            when = datetime(int(d[:4]), int(d[4:6]), int(d[6:]),
                            int(t[:2]), int(t[2:4]), int(t[4:]))
        except ValueError:
            continue
        return f"{d}_{t}", when, None, match.end()
    if first is None:
        return None, None, "no timestamp (YYYYMMDD_HHMMSS) in the name", 0
    invalid = f"invalid timestamp {first.group(1)}_{first.group(2)} in the name"
    return None, None, invalid, first.end()


def parse_stage(stem: str, start: int = 0) -> tuple[float, str | None]:
    """Stage number and label from a file stem (after ``start``); ``(0.0, None)`` if none."""
    match = _STAGE.search(stem, start)
    if match is None:
        return 0.0, None
    return float(match.group(1)), match.group(0).lower()


def parse_name(name: str) -> ParsedName:
    """Parse an image's file name, extension included."""
    stem = os.path.splitext(name)[0]  # only the last dot: ``stage1.5_x.png`` keeps its 1.5
    timestamp, taken_at, ts_problem, rest = _parse(stem)
    stage, label = parse_stage(stem, rest)  # the stage label follows the timestamp,
    if label is None and rest:
        stage, label = parse_stage(stem)  # or, in odd names, comes before it
    problem = ts_problem
    if problem is None and stage == 0.0:
        problem = "no stage label (stageN...) in the name"
    return ParsedName(timestamp, taken_at, stage, label, problem)
