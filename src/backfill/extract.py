"""extract: every decision the person made, recovered from the final folder.

pairing finds each group's kept final by name, locate finds where it lies in its
original (cached by both files' content hashes and the matcher settings), decisions
labels the action with the configured tolerances. Changing a tolerance therefore
re-labels a project without matching a single image again.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import pandas as pd
from tqdm import tqdm

from backfill import locate as locate_module
from backfill.decisions import LabelSettings, label
from backfill.locate import LocateError, MatchSettings, locate, read_gray
from backfill.pairing import pair_finals
from backfill.project import ConfigError, Project
from backfill.resultcache import ResultCache, code_version
from backfill.schemas import FinalsTable, GroupsTable, ScanTable, TruthTable, UngroupedTable
from backfill.tables import read_table, write_table

KEYS = ["original_hash", "final_hash"]
RESULTS = {"x1": "float64", "y1": "float64", "x2": "float64", "y2": "float64",
           "scale": "float64", "confidence": "float64", "runner_up": "float64",
           "support": "float64", "method": "str"}


@dataclass(frozen=True)
class ExtractSettings:
    match: MatchSettings
    labels: LabelSettings
    workers: int

    @classmethod
    def from_config(cls, cfg) -> ExtractSettings:
        workers = (os.cpu_count() or 1) if cfg.workers is None else int(cfg.workers)
        if workers < 1:
            raise ConfigError(f"extract.workers is {cfg.workers}: use 1 or more, or null "
                              "for one per core.")
        match = MatchSettings.from_config(cfg.match)
        if not 0 < match.min_scale <= 1 <= match.max_scale or match.scale_step <= 1:
            raise ConfigError(
                "extract.match needs 0 < min_scale <= 1 <= max_scale and scale_step > 1; got "
                f"{match.min_scale}, {match.max_scale} and {match.scale_step}."
            )
        return cls(match, LabelSettings.from_config(cfg), workers)


def locate_cache(cache_dir: Path, match: MatchSettings) -> ResultCache:
    """Located boxes for these matcher settings and this matcher code."""
    name = f"{match.key()}-{code_version(locate_module)}.parquet"
    return ResultCache(cache_dir / "locate" / name, KEYS,
                       {"original_hash": "str", "final_hash": "str", **RESULTS})


def same_bytes(width: int, height: int) -> dict:
    """The location of a final that is its original, byte for byte: the whole frame.

    An approval moves the render to the final folder as it is, so a third or more of a
    project's finals need no decoding at all (their content hashes are equal)."""
    return {"x1": 0.0, "y1": 0.0, "x2": float(width), "y2": float(height), "scale": 1.0,
            "confidence": 1.0, "runner_up": 0.0, "support": 1.0, "method": "identical"}


def locate_files(original: Path, final: Path, match: MatchSettings) -> dict:
    """One pair's location in original pixels; ``error`` says why there is none."""
    try:
        loc = locate(read_gray(original), read_gray(final), match)
    except (LocateError, OSError, cv2.error) as exc:
        return {"error": str(exc)}
    return {**loc._asdict(), "error": None}


def locate_all(todo: pd.DataFrame, original_root: Path, final_root: Path,
               match: MatchSettings, workers: int, cache: ResultCache
               ) -> Iterator[dict]:
    """Locate every (original, final) of ``todo`` on ``workers`` threads, yielding a row
    (KEYS, RESULTS and ``error``) per pair and saving results to ``cache`` as they come.
    OpenCV releases the GIL while it decodes and matches, and each thread holds one
    pair's pixels at a time, so memory stays bounded."""
    cv2.setNumThreads(1 if workers > 1 else -1)  # -1: OpenCV's default; no oversubscription

    def one(row: tuple) -> dict:
        o_hash, f_hash, o_path, f_path = row
        return {"original_hash": o_hash, "final_hash": f_hash,
                **locate_files(original_root / o_path, final_root / f_path, match)}

    rows = todo[KEYS + ["original_path", "final_path"]].itertuples(index=False, name=None)
    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for row in tqdm(pool.map(one, rows), total=len(todo), desc="extract: locating",
                            unit="pair", disable=None):
                if row["error"] is None:  # errors are never cached: a file may come back
                    cache.add(pd.DataFrame([row]))
                yield row
    finally:  # an interrupted run keeps what it matched
        cache.save()


@dataclass
class ExtractResult:
    truth: pd.DataFrame
    finals: pd.DataFrame
    matched: int  # pairs located in this run
    cached: int  # pairs whose location came from the cache
    failed: int
    identical: int  # finals that are their original byte for byte: nothing to match


def extract_project(groups: pd.DataFrame, scan: pd.DataFrame, ungrouped: pd.DataFrame,
                    settings: ExtractSettings, original_root: Path, final_root: Path,
                    cache_dir: Path) -> ExtractResult:
    pairs, finals = pair_finals(groups, scan, ungrouped)
    locatable = pairs[pairs["original_hash"].notna() & pairs["final_hash"].notna()]
    same = locatable["original_hash"] == locatable["final_hash"]
    identical = pd.DataFrame([
        {"original_hash": h, "final_hash": h, **same_bytes(w, ht)} for h, w, ht in zip(
            locatable.loc[same, "original_hash"], locatable.loc[same, "original_width"],
            locatable.loc[same, "original_height"], strict=True)
    ], columns=KEYS + list(RESULTS))
    cache = locate_cache(cache_dir, settings.match)
    hits, todo_keys = cache.lookup(locatable[~same])
    todo = todo_keys.merge(locatable.drop_duplicates(KEYS), on=KEYS, how="left")
    matched, errors = [], {}
    for row in locate_all(todo, original_root, final_root, settings.match, settings.workers,
                          cache):
        if row["error"] is None:
            matched.append(row)
        else:
            errors[row["original_hash"], row["final_hash"]] = row["error"]
    fresh = pd.DataFrame(matched, columns=KEYS + list(RESULTS))
    located = pd.concat([identical, hits, fresh], ignore_index=True).astype(
        {"original_hash": "str", "final_hash": "str", **RESULTS}).drop_duplicates(KEYS)
    joined = pairs.merge(located, on=KEYS, how="left")
    joined["locate_error"] = [errors.get((o, f)) for o, f in
                              zip(joined["original_hash"], joined["final_hash"], strict=True)]
    truth = label(joined, settings.labels)
    return ExtractResult(truth, finals, len(todo), len(hits), len(errors),
                         int(same.sum()))


def run(project: Project) -> str:
    started = time.perf_counter()
    settings = ExtractSettings.from_config(project.cfg.extract)
    result = extract_project(
        read_table(project.output("groups"), GroupsTable, "groups"),
        read_table(project.output("scan"), ScanTable, "scan"),
        read_table(project.output("ungrouped"), UngroupedTable, "ungrouped"),
        settings, project.path("original_dir"), project.path("final_dir"), project.cache_dir,
    )
    write_table(result.truth, project.output("truth"), TruthTable, "truth")
    write_table(result.finals, project.output("finals"), FinalsTable, "finals")
    truth, finals = result.truth, result.finals
    actions = truth["user_action"].value_counts()
    by_action = ", ".join(f"{actions.get(a, 0):,} {a}" for a in ("approve", "crop", "reject"))
    roles = finals["role"].value_counts()
    return (
        f"extract {project.name}: {len(truth):,} groups ({by_action}); "
        f"{int(truth['needs_review'].sum()):,} need review; pairs: {result.matched:,} matched, "
        f"{result.cached:,} from cache, {result.identical:,} identical, {result.failed:,} "
        f"failed; finals: "
        f"{roles.get('orphan', 0):,} orphans, {roles.get('copy', 0):,} copies, "
        f"{roles.get('extra', 0):,} extra kept; {time.perf_counter() - started:.1f}s -> "
        f"{project.output('truth').relative_to(project.root)}"
    )
