"""extract: every decision the person made, recovered from the final folder.

pairing finds each group's kept final by name, by the identity in its name, or by
content (content_pairing, only for finals the names leave unpaired; flagged for review
unless the bytes are identical; a final named like a name clash is the copy its pixels
match, and groups holding clashing copies are checked for renders of the other source),
locate finds where
it lies in its original (cached by both files' content hashes and the matcher
settings), decisions labels the action with the configured tolerances. Changing a
tolerance therefore re-labels a project without matching a single image again.

Every decode goes through imageinfo.decode with scan.max_pixels. A kept final (or its
original) that cannot be read, or must not be (a decompression bomb, over the limit),
gives the action 'unreadable' with the reason, never a crop without a box; it is never
cached, so the run after the file is fixed (scan re-hashes it) locates it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from backfill.config.project import Project
from backfill.config.settings import ExtractConfig, MatchConfig, section, threads
from backfill.contracts.schemas import BROKEN_REJECT, UNREADABLE, FinalsTable, TruthTable
from backfill.contracts.tables import read_stage_tables, write_table
from backfill.db.schema import ACTIONS
from backfill.executors import LocalRunner, Runner, open_runner
from backfill.files.filetimes import FileTimes
from backfill.files.resultcache import ResultCache
from backfill.review import store
from backfill.review.apply import apply_answers, assignments
from backfill.stages.extract.content_pairing import ContentPairing, ContentSettings, ContentStats
from backfill.stages.extract.decisions import LabelSettings, label
from backfill.stages.extract.locate import LOCATE_VERSION, PairLocation, locate_pair
from backfill.stages.extract.pairing import clash_copies, pair_finals, render_rows

KEYS = ["original_hash", "final_hash"]
RESULTS = {"x1": "float64", "y1": "float64", "x2": "float64", "y2": "float64",
           "scale": "float64", "confidence": "float64", "runner_up": "float64",
           "support": "float64", "method": "str"}


@dataclass(frozen=True)
class ExtractSettings:
    match: MatchConfig
    labels: LabelSettings
    workers: int
    max_pixels: int  # scan.max_pixels: larger images are never decoded
    content_candidates: int  # renders a nameless final is located in; 0: no content pairing
    case_sensitive: bool = True  # names.case_sensitive, resolved: A.png is not a.png

    @classmethod
    def from_config(cls, cfg, max_pixels: int, *, case_sensitive: bool = True,
                    file_times: FileTimes | None = None) -> ExtractSettings:
        """From the project's extract section (checked by settings.ExtractConfig), its
        scan.max_pixels, whether names that differ in case are two names, and the
        believable file times its scan section gives."""
        c = section(ExtractConfig, cfg, "extract")
        labels = LabelSettings(c.approve_tolerance, c.min_confidence, c.ambiguity_margin,
                               file_times)
        return cls(c.match, labels, threads(c.workers),
                   int(max_pixels), c.content_candidates, case_sensitive)

    def content(self) -> ContentSettings:
        return ContentSettings(self.content_candidates, self.labels.min_confidence,
                               self.labels.ambiguity_margin, self.match, self.max_pixels)


def locate_cache(cache_dir: Path, match: MatchConfig) -> ResultCache:
    """Located boxes for these matcher settings and LOCATE_VERSION."""
    name = f"{match.key()}-v{LOCATE_VERSION}.parquet"
    return ResultCache(cache_dir / "locate" / name, KEYS,
                       {"original_hash": "str", "final_hash": "str", **RESULTS})


def same_bytes(width: int, height: int) -> dict:
    """The location of a final that is its original, byte for byte: the whole frame.

    An approval moves the render to the final folder as it is, so a third or more of a
    project's finals need no decoding at all (their content hashes are equal)."""
    return {"x1": 0.0, "y1": 0.0, "x2": float(width), "y2": float(height), "scale": 1.0,
            "confidence": 1.0, "runner_up": 0.0, "support": 1.0, "method": "identical"}


def locate_files(original: Path, final: Path, match: MatchConfig, max_pixels: int
                 ) -> PairLocation:
    """One pair's location in original pixels; else ``unreadable`` says which file cannot
    be decoded and why, or ``error`` why the readable pair cannot be located."""
    return locate_pair("", "", original, final, match, max_pixels)


def locate_job(job: tuple[str, str, Path, Path], match: MatchConfig, max_pixels: int
               ) -> PairLocation:
    """``locate_files`` of one (original hash, final hash, original path, final path)."""
    o_hash, f_hash, original, final = job
    return locate_pair(o_hash, f_hash, original, final, match, max_pixels)


def locate_all(todo: pd.DataFrame, original_root: Path, final_root: Path,
               match: MatchConfig, max_pixels: int, runner: Runner
               ) -> Iterator[PairLocation]:
    """Locate every (original, final) of ``todo`` on ``runner``, as they come. Each
    worker holds one pair's pixels at a time, so memory stays bounded."""
    jobs = ((o_hash, f_hash, original_root / o_path, final_root / f_path)
            for o_hash, f_hash, o_path, f_path in todo[
                KEYS + ["original_path", "final_path"]].itertuples(index=False, name=None))
    return tqdm(runner.map(partial(locate_job, match=match, max_pixels=max_pixels), jobs),
                total=len(todo), desc="extract: locating", unit="pair", disable=None)


@dataclass
class ExtractResult:
    truth: pd.DataFrame
    finals: pd.DataFrame
    matched: int  # pairs located in this run
    cached: int  # pairs whose location came from the cache
    failed: int  # pairs that could not be located or decoded in this run
    identical: int  # finals that are their original byte for byte: nothing to match
    content: ContentStats  # finals paired by content, and what that cost


def located_table(records: list[dict]) -> pd.DataFrame:
    """Located pairs (KEYS and RESULTS) with their dtypes, also when there are none."""
    columns = KEYS + list(RESULTS)
    frame = pd.DataFrame.from_records(records, columns=columns)
    return frame.astype({"original_hash": "str", "final_hash": "str", **RESULTS})


def extract_project(groups: pd.DataFrame, scan: pd.DataFrame, ungrouped: pd.DataFrame,
                    settings: ExtractSettings, original_root: Path, final_root: Path,
                    cache_dir: Path, runner: Runner | None = None,
                    assigned: Mapping[str, str] | None = None) -> ExtractResult:
    """The project's decisions and finals, as the files give them; pairs are located on
    ``runner`` (this machine's ``settings.workers`` threads when None). ``assigned``:
    finals you put in a group in review (rel_path -> group id), paired as you said."""
    runner = runner or LocalRunner(settings.workers)
    cache = locate_cache(cache_dir, settings.match)
    by_content = ContentPairing(settings.content(), original_root, final_root, cache_dir, cache,
                                runner)
    pairs, finals = pair_finals(groups, scan, ungrouped, by_content, by_content.choose,
                                settings.case_sensitive, assigned, by_content.in_group)
    originals = scan[scan["source"] == "original"].set_index("rel_path")
    renders = render_rows(groups, originals)
    mixed = by_content.mixed(clash_copies(originals, renders, settings.case_sensitive),
                             renders)
    if mixed:
        pairs["review"] = pd.Series(
            ["; ".join([*([r] if isinstance(r, str) else []), *mixed.get(g, [])]) or None
             for g, r in zip(pairs["group_id"], pairs["review"], strict=True)],
            index=pairs.index, dtype="str")
    located_by_content = located_table([p.row() for p in by_content.located])
    locatable = pairs[pairs["original_hash"].notna() & pairs["final_hash"].notna()]
    same = locatable["original_hash"] == locatable["final_hash"]
    identical = located_table([
        {"original_hash": h, "final_hash": h, **same_bytes(w, ht)} for h, w, ht in zip(
            locatable.loc[same, "original_hash"], locatable.loc[same, "original_width"],
            locatable.loc[same, "original_height"], strict=True)])
    hits, todo_keys = cache.lookup(locatable[~same])
    todo_keys = todo_keys.merge(located_by_content[KEYS], on=KEYS, how="left", indicator=True)
    todo_keys = todo_keys[todo_keys.pop("_merge") == "left_only"]
    todo = todo_keys.merge(locatable.drop_duplicates(KEYS), on=KEYS, how="left")
    matched, errors, unreadable = [], {}, {}

    def remember(p: PairLocation) -> list[dict]:
        key = p.original_hash, p.final_hash
        if p.unreadable is not None:
            unreadable[key] = p.unreadable
        elif p.error is not None:
            errors[key] = p.error
        else:
            matched.append(p.row())
            return [matched[-1]]
        return []  # failures are never cached: a file may be fixed

    cache.fill(locate_all(todo, original_root, final_root, settings.match,
                          settings.max_pixels, runner), remember)
    located = pd.concat([identical, hits[identical.columns], located_by_content,
                         located_table(matched)], ignore_index=True).drop_duplicates(KEYS)
    joined = pairs.merge(located, on=KEYS, how="left")
    keys = list(zip(joined["original_hash"], joined["final_hash"], strict=True))
    joined["locate_error"] = pd.Series([errors.get(k) for k in keys], dtype="str")
    # What pairing found unreadable (scan's status) comes first; a decode failure here
    # (a file changed since the scan, or over max_pixels) otherwise.
    joined["unreadable"] = joined["unreadable"].fillna(
        pd.Series([unreadable.get(k) for k in keys], dtype="str"))
    truth = label(joined, settings.labels)
    return ExtractResult(truth, finals, len(todo), len(hits), len(errors) + len(unreadable),
                         int(same.sum()), by_content.stats)


def decisions_line(truth: pd.DataFrame, finals: pd.DataFrame) -> str:
    """The decisions by action, then what the final folder holds."""
    actions = truth["user_action"].value_counts()
    by_action = ", ".join(f"{actions.get(a, 0):,} {a}"
                          for a in (*ACTIONS, UNREADABLE, BROKEN_REJECT))
    roles = finals["role"].value_counts()
    return (f"{len(truth):,} groups ({by_action}); {int(truth['needs_review'].sum()):,} need "
            f"review; finals: {roles.get('orphan', 0):,} orphans, {roles.get('copy', 0):,} "
            f"copies, {roles.get('extra', 0):,} extra kept")


def run(project: Project) -> str:
    started = time.perf_counter()
    cfg = project.settings
    settings = ExtractSettings.from_config(cfg.extract, cfg.scan.max_pixels,
                                           case_sensitive=project.case_sensitive,
                                           file_times=FileTimes.from_config(cfg.scan))
    tables = read_stage_tables(project, ["scan", "groups", "ungrouped"])
    reviews = project.reviews
    answers = store.read(reviews)
    scan = tables["scan"]
    with open_runner(project, settings.workers) as runner:
        result = extract_project(tables["groups"], scan, tables["ungrouped"],
                                 settings, project.path("original_dir"),
                                 project.path("final_dir"), project.cache_dir, runner,
                                 assignments(answers, scan[scan["source"] == "final"]))
        where = runner.where()
    reviewed = apply_answers({**tables, "truth": result.truth, "finals": result.finals},
                             answers)
    result.truth, result.finals = reviewed.truth, reviewed.finals
    write_table(result.truth, project.output("truth"), TruthTable, "truth")
    write_table(result.finals, project.output("finals"), FinalsTable, "finals")
    unreadable = result.truth.loc[result.truth["user_action"] == UNREADABLE]
    lines = [
        f"extract {project.name}: {decisions_line(result.truth, result.finals)}; pairs: "
        f"{result.matched:,} matched, {result.cached:,} from cache, {result.identical:,} "
        f"identical, {result.failed:,} failed; on {where}; "
        f"{time.perf_counter() - started:.1f}s -> "
        f"{project.output('truth').relative_to(project.root)}"]
    if answers:
        lines.append(f"  your answers ({reviews.relative_to(project.root)}): "
                     f"{reviewed.applied:,} applied, {len(reviewed.not_applied):,} not "
                     f"(they wait again in `backfill review {project.name}`)")
        lines += [f"  answer not applied, {why}" for why in reviewed.not_applied]
    c = result.content
    if c.finals or c.named:
        lines.append(f"  by content: {c.paired:,} of {c.finals:,} unnamed finals paired, "
                     f"each flagged for review; {c.named:,} named after a render that is "
                     f"gone, left orphans ({c.signatures:,} signatures and {c.locates:,} "
                     f"locates computed, {c.seconds:.1f}s)")
    lines += [f"  kept final of {g} not used (fix the file, then `dvc repro`): {why}"
              for g, why in zip(unreadable["group_id"], unreadable["review_reason"],
                                strict=True)]
    broken = result.truth.loc[result.truth["user_action"] == BROKEN_REJECT]
    lines += [f"  no decision for {g}, nothing kept but renders unreadable (fix them, then "
              f"`dvc repro`): {why}" for g, why in zip(broken["group_id"],
                                                      broken["review_reason"], strict=True)]
    return "\n".join(lines)
