"""group: renders of one image, found from the file names alone.

The default is the person's "nearest-up" rule (README, "Grouping rule"): files from all
subfolders sorted by (timestamp, stage, name); a group starts at any file and takes, in
a window of ``lookahead`` files, the smallest stage above its last one, earliest first;
the window ends at a stage <= the last one or at a time gap. ``exact_timestamp`` groups
files that share one timestamp instead (a documented option, rarely right on real data:
each stage gets its own timestamp).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import pandas as pd

from backfill.project import ConfigError, Project
from backfill.schemas import MAX_IMAGES, GroupsTable, ScanTable, UngroupedTable
from backfill.tables import read_table, write_table

SKIPPED = "passed over: a lower stage later in the window was taken instead"
ALONE = "no higher stage followed it within the window (run shorter than min_group_size)"
SAME_STAGE = "another file of the same stage shares its timestamp"
ALONE_AT_TIMESTAMP = "no other stage shares its timestamp"
GROUP_FULL = "its timestamp's group already holds max_group_size images"


@dataclass(frozen=True)
class GroupSettings:
    method: str
    lookahead: int
    time_gap_minutes: float | None
    min_group_size: int
    max_group_size: int
    id_format: str

    @classmethod
    def from_config(cls, cfg) -> GroupSettings:
        if cfg.method not in ("nearest_up", "exact_timestamp"):
            raise ConfigError(
                f"group.method is '{cfg.method}': use 'nearest_up' or 'exact_timestamp'."
            )
        if int(cfg.lookahead) < 1:
            raise ConfigError(f"group.lookahead is {cfg.lookahead}: it must be 1 or more.")
        # A group of one offers no choice, and the groups table's contract says so too.
        if not 2 <= int(cfg.min_group_size) <= int(cfg.max_group_size) <= MAX_IMAGES:
            raise ConfigError(
                f"group sizes must satisfy 2 <= min_group_size <= max_group_size <= {MAX_IMAGES}"
                f" (the DB indexes images 0-3); got {cfg.min_group_size} and {cfg.max_group_size}."
            )
        return cls(
            method=str(cfg.method),
            lookahead=int(cfg.lookahead),
            time_gap_minutes=None if cfg.time_gap_minutes is None else float(cfg.time_gap_minutes),
            min_group_size=int(cfg.min_group_size),
            max_group_size=int(cfg.max_group_size),
            id_format=str(cfg.id_format),
        )


def nearest_up(
    stages: Sequence[float],
    times: Sequence[datetime | None],
    lookahead: int,
    time_gap_minutes: float | None,
    min_group_size: int,
    max_group_size: int,
) -> tuple[list[list[int]], dict[int, str]]:
    """Group pre-sorted files by the nearest-up rule.

    Returns the groups as lists of indices into the input and, for every index left out,
    why. Pure: the reference's pinned cases are tested against it directly.
    """
    gap = timedelta(minutes=time_gap_minutes) if time_gap_minutes is not None else None
    n, i = len(stages), 0
    groups: list[list[int]] = []
    left_out: dict[int, str] = {}

    def ends_window(prev_stage: float, prev_time: datetime | None, k: int) -> bool:
        if stages[k] <= prev_stage:
            return True
        return bool(gap is not None and prev_time and times[k] and times[k] - prev_time > gap)

    while i < n:
        group = [i]
        i += 1
        while i < n and len(group) < max_group_size:
            last = group[-1]
            window = []
            k = i
            while k < n and k - i < lookahead and not ends_window(stages[last], times[last], k):
                window.append(k)
                k += 1
            if not window:
                break
            lowest = min(stages[k] for k in window)
            chosen = next(k for k in window if stages[k] == lowest)
            for k in range(i, chosen):  # higher stages jumped over are dropped
                left_out[k] = SKIPPED
            group.append(chosen)
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
) -> tuple[list[list[int]], dict[int, str]]:
    """Group pre-sorted files that share a timestamp, one file per stage, stages rising."""
    groups: list[list[int]] = []
    left_out: dict[int, str] = {}
    start = 0
    for end in range(1, len(stages) + 1):
        if end < len(stages) and timestamps[end] == timestamps[start]:
            continue
        group: list[int] = []
        for k in range(start, end):
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


def group_table(
    scan: pd.DataFrame, settings: GroupSettings, project: str
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The groups table and the ungrouped table from a scan table (originals only).

    Grouping goes by names alone, as the person's tools did: a render that has since
    become unreadable still holds its place (and its index) in its group, flagged in
    ``unreadable``, so the group matches what the reviewer saw.
    """
    # Files only: a folder that could not be listed is reported by scan, not here.
    originals = scan[(scan["source"] == "original") & (scan["ext"] != "")]
    usable = originals["timestamp"].notna() & (originals["stage"] > 0)
    candidates = originals[usable].sort_values(
        ["timestamp", "stage", "name", "rel_path"], kind="stable"
    ).reset_index(drop=True)
    stages = candidates["stage"].tolist()
    timestamps = candidates["timestamp"].tolist()
    if settings.method == "nearest_up":
        groups, left_out = nearest_up(
            stages, pd.to_datetime(candidates["timestamp"], format="%Y%m%d_%H%M%S").tolist(),
            settings.lookahead,
            settings.time_gap_minutes, settings.min_group_size, settings.max_group_size,
        )
    else:
        groups, left_out = exact_timestamp(
            stages, timestamps, settings.min_group_size, settings.max_group_size
        )

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
        reasons[row["rel_path"]] = why + unreadable
    left = originals[~usable]
    reasons.update(zip(left["rel_path"], left["reason"], strict=True))
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
    settings = GroupSettings.from_config(project.cfg.group)
    groups, ungrouped = group_table(scan, settings, project.name)
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
