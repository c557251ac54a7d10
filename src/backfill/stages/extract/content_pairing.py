"""content_pairing: kept finals whose names say nothing, paired with a render by what
they show.

A final named ``IMG_0412.jpg`` or ``export-3.png`` may still be one of the person's kept
images. pairing hands each such readable final here, with the renders of the groups
that have no kept final yet. It also hands the finals whose timestamp and stage match
no render (``named``): those are matched the same way, but only so that their reason
can name their best match; they are never claimed, and flag no group (the same
picture is often rendered again, and such a final is a render that is gone):

1. Shortlist. Every render has a signature: histograms of colour (6 levels a channel)
   and of grey (32 levels) in each cell of a 3x3 grid over a small decode (128 px on
   the long side). A crop covers some rectangle of cells, and a resize or re-encoding
   barely moves a histogram, so a render's score is the best histogram intersection of
   the final with any rectangle of its cells (grey histograms for a grey final). The
   ``content_candidates`` (k) best-scoring renders are the shortlist. Signatures are
   cached by content hash (``cache/signature/``): a render is decoded for this once,
   ever, and only when some final needs content pairing.
2. Verify. The final is located in each shortlisted render (locate.locate; results in
   extract's locate cache). The most confident match must reach ``min_confidence``.
   When a render of another group comes within ``ambiguity_margin`` of it, the final is
   paired with neither (never a guess) and both groups are flagged for review. With no
   name to back it, a match must also be beyond doubt (``_doubt``): most of the final's
   detail confirmed at full resolution, no other place in the render as good.
3. Stage. A group's renders are one picture at several stages (stage 2 is an upscale
   of 1.5, stage 1.5 is stage 1 with a face swapped), so the final is also located in
   the winning group's renders that were not shortlisted. Stages within
   ``ambiguity_margin`` of the best are told apart by a rule, and the group is flagged
   saying so: the best match unless others are within SAME_CONFIDENCE of it (then they
   differ by resampling alone), then the scale closest to 1 (the crop tool saves at the
   render's own size), then the highest stage (the most finished render, as when two
   are kept).

Whatever it finds, pairing flags the group for review: a picture that appears inside a
render may be the same picture rendered again, at another framing or scale.

Cost per final: one histogram comparison against every candidate render's cached
signature (milliseconds), then k locates plus the winner's other stages; near
(finals x k) locates, never finals x renders.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from backfill.config.settings import MatchConfig
from backfill.executors import Runner
from backfill.files.imageinfo import Unreadable, decode
from backfill.files.resultcache import ResultCache
from backfill.stages.extract.decisions import ambiguous
from backfill.stages.extract.locate import ONE_TO_ONE_SUPPORT, PairLocation, locate_pair, read_gray
from backfill.stages.extract.pairing import Claim, ContentOutcome

# Bump when ``signature`` (or decode's pixels) gives other cells for an image: cached
# signatures of other versions are then not reused.
SIGNATURE_VERSION = 1
GRID = 3  # cells a side: a crop covers some rectangle of them
COLOUR_LEVELS = 6  # per channel: 216 colour bins
GREY_BINS = 32
THUMB = 128  # pixels on the long side of the decode a signature is taken from
GREY_SPREAD = 2  # grey levels between channels below which an image counts as grey
SAME_SCALE = math.log(1.05)  # scales within 5% of each other are alike for the stage rule
# Stages matching within this of each other differ by resampling alone (one is an upscale
# of the other), not by what they show: the stage rule decides between them.
SAME_CONFIDENCE = 0.002
CONFIRMED = ONE_TO_ONE_SUPPORT  # share of a final's patches a content match must confirm
CHUNK = 512  # renders whose rectangle histograms are held at once while scoring
COLOUR_BINS = COLOUR_LEVELS ** 3
BINS = COLOUR_BINS + GREY_BINS


def _rectangles(grid: int) -> np.ndarray:
    """Every rectangle of cells of the grid, as a (rectangles x cells) 0/1 matrix."""
    rows = []
    for y0 in range(grid):
        for y1 in range(y0 + 1, grid + 1):
            for x0 in range(grid):
                for x1 in range(x0 + 1, grid + 1):
                    cells = np.zeros((grid, grid), np.float32)
                    cells[y0:y1, x0:x1] = 1
                    rows.append(cells.ravel())
    return np.array(rows)


RECTANGLES = _rectangles(GRID)


def signature(pixels: np.ndarray) -> tuple[np.ndarray, bool]:
    """Histogram counts per cell (GRID*GRID x BINS, float32) of an 8-bit BGR image, and
    whether the image is grey."""
    h, w = pixels.shape[:2]
    factor = min(1.0, THUMB / max(h, w))
    small = pixels if factor == 1.0 else cv2.resize(
        pixels, (max(1, round(w * factor)), max(1, round(h * factor))),
        interpolation=cv2.INTER_AREA)
    q = (small.astype(np.int32) * COLOUR_LEVELS) >> 8
    colour = (q[..., 0] * COLOUR_LEVELS + q[..., 1]) * COLOUR_LEVELS + q[..., 2]
    grey = (cv2.cvtColor(small, cv2.COLOR_BGR2GRAY).astype(np.int32) * GREY_BINS) >> 8
    ys = np.linspace(0, small.shape[0], GRID + 1).round().astype(int)
    xs = np.linspace(0, small.shape[1], GRID + 1).round().astype(int)
    cells = np.zeros((GRID * GRID, BINS), np.float32)
    for i in range(GRID):
        for j in range(GRID):
            part = np.s_[ys[i]:ys[i + 1], xs[j]:xs[j + 1]]
            cells[i * GRID + j, :COLOUR_BINS] = np.bincount(colour[part].ravel(),
                                                            minlength=COLOUR_BINS)
            cells[i * GRID + j, COLOUR_BINS:] = np.bincount(grey[part].ravel(),
                                                            minlength=GREY_BINS)
    spread = int((small.max(axis=2).astype(np.int16) - small.min(axis=2)).max())
    return cells, spread <= GREY_SPREAD


def normalised(counts: np.ndarray) -> np.ndarray:
    """Counts (..., BINS) as two histograms that each sum to 1: colour, then grey."""
    out = np.empty_like(counts, dtype=np.float32)
    for part in (np.s_[..., :COLOUR_BINS], np.s_[..., COLOUR_BINS:]):
        total = counts[part].sum(axis=-1, keepdims=True)
        out[part] = counts[part] / np.maximum(total, 1)
    return out


def scores(finals: np.ndarray, grey: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """(finals x renders) best histogram intersection of each final's whole histogram
    (``finals``: counts, F x BINS) with any rectangle of cells of each render
    (``cells``: counts, N x GRID*GRID x BINS); grey histograms for a grey final."""
    wholes = normalised(finals)
    out = np.zeros((len(finals), len(cells)), np.float32)
    for start in range(0, len(cells), CHUNK):
        rects = normalised(np.einsum("rc,ncb->nrb", RECTANGLES, cells[start:start + CHUNK]))
        for f, (hist, is_grey) in enumerate(zip(wholes, grey, strict=True)):
            part = np.s_[COLOUR_BINS:] if is_grey else np.s_[:COLOUR_BINS]
            inter = np.minimum(hist[part], rects[..., part]).sum(axis=-1)
            out[f, start:start + CHUNK] = inter.max(axis=-1)
    return out


def shortlist(score: np.ndarray, renders: pd.DataFrame, k: int) -> pd.DataFrame:
    """The ``k`` renders that score highest (ties: by group, then the highest stage)."""
    ranked = renders.assign(score=score).sort_values(
        ["score", "group_id", "index"], ascending=[False, True, False], kind="stable")
    return ranked.head(k)


def signature_cache(cache_dir: Path) -> ResultCache:
    """Signatures by content hash, for SIGNATURE_VERSION."""
    return ResultCache(cache_dir / "signature" / f"v{SIGNATURE_VERSION}.parquet",
                       ["content_hash"],
                       {"content_hash": "str", "cells": "object", "grey": "bool"})


@dataclass(frozen=True)
class ContentSettings:
    candidates: int  # k: renders located per final; 0 turns content pairing off
    min_confidence: float
    ambiguity_margin: float
    match: MatchConfig
    max_pixels: int


@dataclass
class ContentStats:
    finals: int = 0  # finals compared by content to be paired
    paired: int = 0
    named: int = 0  # finals naming a render that is gone: compared for their reason only
    signatures: int = 0  # signatures computed (not from the cache)
    locates: int = 0  # finals located in a render (not from the cache)
    seconds: float = 0.0


@dataclass(frozen=True)
class _Target:
    """One final to locate in one render."""

    rel_path: str
    final_hash: str
    group_id: str
    index: int
    original_hash: str
    original_path: str


@dataclass
class ContentPairing:
    """pairing.ContentPairer: called with the readable unpaired finals, the renders
    (pairing.render_rows) of the groups with no kept final, and the finals whose names
    state a render identity (never claimed)."""

    settings: ContentSettings
    original_root: Path
    final_root: Path
    cache_dir: Path
    locate_cache: ResultCache  # extract's: a location found here is never searched again
    runner: Runner  # where signatures and locates are computed
    stats: ContentStats = field(default_factory=ContentStats)
    # The location of every claim made: extract needs no second locate.
    located: list[PairLocation] = field(default_factory=list)

    def __call__(self, finals: pd.DataFrame, renders: pd.DataFrame,
                 named: frozenset[str] = frozenset()) -> ContentOutcome:
        started = time.perf_counter()
        try:
            return self._pair(finals, renders, named)
        finally:
            self.stats.seconds += time.perf_counter() - started

    def _pair(self, finals: pd.DataFrame, renders: pd.DataFrame, named: frozenset[str]
              ) -> ContentOutcome:
        s = self.settings
        outcome = ContentOutcome([], {}, defaultdict(list))
        if s.candidates == 0:
            outcome.reasons = dict.fromkeys(
                finals["rel_path"], "not compared by content (extract.content_candidates: 0)")
            return outcome
        if renders.empty:
            outcome.reasons = dict.fromkeys(
                finals["rel_path"], "not compared by content: every group has a kept final")
            return outcome
        told = finals["rel_path"].isin(named)
        self.stats.finals += int((~told).sum())
        self.stats.named += int(told.sum())
        signatures, failed = self._signatures({
            **dict(zip(renders["content_hash"], renders["original_path"].map(
                lambda p: self.original_root / p), strict=True)),
            **dict(zip(finals["content_hash"], finals["rel_path"].map(
                lambda p: self.final_root / p), strict=True))})
        for rel, h in zip(finals["rel_path"], finals["content_hash"], strict=True):
            if h in failed:
                outcome.reasons[rel] = f"not compared by content: {failed[h]}"
        finals = finals[finals["content_hash"].isin(signatures)]
        renders = renders[renders["content_hash"].isin(signatures)].reset_index(drop=True)
        if finals.empty or renders.empty:
            return outcome
        names = dict(zip(renders["original_path"], renders["name"], strict=True))
        first = shortlisted(finals, renders, signatures, s.candidates)
        found = self._locate(first)
        winners = _choose_groups(first, found, s, names, outcome, named)
        for rel in sorted(named & winners.keys()):
            g, tried = winners.pop(rel)
            best = max((t for t in tried if t.group_id == g), key=lambda t: _confidence(found, t))
            doubt = _doubt(found[best.original_hash, best.final_hash], s)
            outcome.reasons[rel] = (
                f"its content best matches {names[best.original_path]} of {g} (confidence "
                f"{_confidence(found, best):.2f}{f', {doubt}' if doubt else ''})")
        # The winners' other stages, so that the stage rule sees them all.
        rest = [t for rel, (g, tried) in winners.items() for t in _targets(
            rel, tried[0].final_hash, renders[(renders["group_id"] == g) & ~renders["index"].isin(
                [x.index for x in tried if x.group_id == g])])]
        found.update(self._locate(rest))
        more = _by_final(rest)
        for rel, (g, tried) in winners.items():
            options = [t for t in tried + more.get(rel, []) if t.group_id == g]
            firm = [t for t in options if _doubt(found[t.original_hash, t.final_hash], s) is None]
            if not firm:  # a nameless final is paired only by a match beyond doubt
                best = max(options, key=lambda t: _confidence(found, t))
                outcome.reasons[rel] = (
                    f"no render matches its content beyond doubt (best: "
                    f"{names[best.original_path]}, confidence {_confidence(found, best):.2f}, "
                    f"{_doubt(found[best.original_hash, best.final_hash], s)})")
                continue
            pick, note = _stage(firm, found, s)
            outcome.claims.append(Claim(rel, g, pick.index, "content"))
            self.located.append(found[pick.original_hash, pick.final_hash])
            if note:
                outcome.reviews[g].append(f"{rel}: {note}")
        self.stats.paired += len(outcome.claims)
        return outcome

    def choose(self, jobs: pd.DataFrame) -> dict[str, tuple[str | None, str]]:
        """pairing.PixelChooser: each final named like a name clash, located in every
        readable copy of the name; the copy it matches best, when that reaches
        ``min_confidence`` and no other copy comes within ``ambiguity_margin``."""
        started = time.perf_counter()
        try:
            s = self.settings
            targets = _job_targets(jobs)
            found = self._locate(targets)
            out: dict[str, tuple[str | None, str]] = {}
            for rel, mine in _by_final(targets).items():
                tied = _tied(mine, found, s)
                said = ", ".join(f"{t.original_path} {_confidence(found, t):.3f}"
                                 for t in sorted(mine, key=lambda t: t.original_path))
                if len(tied) == 1:
                    out[rel] = tied[0].original_path, f"its pixels (confidence {said})"
                    if tied[0].group_id:  # extract needs no second locate
                        self.located.append(found[tied[0].original_hash, tied[0].final_hash])
                elif tied:
                    out[rel] = None, f"its pixels match {len(tied)} copies about equally ({said})"
                else:
                    out[rel] = None, f"its pixels match no copy well enough (confidence {said})"
            return out
        finally:
            self.stats.seconds += time.perf_counter() - started

    def in_group(self, jobs: pd.DataFrame) -> dict[str, tuple[int | None, str | None]]:
        """pairing.GroupChooser: each final you assigned to a group, located in each of
        its readable renders; the render it was cut from by the stage rule (with its
        note), or None and why when none matches it to ``min_confidence``. Your answer
        stands for the group, so no other group is searched and no doubt is required."""
        started = time.perf_counter()
        try:
            s = self.settings
            targets = _job_targets(jobs)
            found = self._locate(targets)
            out: dict[str, tuple[int | None, str | None]] = {}
            for rel, mine in _by_final(targets).items():
                if not _tied(mine, found, s):
                    best = max(_confidence(found, t) for t in mine)
                    out[rel] = None, (f"its pixels match no render of {mine[0].group_id} to "
                                      f"min_confidence {s.min_confidence} (best {best:.2f})")
                    continue
                pick, note = _stage(mine, found, s)
                self.located.append(found[pick.original_hash, pick.final_hash])
                out[rel] = pick.index, note
            return out
        finally:
            self.stats.seconds += time.perf_counter() - started

    def mixed(self, copies: pd.DataFrame, renders: pd.DataFrame) -> dict[str, list[str]]:
        """Review notes for groups that may hold renders of two sources of a name clash.

        Grouping goes by names and folders, which cannot tell two machines apart when
        their renders share folders; pictures can. For each two groups holding copies
        of one clashing name (``copies``: pairing.clash_copies; ``renders``:
        pairing.render_rows), each other member of a group should look more like its
        own group's copy than like the other group's (colour histograms, the shortlist's
        signatures). One that does not is noted: no threshold, only which is closer."""
        notes: dict[str, list[str]] = defaultdict(list)
        grouped = copies[copies["group_id"] != ""]
        shared = grouped[grouped.groupby("name")["group_id"].transform("size") > 1]
        if shared.empty:
            return notes
        members = renders[renders["group_id"].isin(shared["group_id"])
                          & renders["content_hash"].notna()]
        sigs, _ = self._signatures(dict(zip(members["content_hash"], members["original_path"].map(
            lambda p: self.original_root / p), strict=True)))
        looks = {h: normalised(c.sum(axis=0))[:COLOUR_BINS] for h, (c, _) in sigs.items()}

        def likeness(a: str, b: str) -> float:
            return float(np.minimum(looks[a], looks[b]).sum())

        for _, of_name in shared.groupby("name", sort=True):
            for own in of_name.itertuples(index=False):
                if own.original_hash not in looks:
                    continue
                others = [o for o in of_name.itertuples(index=False)
                          if o.group_id != own.group_id and o.original_hash in looks]
                mine = members[(members["group_id"] == own.group_id)
                               & (members["original_path"] != own.original_path)]
                for m_path, m_hash in zip(mine["original_path"], mine["content_hash"],
                                          strict=True):
                    if m_hash not in looks:
                        continue
                    near = likeness(m_hash, own.original_hash)
                    for o in others:
                        far = likeness(m_hash, o.original_hash)
                        if far > near:
                            notes[own.group_id].append(
                                f"{m_path} looks more like {o.original_path} (of "
                                f"{o.group_id}) than like this group's {own.original_path} "
                                f"({far:.2f} against {near:.2f}): renders of two sources of "
                                "a name clash may be mixed (check the group)")
        return notes

    def _signatures(self, wanted: dict[str, Path]
                    ) -> tuple[dict[str, tuple[np.ndarray, bool]], dict[str, str]]:
        """Signatures by content hash (cached, else computed by the runner),
        and why the files that could not be decoded were not."""
        cache = signature_cache(self.cache_dir)
        keys = pd.DataFrame({"content_hash": pd.Series(list(wanted), dtype="str")})
        hits, todo = cache.lookup(keys)
        out = {h: (np.asarray(c, np.float32).reshape(GRID * GRID, BINS), bool(g))
               for h, c, g in zip(hits["content_hash"], hits["cells"], hits["grey"],
                                  strict=True)}
        failed = {}

        def remember(result: tuple[str, np.ndarray | None, bool, str | None]) -> list[dict]:
            h, cells, grey, error = result
            if error is not None:
                failed[h] = error  # never cached: the file may be fixed
                return []
            out[h] = (cells, grey)
            self.stats.signatures += 1
            return [{"content_hash": h, "cells": cells.ravel(), "grey": grey}]

        jobs = [(h, wanted[h]) for h in todo["content_hash"]]
        cache.fill(self.runner.map(
            partial(signature_of, max_pixels=self.settings.max_pixels), jobs), remember)
        return out, failed

    def _locate(self, targets: list[_Target]) -> dict[tuple[str, str], PairLocation]:
        """Each target's location (or why there is none), from the locate cache or found
        now, each final decoded once."""
        if not targets:
            return {}
        keys = pd.DataFrame({"original_hash": [t.original_hash for t in targets],
                             "final_hash": [t.final_hash for t in targets]})
        hits, todo = self.locate_cache.lookup(keys)
        found = {(r["original_hash"], r["final_hash"]): PairLocation.from_row(r)
                 for r in hits.to_dict("records")}
        missing = set(zip(todo["original_hash"], todo["final_hash"], strict=True))
        jobs: dict[str, list[_Target]] = defaultdict(list)
        for t in targets:
            if (t.original_hash, t.final_hash) in missing and t not in jobs[t.rel_path]:
                jobs[t.rel_path].append(t)
                missing.discard((t.original_hash, t.final_hash))
        located = partial(locate_in_renders, match=self.settings.match,
                          max_pixels=self.settings.max_pixels)
        items = [(self.final_root / ts[0].rel_path,
                  [(t.original_hash, t.final_hash, self.original_root / t.original_path)
                   for t in ts]) for ts in jobs.values()]

        def remember(pairs: list[PairLocation]) -> list[dict]:
            for p in pairs:
                found[p.original_hash, p.final_hash] = p
                self.stats.locates += 1
            return [p.row() for p in pairs if p.location is not None]  # failures: never

        self.locate_cache.fill(self.runner.map(located, items), remember)
        return found


def signature_of(job: tuple[str, Path], max_pixels: int
                 ) -> tuple[str, np.ndarray | None, bool, str | None]:
    """(content hash, cells, grey, None), or (content hash, None, False, why) for a file
    that cannot be decoded."""
    h, path = job
    try:
        cells, grey = signature(decode(path, cv2.IMREAD_COLOR, max_pixels))
    except Unreadable as exc:
        return h, None, False, str(exc)
    return h, cells, grey, None


def locate_in_renders(job: tuple[Path, list[tuple[str, str, Path]]], match: MatchConfig,
                      max_pixels: int) -> list[PairLocation]:
    """One final (its path, then each render's hash, the final's hash and the render's
    path), decoded once, located in each render."""
    final_path, renders = job
    try:
        final = read_gray(final_path, max_pixels)
    except Unreadable as exc:
        return [PairLocation(o, f, unreadable=f"final unreadable: {exc}")
                for o, f, _ in renders]
    return [locate_pair(o, f, original_path, final, match, max_pixels)
            for o, f, original_path in renders]


def _job_targets(jobs: pd.DataFrame) -> list[_Target]:
    """One target per row of ``jobs`` (rel_path, final_hash, group_id, index,
    original_hash, original_path)."""
    return [_Target(r.rel_path, r.final_hash, r.group_id, int(r.index), r.original_hash,
                    r.original_path) for r in jobs.itertuples(index=False)]


def _targets(rel: str, final_hash: str, renders: pd.DataFrame) -> list[_Target]:
    """The final ``rel`` to locate in each of ``renders``."""
    return [_Target(rel, final_hash, g, int(i), h, p) for g, i, h, p in zip(
        renders["group_id"], renders["index"], renders["content_hash"],
        renders["original_path"], strict=True)]


def shortlisted(finals: pd.DataFrame, renders: pd.DataFrame,
                signatures: dict[str, tuple[np.ndarray, bool]], k: int) -> list[_Target]:
    """Each final with the ``k`` renders its signature fits best."""
    table = scores(np.stack([signatures[h][0].sum(axis=0) for h in finals["content_hash"]]),
                   np.array([signatures[h][1] for h in finals["content_hash"]]),
                   np.stack([signatures[h][0] for h in renders["content_hash"]]))
    return [t for rel, h, score in zip(finals["rel_path"], finals["content_hash"], table,
                                       strict=True)
            for t in _targets(rel, h, shortlist(score, renders, k))]


def _choose_groups(tried: list[_Target], found: dict[tuple[str, str], PairLocation],
                   s: ContentSettings, names: dict[str, str], outcome: ContentOutcome,
                   named: frozenset[str] = frozenset()
                   ) -> dict[str, tuple[str, list[_Target]]]:
    """The one group each final's content fits (final -> group, targets tried); the
    reason in ``outcome`` for a final that fits none, or several about equally (its
    groups are flagged, unless the final is ``named``: it could be paired with none)."""
    winners = {}
    for rel, mine in _by_final(tried).items():
        best = max(mine, key=lambda t: _confidence(found, t))
        near = sorted({t.group_id for t in _tied(mine, found, s)})
        if len(near) > 1:
            _ambiguous(outcome, rel, near, mine, found, flag=rel not in named)
        elif not near:
            outcome.reasons[rel] = (f"no render matches its content (best: "
                                    f"{names[best.original_path]}, confidence "
                                    f"{_confidence(found, best):.2f})")
        else:
            winners[rel] = (near[0], mine)
    return winners


def _confidence(found: dict[tuple[str, str], PairLocation], t: _Target) -> float:
    """How well the final matches the target's render; 0 when it could not be located."""
    return found[t.original_hash, t.final_hash].confidence


def _doubt(p: PairLocation, s: ContentSettings) -> str | None:
    """Why a location would not pair a nameless final (which has no name to back it):
    not located, too little of the final's detail confirmed at full resolution (as
    locate trusts a 1:1 answer), or another place in the render matching almost as
    well. None when there is no doubt."""
    loc = p.location
    if loc is None:
        return f"not located: {p.failure}"
    if loc.support < CONFIRMED:
        return f"{loc.support:.0%} of its detail confirmed at full resolution"
    if ambiguous(loc.confidence, loc.runner_up, s.ambiguity_margin):
        return f"another place matches almost as well ({loc.runner_up:.2f})"
    return None


def _tied(targets: list[_Target], found: dict[tuple[str, str], PairLocation], s: ContentSettings
          ) -> list[_Target]:
    """The targets that match about as well as the best, and well enough."""
    top = max(_confidence(found, t) for t in targets)
    floor = max(s.min_confidence, top - s.ambiguity_margin)
    return [t for t in targets if _confidence(found, t) >= floor and _confidence(found, t) > 0]


def _by_final(targets: list[_Target]) -> dict[str, list[_Target]]:
    out: dict[str, list[_Target]] = defaultdict(list)
    for t in targets:
        out[t.rel_path].append(t)
    return out


def _ambiguous(outcome: ContentOutcome, rel: str, groups: list[str], tried: list[_Target],
               found: dict[tuple[str, str], PairLocation], flag: bool = True) -> None:
    """A final whose content fits renders of several groups about equally: no pair, and
    each group flagged (when ``flag``)."""
    best = {g: max(_confidence(found, t) for t in tried if t.group_id == g) for g in groups}
    said = ", ".join(f"{g} {c:.3f}" for g, c in best.items())
    outcome.reasons[rel] = (f"its content fits renders of {len(groups)} groups about equally "
                            f"({said}): paired with none")
    for g in groups if flag else []:
        others = ", ".join(o for o in groups if o != g)
        outcome.reviews[g].append(f"{rel} fits this group and {others} by its content "
                                  f"({said}): not paired (check which group it belongs to)")


def _stage(options: list[_Target], found: dict[tuple[str, str], PairLocation], s: ContentSettings
           ) -> tuple[_Target, str | None]:
    """The render of the winning group that the final was cut from, and a review note
    when stages match about equally (then: the scale closest to 1, then the highest
    stage)."""
    tied = _tied(options, found, s)
    if len(tied) == 1:
        return tied[0], None
    top = max(_confidence(found, t) for t in tied)
    alike = [t for t in tied if _confidence(found, t) >= top - SAME_CONFIDENCE]
    scale = {t.index: float(found[t.original_hash, t.final_hash].location.scale)
             for t in tied}
    off = {i: abs(math.log(v)) for i, v in scale.items()}
    closest = min(off[t.index] for t in alike)
    pick = max((t for t in alike if off[t.index] <= closest + SAME_SCALE), key=lambda t: t.index)
    said = ", ".join(f"{t.index} (confidence {_confidence(found, t):.3f}, scale "
                     f"{scale[t.index]:.2f})" for t in sorted(tied, key=lambda t: t.index))
    return pick, (f"its content fits indexes {said} of this group about equally; index "
                  f"{pick.index} is taken (the best match, then the scale closest to 1, "
                  "then the highest stage)")
