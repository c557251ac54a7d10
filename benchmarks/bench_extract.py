"""Extract speed: locating finals in their originals, against decoding alone and the old tool.

Generates N (original, final) pairs at real render sizes (stage3 3072x3072 and stage2
2048x2048 PNGs, saved as ComfyUI saves them) with finals cut from them in a realistic mix
of crops and encodings, and times, per pair, on the same files in the same run:
- decode only: both files read and fully decoded (the floor of any method);
- extract: what the stage does per pair: a final that is its original byte for byte (an
  approval: the person's tools move the render as it is) is the whole frame, with no
  decoding; any other is decoded to grey and located coarse to fine
  (``stages.extract.stage.locate_files``). The content hashes come from the scan stage; here
  they are computed in the timed part, so the figure is, if anything, pessimistic;
- original method: the old tool's way, both read in colour, converted to grey and matched
  with one full-resolution ``cv2.matchTemplate``.
Each is run sequentially (OpenCV's own threads) and on a pool of threads (one OpenCV
thread each, as the extract stage runs). The pairs are written to benchmarks/out/ and
reused by later runs with the same arguments.

Then content pairing (backfill.stages.extract.content_pairing): every final that is not its original
byte for byte is taken as nameless (``IMG_0412.jpg``) and paired among all the originals,
each its own group, from a cold cache: the signature of each render (once, ever), then
per final its shortlist and ``extract.content_candidates`` (k) locates, against one
locate (both files decoded and matched, as extract does for a named final).

    python benchmarks/bench_extract.py [--pairs 12] [--workers N] [--repeat 2] [--quick]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from blake3 import blake3
from omegaconf import OmegaConf
from PIL import Image

from backfill.config.settings import MatchConfig
from backfill.demo.synthetic import crop_box, encode_final, texture
from backfill.executors import LocalRunner
from backfill.stages.extract.content_pairing import ContentPairing
from backfill.stages.extract.locate import locate, read_gray
from backfill.stages.extract.stage import ExtractSettings, locate_cache, locate_files, same_bytes

HERE = Path(__file__).resolve().parent
CONFIG = HERE.parent / "conf" / "pipeline" / "default.yaml"
OUT = HERE / "out" / "extract_pairs"
# Full-size render sides: the originals alternate between these two stages.
STAGES = [("stage3_enhanced", 3072), ("stage2_upscaled", 2048)]
# What the person's final folder holds, cycled over the pairs: mostly 1:1 PNG crops and
# whole approvals (what the crop tool writes), some JPEG exports, some resized exports.
MIX = [
    ("free", "png"), ("whole", "png"), ("free", "png"), ("near_full", "png"),
    ("margin4", "png"), ("free", "jpeg"), ("whole", "png"), ("edge", "png"),
    ("free", "resized"), ("tiny", "png"), ("whole", "jpeg"), ("free", "resized_jpeg"),
]
TOLERANCE = 0.01  # normalised box error that still counts as located correctly...
TOLERANCE_RESIZED = 0.02  # ...and for a resized final, whose edges are resampled
MAX_PIXELS = OmegaConf.load(CONFIG).scan.max_pixels


def generate(folder: Path, n_pairs: int, scale: float, seed: int) -> list[dict]:
    """Write the pairs and a manifest of their truth; reuse them if the arguments match
    (a 3072 PNG takes seconds to make and compress)."""
    manifest = folder / "manifest.json"
    wanted = {"pairs": n_pairs, "scale": scale, "seed": seed, "mix": MIX, "version": 2}
    if manifest.exists():
        saved = json.loads(manifest.read_text())
        if saved["args"] == json.loads(json.dumps(wanted)) and all(
                (folder / p[k]).exists() for p in saved["pairs"] for k in ("original", "final")):
            return saved["pairs"]
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    pairs = []
    for i in range(n_pairs):
        stage, side = STAGES[i % len(STAGES)]
        side = max(64, round(side * scale))
        img = texture(rng, side, side)
        name = f"{i:03d}_{stage}"
        buf = io.BytesIO()
        img.save(buf, format="PNG", compress_level=4)  # ComfyUI's SaveImage setting
        (folder / f"{name}.png").write_bytes(buf.getvalue())
        kind, encoding = MIX[i % len(MIX)]
        box = crop_box(rng, kind, side, side)
        data, ext, factor = encode_final(rng, img.crop(box), encoding)
        if kind == "whole" and encoding == "png":  # an approval: the render, moved as is
            data = (folder / f"{name}.png").read_bytes()
        (folder / f"{name}_final{ext}").write_bytes(data)
        pairs.append({"original": f"{name}.png", "final": f"{name}_final{ext}",
                      "width": side, "height": side, "kind": kind, "encoding": encoding,
                      "resize": factor, "box": [box[0] / side, box[1] / side,
                                                box[2] / side, box[3] / side]})
    manifest.write_text(json.dumps({"args": wanted, "pairs": pairs}, indent=1))
    return pairs


def warm_page_cache(paths: list[Path]) -> int:
    """Read every file once, so the timings measure decoding and matching, not the disk."""
    return sum(len(p.read_bytes()) for p in paths)


def decode(path: Path) -> np.ndarray:
    img = cv2.imdecode(np.fromfile(str(path), np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise RuntimeError(f"cannot decode {path}")
    return img


def decode_only(original: Path, final: Path, match: MatchConfig) -> None:
    decode(original)
    decode(final)


def extract(original: Path, final: Path, match: MatchConfig) -> list[float] | None:
    """Our stage's work for one pair; the box in original pixels, or None on an error."""
    hashes = [blake3(p.read_bytes(), max_threads=1).digest() for p in (original, final)]
    if hashes[0] == hashes[1]:
        with Image.open(original) as img:  # the header only, as scan reads it
            r = same_bytes(*img.size)
    else:
        r = locate_files(original, final, match, MAX_PIXELS)
        if r.location is None:
            return None
        r = r.location._asdict()
    return [r["x1"], r["y1"], r["x2"], r["y2"]]


def original_method(original: Path, final: Path, match: MatchConfig) -> list[float] | None:
    """The old tool: colour reads, grey, one full-resolution correlation; no scales."""
    orig = cv2.cvtColor(cv2.imread(str(original)), cv2.COLOR_BGR2GRAY)
    fin = cv2.cvtColor(cv2.imread(str(final)), cv2.COLOR_BGR2GRAY)
    fh, fw = fin.shape
    if fh > orig.shape[0] or fw > orig.shape[1]:
        return None  # the old tool skipped finals larger than their original
    r = cv2.matchTemplate(orig, fin, cv2.TM_CCOEFF_NORMED)
    _, _, _, (x, y) = cv2.minMaxLoc(r)
    return [float(x), float(y), float(x + fw), float(y + fh)]


def matching_alone(pairs: list[tuple[Path, Path]], match: MatchConfig) -> tuple[float, float]:
    """Seconds per pair of the two matchers on pixels already decoded (no identical-file
    shortcut): the full-resolution correlation against our coarse-to-fine search."""
    old = new = 0.0
    for o_path, f_path in pairs:
        orig, fin = read_gray(o_path, MAX_PIXELS), read_gray(f_path, MAX_PIXELS)
        start = time.perf_counter()
        if fin.shape[0] <= orig.shape[0] and fin.shape[1] <= orig.shape[1]:
            cv2.minMaxLoc(cv2.matchTemplate(orig, fin, cv2.TM_CCOEFF_NORMED))
        old += time.perf_counter() - start
        start = time.perf_counter()
        locate(orig, fin, match)
        new += time.perf_counter() - start
    return old / len(pairs), new / len(pairs)


Method = Callable[[Path, Path, MatchConfig], object]


def run_all(method: Method, pairs: list[tuple[Path, Path]], match: MatchConfig,
            workers: int) -> tuple[float, list]:
    """Seconds for every pair and the results; ``workers`` 1 means a plain loop."""
    start = time.perf_counter()
    if workers == 1:
        cv2.setNumThreads(-1)  # OpenCV's default: its own threads inside each call
        results = [method(o, f, match) for o, f in pairs]
    else:
        cv2.setNumThreads(1)  # as the extract stage: threads over pairs, none inside
        try:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                results = list(pool.map(lambda p: method(p[0], p[1], match), pairs))
        finally:
            cv2.setNumThreads(-1)
    return time.perf_counter() - start, results


def correct(box: list[float] | None, truth: dict) -> bool:
    """Whether a located box (original pixels) is the generated one, normalised."""
    if box is None:
        return False
    w, h = truth["width"], truth["height"]
    norm = [box[0] / w, box[1] / h, box[2] / w, box[3] / h]
    tol = TOLERANCE_RESIZED if truth["encoding"].startswith("resized") else TOLERANCE
    return max(abs(a - b) for a, b in zip(norm, truth["box"], strict=True)) <= tol


def content_cost(folder: Path, truths: list[dict], settings: ExtractSettings, workers: int
                 ) -> None:
    """Content pairing of every final that is not its original byte for byte, among all
    the originals (each its own group), from a cold cache; printed per render and per
    final, against one locate of a named final."""
    def digest(name: str) -> str:
        return blake3((folder / name).read_bytes()).hexdigest()

    renders = pd.DataFrame({
        "group_id": [f"g{i:03d}" for i in range(len(truths))], "index": 0,
        "original_path": [t["original"] for t in truths],
        "name": [t["original"] for t in truths],
        "content_hash": [digest(t["original"]) for t in truths]})
    finals = pd.DataFrame({"rel_path": [t["final"] for t in truths],
                           "content_hash": [digest(t["final"]) for t in truths]})
    orphans = finals[finals["content_hash"] != renders["content_hash"]].reset_index(drop=True)
    with tempfile.TemporaryDirectory() as tmp:
        pairing = ContentPairing(settings.content(), folder, folder, Path(tmp),
                                 locate_cache(Path(tmp), settings.match), LocalRunner(workers))
        start = time.perf_counter()
        pairing._signatures(dict(zip(renders["content_hash"], renders["original_path"].map(
            lambda p: folder / p), strict=True)))
        per_render = (time.perf_counter() - start) / len(renders)
        start = time.perf_counter()
        outcome = pairing(orphans, renders)
        per_final = (time.perf_counter() - start) / len(orphans)
    named = [t for t in truths if digest(t["final"]) != digest(t["original"])]
    start = time.perf_counter()
    run_all(lambda o, f, m: locate_files(o, f, m, MAX_PIXELS),
            [(folder / t["original"], folder / t["final"]) for t in named], settings.match,
            workers)
    one = (time.perf_counter() - start) / len(named)
    own = {t["final"]: (f"g{i:03d}", t) for i, t in enumerate(truths)}
    located = {p.final_hash: p.row() for p in pairing.located}
    hashes = dict(zip(orphans["rel_path"], orphans["content_hash"], strict=True))
    right = sum(1 for c in outcome.claims if c.group_id == own[c.rel_path][0] and correct(
        [located[hashes[c.rel_path]][k] for k in ("x1", "y1", "x2", "y2")],
        own[c.rel_path][1]))
    print(f"\ncontent pairing: {len(orphans)} finals taken as nameless, among {len(renders)} "
          f"renders; k = {settings.content_candidates}; {workers} thread(s); cold cache")
    print(f"  signature per render (once, ever)   {per_render:6.3f}s")
    print(f"  per final: shortlist + locates      {per_final:6.3f}s   "
          f"({pairing.stats.locates / len(orphans):.1f} locates each)")
    print(f"  one locate of a named final         {one:6.3f}s   (both files decoded)")
    print(f"  per final / one locate              {per_final / one:6.2f}x")
    print(f"  paired with the right render and box: {right}/{len(orphans)}")


def verdict(value: float, target: float, at_most: bool) -> str:
    ok = value <= target if at_most else value >= target
    return f"{value:5.2f} ({'<=' if at_most else '>='} {target:g} {'ok' if ok else 'MISSED'})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=12)
    parser.add_argument("--scale", type=float, default=1.0,
                        help="render size factor (1.0: real 3072 and 2048 sides)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="threads of the parallel run")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each; the best is kept")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 2 pairs at 1/4 size")
    args = parser.parse_args()
    if args.quick:
        args.pairs, args.scale = 2, 0.25
    settings = ExtractSettings.from_config(OmegaConf.load(CONFIG).extract, MAX_PIXELS)

    folder = OUT / f"{args.pairs}pairs_scale{args.scale:g}_seed{args.seed}"
    start = time.perf_counter()
    truths = generate(folder, args.pairs, args.scale, args.seed)
    gen_s = time.perf_counter() - start
    pairs = [(folder / t["original"], folder / t["final"]) for t in truths]
    size = warm_page_cache([p for pair in pairs for p in pair])
    sides = sorted({t["width"] for t in truths}, reverse=True)
    mix = ", ".join(f"{sum(1 for t in truths if (t['kind'], t['encoding']) == km)} {km[0]}/"
                    f"{km[1]}" for km in dict.fromkeys((t["kind"], t["encoding"]) for t in truths))
    print(f"machine: {os.cpu_count()} CPUs; OpenCV {cv2.__version__}; "
          f"parallel run on {args.workers} threads")
    print(f"pairs: {len(pairs)} in {folder.relative_to(HERE.parent)} ({size / 1e6:,.0f} MB; "
          f"originals {' and '.join(f'{s}x{s}' for s in sides)}; ready in {gen_s:.1f}s)")
    print(f"finals (crop/encoding): {mix}")
    print("page cache warmed (every file read once first): timings leave out disk speed")

    methods: dict[str, Method] = {"decode": decode_only, "extract": extract,
                                  "original": original_method}
    modes = {"sequential": 1, f"parallel ({args.workers} threads)": args.workers}
    best: dict[tuple[str, str], float] = {}
    results: dict[str, list] = {}
    for _ in range(args.repeat):  # repeats outermost: a slow spell hits every method alike
        for mode, workers in modes.items():
            for name, method in methods.items():
                secs, out = run_all(method, pairs, settings.match, workers)
                best[mode, name] = min(best.get((mode, name), float("inf")), secs / len(pairs))
                results.setdefault(name, out)

    print(f"\nseconds per pair, best of {args.repeat}:")
    width = max(len(m) for m in modes)
    print(f"{'mode':<{width}}  {'decode':>7}  {'extract':>7}  {'original':>8}  "
          f"{'extract/decode':<21}  original/extract")
    for mode in modes:
        d, e, o = (best[mode, n] for n in methods)
        print(f"{mode:<{width}}  {d:7.3f}  {e:7.3f}  {o:8.3f}  {verdict(e / d, 1.5, True):<21}  "
              f"{verdict(o / e, 5, False)}")

    seq_o = best["sequential", "original"]
    stage = best[list(modes)[-1], "extract"]
    print(f"as each runs (original: one pair at a time; extract: {args.workers} workers): "
          f"original/extract {verdict(seq_o / stage, 5, False)}")
    old_s, new_s = matching_alone(pairs, settings.match)
    print(f"matching alone (pixels decoded beforehand, sequential): original {old_s:.3f}s, "
          f"extract {new_s:.3f}s per pair: {old_s / new_s:.0f}x")

    ours = [correct(b, t) for b, t in zip(results["extract"], truths, strict=True)]
    old = [correct(b, t) for b, t in zip(results["original"], truths, strict=True)]
    skipped = sum(1 for b in results["original"] if b is None)
    print(f"\nlocated correctly (box within {TOLERANCE:g}, {TOLERANCE_RESIZED:g} if resized): "
          f"extract {sum(ours)}/{len(ours)}; original method {sum(old)}/{len(old)}"
          + (f" ({skipped} skipped: final larger than its original)" if skipped else ""))
    for ok, ok_old, t in zip(ours, old, truths, strict=True):
        if not ok or not ok_old:
            who = " and ".join(n for n, good in (("extract", ok), ("original", ok_old))
                               if not good)
            print(f"  wrong ({who}): {t['final']} {t['kind']}/{t['encoding']} "
                  f"x{t['resize']:g} in {t['width']}x{t['height']}")
    content_cost(folder, truths, settings, 1)
    if args.workers > 1:
        content_cost(folder, truths, settings, args.workers)


if __name__ == "__main__":
    main()
