"""merge: the backfilled decisions as v3 rows, and the plan that merges them into the
production DB by the guide's rules.

Pure functions of tables. A backfilled group matches a production row when they share
an image file name; a group matching two rows, or two groups matching one row, is
reported and left alone, never guessed. For a matched pair: timestamps and existing AI
predictions are never overwritten; NULL fields are filled; final crop coordinates that
differ from what the images show by more than ``coord_tolerance`` are corrected; the
match flags are recomputed from the final values. Every change is a plan row (group,
column, old, new, rule), values JSON-encoded so that NULL, numbers and text survive.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import PurePosixPath

import numpy as np
import pandas as pd

from backfill.config.project import MERGE_SUMMARY, Project
from backfill.contracts.plan import (
    IDENTITY,
    ISSUE_COLUMNS,
    PLAN_COLUMNS,
    SCHEMA_ROW,
    SEEN,
    MergePlan,
    dumps,
    encode,
    plain,
    plan_cells,
)
from backfill.contracts.schemas import (
    BOX,
    CROP_BOX,
    HELD,
    MergeIssuesTable,
    MergePlanTable,
)
from backfill.contracts.tables import typed_frame
from backfill.db.cells import (
    comparable_name,
    decode_box,
    encode_box,
    encode_images,
    format_time,
    image_names,
    iso_utc,
    read_flag,
    stem_key,
)
from backfill.db.schema import COLUMNS, DERIVED, PROVENANCE_COLUMNS, TIMESTAMPS
from backfill.files.filetimes import FileTimes
from backfill.models.evaluate import crop_match

CROP_FIELDS = ["final_crop_coords", "crop_timestamp"]
# What selection_match and crop_match are computed from.
FLAG_INPUTS = ["user_action", "user_selected_index", "ai_selected_index", "ai_crop_coords",
               "final_crop_coords"]


@dataclass(frozen=True)
class MergeSettings:
    coord_tolerance: float  # the guide: coordinates differing by more are corrected
    crop_tolerance: float  # the v3 plan: crop_match, every coordinate within this
    fix_invalid_actions: bool = False  # rewrite rows the v3 CHECKs refuse ('skip')
    case_sensitive: bool = False  # names.case_sensitive, resolved: A.png is not a.png
    file_times: FileTimes | None = None  # a render's time outside it is no row time

    @classmethod
    def from_config(cls, merge_cfg, evaluate_cfg, *, case_sensitive: bool = False,
                    scan_cfg=None) -> MergeSettings:
        return cls(float(merge_cfg.coord_tolerance), float(evaluate_cfg.crop_tolerance),
                   bool(merge_cfg.fix_invalid_actions), case_sensitive,
                   None if scan_cfg is None else FileTimes.from_config(scan_cfg))


def _row_time(final_time, paths: list, mtime: pd.Series,
              name_time: str, file_times: FileTimes | None) -> tuple[str, str | None]:
    """A backfilled row's ``timestamp`` (the DB needs one) and, when no file time could
    be believed, why the row needs review: the kept final's time (extract nulls one it
    does not believe), else the latest render's believable file time, else the time in
    the renders' names."""
    if isinstance(final_time, str):
        return final_time, None
    if file_times is None:
        return iso_utc(mtime.get(paths[-1])), None
    times = [mtime.get(p) for p in reversed(paths)]
    believed = file_times.believable(times)
    for t, ok in zip(times, believed, strict=True):
        if ok:
            return iso_utc(t), None
    stamp = datetime.strptime(name_time, "%Y%m%d_%H%M%S").replace(tzinfo=UTC)
    return format_time(stamp), ("no file time of the group is believable: its timestamp "
                                "is the time in its renders' names, read as UTC")


def _learned(predictions: pd.DataFrame | None) -> pd.DataFrame | None:
    """Predictions of a learned ranker; a rule such as the baseline is no AI prediction."""
    if predictions is None or not len(predictions):
        return None
    return predictions[predictions["ranker"] != "highest_stage"]


AI_PROVENANCE = ("model_version", "ranker", "crop_proposer", "embedding_model")


def _text(value) -> str | None:
    return value if isinstance(value, str) else None


def _number(value, kind: type) -> int | float | None:
    return None if pd.isna(value) else kind(value)


def backfill_rows(project: str, groups: pd.DataFrame, truth: pd.DataFrame,
                  scan: pd.DataFrame, predictions: pd.DataFrame | None,
                  settings: MergeSettings) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(ai_decisions rows, provenance rows), one per group, from the recovered truth and
    the AI's predictions (AI columns NULL without them)."""
    by_group = groups.set_index("group_id")
    truths = truth.set_index("group_id").reindex(by_group.index)
    learned = _learned(predictions)
    preds = (learned.set_index("group_id").reindex(by_group.index) if learned is not None
             else pd.DataFrame(index=by_group.index,
                               columns=["ai_selected_index", "ai_confidence", *BOX,
                                        *AI_PROVENANCE]))
    mtime = scan[scan["source"] == "original"].set_index("rel_path")["mtime_ns"]
    rows, prov = [], []
    for gid in by_group.index:
        row, source = _group_decision(project, gid, by_group.loc[gid], truths.loc[gid],
                                      preds.loc[gid], mtime, settings.file_times)
        rows.append(row)
        prov.append(source)
    out = with_matches(pd.DataFrame(rows, columns=COLUMNS), settings)
    return out, pd.DataFrame(prov, columns=PROVENANCE_COLUMNS)


def _group_decision(project: str, gid: str, group: pd.Series, found: pd.Series,
                    pred: pd.Series, mtime: pd.Series,
                    file_times: FileTimes | None) -> tuple[dict, dict]:
    """One group's ai_decisions row (match flags still NULL) and its provenance row."""
    ai_index = _number(pred["ai_selected_index"], int)
    kept = _number(found["user_selected_index"], int)
    # A reject keeps no image: the AI's pick stands for the row, else the first.
    picked = kept if kept is not None else (ai_index if ai_index is not None else 0)
    sizes = list(zip(group["widths"], group["heights"], strict=True))
    width, height = sizes[picked]
    if width is None or pd.isna(width):  # the picked member is unreadable
        width, height = next(((w, h) for w, h in sizes if w is not None and not pd.isna(w)),
                             (None, None))
    when, time_review = _row_time(found["final_modified_at"], list(group["image_paths"]),
                                  mtime, group["last_timestamp"], file_times)
    row = {
        "group_id": gid, "timestamp": when, "project_id": project,
        "directory": comparable_name(str(PurePosixPath(group["image_paths"][picked]).parent)),
        "batch_number": None, "images": encode_images(group["image_names"]),
        "ai_selected_index": ai_index, "ai_crop_coords": encode_box([pred[c] for c in BOX]),
        "ai_confidence": _number(pred["ai_confidence"], float),
        "user_selected_index": picked, "user_action": found["user_action"],
        "ai_crop_accepted": None,
        "final_crop_coords": (encode_box([found[c] for c in CROP_BOX])
                              if kept is not None else None),
        "crop_timestamp": _text(found["crop_timestamp"]),
        "image_width": None if width is None else int(width),
        "image_height": None if height is None else int(height),
        "selection_match": None, "crop_match": None,
    }
    source = {
        "group_id": gid, "source": "backfill", "backfill_group_id": gid,
        "final_path": _text(found["final_path"]), "pair_method": _text(found["pair_method"]),
        "match_method": _text(found["match_method"]),
        "match_confidence": _number(found["confidence"], float),
        "needs_review": bool(found["needs_review"]) or time_review is not None,
        "review_reason": "; ".join(r for r in (found["review_reason"], time_review)
                                   if isinstance(r, str)) or None,
        **{c: _text(pred[c]) for c in AI_PROVENANCE},
        "decided_by": _text(found["decided_by"]), "reviewed_at": _text(found["reviewed_at"]),
    }
    return row, source


def with_matches(rows: pd.DataFrame, settings: MergeSettings) -> pd.DataFrame:
    """selection_match and crop_match from the row's final values (NULL for reject rows
    and where the AI made no prediction), so they never inflate accuracy."""
    rows = rows.copy()
    measured = (rows["user_action"] != "reject") & rows["ai_selected_index"].notna()
    rows["selection_match"] = np.where(
        measured, rows["ai_selected_index"] == rows["user_selected_index"], None)
    boxes = measured & rows["ai_crop_coords"].notna() & rows["final_crop_coords"].notna()
    match = [None] * len(rows)
    for i in np.flatnonzero(boxes.to_numpy()):
        ai = decode_box(rows["ai_crop_coords"].iat[i])
        final = decode_box(rows["final_crop_coords"].iat[i])
        if ai is not None and final is not None:  # a malformed box measures nothing
            match[i] = bool(crop_match(ai[None], final[None], settings.crop_tolerance)[0])
    rows["crop_match"] = match
    rows["selection_match"] = [None if v is None else bool(v) for v in rows["selection_match"]]
    return rows


def name_links(backfill: pd.DataFrame, production: pd.DataFrame,
               case_sensitive: bool = False) -> pd.DataFrame:
    """(group_id_b, group_id_p) for every backfilled group and production row that name
    the same render: the same file name in its comparable form (composed accents; case
    aside unless ``case_sensitive``); or, for a production name no backfilled group
    holds as such, the same stem (``a.jpg`` or ``a.PNG`` logged for the render
    ``a.png``). A stem two groups share links both, so it is reported as ambiguous by
    the matching, never guessed."""
    def by_name(rows: pd.DataFrame) -> pd.DataFrame:
        names = rows["images"].map(
            lambda s: [comparable_name(n, case_sensitive) for n in image_names(s)])
        out = pd.DataFrame({"group_id": rows["group_id"].to_numpy(), "name": names.to_numpy()},
                           dtype=object)
        return out.explode("name").dropna(subset=["name"]).reset_index(drop=True)

    b, p = by_name(backfill), by_name(production)
    exact = p["name"].isin(set(b["name"]))
    p.loc[~exact, "name"] = [stem_key(n) for n in p.loc[~exact, "name"]]
    b = pd.concat([b, b.assign(name=[stem_key(n) for n in b["name"]])], ignore_index=True)
    links = b.merge(p, on="name", suffixes=("_b", "_p"))[["group_id_b", "group_id_p"]]
    return links.drop_duplicates().reset_index(drop=True)


@dataclass
class Matching:
    pairs: pd.DataFrame  # backfill_id, production_id: one-to-one matches
    conflicts: pd.DataFrame  # group_id, side, other ids, reason: left alone


def match_rows(backfill: pd.DataFrame, production: pd.DataFrame,
               links: pd.DataFrame | None = None) -> Matching:
    """Pairs that name the same renders (name_links, unless given), one to one;
    everything else is a conflict."""
    links = name_links(backfill, production) if links is None else links
    per_b = links.groupby("group_id_b")["group_id_p"].agg(sorted)
    per_p = links.groupby("group_id_p")["group_id_b"].agg(sorted)
    conflicts = [
        {"group_id": b, "side": "backfill", "others": ps,
         "reason": f"shares image names with {len(ps)} production rows"}
        for b, ps in per_b.items() if len(ps) > 1
    ] + [
        {"group_id": p, "side": "production", "others": bs,
         "reason": f"shares image names with {len(bs)} backfilled groups"}
        for p, bs in per_p.items() if len(bs) > 1
    ]
    one_b = per_b[per_b.map(len) == 1].index
    one_p = per_p[per_p.map(len) == 1].index
    pairs = links[links["group_id_b"].isin(one_b) & links["group_id_p"].isin(one_p)]
    return Matching(
        pairs.rename(columns={"group_id_b": "backfill_id", "group_id_p": "production_id"})
        .sort_values("backfill_id").reset_index(drop=True),
        pd.DataFrame(conflicts, columns=["group_id", "side", "others", "reason"]),
    )


def ambiguous_issues(conflicts: pd.DataFrame, links: pd.DataFrame) -> pd.DataFrame:
    """The issues of an ambiguous matching: each live row that shares image names with
    two or more groups (ambiguous_match), and each backfilled group left out for it
    (ambiguous_group): one matching two live rows, or one whose live row also matches
    another group. Such a group is neither merged (the files cannot say which row is its
    decision) nor added (a second decision for the same renders); it is reported."""
    live = conflicts[conflicts["side"] == "production"]
    mine = conflicts[conflicts["side"] == "backfill"]
    blocked = links[links["group_id_p"].isin(live["group_id"])
                    & ~links["group_id_b"].isin(mine["group_id"])]
    others = dict(zip(live["group_id"], live["others"], strict=True))
    via = [f"its live row {p} also shares image names with "
           f"{', '.join(o for o in others[p] if o != b)}: not written (neither merged into "
           "that row nor added beside it)"
           for b, p in zip(blocked["group_id_b"], blocked["group_id_p"], strict=True)]
    return pd.DataFrame({
        "kind": ["ambiguous_match"] * len(live) + ["ambiguous_group"] * (len(mine) + len(via)),
        "group_id": [*live["group_id"], *mine["group_id"], *blocked["group_id_b"]],
        "detail": [f"production {why}: {', '.join(o)}"
                   for why, o in zip(live["reason"], live["others"], strict=True)]
        + [f"backfill {why}: {', '.join(o)}; not written"
           for why, o in zip(mine["reason"], mine["others"], strict=True)] + via},
        columns=ISSUE_COLUMNS)


def _coords_differ(old: pd.Series, new: pd.Series, tolerance: float) -> np.ndarray:
    """Per pair: do the two JSON boxes differ by more than ``tolerance`` anywhere?"""
    out = np.zeros(len(old), bool)
    for i, (a, b) in enumerate(zip(old, new, strict=True)):
        x, y = decode_box(a), decode_box(b)
        # Unreadable coordinates: what the images show wins.
        out[i] = x is None or y is None or bool((np.abs(x - y) > tolerance).any())
    return out


@dataclass(frozen=True)
class MergeInputs:
    """What a plan is made against besides the two tables and the settings: facts of
    the production DB read (production.sources.Production) and the review folders'
    rule. All optional: a bare v3 DB with no review folder needs none."""
    missing_columns: Sequence[str] = ()  # v3 columns the DB lacks: added first, "migrated"
    # The v3 plan's sidecar rule: True/False/None per merged row.
    crop_accepted: Callable[[pd.DataFrame], pd.Series] | None = None
    # Group ids from a legacy CSV, not the DB: each becomes one "imported" row.
    imported: AbstractSet[str] = frozenset()
    # Why a group's final is unreadable, or why it is no reject: shown in its issue.
    reasons: Mapping[str, str] = field(default_factory=dict)
    identity: dict | None = None  # the DB read (db.schema.identity): publish refuses others


@dataclass
class _Draft:
    """The plan while the rules build it: each rule reads it and adds to it."""
    backfill: pd.DataFrame
    production: pd.DataFrame
    settings: MergeSettings
    inputs: MergeInputs
    imported: set[str]
    invalid: pd.DataFrame  # db.schema.violations of the production rows
    issues: list[pd.DataFrame] = field(default_factory=list)
    parts: list[pd.DataFrame] = field(default_factory=list)  # plan rows, rule by rule
    preserved: int = 0
    # Set as plan_merge runs the rules (old, new, p_ids: one entry per pair, alike):
    links: pd.DataFrame | None = None
    matching: Matching | None = None
    unreadable: pd.Series | None = None  # per backfilled group: HELD, no decision to write
    live_of: dict = field(default_factory=dict)  # held group -> its live row
    prod: pd.DataFrame | None = None  # production by group_id
    back: pd.DataFrame | None = None  # backfill by group_id
    merged: pd.DataFrame | None = None
    p_ids: np.ndarray | None = None
    old: pd.DataFrame | None = None
    new: pd.DataFrame | None = None
    crop_blocked: np.ndarray | None = None  # pairs whose crop the files may not touch
    added: pd.DataFrame | None = None
    changes: pd.DataFrame | None = None


def plan_merge(backfill: pd.DataFrame, production: pd.DataFrame, settings: MergeSettings,
               inputs: MergeInputs | None = None) -> MergePlan:
    """What merging ``backfill`` into ``production`` changes, cell by cell: the merge
    rules below, applied in this order (``inputs``: see MergeInputs)."""
    from backfill.db.schema import violations

    inputs = inputs or MergeInputs()
    d = _Draft(backfill, production, settings, inputs, set(inputs.imported),
               violations(production))
    refuse_invalid_legacy_rows(d)
    _pair(d)
    hold_unreadable_groups(d)
    _compare(d)
    report_ambiguous_matches(d)
    crop_only_on_the_same_pick(d)
    live_action_stands(d)
    fill_empty_cells(d)
    correct_crop_coordinates(d)
    fix_invalid_actions(d)
    add_unmatched_groups(d)
    apply_sidecars(d)
    recompute_flags(d)
    d.changes = pd.concat([p for p in d.parts if len(p)] or
                          [pd.DataFrame(columns=PLAN_COLUMNS)], ignore_index=True)
    leave_held_rows_alone(d)
    write_whole_rows(d)
    record_seen_rows(d)
    return _finished(d)


def refuse_invalid_legacy_rows(d: _Draft) -> None:
    """A legacy-CSV row the v3 checks refuse (and no rule fixes) is reported, never
    imported: the DB would refuse it, and the files' own row for that group stands."""
    fixable = (d.invalid["column"] == "user_action") & d.settings.fix_invalid_actions
    dropped = set(d.invalid.loc[~fixable, "group_id"]) & d.imported
    if not dropped:
        return
    bad = d.invalid[d.invalid["group_id"].isin(dropped)].drop_duplicates("group_id")
    d.issues.append(pd.DataFrame({
        "kind": "legacy_invalid", "group_id": bad["group_id"],
        "detail": [f"{detail}: breaks the v3 plan's checks, not imported"
                   + (" (merge.fix_invalid_actions=true rewrites 'skip')"
                      if column == "user_action" else "")
                   for detail, column in zip(bad["detail"], bad["column"], strict=True)]},
        columns=ISSUE_COLUMNS))
    d.production = d.production[~d.production["group_id"].isin(dropped)]
    d.imported = d.imported - dropped
    d.invalid = d.invalid[~d.invalid["group_id"].isin(dropped)]


def _pair(d: _Draft) -> None:
    """A group and a live row are a pair when they name the same renders, one to one."""
    d.links = name_links(d.backfill, d.production, d.settings.case_sensitive)
    d.matching = match_rows(d.backfill, d.production, d.links)


def hold_unreadable_groups(d: _Draft) -> None:
    """A group whose kept final cannot be read, or that kept nothing but holds renders
    that cannot be read, has no decision to write: it is reported, never written, and a
    live row it names is left alone (no pair) until the files are fixed."""
    d.unreadable = d.backfill["user_action"].isin(list(HELD))
    held = d.backfill.loc[d.unreadable, "group_id"]
    pairs = d.matching.pairs
    held_pairs = pairs[pairs["backfill_id"].isin(held)]
    d.live_of = dict(zip(held_pairs["backfill_id"], held_pairs["production_id"], strict=True))
    reasons = d.inputs.reasons
    d.issues.append(pd.DataFrame({
        "kind": d.backfill.loc[d.unreadable, "user_action"].map(HELD), "group_id": held,
        "detail": [f"{reasons.get(g) or HELD[a].replace('_', ' ')}; not written to "
                   "ai_decisions" + (f" (its live row {d.live_of[g]} is left alone)"
                                     if g in d.live_of else "")
                   + ": fix or replace the file, then re-run"
                   for g, a in zip(held, d.backfill.loc[d.unreadable, "user_action"],
                                   strict=True)]},
        columns=ISSUE_COLUMNS))
    d.matching.pairs = pairs[~pairs["backfill_id"].isin(held)].reset_index(drop=True)


def _compare(d: _Draft) -> None:
    """Each pair's live values (old) beside the files' (new), and the rows to merge into."""
    d.prod = d.production.set_index("group_id")
    d.back = d.backfill.set_index("group_id")
    d.merged = d.prod[COLUMNS[1:]].astype(object).copy()
    d.p_ids = d.matching.pairs["production_id"].to_numpy()
    d.old = d.prod.loc[d.p_ids, COLUMNS[1:]].reset_index(drop=True)
    d.new = d.back.loc[d.matching.pairs["backfill_id"].to_numpy(),
                       COLUMNS[1:]].reset_index(drop=True)
    d.crop_blocked = np.zeros(len(d.p_ids), bool)


def report_ambiguous_matches(d: _Draft) -> None:
    """A group matching two live rows, or two groups matching one, is reported and left
    alone, never guessed."""
    d.issues.append(ambiguous_issues(d.matching.conflicts, d.links))


def crop_only_on_the_same_pick(d: _Draft) -> None:
    """A crop describes one image: the files' crop replaces or fills the row's only when
    both name the same pick; otherwise the row is reported and its crop left alone."""
    same_pick = (pd.to_numeric(d.old["user_selected_index"], errors="coerce").to_numpy()
                 == pd.to_numeric(d.new["user_selected_index"], errors="coerce").to_numpy())
    d.crop_blocked = d.crop_blocked | ~same_pick
    differs = ~same_pick & (d.new["user_action"] != "reject").to_numpy()
    d.issues.append(pd.DataFrame({
        "kind": "pick_differs", "group_id": d.p_ids[differs],
        "detail": [f"the row picked image {o}, the final folder holds image {n}: its crop "
                   "is left as it is" for o, n in zip(d.old["user_selected_index"][differs],
                                                       d.new["user_selected_index"][differs],
                                                       strict=True)]}, columns=ISSUE_COLUMNS))


def live_action_stands(d: _Draft) -> None:
    """A live action the files contradict (approve, yet the final is a crop) is the
    person's word against the files': reported, and its crop left alone, so that no
    approve row ever gets a crop's coordinates. No rule changes a valid action."""
    from backfill.db.schema import ACTIONS

    conflict = (d.old["user_action"].isin(ACTIONS)
                & (d.old["user_action"] != d.new["user_action"])).to_numpy()
    d.crop_blocked = d.crop_blocked | conflict
    d.issues.append(pd.DataFrame({
        "kind": "action_conflict", "group_id": d.p_ids[conflict],
        "detail": [f"the row says {o}, the final folder shows {n}: its action and crop are "
                   "left as they are; correct the row in the reviewer if the files are right"
                   for o, n in zip(d.old["user_action"][conflict],
                                   d.new["user_action"][conflict], strict=True)]},
        columns=ISSUE_COLUMNS))


def _settable(d: _Draft, col: str) -> tuple[np.ndarray, np.ndarray]:
    """Per pair: is the live cell empty; do the files hold a value they may write."""
    empty, given = d.old[col].isna().to_numpy(), d.new[col].notna().to_numpy()
    if col in CROP_FIELDS:
        given = given & ~d.crop_blocked
    return empty, given


def fill_empty_cells(d: _Draft) -> None:
    """An empty cell of a matched live row is filled from the files; anything already
    set (timestamps, AI predictions, the reviewer's own values) is never overwritten."""
    for col in COLUMNS[1:]:
        if col in DERIVED:
            continue
        empty, given = _settable(d, col)
        fill = empty & given
        if col in TIMESTAMPS:
            d.preserved += int((~empty).sum())
        d.parts.append(plan_cells(d.p_ids[fill], col, d.old[col][fill], d.new[col][fill],
                                  "filled"))
        d.merged.loc[d.p_ids[fill], col] = d.new[col][fill].to_numpy()


def correct_crop_coordinates(d: _Draft) -> None:
    """Final crop coordinates that differ from what the images show by more than
    ``coord_tolerance`` are corrected (unreadable ones too: the images win)."""
    col = "final_crop_coords"
    empty, given = _settable(d, col)
    both = np.flatnonzero(~empty & given)
    wrong = both[_coords_differ(d.old[col].iloc[both], d.new[col].iloc[both],
                                d.settings.coord_tolerance)]
    d.parts.append(plan_cells(d.p_ids[wrong], col, d.old[col].iloc[wrong],
                              d.new[col].iloc[wrong], "corrected"))
    d.merged.loc[d.p_ids[wrong], col] = d.new[col].iloc[wrong].to_numpy()


def fix_invalid_actions(d: _Draft) -> None:
    """A live row the v3 checks refuse is reported; its 'skip' action (the old scripts'
    "no final") is rewritten only where merge.fix_invalid_actions says so: to what the
    images show, or reject where no group names the row."""
    d.issues.append(d.invalid.assign(kind="invalid_row")[ISSUE_COLUMNS])
    skip = d.invalid.loc[d.invalid["column"] == "user_action", "group_id"]
    if not (d.settings.fix_invalid_actions and len(skip)):
        return
    wanted = pd.Series("reject", index=skip.to_numpy(), dtype=object)
    by_prod = d.matching.pairs.set_index("production_id")["backfill_id"]
    linked = wanted.index.intersection(by_prod.index)
    wanted[linked] = d.back.loc[by_prod[linked], "user_action"].to_numpy()
    d.parts.append(plan_cells(wanted.index, "user_action",
                              d.prod.loc[wanted.index, "user_action"], wanted, "fixed_action"))
    d.merged.loc[wanted.index, "user_action"] = wanted.to_numpy()


def add_unmatched_groups(d: _Draft) -> None:
    """A group that names no live row's images is added as a new row, never over an
    existing key (a live row with its group_id but none of its images is reported)."""
    conflicts = d.matching.conflicts
    linked = (set(d.matching.pairs["backfill_id"])
              | set(conflicts.loc[conflicts["side"] == "backfill", "group_id"])
              | set(d.links["group_id_b"]))
    unlinked = d.backfill[~d.backfill["group_id"].isin(linked) & ~d.unreadable]
    if d.settings.case_sensitive:
        unlinked = _not_again_but_for_case(d, unlinked)
    taken = unlinked["group_id"].isin(d.prod.index)
    d.issues.append(pd.DataFrame({
        "kind": "id_collision", "group_id": unlinked.loc[taken, "group_id"],
        "detail": "a production row has this group_id but none of its image names"},
        columns=ISSUE_COLUMNS))
    d.added = unlinked[~taken]
    d.merged = pd.concat([d.merged.reset_index(), d.added[COLUMNS].astype(object)],
                         ignore_index=True).set_index("group_id")


def _not_again_but_for_case(d: _Draft, unlinked: pd.DataFrame) -> pd.DataFrame:
    """A live row naming the group's images in another case only: on the person's Mac
    (case ignored) that is the same image, so no second row; reported instead."""
    loose = name_links(unlinked, d.production, case_sensitive=False)
    rows_of = loose.groupby("group_id_b")["group_id_p"].agg(sorted)
    d.issues.append(pd.DataFrame({
        "kind": "ambiguous_group", "group_id": rows_of.index,
        "detail": [f"backfill names its images as production row(s) {', '.join(p)} do "
                   "but for case: not added (set names.case_sensitive: false if the "
                   "files come from a file system that ignores case)"
                   for p in rows_of]}, columns=ISSUE_COLUMNS))
    return unlinked[~unlinked["group_id"].isin(rows_of.index)]


def apply_sidecars(d: _Draft) -> None:
    """ai_crop_accepted follows the review folders' sidecars (the v3 plan's rule) where
    the row has none yet; a value already set stays."""
    if d.inputs.crop_accepted is None:
        return
    accepted = d.inputs.crop_accepted(d.merged.reset_index()).set_axis(d.merged.index)
    ids = d.merged.index[(accepted.notna() & d.merged["ai_crop_accepted"].isna()).to_numpy()]
    d.parts.append(plan_cells(ids, "ai_crop_accepted", [None] * len(ids), accepted[ids],
                              "sidecar"))
    d.merged.loc[ids, "ai_crop_accepted"] = accepted[ids].to_numpy()


def recompute_flags(d: _Draft) -> None:
    """selection_match and crop_match follow the values they are computed from, on rows
    where the merge changed one of those, and fill a NULL flag like any empty cell;
    elsewhere the reviewer's own flags stand."""
    touched = set().union(*(set(p.loc[p["column"].isin(FLAG_INPUTS), "group_id"])
                            for p in d.parts if len(p)))
    new_row = d.merged.index.isin(d.added["group_id"])
    redo = d.merged.index.isin(touched) & ~new_row
    recomputed = with_matches(d.merged.reset_index(), d.settings).set_index("group_id")
    for col in DERIVED:
        before = d.merged[col].map(read_flag)
        after = recomputed[col]
        differ = (before.isna() != after.isna()) | (before.notna() & after.notna()
                                                     & (before != after))
        mine = redo | (before.isna().to_numpy() & ~new_row)
        ids = d.merged.index[(differ & mine).to_numpy()]
        d.parts.append(plan_cells(ids, col, d.merged.loc[ids, col], after[ids], "recomputed"))
        keep = ~mine & ~new_row
        recomputed[col] = recomputed[col].astype(object)
        recomputed.loc[keep, col] = d.merged.loc[keep, col].to_numpy()
    d.merged = recomputed.reset_index()


def leave_held_rows_alone(d: _Draft) -> None:
    """The live row of an unreadable group stays exactly as it is (no flag, sidecar or
    action rule either) until the file is fixed and the group can speak for it."""
    alone = [p for p in d.live_of.values() if p not in d.imported]
    if not alone:
        return
    d.changes = d.changes[~d.changes["group_id"].isin(alone)]
    at = d.merged["group_id"].isin(alone).to_numpy()
    d.merged.loc[at, COLUMNS[1:]] = d.prod.loc[d.merged.loc[at, "group_id"],
                                               COLUMNS[1:]].to_numpy()


def _whole(d: _Draft) -> set[str]:
    return set(d.added["group_id"]) | d.imported


def write_whole_rows(d: _Draft) -> None:
    """A new group, and a legacy-CSV row the DB has never held, is one whole-row plan
    row ("added", "imported") carrying its merged values, not cell by cell."""
    whole = _whole(d)
    changes = d.changes[~d.changes["group_id"].isin(whole)]
    rows = d.merged[d.merged["group_id"].isin(whole)]
    origin = np.where(rows["group_id"].isin(d.added["group_id"]), "added", "imported")
    records = [dumps({c: plain(v) for c, v in zip(COLUMNS, r, strict=True)})
               for r in rows[COLUMNS].itertuples(index=False)]
    d.changes = pd.concat([changes, pd.DataFrame({
        "group_id": rows["group_id"].to_numpy(), "column": "*", "old": encode(None),
        "new": records, "rule": origin}, columns=PLAN_COLUMNS)], ignore_index=True)


def record_seen_rows(d: _Draft) -> None:
    """Each live row the plan changes is recorded whole as the plan saw it: publish
    re-checks every column, since a fill or a flag is only right for the row it was
    computed from."""
    seen_ids = sorted(set(d.changes["group_id"]) - _whole(d))
    seen = d.prod.loc[seen_ids, COLUMNS[1:]]
    d.changes = pd.concat([d.changes, pd.DataFrame({
        "group_id": seen_ids, "column": "*",
        "old": [dumps({c: plain(v) for c, v in zip(COLUMNS[1:], r, strict=True)})
                for r in seen.itertuples(index=False)], "rule": SEEN},
        columns=PLAN_COLUMNS).assign(new=lambda f: f["old"])], ignore_index=True)


def _finished(d: _Draft) -> MergePlan:
    """The plan: the DB it is bound to and the columns to add first, then the changes;
    typed even when empty (an empty plan is the steady state after a publish)."""
    from backfill.db.schema import ADDABLE, DecisionDBError

    missing = list(d.inputs.missing_columns)
    unknown = [c for c in missing if c not in ADDABLE]
    if unknown:
        raise DecisionDBError(f"the production DB lacks {unknown}, which cannot be added to an "
                              "existing table: it predates the v3 plan's schema; migrate it "
                              "by hand.")
    migrations = pd.DataFrame({"group_id": SCHEMA_ROW, "column": missing, "old": encode(None),
                               "new": [encode(ADDABLE[c]) for c in missing],
                               "rule": "migrated"}, columns=PLAN_COLUMNS)
    identity = d.inputs.identity
    bound = pd.DataFrame({"group_id": [SCHEMA_ROW] if identity else [], "column": "*",
                          "old": [dumps(identity)] if identity else [], "rule": IDENTITY},
                         columns=PLAN_COLUMNS).assign(new=lambda f: f["old"])
    changes = pd.concat([bound, migrations,
                         d.changes.sort_values(["group_id", "column"], kind="stable")],
                        ignore_index=True)
    return MergePlan(typed_frame(MergePlanTable, changes),
                     d.merged.sort_values("group_id").reset_index(drop=True)[COLUMNS],
                     typed_frame(MergeIssuesTable, pd.concat(d.issues, ignore_index=True)
                                 .fillna({"group_id": ""})),
                     d.preserved, d.matching.pairs)


def provenance(plan: MergePlan, backfilled: pd.DataFrame, imported: set[str]) -> pd.DataFrame:
    """One side-table row per merged row: where it came from, and for backfilled values
    how the final was paired and located, and by which model version."""
    back = backfilled.set_index("group_id")
    ids = plan.merged["group_id"]
    out = pd.DataFrame({"group_id": ids}).assign(**{c: None for c in PROVENANCE_COLUMNS[1:]})
    out = out.set_index("group_id")
    out["source"] = np.where(ids.isin(imported), "legacy_csv", "production")
    added = plan.changes.loc[plan.changes["rule"] == "added", "group_id"]
    new = ids[ids.isin(added)].to_numpy()
    out.loc[new] = back.loc[new, PROVENANCE_COLUMNS[1:]].to_numpy()
    pairs = plan.pairs
    filled = back.loc[pairs["backfill_id"], PROVENANCE_COLUMNS[1:]].assign(source="merged")
    out.loc[pairs["production_id"].to_numpy()] = filled.to_numpy()
    return out.reset_index()[PROVENANCE_COLUMNS]


def run(project: Project) -> str:
    """The merge stage: plan, issues, and the merged DB; production is only read."""
    from backfill.contracts.schemas import (
        GroupsTable,
        MergeIssuesTable,
        MergePlanTable,
        PredictionsTable,
        ScanTable,
        TruthTable,
    )
    from backfill.contracts.tables import read_table, write_table
    from backfill.files.atomic import write_json
    from backfill.production.apply import refuse_blocked
    from backfill.production.sources import load_production, review_rule, write_merged_db

    started = time.perf_counter()
    settings = MergeSettings.from_config(project.settings.merge, project.settings.evaluate,
                                         case_sensitive=project.case_sensitive,
                                         scan_cfg=project.settings.scan)
    backfilled, prov = backfill_rows(
        project.name, read_table(project.output("groups"), GroupsTable, "groups"),
        read_table(project.output("truth"), TruthTable, "truth"),
        read_table(project.output("scan"), ScanTable, "scan"),
        read_table(project.output("predictions"), PredictionsTable, "predictions"), settings)
    source = load_production(project)
    rule, sidecar_issues = review_rule(project)
    reasons = dict(zip(prov["group_id"], prov["review_reason"], strict=True))
    plan = plan_merge(backfilled, source.rows, settings, MergeInputs(
        source.missing_columns, rule, source.imported, reasons, source.identity))
    refuse_blocked(source.blockers, plan.changes, source.db_path)  # before any output
    plan.issues = typed_frame(MergeIssuesTable, pd.concat(
        [plan.issues, source.issues, sidecar_issues], ignore_index=True)
        .fillna({"group_id": ""}))
    out = project.merged_db  # first: a DB that refuses it stops all
    write_merged_db(out, source.db_path, plan, provenance(plan, prov, source.imported),
                    project.settings.merge.lock_timeout_s)
    write_table(plan.changes, project.output("merge_plan"), MergePlanTable, "merge_plan")
    write_table(plan.issues.sort_values(["kind", "group_id"], kind="stable"),
                project.output("merge_issues"), MergeIssuesTable, "merge_issues")
    write_json(plan.counts(), project.metrics(MERGE_SUMMARY))
    where = (f"production DB {source.db_path} untouched: `backfill publish {project.name} "
             "--dry-run` shows what publishing would write" if source.db_path else
             "no real_db: the merged DB is built from scratch")
    return (f"merge {project.name}: {plan.summary()}; {time.perf_counter() - started:.1f}s "
            f"-> {out.relative_to(project.root)} ({len(plan.merged):,} rows); {where}")
