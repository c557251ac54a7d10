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


def parse_timestamp(stem: str) -> tuple[str | None, datetime | None, str | None]:
    """The first valid ``YYYYMMDD_HHMMSS`` in ``stem``, with a reason when there is none."""
    found = _TIMESTAMP.findall(stem)
    if not found:
        return None, None, "no timestamp (YYYYMMDD_HHMMSS) in the name"
    for date, time in found:
        try:
            return f"{date}_{time}", datetime.strptime(date + time, "%Y%m%d%H%M%S"), None
        except ValueError:
            continue
    date, time = found[0]
    return None, None, f"invalid timestamp {date}_{time} in the name"


def parse_stage(stem: str) -> tuple[float, str | None]:
    """Stage number and label from a file stem; ``(0.0, None)`` when unknown."""
    # The stage label follows the timestamp, so search after it when there is one.
    tail = _TIMESTAMP.split(stem)[-1] if _TIMESTAMP.search(stem) else stem
    match = _STAGE.search(tail)
    if match is None:
        return 0.0, None
    return float(match.group(1)), match.group(0).lower()


def parse_name(name: str) -> ParsedName:
    """Parse an image's file name, extension included."""
    stem = os.path.splitext(name)[0]  # only the last dot: ``stage1.5_x.png`` keeps its 1.5
    timestamp, taken_at, ts_problem = parse_timestamp(stem)
    stage, label = parse_stage(stem)
    problem = ts_problem
    if problem is None and stage == 0.0:
        problem = "no stage label (stageN...) in the name"
    return ParsedName(timestamp, taken_at, stage, label, problem)
