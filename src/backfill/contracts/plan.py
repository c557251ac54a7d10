"""The merge plan's format: what a merge changes in a decision DB, cell by cell, as
the merge stage writes it (merge_plan.parquet) and publish and the merged DB apply it.

One row per change: (group_id, column, old, new, rule), each value JSON-encoded so that
NULL, numbers, text and BLOBs come back as they went in. Besides the cell changes:
whole new rows (column '*', rule added/imported), each live row the plan changes as the
plan saw it (column '*', rule seen), table migrations (group SCHEMA_ROW, rule migrated)
and the identity of the DB the plan was made against (group SCHEMA_ROW, rule identity).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass

import numpy as np
import pandas as pd

from backfill.contracts.schemas import HELD

PLAN_COLUMNS = ["group_id", "column", "old", "new", "rule"]
ISSUE_COLUMNS = ["kind", "group_id", "detail"]  # merge_issues: reported, left alone


BYTES = "$bytes"  # a BLOB, as older tools sometimes stored a value: {"$bytes": base64}


def _tag(value) -> dict:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {BYTES: base64.b64encode(bytes(value)).decode("ascii")}
    raise TypeError(f"{type(value).__name__} is not a DB value")


def _untag(obj: dict):
    return base64.b64decode(obj[BYTES]) if obj.keys() == {BYTES} else obj


def dumps(value) -> str:
    """JSON of a DB value or a row of them; a BLOB is tagged, so it comes back as bytes."""
    return json.dumps(value, default=_tag)


def loads(text: str):
    """The inverse of dumps."""
    return json.loads(text, object_hook=_untag)


def encode(value) -> str:
    """A DB value as JSON: None, int, float, str and bytes each come back as they went in."""
    return dumps(plain(value))


def decode(value: str):
    """A plan value back to what the DB holds."""
    return loads(value)


def plain(value):
    """A DB value as Python: bytes for a memoryview, a number for a NumPy scalar, None for
    NaN."""
    if isinstance(value, memoryview):
        value = bytes(value)
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and np.isnan(value):
        return None
    return value


def plan_cells(ids, column: str, old, new, rule: str) -> pd.DataFrame:
    """One plan row per group in ``ids``: ``column`` going from ``old`` to ``new`` by
    ``rule``, values encoded."""
    return pd.DataFrame({"group_id": list(ids), "column": column,
                         "old": [encode(v) for v in old], "new": [encode(v) for v in new],
                         "rule": rule}, columns=PLAN_COLUMNS)


SCHEMA_ROW = "(schema)"  # the plan's group_id for a change to the table, not a row
# The plan's row naming the production DB it was made against (path, schema version,
# a hash of the rows read): group SCHEMA_ROW, column '*', old = new = that JSON.
IDENTITY = "identity"


def plan_identity(changes: pd.DataFrame) -> dict | None:
    """The production DB a plan was made against, or None for a plan without one."""
    row = changes[changes["rule"] == IDENTITY]
    return loads(row["old"].iloc[0]) if len(row) else None


def work(changes: pd.DataFrame) -> pd.DataFrame:
    """The plan's changes proper: all but the identity row."""
    return changes[changes["rule"] != IDENTITY]


SEEN = "seen"  # a live row the plan changes, whole as it was seen: a premise, not a write


def writes(changes: pd.DataFrame) -> pd.DataFrame:
    """What publishing writes: the plan's changes less the rows as seen, which it only
    re-checks."""
    changes = work(changes)
    return changes[changes["rule"] != SEEN]


# merge_issues kinds whose group_id is a backfilled group the merge left out of the DB
# and reported; every other kind names a live row, a legacy-CSV row or nothing.
LEFT_OUT = ("ambiguous_group", "id_collision", *HELD.values())
ENDINGS = ("merged", "added", "reported")


def group_endings(group_ids, merged, added, issues: pd.DataFrame) -> pd.DataFrame:
    """How the merge ended each backfilled group in ``group_ids``: merged into a live row
    (``merged``: their ids), added as a new row (``added``), or reported and left out
    (an ``issues`` row of a LEFT_OUT kind). One boolean column per ending; a group is
    accounted for when exactly one holds. The merge and validate both judge by this."""
    ids = pd.Index(list(group_ids), dtype=object, name="group_id")
    reported = issues.loc[issues["kind"].isin(LEFT_OUT), "group_id"]
    return pd.DataFrame({"merged": ids.isin(list(merged)), "added": ids.isin(list(added)),
                         "reported": ids.isin(list(reported))}, index=ids)


def unaccounted(endings: pd.DataFrame) -> tuple[list[str], list[str]]:
    """(groups with no ending, groups with more than one), each sorted."""
    n = endings[list(ENDINGS)].sum(axis=1)
    return sorted(endings.index[n == 0]), sorted(endings.index[n > 1])


@dataclass
class MergePlan:
    changes: pd.DataFrame  # PLAN_COLUMNS
    merged: pd.DataFrame  # the rows after the merge, COLUMNS
    issues: pd.DataFrame  # ISSUE_COLUMNS: what was reported and left alone
    preserved_timestamps: int
    pairs: pd.DataFrame  # backfill_id, production_id

    def endings(self, group_ids) -> pd.DataFrame:
        """group_endings of the backfilled groups ``group_ids`` under this plan."""
        added = self.changes.loc[self.changes["rule"] == "added", "group_id"]
        return group_endings(group_ids, self.pairs["backfill_id"], added, self.issues)

    @property
    def matched(self) -> int:
        return len(self.pairs)

    def counts(self) -> dict[str, int]:
        rows = work(self.changes).drop_duplicates(["group_id", "rule"])["rule"].value_counts()
        cells = self.changes["rule"].value_counts()
        return {
            "added": int(rows.get("added", 0)), "imported": int(rows.get("imported", 0)),
            "filled": int(cells.get("filled", 0)), "corrected": int(cells.get("corrected", 0)),
            "crop_accepted_from_sidecars": int(cells.get("sidecar", 0)),
            "actions_fixed": int(cells.get("fixed_action", 0)),
            "flags_recomputed": int(cells.get("recomputed", 0)),
            "columns_migrated": int(cells.get("migrated", 0)),
            "preserved_timestamps": self.preserved_timestamps, "matched": self.matched,
            "rows_after": len(self.merged),
            **{f"issues_{k}": int(n) for k, n in self.issues["kind"].value_counts().items()},
        }

    def summary(self) -> str:
        """The backfill guide's line, then what else happened."""
        c = self.counts()
        line = (f"Added {c['added'] + c['imported']:,} new records, filled {c['filled']:,}, "
                f"corrected {c['corrected']:,}, preserved {c['preserved_timestamps']:,} "
                f"timestamps")
        extra = [f"{c['matched']:,} matched"]
        if c["imported"]:
            extra.append(f"{c['imported']:,} of the new from the legacy CSV")
        if c["crop_accepted_from_sidecars"]:
            extra.append(f"ai_crop_accepted set on {c['crop_accepted_from_sidecars']:,} "
                         "from sidecars")
        if c["actions_fixed"]:
            extra.append(f"{c['actions_fixed']:,} invalid actions fixed")
        if c["columns_migrated"]:
            migrated = self.changes.loc[self.changes["rule"] == "migrated", "column"]
            extra.append(f"migrated: added column {', '.join(migrated)}")
        for kind, n in self.issues["kind"].value_counts().sort_index().items():
            extra.append(f"{n:,} {kind.replace('_', ' ')} (reported, left alone)")
        return f"{line} ({'; '.join(extra)})"


