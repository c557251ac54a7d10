"""group: renders of one image, found from the file names alone.

The default is the person's "nearest-up" rule (README, "Grouping rule"): files from all
subfolders sorted by (timestamp, stage, name); a group starts at any file and takes, in
a window of ``lookahead`` files, the smallest stage above its last one, earliest first;
the window ends at a stage <= the last one or at a time gap. ``exact_timestamp`` groups
files that share one timestamp instead (a documented option, rarely right on real data:
each stage gets its own timestamp).

Names are the key, so one name must mean one picture. Two originals with the same file
name in different subfolders are handled before grouping:

- same content hash (a copy): grouped once, as the first copy by path; the other
  copies are ungrouped as "copy of <path>";
- other content (a **name clash**, e.g. two machines that wrote the same timestamped
  names into their own folders): the folders where the copies' paths part (say
  ``machine_a/`` and ``machine_b/``) are each grouped on their own, so no group takes
  renders from both; then no group that holds a clashing name is kept. Its copies are
  ungrouped with "name clash: <name> also in <folder> with other pixels", the other
  members with "its group held <name>, a name clash": a name that means two pictures
  cannot name a decision (finals and DB rows are matched by name). The person renames
  one source's files and the next run groups them.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import pandas as pd

from backfill.config.project import Project
from backfill.config.settings import GroupConfig, section
from backfill.contracts.schemas import GroupsTable, ScanTable, UngroupedTable
from backfill.contracts.tables import read_table, write_table
from backfill.db.cells import comparable_name

SKIPPED = "passed over: a lower stage later in the window was taken instead"
ALONE = "no higher stage followed it within the window (run shorter than min_group_size)"
SAME_STAGE = "another file of the same stage shares its timestamp"
ALONE_AT_TIMESTAMP = "no other stage shares its timestamp"
GROUP_FULL = "its timestamp's group already holds max_group_size images"


def _folder(rel_path: str) -> str:
    head = rel_path.rpartition("/")[0]
    return f"{head}/" if head else "the top folder"


def shared_names(files: pd.DataFrame, case_sensitive: bool = True
                 ) -> tuple[dict[str, str], dict[str, str]]:
    """Files that share their name with another: ``(copies, clashes)``, each
    ``rel_path -> reason``. ``copies``: identical copies but the first by path (grouped
    once, as that file); ``clashes``: every copy of a name that holds other content.
    ``files`` has rel_path, name and content_hash; a copy with no hash (unreadable) is
    taken for other content, never for a copy. Names are compared in their comparable
    form: accents composed, case aside unless ``case_sensitive``."""
    copies: dict[str, str] = {}
    clashes: dict[str, str] = {}
    key = files["name"].map(lambda n: comparable_name(n, case_sensitive))
    dupes = files.assign(key=key)[key.duplicated(keep=False)].sort_values("rel_path",
                                                                          kind="stable")
    for _, same_name in dupes.groupby("key", sort=True):
        name = same_name["name"].iat[0]
        paths = same_name["rel_path"].tolist()
        content = [h if isinstance(h, str) else f"unknown:{p}"
                   for h, p in zip(same_name["content_hash"], paths, strict=True)]
        if len(set(content)) == 1:
            copies.update({p: f"copy of {paths[0]} (same name, same pixels): grouped once, "
                              "as that file" for p in paths[1:]})
            continue
        for path, mine in zip(paths, content, strict=True):
            others = sorted({_folder(p) for p, c in zip(paths, content, strict=True)
                             if c != mine})
            clashes[path] = (f"name clash: {name} also in {', '.join(others)} with other "
                             "pixels; rename one of them")
    return copies, clashes


def clash_folders(clashing: list[str], case_sensitive: bool = True) -> list[str]:
    """Folders grouped on their own because of name clashes: for each two copies of a
    clashing name, the folder on each side just below where their paths part (two
    machines' folders, say). ``clashing``: the rel_paths of every clashing copy."""
    by_name: dict[str, list[list[str]]] = {}
    for path in clashing:
        *folders, name = path.split("/")
        by_name.setdefault(comparable_name(name, case_sensitive), []).append(folders)
    out = set()
    for copies in by_name.values():
        for a in copies:
            for b in copies:
                common = next((k for k, (x, y) in enumerate(zip(a, b, strict=False))
                               if x != y), min(len(a), len(b)))
                if a is not b and len(a) > common:
                    out.add("/".join(a[:common + 1]) + "/")
    return sorted(out)


def partitions(paths: Sequence[str], folders: list[str]) -> list[str]:
    """Each path's partition: the deepest of ``folders`` holding it, or "" (the rest)."""
    deepest = sorted(folders, key=len, reverse=True)
    return [next((f for f in deepest if p.startswith(f)), "") for p in paths]


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
        """From the project's group section, checked by settings.GroupConfig."""
        c = section(GroupConfig, cfg, "group")
        return cls(c.method, c.lookahead, c.time_gap_minutes, c.min_group_size,
                   c.max_group_size, c.id_format)


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


def _group(candidates: pd.DataFrame, settings: GroupSettings
           ) -> tuple[list[list[int]], dict[int, str]]:
    """``settings.method`` run on sorted candidates: groups and left-out reasons, by
    position in ``candidates``."""
    stages = candidates["stage"].tolist()
    if settings.method == "nearest_up":
        return nearest_up(
            stages, pd.to_datetime(candidates["timestamp"], format="%Y%m%d_%H%M%S").tolist(),
            settings.lookahead,
            settings.time_gap_minutes, settings.min_group_size, settings.max_group_size,
        )
    return exact_timestamp(stages, candidates["timestamp"].tolist(),
                           settings.min_group_size, settings.max_group_size)


def _without_clashes(groups: list[list[int]], candidates: pd.DataFrame,
                     clashes: dict[str, str]) -> tuple[list[list[int]], dict[int, str]]:
    """Groups holding no clashing name, and why each member of the others and each
    clashing copy is left out: a name that means two pictures cannot name a decision."""
    paths, names = candidates["rel_path"].tolist(), candidates["name"].tolist()
    left_out = {i: clashes[p] for i, p in enumerate(paths) if p in clashes}
    kept = []
    for members in groups:
        hit = sorted({names[i] for i in members if i in left_out})
        if not hit:
            kept.append(members)
            continue
        for i in members:
            left_out.setdefault(i, f"its group held {', '.join(hit)}, a name clash: not "
                                   "grouped until one copy is renamed")
    return kept, left_out


def group_table(
    scan: pd.DataFrame, settings: GroupSettings, project: str, case_sensitive: bool = True
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The groups table and the ungrouped table from a scan table (originals only).

    Grouping goes by names alone, as the person's tools did: a render that has since
    become unreadable still holds its place (and its index) in its group, flagged in
    ``unreadable``, so the group matches what the reviewer saw. ``case_sensitive``:
    whether two names that differ only in case are two names (names.case_sensitive).
    """
    # Files only: a folder that could not be listed is reported by scan, not here.
    originals = scan[(scan["source"] == "original") & (scan["ext"] != "")]
    named = originals["timestamp"].notna() & (originals["stage"] > 0)
    copies, clashes = shared_names(originals[named], case_sensitive)
    usable = named & ~originals["rel_path"].isin(list(copies))
    candidates = originals[usable].sort_values(
        ["timestamp", "stage", "name", "rel_path"], kind="stable"
    ).reset_index(drop=True)
    timestamps = candidates["timestamp"].tolist()
    # A clash means two sources wrote the same names: each clashing folder is grouped
    # on its own, so no group takes renders from both.
    part_of = partitions(candidates["rel_path"].tolist(),
                         clash_folders(list(clashes), case_sensitive))
    groups, left_out = [], {}
    for key in sorted(set(part_of)):
        idx = [i for i, p in enumerate(part_of) if p == key]
        found, why = _group(candidates.iloc[idx], settings)
        groups += [[idx[i] for i in members] for members in found]
        left_out.update({idx[i]: reason for i, reason in why.items()})
    groups.sort()  # by first member, that is by time, whatever the partition
    groups, dissolved = _without_clashes(groups, candidates, clashes)
    left_out.update(dissolved)

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
    settings = GroupSettings.from_config(project.cfg.group)
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
