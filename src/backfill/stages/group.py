"""group: renders of one image, found from the file names alone.

The default is the person's "nearest-up" rule (README, "Grouping rule"): files from all
subfolders sorted by (timestamp, stage, name); a group starts at any file and takes, in
a window of ``lookahead`` files, the smallest stage above its last one, earliest first;
the window ends at a stage <= the last one or at a time gap. ``exact_timestamp`` groups
files that share one timestamp instead (a documented option, rarely right on real data:
each stage gets its own timestamp).

Names are the key, so one name should mean one picture. Two originals with the same
file name in different subfolders (files.clashes):

- same content hash (a copy): grouped once, as the first copy by path; the other
  copies are ungrouped as "copy of <path>";
- other content (a **name clash**, e.g. two machines that wrote the same timestamped
  names into their own folders): grouping goes on as the person's rule says, one sorted
  list, except that a group that has taken a file from one side of a clash (the folder
  under which one copy sits, clashes.clash_folders) never takes a file from another
  side: those are invisible to it (neither taken nor ending its window). Files under
  neither side are neutral (the first group to reach one takes it). So each machine's
  copies form their own groups and the groups around them stay as the rule makes them;
  with no clash this is the rule itself. extract decides by pixels which group a final
  of a clashing name belongs to, and flags a group whose renders look like the other
  source's (folders cannot tell two machines apart when their renders share folders).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime, timedelta
from functools import partial

import pandas as pd

from backfill.config.project import Project
from backfill.config.settings import GroupConfig
from backfill.contracts.schemas import GroupsTable, ScanTable, UngroupedTable
from backfill.contracts.tables import read_table, write_table
from backfill.db.cells import comparable_name
from backfill.files.clashes import clash_sides, shared_names, visible
from backfill.files.imageinfo import no_signature

Sides = Sequence[dict[tuple[str, ...], str]]  # per file: its side of each clash (clash_sides)

SKIPPED = "passed over: a lower stage later in the window was taken instead"
ALONE = "no higher stage followed it within the window (run shorter than min_group_size)"
SAME_STAGE = "another file of the same stage shares its timestamp"
ALONE_AT_TIMESTAMP = "no other stage shares its timestamp"
GROUP_FULL = "its timestamp's group already holds max_group_size images"


def nearest_up(
    stages: Sequence[float],
    times: Sequence[datetime | None],
    lookahead: int,
    time_gap_minutes: float | None,
    min_group_size: int,
    max_group_size: int,
    sides: Sides | None = None,
) -> tuple[list[list[int]], dict[int, str]]:
    """Group pre-sorted files by the nearest-up rule.

    Returns the groups as lists of indices into the input and, for every index left out,
    why. Pure: the reference's pinned cases are tested against it directly. With
    ``sides`` (name clashes), a file on another side of a clash than the group's files
    is invisible to the group: a later group starts at it.
    """
    gap = timedelta(minutes=time_gap_minutes) if time_gap_minutes is not None else None
    n = len(stages)
    done = [False] * n  # taken by a group, or left out
    groups: list[list[int]] = []
    left_out: dict[int, str] = {}

    def ends_window(prev_stage: float, prev_time: datetime | None, k: int) -> bool:
        if stages[k] <= prev_stage:
            return True
        return bool(gap is not None and prev_time and times[k] and times[k] - prev_time > gap)

    for start in range(n):
        if done[start]:
            continue
        group, done[start] = [start], True
        taken = dict(sides[start]) if sides else {}
        i = start + 1
        while len(group) < max_group_size:
            last = group[-1]
            window: list[int] = []
            k = i
            while k < n and len(window) < lookahead:
                if done[k] or (sides and not visible(taken, sides[k])):
                    k += 1
                    continue
                if ends_window(stages[last], times[last], k):
                    break
                window.append(k)
                k += 1
            if not window:
                break
            lowest = min(stages[k] for k in window)
            chosen = next(k for k in window if stages[k] == lowest)
            for k in window[:window.index(chosen)]:  # higher stages jumped over are dropped
                left_out[k], done[k] = SKIPPED, True
            group.append(chosen)
            done[chosen] = True
            if sides:
                taken.update(sides[chosen])
            i = chosen + 1
        if len(group) >= min_group_size:
            groups.append(group)
        else:
            for k in group:
                left_out[k] = ALONE
    return groups, left_out


def exact_timestamp(
    stages: Sequence[float],
    timestamps: Sequence[str],
    min_group_size: int,
    max_group_size: int,
    sides: Sides | None = None,
) -> tuple[list[list[int]], dict[int, str]]:
    """Group pre-sorted files that share a timestamp, one file per stage, stages rising.
    With ``sides`` (name clashes), the files of one timestamp on two sides of a clash
    make two groups."""
    groups: list[list[int]] = []
    left_out: dict[int, str] = {}
    start = 0
    for end in range(1, len(stages) + 1):
        if end < len(stages) and timestamps[end] == timestamps[start]:
            continue
        apart: list[tuple[dict, list[int]]] = []  # (sides taken, files) per side of a clash
        for k in range(start, end):
            mine = sides[k] if sides else {}
            at = next((a for a in apart if visible(a[0], mine)), None)
            if at is None:
                apart.append(({}, []))
                at = apart[-1]
            at[0].update(mine)
            at[1].append(k)
        for _, files in apart:
            group: list[int] = []
            for k in files:
                if group and stages[k] <= stages[group[-1]]:
                    left_out[k] = SAME_STAGE
                elif len(group) >= max_group_size:
                    left_out[k] = GROUP_FULL
                else:
                    group.append(k)
            if len(group) >= min_group_size:
                groups.append(group)
            else:
                left_out.update({k: ALONE_AT_TIMESTAMP for k in group})
        start = end
    return groups, left_out


def _nullable(values: pd.Series) -> list:
    """A column as a list, missing values as None (Parquet list elements may be null)."""
    return [None if pd.isna(v) else v for v in values.tolist()]


def _group(candidates: pd.DataFrame, settings: GroupConfig, sides: Sides | None
           ) -> tuple[list[list[int]], dict[int, str]]:
    """``settings.method`` run on sorted candidates: groups and left-out reasons, by
    position in ``candidates``; ``sides``: each candidate's side of each name clash."""
    stages = candidates["stage"].tolist()
    if settings.method == "nearest_up":
        return nearest_up(
            stages, pd.to_datetime(candidates["timestamp"], format="%Y%m%d_%H%M%S").tolist(),
            settings.lookahead,
            settings.time_gap_minutes, settings.min_group_size, settings.max_group_size,
            sides,
        )
    return exact_timestamp(stages, candidates["timestamp"].tolist(),
                           settings.min_group_size, settings.max_group_size, sides)


def group_table(
    scan: pd.DataFrame, settings: GroupConfig, project: str, case_sensitive: bool = True
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The groups table and the ungrouped table from a scan table (originals only).

    Grouping goes by names alone, as the person's tools did: a render that has since
    become unreadable still holds its place (and its index) in its group, flagged in
    ``unreadable``, so the group matches what the reviewer saw. A file with no image
    signature (empty, or not an image at all) is no render: ungrouped, with its reason.
    ``case_sensitive``: whether two names that differ only in case are two names
    (names.case_sensitive).
    """
    # Files only: a folder that could not be listed is reported by scan, not here.
    originals = scan[(scan["source"] == "original") & (scan["ext"] != "")]
    # A file whose bytes are no image at all (empty, or text) is no render, whatever its
    # name: it takes no place in a group (a truncated image still does).
    named = (originals["timestamp"].notna() & (originals["stage"] > 0)
             & ~originals["reason"].map(no_signature).astype(bool))
    key = partial(comparable_name, case_sensitive=case_sensitive)
    copies, clashes = shared_names(originals[named], key)
    usable = named & ~originals["rel_path"].isin(list(copies))
    candidates = originals[usable].sort_values(
        ["timestamp", "stage", "name", "rel_path"], kind="stable"
    ).reset_index(drop=True)
    timestamps = candidates["timestamp"].tolist()
    # A clash means two sources wrote the same names: no group takes renders from two
    # sides of one (each side's copies form their own groups).
    sides = (clash_sides(candidates["rel_path"].tolist(), list(clashes), key)
             if clashes else None)
    groups, left_out = _group(candidates, settings, sides)

    rows, used_ids = [], set()
    for members in groups:
        part = candidates.iloc[members]
        group_id = settings.id_format.format(project=project, timestamp=timestamps[members[0]])
        base, n = group_id, 1
        while group_id in used_ids:  # an id_format that does not tell two groups apart
            n += 1
            group_id = f"{base}_{n}"
        used_ids.add(group_id)
        rows.append({
            "group_id": group_id,
            "first_timestamp": timestamps[members[0]],
            "last_timestamp": timestamps[members[-1]],
            "n_images": len(members),
            "image_paths": part["rel_path"].tolist(),
            "image_names": part["name"].tolist(),
            "stages": part["stage"].tolist(),
            "widths": _nullable(part["width"]),
            "heights": _nullable(part["height"]),
            "content_hashes": _nullable(part["content_hash"]),
            "unreadable": part.loc[part["status"] == "error", "rel_path"].tolist(),
        })
    # Explicit dtypes: a project with no group at all still writes a valid table.
    groups_df = pd.DataFrame(rows, columns=GROUP_COLUMNS).astype(
        {"group_id": "str", "first_timestamp": "str", "last_timestamp": "str", "n_images": "int64"}
    )

    reasons = {}
    for k, why in left_out.items():
        row = candidates.iloc[k]
        unreadable = f"; unreadable: {row['reason']}" if row["status"] == "error" else ""
        clash = f"; {clashes[row['rel_path']]}" if row["rel_path"] in clashes else ""
        reasons[row["rel_path"]] = why + clash + unreadable
    left = originals[~named]
    reasons.update(zip(left["rel_path"], left["reason"], strict=True))
    state = originals.set_index("rel_path")[["status", "reason"]]
    for rel, why in copies.items():
        status, reason = state.loc[rel]
        reasons[rel] = why + (f"; unreadable: {reason}" if status == "error" else "")
    ungrouped = originals[originals["rel_path"].isin(list(reasons))][
        ["rel_path", "name", "timestamp", "stage"]
    ].copy()
    ungrouped["reason"] = ungrouped["rel_path"].map(reasons)
    ungrouped = ungrouped.sort_values("rel_path", kind="stable").reset_index(drop=True).astype(
        {"rel_path": "str", "name": "str", "timestamp": "str", "stage": "float64", "reason": "str"}
    )
    return groups_df.sort_values("group_id", kind="stable").reset_index(drop=True), ungrouped


GROUP_COLUMNS = [
    "group_id", "first_timestamp", "last_timestamp", "n_images", "image_paths",
    "image_names", "stages", "widths", "heights", "content_hashes", "unreadable",
]


def run(project: Project) -> str:
    started = time.perf_counter()
    scan = read_table(project.output("scan"), ScanTable, "scan")
    settings = project.settings.group
    groups, ungrouped = group_table(scan, settings, project.name, project.case_sensitive)
    write_table(groups, project.output("groups"), GroupsTable, "groups")
    write_table(ungrouped, project.output("ungrouped"), UngroupedTable, "ungrouped")
    sizes = groups["n_images"].value_counts().sort_index()
    by_size = ", ".join(f"{n:,} of {k}" for k, n in sizes.items()) or "none"
    grouped = int(groups["n_images"].sum())
    return (
        f"group {project.name}: {len(groups):,} groups ({by_size}) from {grouped:,} files; "
        f"{len(ungrouped):,} ungrouped; {time.perf_counter() - started:.1f}s -> "
        f"{project.output('groups').relative_to(project.root)}"
    )
