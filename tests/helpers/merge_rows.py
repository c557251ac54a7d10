"""ai_decisions rows built by hand, and the strategy that generates them for property tests."""

from __future__ import annotations

import json

import pandas as pd
from hypothesis import strategies as st

from backfill.db.schema import ACTIONS, COLUMNS


def row(gid: str, images: list[str], **values) -> dict:
    base = dict.fromkeys(COLUMNS)
    base.update({"group_id": gid, "timestamp": "2025-10-01T10:00:00Z", "project_id": "p",
                 "images": json.dumps(images), "user_selected_index": 0,
                 "user_action": "approve", "image_width": 832, "image_height": 1216})
    base.update(values)
    return base


def frame(*rows: dict) -> pd.DataFrame:
    return pd.DataFrame(list(rows), columns=COLUMNS)


NAMES = [f"2025070{d}_0{h}0000_stage{s}.png" for d in (1, 2) for h in (1, 2, 3) for s in (1, 2)]


unit = st.floats(0, 1, allow_nan=False).map(lambda v: round(v, 3))


boxes = st.tuples(unit, unit, unit, unit).map(
    lambda b: json.dumps([min(b[0], b[2]), min(b[1], b[3]), max(b[0], b[2]),
                          max(b[1], b[3])]))


times = st.sampled_from(["2025-10-01T10:00:00Z", "2025-10-02T11:30:05Z", "2026-01-03T00:00:00Z"])


def maybe(strategy):
    return st.none() | strategy


@st.composite
def decision(draw, gid: str) -> dict:
    action = draw(st.sampled_from(ACTIONS))
    return {
        "group_id": gid, "timestamp": draw(times), "project_id": "p",
        "directory": draw(maybe(st.sampled_from(["batch_00", "batch_01"]))),
        "batch_number": draw(maybe(st.integers(0, 3))),
        "images": json.dumps(draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=4,
                                           unique=True))),
        "ai_selected_index": draw(maybe(st.integers(0, 3))),
        "ai_crop_coords": draw(maybe(boxes)),
        "ai_confidence": draw(maybe(unit)),
        "user_selected_index": draw(st.integers(0, 3)), "user_action": action,
        "ai_crop_accepted": draw(maybe(st.booleans())),
        "final_crop_coords": None if action == "reject" else draw(maybe(boxes)),
        "crop_timestamp": draw(maybe(times)),
        "image_width": draw(st.sampled_from([832, 1216, 3072])),
        "image_height": draw(st.sampled_from([832, 1216, 3072])),
        "selection_match": draw(maybe(st.booleans())), "crop_match": draw(maybe(st.booleans())),
    }
