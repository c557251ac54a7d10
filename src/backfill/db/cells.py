"""The format of each decision-DB cell that is more than a plain value, defined once:
every writer (the merge, the legacy CSV reader, the demo's production DB) and every
reader (matching, publish's checks, validate) goes through these.

- a box (``ai_crop_coords``, ``final_crop_coords``): a JSON list of 4 numbers, x1 y1 x2
  y2 normalised to the image, rounded to 6 places;
- ``images``: a JSON list of the group's file names, read back in any form older tools
  wrote it;
- a time (``timestamp``, ``crop_timestamp``): ISO 8601 UTC with a 'Z';
- a flag (``selection_match``, ``crop_match``, ``ai_crop_accepted``): a boolean, read
  back from the text forms a CSV holds.

The actions a row may hold are the v3 plan's CHECK, in db.schema (ACTIONS).
"""

from __future__ import annotations

import ast
import json
import unicodedata
from collections.abc import Iterable
from datetime import UTC, datetime

import numpy as np
import pandas as pd

BOX_DECIMALS = 6


def encode_box(values: Iterable | None) -> str | None:
    """A box as the DB stores it, or None when any coordinate is missing."""
    if values is None:
        return None
    values = list(values)
    if any(v is None or pd.isna(v) for v in values):
        return None
    return json.dumps([round(float(v), BOX_DECIMALS) for v in values])


def decode_box(text) -> np.ndarray | None:
    """A stored box as 4 finite numbers, or None when it is anything else."""
    try:
        box = np.array(json.loads(text), dtype=float)
    except (TypeError, ValueError):
        return None
    return box if box.shape == (4,) and np.isfinite(box).all() else None


def encode_images(names: Iterable[str]) -> str:
    """A group's file names as the DB stores them, in the group's order."""
    return json.dumps(list(names))


def image_names(images) -> list[str]:
    """The file names a row's ``images`` lists, in any form the tools ever wrote it: a
    JSON list, a Python repr list (older scripts: ``['a.png', 'b.png']``), or the bytes
    of either; each name reduced to its last path component, since some tools wrote
    ``batch_00/a.png``. [] when the value is not a list of names. The one reader of
    ``images``: matching, publish's checks and validate all go through it."""
    if isinstance(images, (bytes, bytearray, memoryview)):
        try:
            images = bytes(images).decode("utf-8")
        except UnicodeDecodeError:
            return []
    if not isinstance(images, str):
        return []
    try:
        value = json.loads(images)
    except ValueError:
        if not images.lstrip().startswith(("[", "(")):
            return []
        try:
            value = ast.literal_eval(images)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            return []
    if not isinstance(value, (list, tuple)):
        return []
    names = [n.replace("\\", "/").rsplit("/", 1)[-1] for n in value if isinstance(n, str)]
    return [n for n in names if n]


def comparable_name(name: str, case_sensitive: bool = True) -> str:
    """A file name in the one form names are compared in, wherever they come from (the
    scan, a group, a final, a DB row): Unicode NFC, since a copy between macOS and other
    systems can leave "é" decomposed (e + a combining accent) on disk while the DB holds
    it composed; and case-folded unless the file system tells case apart."""
    name = unicodedata.normalize("NFC", name)
    return name if case_sensitive else unicodedata.normalize("NFC", name.casefold())


STEM = "stem:"  # a match key made from a name's stem, never equal to a file name


def stem_key(name: str) -> str:
    """The match key of a name's stem (``a.jpg`` logged for the render ``a.png``)."""
    dot = name.rfind(".")
    return STEM + (name[:dot] if dot > 0 else name)


def name_keys(images, case_sensitive: bool = False) -> set[str]:
    """Every key a row can be matched by: its names in their comparable form (case
    aside unless ``case_sensitive``), and their stems."""
    names = [comparable_name(n, case_sensitive) for n in image_names(images)]
    return {*names, *(stem_key(n) for n in names)}


TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def iso_utc(mtime_ns: float | None) -> str | None:
    """A file time (ns since the epoch) as the DB writes times."""
    if mtime_ns is None or pd.isna(mtime_ns):
        return None
    return format_time(datetime.fromtimestamp(int(mtime_ns) / 1e9, tz=UTC))


def format_time(when: datetime) -> str:
    """An aware datetime as the DB writes times."""
    return when.astimezone(UTC).strftime(TIME_FORMAT)


# A flag as older tools and the legacy CSV wrote it as text.
BOOLEANS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def read_flag(value) -> bool | None:
    """A stored flag as True/False/None: 'false' as text is False, as the CSV has it."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    if isinstance(value, str):
        return BOOLEANS.get(value.strip().lower())
    return bool(value)
