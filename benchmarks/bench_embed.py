"""Embed speed: CLIP embedding of renders, against decoding alone and the model alone.

Generates N groups of renders at the person's real sizes (stage1 and stage1.5 832x1216,
stage2 1664x2432, stage3 3072x3072; textured PNGs saved as ComfyUI saves them, so decoding
costs what it does on real renders) and times, on the same files in the same run, with
the page cache warm, best of R:
- decode only: ``backfill.stages.embed.decode_rgb`` on every file, on the embed stage's pool of
  threads (``prefetch``, same workers and window), results consumed as they come;
- decode + preprocess: the same, followed by the open_clip preprocess transform (resize
  to 224, crop, normalise): everything the threads do for the model;
- model only: ``encode_image`` on the already-preprocessed tensors, in batches as the
  stage forms them (stacked, moved to the device and back, as the stage does);
- embed: ``backfill.stages.embed.embed_files`` consumed fully, the model already loaded.
The question is whether the stage keeps up with decoding (target: embed >= 0.8 of decode
only) and, when it does not, what holds it back. The model has random weights: the same
compute as trained ones, without a download. Memory: the process's peak RSS, and the RSS
increase during the embed runs, sampled every 20 ms. The renders are written to
benchmarks/out/ by worker processes (so their memory is not this process's peak) and
reused by later runs with the same arguments.

    python benchmarks/bench_embed.py [--groups 8] [--scale 1] [--repeat 3] [--device auto]
                                     [--quick]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import psutil
from PIL import ImageDraw
from timing import peak_rss_mib, timed

from backfill.demo.synthetic import STAGE_DELAY, STAGE_LABELS, texture
from backfill.models.clip import ClipSettings, load_clip, resolve_device
from backfill.stages.embed import decode_rgb, embed_files, prefetch

HERE = Path(__file__).resolve().parent
OUT = HERE / "out" / "embed_renders"
# One group of the person's workflow: (stage, width, height) at full size.
GROUP = [(1.0, 832, 1216), (1.5, 832, 1216), (2.0, 1664, 2432), (3.0, 3072, 3072)]
TARGET = 0.8  # the target for embed / decode only
MiB = 1024 * 1024
MAX_PIXELS = 100_000_000  # conf/pipeline/default.yaml's scan.max_pixels


def _png(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=4)  # ComfyUI's SaveImage setting
    return buf.getvalue()


def _render(job: tuple[Path, int, int, float, int]) -> list[str]:
    """Write one group's renders of one size; stage1.5 is stage1 with a face swapped.

    Every stage gets its own full-resolution texture and grain (an upscaler adds detail;
    an upscaled smooth picture would compress, and decode, unrealistically fast)."""
    folder, seed, group, scale, part = job
    rng = np.random.default_rng([seed, group, part])
    t0 = 1_751_954_400 + 300 * group  # 2025-07-08, groups 5 minutes apart
    stages = GROUP[:2] if part == 0 else [GROUP[part + 1]]
    w, h = (max(16, round(v * scale)) for v in stages[0][1:])
    img = texture(rng, w, h)
    names = []
    for stage, _, _ in stages:
        if stage == 1.5:
            ImageDraw.Draw(img).ellipse((w // 3, h // 5, w // 3 + w // 4, h // 5 + h // 5),
                                        fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
        stamp = time.strftime("%Y%m%d_%H%M%S", time.gmtime(t0 + STAGE_DELAY[stage]))
        name = f"{stamp}_{STAGE_LABELS[stage]}.png"
        (folder / name).write_bytes(_png(img))
        names.append(name)
    return names


def generate(folder: Path, n_groups: int, scale: float, seed: int) -> list[str]:
    """Write the renders and a manifest; reuse them if the arguments match (a 3072 PNG
    takes seconds to make and compress). Made by one process per core."""
    manifest = folder / "manifest.json"
    wanted = {"groups": n_groups, "scale": scale, "seed": seed, "group": GROUP, "version": 1}
    if manifest.exists():
        saved = json.loads(manifest.read_text())
        if saved["args"] == json.loads(json.dumps(wanted)) and all(
                (folder / name).exists() for name in saved["files"]):
            return saved["files"]
    folder.mkdir(parents=True, exist_ok=True)
    jobs = [(folder, seed, g, scale, part) for g in range(n_groups) for part in range(3)]
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        files = [name for names in pool.map(_render, jobs) for name in names]
    manifest.write_text(json.dumps({"args": wanted, "files": files}, indent=1))
    return files


def warm_page_cache(paths: list[Path]) -> int:
    """Read every file once, so the timings measure decoding and the model, not the disk."""
    return sum(len(p.read_bytes()) for p in paths)


def rss() -> int:
    return psutil.Process().memory_info().rss


class RssSampler:
    """The highest RSS seen, every ``interval`` seconds, on a background thread."""

    def __init__(self, interval: float = 0.02):
        self.interval, self.peak = interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        proc = psutil.Process()
        while True:
            self.peak = max(self.peak, proc.memory_info().rss)
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> RssSampler:
        self.before = rss()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss())


def consume(results: Iterable) -> int:
    n = 0
    for _ in results:
        n += 1
    return n


def encode_batches(tensors: list, model, device: str, batch_size: int) -> int:
    """The model's share of embed_files: stack, to the device, encode, back as numpy."""
    import torch

    for i in range(0, len(tensors), batch_size):
        with torch.inference_mode():
            x = torch.stack(tensors[i:i + batch_size]).to(device, non_blocking=True)
            model.encode_image(x).float().cpu().numpy()
    return len(tensors)


def verdict(value: float, target: float) -> str:
    return f"{value:.2f} (>= {target:g} {'ok' if value >= target else 'MISSED'})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--groups", type=int, default=8, help="groups of 4 renders")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="render size factor (1.0: the real sizes)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="decode threads (the embed stage's default: the cores)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, mps")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each; the best is kept")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 2 groups at 1/4 size")
    args = parser.parse_args()
    if args.quick:
        args.groups, args.scale = 2, 0.25

    folder = OUT / f"{args.groups}groups_scale{args.scale:g}_seed{args.seed}"
    start = time.perf_counter()
    paths = [folder / name for name in generate(folder, args.groups, args.scale, args.seed)]
    gen_s = time.perf_counter() - start
    size = warm_page_cache(paths)
    shapes: dict[tuple[int, int], int] = {}
    for p in paths:
        with open(p, "rb") as f:  # PNG IHDR: width and height at bytes 16-24
            head = f.read(24)
        shape = (int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big"))
        shapes[shape] = shapes.get(shape, 0) + 1
    megapixels = sum(w * h * n for (w, h), n in shapes.items()) / 1e6

    import torch

    device = resolve_device(args.device)
    settings = ClipSettings(model="ViT-B-32", pretrained=None, seed=0, device=device,
                            batch_size=args.batch_size, workers=args.workers, precision="fp32",
                            max_pixels=MAX_PIXELS)
    window = 2 * settings.batch_size  # as embed_files prefetches
    rss_start = rss()
    start = time.perf_counter()
    model, preprocess = load_clip(settings, device)
    load_s = time.perf_counter() - start
    rss_model = rss()
    # One batch first, so one-off costs (kernel selection, allocator growth) count nowhere.
    dummy = [torch.zeros(3, 224, 224)] * min(settings.batch_size, len(paths))
    warm_s, _ = timed(lambda: encode_batches(dummy, model, device, settings.batch_size))

    print(f"machine: {os.cpu_count()} CPUs; torch {torch.__version__} on {device}, "
          f"{torch.get_num_threads()} torch threads; OpenCV {cv2.getNumThreads()} threads; "
          f"decode pool {settings.workers} threads, window {window}")
    print(f"renders: {len(paths)} ({args.groups} groups) in {folder.relative_to(HERE.parent)} "
          f"({size / 1e6:,.0f} MB of PNG, {megapixels:,.1f} megapixels: "
          + ", ".join(f"{n} x {w}x{h}" for (w, h), n in shapes.items())
          + f"; ready in {gen_s:.1f}s)")
    print("page cache warmed (every file read once first): timings leave out disk speed")
    print(f"model: {settings.model}, random weights (the same compute as trained ones), "
          f"{settings.precision}, batch {settings.batch_size}; loaded in {load_s:.2f}s "
          f"(+{(rss_model - rss_start) / MiB:,.0f} MiB RSS), first batch "
          f"{warm_s:.2f}s (warm-up, not timed below)")

    def prepared(path: Path):
        return preprocess(decode_rgb(path, settings.max_pixels))

    tensors = list(prefetch(prepared, paths, settings.workers, window))
    errors: list[str] = []

    def embed() -> int:
        n = 0
        for _, _, error in embed_files(paths, model, preprocess, device, settings):
            n += 1
            if error is not None:
                errors.append(error)
        return n

    phases: dict[str, Callable[[], int]] = {
        "embed": embed,
        "decode only": lambda: consume(prefetch(
            lambda p: decode_rgb(p, settings.max_pixels), paths, settings.workers, window)),
        "decode + preprocess": lambda: consume(
            prefetch(prepared, paths, settings.workers, window)),
        "model only": lambda: encode_batches(tensors, model, device, settings.batch_size),
    }
    best = {name: float("inf") for name in phases}
    embed_rss: list[tuple[int, int]] = []  # (RSS before, peak during) per embed run
    peak_after_first_embed = 0.0
    for r in range(args.repeat):  # repeats outermost: a slow spell hits every phase alike
        for name, fn in phases.items():
            if name == "embed":
                with RssSampler() as sampler:
                    secs, n = timed(fn)
                embed_rss.append((sampler.before, sampler.peak))
                if r == 0:
                    peak_after_first_embed = peak_rss_mib()
            else:
                secs, n = timed(fn)
            assert n == len(paths), (name, n)
            best[name] = min(best[name], secs)

    rate = {name: len(paths) / secs for name, secs in best.items()}
    print(f"\nthroughput, best of {args.repeat} ({len(paths)} images, {megapixels:,.1f} MP):")
    for name in ("decode only", "decode + preprocess", "model only", "embed"):
        print(f"  {name:<20} {rate[name]:7.2f} images/s  {best[name] * 1000 / len(paths):7.1f}"
              f" ms/image  {megapixels / best[name]:6.1f} MP/s")
    embed_rate, dec, prep, mod = (rate[n] for n in ("embed", "decode only",
                                                    "decode + preprocess", "model only"))
    print(f"  embed / decode only: {verdict(embed_rate / dec, TARGET)}")
    print(f"  embed / model only:  {embed_rate / mod:.2f}")
    serial = 1 / (1 / prep + 1 / mod)
    print(f"  no overlap at all (decode + preprocess, then the model, one after the other) "
          f"would give {serial:.2f} images/s: embed is {embed_rate / serial:.2f}x that")
    batches = -(-len(paths) // settings.batch_size)
    if batches < 3:
        print(f"  note: {len(paths)} images make {batches} batch{'es' * (batches > 1)} of "
              f"{settings.batch_size}: the stage overlaps decoding with the model only from "
              "the second batch on, so this run shows little or none of that overlap "
              "(more --groups to see it)")
    if mod < prep:
        print(f"bound: the model. Model only runs at {mod:.2f} images/s, {prep / mod:.1f}x "
              f"slower than decode + preprocess ({prep:.2f}) and {dec / mod:.1f}x slower than "
              f"decode only ({dec:.2f}); no decoding speed-up can lift embed above "
              f"{mod / dec:.2f} of decode only on this {device}"
              + (f" (and on {os.cpu_count()} CPUs the decode threads and the model share "
                 "the same cores)" if device == "cpu" else ""))
    else:
        print(f"bound: decoding and preprocessing. Decode + preprocess runs at {prep:.2f} "
              f"images/s, {mod / prep:.1f}x slower than the model ({mod:.2f}); preprocessing "
              f"takes {(1 / prep - 1 / dec) / (1 / prep):.0%} of the threads' time")
    if errors:
        print(f"errors: {len(errors)} images could not be embedded, e.g. {errors[0]}")

    first_before, first_peak = embed_rss[0]
    worst = max(peak - before for before, peak in embed_rss)
    print(f"\nmemory: RSS {rss_start / MiB:,.0f} MiB before the model, "
          f"{rss_model / MiB:,.0f} MiB after loading it")
    print(f"  embed, RSS sampled every 20 ms: first run +{(first_peak - first_before) / MiB:,.0f}"
          f" MiB (from {first_before / MiB:,.0f} to {first_peak / MiB:,.0f} MiB); largest "
          f"increase over the {len(embed_rss)} runs +{worst / MiB:,.0f} MiB")
    print(f"  peak RSS of the process (ru_maxrss): {peak_after_first_embed:,.0f} MiB after the "
          f"first embed run, {peak_rss_mib():,.0f} MiB at the end (decode only holds up to "
          f"{window} decoded images ahead of its consumer; embed holds preprocessed tensors)")


if __name__ == "__main__":
    main()
