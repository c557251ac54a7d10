"""locate: where a kept final lies inside its original render, coarse to fine.

1. Coarse: both images in grayscale, the original shrunk to ``coarse_size`` on its long
   side; normalised cross-correlation (``cv2.matchTemplate``) of the shrunk final at
   1:1. When the final cannot be 1:1 (it is larger than the original) or the 1:1 score
   is low, a sweep over scales at an even smaller ``sweep_size``, refined at
   ``coarse_size``, finds how much the final was resized.
2. Fine: a few textured patches of the final are matched at full resolution, each in a
   small window around where the coarse answer puts it, to sub-pixel precision. A
   straight-line fit per axis through the patch centres gives the offset and the exact
   scale (robust to a patch or two landing wrong).
3. Confidence: the correlation of the whole final with the located region of the
   original, both at ``verify_size``. It is near 1 for a true match, also after lossy
   re-encoding, and low for a wrong image.

Everything is in grayscale 8-bit (16-bit, RGBA and grayscale files decode to it), so
colour, alpha and bit depth changes in the final do not matter. Pure functions of
pixels and settings: the stage caches the results by both files' content hashes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np

from backfill.config.settings import MatchConfig
from backfill.files.imageinfo import Unreadable, decode

# Bump when a pair's Location changes (this module's matching, or read_gray's pixels):
# cached locations of other versions are then not reused.
LOCATE_VERSION = 1
MIN_TEMPLATE = 8  # pixels: a smaller coarse template carries no shape to match
FLAT = 1.0  # grey-level standard deviation below which a patch has nothing to match on
PATCH_MIN_SCORE = 0.5  # a patch correlating less than this found nothing
PATCH_TOLERANCE = 1.5  # pixels: a patch further than this from the fit disagrees with it
ONE_TO_ONE_SUPPORT = 0.75  # share of patches that must confirm a 1:1 answer to skip the sweep
DISTINCT_BOX = 0.02  # a box differing by this share of the original is another answer
ONE_TO_ONE_MARGIN = 0.02  # a 1:1 runner-up this close to the best sends it to the sweep
COARSE_SPREAD = 0.1  # coarse peaks this close to the best are refined too


class LocateError(Exception):
    """A readable pair that cannot be located at all (an impossible scale); a file that
    cannot be decoded raises imageinfo.Unreadable instead."""


class Location(NamedTuple):
    """The final's box in original pixels (edges, floats), its scale and confidence."""

    x1: float
    y1: float
    x2: float
    y2: float
    scale: float  # final pixels per original pixel (1.0: saved at the original's size)
    confidence: float  # correlation of the final with the located region, 0..1
    runner_up: float  # confidence of the best clearly different box (0 when none)
    method: str  # "1:1" or "multi-scale"
    support: float  # share of the final's textured patches that agree at full resolution

    def normalised(self, width: int, height: int) -> list[float]:
        return [self.x1 / width, self.y1 / height, self.x2 / width, self.y2 / height]


@dataclass(frozen=True)
class PairLocation:
    """What locating one (original, final) pair gave: its Location, or why there is none.
    Failures are never cached (a file may be fixed, a setting changed)."""

    original_hash: str
    final_hash: str
    location: Location | None = None
    error: str | None = None  # why the readable pair cannot be located
    unreadable: str | None = None  # which file cannot be decoded, and why

    @property
    def failure(self) -> str | None:
        """Why the pair has no location; None when it has one."""
        return self.unreadable or self.error

    @property
    def confidence(self) -> float:
        """How well the final matches its place in the original; 0 when not located."""
        return 0.0 if self.location is None else float(self.location.confidence)

    def row(self) -> dict:
        """The located pair as a locate cache row: its hashes and the Location's fields."""
        if self.location is None:
            raise ValueError(f"a pair that was not located has no row: {self.failure}")
        return {"original_hash": self.original_hash, "final_hash": self.final_hash,
                **self.location._asdict()}

    @classmethod
    def from_row(cls, row: dict) -> PairLocation:
        """A locate cache row (``row``'s inverse)."""
        return cls(row["original_hash"], row["final_hash"],
                   Location(*(row[f] for f in Location._fields)))


def read_gray(path: Path | str, max_pixels: int) -> np.ndarray:
    """Decode any PNG/JPEG (8/16-bit, grey, RGB, RGBA) to 8-bit grayscale, through the
    one bounded decoder: imageinfo.Unreadable says why a file cannot or must not be."""
    return decode(path, cv2.IMREAD_GRAYSCALE, max_pixels)


def _shrink(img: np.ndarray, width: int, height: int) -> np.ndarray:
    if (img.shape[1], img.shape[0]) == (width, height):
        return img
    return cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA)


def _factor(img: np.ndarray, long_side: int) -> float:
    return min(1.0, long_side / max(img.shape[:2]))


def _resized(img: np.ndarray, factor: float) -> np.ndarray:
    h, w = img.shape[:2]
    return _shrink(img, max(1, round(w * factor)), max(1, round(h * factor)))


def _ncc(image: np.ndarray, template: np.ndarray) -> np.ndarray:
    out = cv2.matchTemplate(image, template, cv2.TM_CCOEFF_NORMED)
    return np.nan_to_num(out, nan=-1.0, posinf=-1.0, neginf=-1.0)


def _subpixel(r: np.ndarray, y: int, x: int) -> tuple[float, float]:
    """The peak of a correlation map to sub-pixel precision (parabola per axis)."""
    def offset(a: float, b: float, c: float) -> float:
        den = a - 2 * b + c
        return 0.0 if den >= 0 else float(np.clip(0.5 * (a - c) / den, -0.5, 0.5))

    dx = offset(r[y, x - 1], r[y, x], r[y, x + 1]) if 0 < x < r.shape[1] - 1 else 0.0
    dy = offset(r[y - 1, x], r[y, x], r[y + 1, x]) if 0 < y < r.shape[0] - 1 else 0.0
    return x + dx, y + dy


def _peaks(r: np.ndarray, count: int, spread: tuple[int, int]) -> list[tuple[float, int, int]]:
    """The ``count`` best peaks of a map, each at least ``spread`` (w, h) from the others."""
    r = r.copy()
    out = []
    for _ in range(count):
        _, value, _, (x, y) = cv2.minMaxLoc(r)
        if out and value < -0.5:
            break
        out.append((float(value), int(y), int(x)))
        sx, sy = spread
        r[max(0, y - sy):y + sy + 1, max(0, x - sx):x + sx + 1] = -1.0
    return out


class _Coarse(NamedTuple):
    score: float
    scale: float  # final px per original px
    x: float  # top-left in original pixels
    y: float


def _coarse_at(orig_c: np.ndarray, final_c: np.ndarray, fc: float, ff: float, scale: float,
               count: int) -> list[_Coarse]:
    """Peaks of the final, resized as if at ``scale``, in the shrunk original.

    ``orig_c`` is the original shrunk by ``fc``, ``final_c`` the final shrunk by ``ff``.
    """
    h, w = final_c.shape[:2]
    tw, th = round(w / ff * fc / scale), round(h / ff * fc / scale)
    if not (MIN_TEMPLATE <= tw <= orig_c.shape[1] and MIN_TEMPLATE <= th <= orig_c.shape[0]):
        return []
    template = cv2.resize(final_c, (tw, th), interpolation=cv2.INTER_AREA if tw < w
                          else cv2.INTER_LINEAR)
    r = _ncc(orig_c, template)
    out = []
    for value, y, x in _peaks(r, count, (max(1, tw // 4), max(1, th // 4))):
        px, py = _subpixel(r, y, x)
        out.append(_Coarse(value, scale, px / fc, py / fc))
    return out


def _scale_sweep(orig: np.ndarray, final: np.ndarray, s: MatchConfig) -> _Coarse | None:
    """The best scale over a geometric grid, refined by a parabola in log-scale."""
    oh, ow = orig.shape
    fh, fw = final.shape
    lo = max(s.min_scale, fw / ow, fh / oh)  # the region cannot be larger than the original
    hi = s.max_scale
    if lo > hi:
        return None
    fs = _factor(orig, s.sweep_size)
    orig_s = _resized(orig, fs)
    final_s = _resized(final, _factor(final, 2 * s.sweep_size))
    ff = final_s.shape[1] / fw
    n = max(1, int(np.ceil(np.log(hi / lo) / np.log(s.scale_step))))
    grid = np.unique(np.concatenate([lo * s.scale_step ** np.arange(n + 1), [lo, 1.0]]))
    grid = grid[(grid >= lo) & (grid <= hi)]
    scored = []
    for scale in grid:
        found = _coarse_at(orig_s, final_s, fs, ff, float(scale), 1)
        scored.append(found[0].score if found else -1.0)
    scores = np.array(scored)
    if scores.max() <= -1.0:
        return None
    k = int(scores.argmax())
    best = float(grid[k])
    if 0 < k < len(grid) - 1:  # parabola through the neighbours in log-scale
        a, b, c = scores[k - 1:k + 2]
        den = a - 2 * b + c
        if den < 0:
            step = np.log(grid[k + 1] / grid[k])
            best = float(np.exp(np.log(best) + np.clip(0.5 * (a - c) / den, -0.5, 0.5) * step))
    return _Coarse(float(scores[k]), max(best, lo), 0.0, 0.0)


def _patch_boxes(fw: int, fh: int, s: MatchConfig, final: np.ndarray
                 ) -> list[tuple[int, int, int]]:
    """Textured patches (x, y, side) on a grid over the final, spread to its corners."""
    side = int(min(s.patch_size, fw // 2, fh // 2))
    if side < MIN_TEMPLATE:
        return []
    xs = np.linspace(0, fw - side, s.patch_grid).round().astype(int)
    ys = np.linspace(0, fh - side, s.patch_grid).round().astype(int)
    boxes = []
    for y in np.unique(ys):
        for x in np.unique(xs):
            if final[y:y + side, x:x + side].std() >= FLAT:
                boxes.append((int(x), int(y), side))
    return boxes


def _fit_axis(src: np.ndarray, dst: np.ndarray, default_gain: float) -> tuple[float, float]:
    """dst = gain * src + offset, by least squares; the gain is kept when src is too close."""
    if np.ptp(src) < 1e-6:
        return default_gain, float(np.mean(dst - default_gain * src))
    gain, offset = np.polyfit(src, dst, 1)
    return float(gain), float(offset)


class _Fit(NamedTuple):
    ax: float  # original = a * final + b, per axis
    bx: float
    ay: float
    by: float
    support: float  # share of the final's textured patches that agree with the fit


def _refine(orig: np.ndarray, final: np.ndarray, start: _Coarse, radius: float,
            scale_err: float, s: MatchConfig) -> _Fit:
    """Match patches at full resolution around ``start`` and fit the map through them."""
    oh, ow = orig.shape
    fh, fw = final.shape
    a0 = 1.0 / start.scale
    boxes = _patch_boxes(fw, fh, s, final)
    src, dst = [], []
    for x, y, side in boxes:
        patch = final[y:y + side, x:x + side]
        size = max(MIN_TEMPLATE, round(side * a0))
        if size != side:
            patch = cv2.resize(patch, (size, size), interpolation=cv2.INTER_AREA if size < side
                               else cv2.INTER_LINEAR)
        cx, cy = x + side / 2, y + side / 2
        # Where the patch should start in the original, and how far off that may be.
        px, py = start.x + a0 * cx - size / 2, start.y + a0 * cy - size / 2
        r = int(np.ceil(radius + scale_err * a0 * np.hypot(cx, cy)))
        x0, y0 = max(0, int(np.floor(px)) - r), max(0, int(np.floor(py)) - r)
        x1, y1 = min(ow, int(np.ceil(px)) + r + size), min(oh, int(np.ceil(py)) + r + size)
        if x1 - x0 < size or y1 - y0 < size:
            continue
        m = _ncc(orig[y0:y1, x0:x1], patch)
        _, value, _, (mx, my) = cv2.minMaxLoc(m)
        if value < PATCH_MIN_SCORE:
            continue
        sx, sy = _subpixel(m, my, mx)
        src.append((cx, cy))
        dst.append((x0 + sx + size / 2, y0 + sy + size / 2))
    if len(src) < 2:
        return _Fit(a0, start.x, a0, start.y, 0.0)
    src_a, dst_a = np.array(src), np.array(dst)
    keep = np.ones(len(src_a), bool)
    while True:  # drop the worst patch while any is off by more than PATCH_TOLERANCE
        ax, bx = _fit_axis(src_a[keep, 0], dst_a[keep, 0], a0)
        ay, by = _fit_axis(src_a[keep, 1], dst_a[keep, 1], a0)
        err = np.hypot(ax * src_a[:, 0] + bx - dst_a[:, 0], ay * src_a[:, 1] + by - dst_a[:, 1])
        err[~keep] = -1
        if err.max() <= PATCH_TOLERANCE or keep.sum() <= 2:
            break
        keep[int(err.argmax())] = False
    support = float(keep.sum()) / len(boxes) if err.max() <= PATCH_TOLERANCE else 0.0
    return _Fit(ax, bx, ay, by, support)


def _verify(orig: np.ndarray, final_v: np.ndarray, box: tuple[float, float, float, float]
            ) -> float:
    """Correlation of the (shrunk) final with the box of the original, shrunk alike."""
    oh, ow = orig.shape
    x1, y1, x2, y2 = box
    ix1, iy1 = max(0, round(x1)), max(0, round(y1))
    ix2, iy2 = min(ow, round(x2)), min(oh, round(y2))
    if ix2 - ix1 < 2 or iy2 - iy1 < 2:
        return 0.0
    region = orig[iy1:iy2, ix1:ix2]
    h, w = final_v.shape
    region = cv2.resize(region, (w, h), interpolation=cv2.INTER_AREA
                        if region.shape[1] > w else cv2.INTER_LINEAR)
    if region.std() < FLAT / 4 or final_v.std() < FLAT / 4:
        return 0.0  # nothing to correlate: a flat final could lie anywhere
    return float(np.clip(_ncc(region, final_v)[0, 0], 0.0, 1.0))


def locate(orig: np.ndarray, final: np.ndarray, s: MatchConfig) -> Location:
    """Find ``final`` (8-bit grey) inside ``orig`` (8-bit grey)."""
    oh, ow = orig.shape
    fh, fw = final.shape
    fc = _factor(orig, s.coarse_size)
    orig_c = _resized(orig, fc)
    final_c = _resized(final, _factor(final, 2 * s.coarse_size))
    ff = final_c.shape[1] / fw
    final_v = _resized(final, _factor(final, s.verify_size))
    radius = 1.5 / fc + 2  # coarse pixels are 1/fc wide: the fine window covers that

    def finish(cands: list[_Coarse], scale_err: float, method: str) -> Location | None:
        results = []
        for cand in cands:
            fit = _refine(orig, final, cand, radius, scale_err, s)
            box = (fit.bx, fit.by, fit.ax * fw + fit.bx, fit.ay * fh + fit.by)
            results.append((_verify(orig, final_v, box), fit.support, box, fit))
        if not results:
            return None
        results.sort(key=lambda t: -(t[0] + t[1]))
        score, support, box, fit = results[0]
        tol = DISTINCT_BOX * max(ow, oh)
        runner = max((r[0] for r in results[1:]
                      if max(abs(np.subtract(r[2], box))) > tol), default=0.0)
        return Location(*box, float(2 / (fit.ax + fit.ay)), score, runner, method, support)

    def near_best(cands: list[_Coarse]) -> list[_Coarse]:
        top = max(c.score for c in cands)
        return [c for c in cands if c.score >= top - COARSE_SPREAD][: s.candidates]

    one_to_one = None
    if fw <= ow and fh <= oh:
        cands = _coarse_at(orig_c, final_c, fc, ff, 1.0, s.candidates)
        if cands:
            one_to_one = finish(near_best(cands), 0.0, "1:1")
            # Trust 1:1 only when it is good and unambiguous: a smooth region also matches
            # fairly well at a wrong scale, so a doubtful answer goes to the scale sweep.
            if (cands[0].score >= s.accept_score and one_to_one.confidence >= s.accept_score
                    and one_to_one.support >= ONE_TO_ONE_SUPPORT
                    and one_to_one.runner_up < one_to_one.confidence - ONE_TO_ONE_MARGIN):
                return one_to_one
    sweep = _scale_sweep(orig, final, s)
    if sweep is None:
        if one_to_one is not None:
            return one_to_one
        raise LocateError(
            f"the final ({fw}x{fh}) cannot lie in its original ({ow}x{oh}) at any scale "
            f"from min_scale {s.min_scale} to max_scale {s.max_scale}"
        )
    # Refine the scale at coarse resolution: a few scales around the sweep's answer.
    step = np.log(s.scale_step) / 2
    cands = []
    for k in (-1, 0, 1):
        cands += _coarse_at(orig_c, final_c, fc, ff, sweep.scale * float(np.exp(k * step)),
                            s.candidates)
    if not cands:
        if one_to_one is not None:
            return one_to_one
        raise LocateError("no scale of the final fits in its original")
    cands.sort(key=lambda c: -c.score)
    multi = finish(near_best(cands), 0.02, "multi-scale")
    if one_to_one is not None and (one_to_one.confidence + one_to_one.support
                                   >= multi.confidence + multi.support):
        return one_to_one
    return multi


def locate_pair(original_hash: str, final_hash: str, original: Path | np.ndarray,
                final: Path | np.ndarray, s: MatchConfig, max_pixels: int) -> PairLocation:
    """Locate a final in its original, each given as a path (decoded here with
    ``max_pixels``) or as pixels already decoded by read_gray (content pairing decodes a
    final once for several renders)."""
    images = {}
    for role, image in (("original", original), ("final", final)):
        try:
            images[role] = image if isinstance(image, np.ndarray) else read_gray(image,
                                                                                 max_pixels)
        except Unreadable as exc:
            return PairLocation(original_hash, final_hash,
                                unreadable=f"{role} unreadable: {exc}")
    try:
        loc = locate(images["original"], images["final"], s)
    except (LocateError, cv2.error) as exc:
        return PairLocation(original_hash, final_hash, error=str(exc))
    return PairLocation(original_hash, final_hash, loc)
