"""pairing: which image of each group the person kept, found in the final folder by name.

The final folder is searched recursively; a final belongs to a group when its file name,
less the extension, is one of the group's render names (the person's tools keep the
render's name; an export to JPEG changes only the extension). Rules
for the cases a real folder holds (README, "How decisions are recovered"):

- no image of the group in the final folder: the group was rejected;
- one name in several subfolders: one decision. Copies with the same content are just
  reported; copies that differ are flagged for review and the most recently modified
  one is taken (the person's latest edit);
- two different images of one group kept: flagged for review, and the highest stage of
  them is taken (the most finished render, as the reviewer sees it last);
- a final whose name is in no group: an orphan, reported with the reason;
- a kept final, or its original, that cannot be read (scan's status 'error'): still the
  person's pick, with the reason in ``unreadable`` (the box cannot be known).
"""

from __future__ import annotations

import os

import pandas as pd

from backfill.schemas import FinalsTable
from backfill.tables import typed_frame

# The columns of one pair, with their dtypes: a group and what the final folder says
# about it. ``unreadable``: why the kept final (or its original) cannot be read.
PAIR_DTYPES = {
    "group_id": "str", "user_selected_index": "Int64", "kept_stage": "float64",
    "original_path": "str", "original_hash": "str", "original_width": "Int64",
    "original_height": "Int64", "final_path": "str", "final_hash": "str",
    "final_mtime_ns": "Int64", "final_copies": "int64", "review": "str", "unreadable": "str",
}
PAIR_COLUMNS = list(PAIR_DTYPES)


def stem(name: str) -> str:
    """A file name without its extension: what a final shares with its render."""
    return os.path.splitext(name)[0]


def _final_rows(scan: pd.DataFrame) -> pd.DataFrame:
    finals = scan[(scan["source"] == "final") & (scan["ext"] != "")]
    return finals.sort_values("rel_path", kind="stable")


def _pick_copy(copies: pd.DataFrame) -> tuple[pd.Series, str | None]:
    """The copy that stands for the decision, and why the choice needs review (if it does)."""
    readable = copies[copies["status"] != "error"]
    if readable.empty:
        return copies.iloc[0], None
    distinct = readable["content_hash"].nunique()
    if distinct == 1:
        return readable.iloc[0], None
    latest = readable.sort_values(["mtime_ns", "rel_path"], kind="stable").iloc[-1]
    return latest, (
        f"{len(readable)} copies of {latest['name']} differ in content, "
        f"the latest ({latest['rel_path']}) is taken"
    )


def pair_finals(
    groups: pd.DataFrame, scan: pd.DataFrame, ungrouped: pd.DataFrame
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One pair per group (the final is empty for a rejected group) and a row per final
    file saying what it is: kept, copy, extra (another kept image of a group) or orphan."""
    finals = _final_rows(scan)
    by_name = {name: rows for name, rows in finals.groupby(finals["name"].map(stem), sort=False)}
    originals = scan[scan["source"] == "original"].set_index("rel_path")
    roles: dict[str, tuple[str, str | None, str | None]] = {}  # rel_path -> role, group, why
    pairs = []
    for g in groups.itertuples(index=False):
        names = [stem(n) for n in g.image_names]
        kept = [i for i, name in enumerate(names) if name in by_name]
        pair = dict.fromkeys(PAIR_COLUMNS)
        pair.update(group_id=g.group_id, final_copies=0)
        if not kept:
            pairs.append(pair)
            continue
        index = kept[-1]  # stages ascend within a group: the last kept is the highest
        reviews = []
        if len(kept) > 1:
            reviews.append(
                f"{len(kept)} images of this group are in the final folder (indexes "
                f"{', '.join(map(str, kept))}), the highest stage, index {index}, is taken"
            )
            for i in kept[:-1]:
                for rel in by_name[names[i]]["rel_path"]:
                    roles[rel] = ("extra", g.group_id, f"also kept from {g.group_id}; "
                                  f"index {index} is taken")
        copies = by_name[names[index]]
        final, why = _pick_copy(copies)
        if why:
            reviews.append(why)
        for rel, content in zip(copies["rel_path"], copies["content_hash"], strict=True):
            if rel != final["rel_path"]:
                same = content == final["content_hash"] and pd.notna(content)
                roles[rel] = ("copy", g.group_id, f"{'same content as' if same else 'differs from'}"
                              f" {final['rel_path']}")
        roles[final["rel_path"]] = ("kept", g.group_id, None)
        original = originals.loc[g.image_paths[index]]
        unreadable = [f"{role} unreadable: {row['reason']}" for role, row
                      in (("final", final), ("original", original)) if row["status"] == "error"]
        pair.update(
            user_selected_index=index,
            kept_stage=g.stages[index],
            original_path=g.image_paths[index],
            original_hash=original["content_hash"] if original["status"] != "error" else None,
            original_width=original["width"],
            original_height=original["height"],
            final_path=final["rel_path"],
            final_hash=final["content_hash"] if final["status"] != "error" else None,
            final_mtime_ns=final["mtime_ns"],
            final_copies=len(copies) - 1,
            review="; ".join(reviews) or None,
            unreadable="; ".join(unreadable) or None,
        )
        pairs.append(pair)

    ungrouped_why = dict(zip(ungrouped["name"].map(stem), ungrouped["reason"], strict=True))
    report = []
    for f in finals.itertuples(index=False):
        role, group_id, why = roles.get(f.rel_path, ("orphan", None, None))
        if role == "orphan":
            why = (f"its original is in no group ({ungrouped_why[stem(f.name)]})"
                   if stem(f.name) in ungrouped_why else "no original render has this name")
        if f.status == "error":
            why = "; ".join(filter(None, [why, f"unreadable: {f.reason}"]))
        report.append({"rel_path": f.rel_path, "name": f.name, "role": role,
                       "group_id": group_id, "content_hash": f.content_hash, "reason": why})
    pairs_df = pd.DataFrame.from_records(pairs, columns=PAIR_COLUMNS).astype(PAIR_DTYPES)
    return pairs_df, typed_frame(FinalsTable, report)
