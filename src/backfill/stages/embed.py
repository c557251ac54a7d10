"""embed: a CLIP embedding of every grouped render, each image embedded once, ever.

Embeddings are cached by (content hash, model id) in one store per model under the
cache folder, shared by every project and run: a re-run embeds nothing and three new
renders embed three. The CLIP model is loaded only when something is left to embed.
Threads decode and preprocess the next images while the model runs on the current
batch; at most ``window`` prepared images wait, so memory stays bounded. Every decode
goes through imageinfo.decode with scan.max_pixels: a bomb or an over-limit file is
reported with its reason, never decoded, never cached.

Memory stays flat as the count grows: results go into one float32 block allocated once
(no frame, no array per image), and the cache's periodic save appends a part file
rather than re-reading its store.
"""

from __future__ import annotations

import re
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import partial
from itertools import islice
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from backfill.config.project import Project
from backfill.contracts.schemas import EmbeddingsTable
from backfill.contracts.tables import read_stage_tables, read_table, typed_frame, write_table
from backfill.executors import open_runner
from backfill.executors.ray_runner import RayRunner
from backfill.files.imageinfo import decode
from backfill.files.resultcache import ResultCache
from backfill.models.clip import ClipSettings, load_clip, model_id, resolve_device

# Bump when decoding or preprocessing changes what an image embeds to: cached
# embeddings of other versions are then not reused. (Not a hash of the module's source:
# re-embedding 200k renders for an edited comment costs hours.)
PREPROCESS_VERSION = 1
DTYPES = {"content_hash": "str", "embedding": "object"}

# (index into the paths, embedding or None, error or None) for every path, in any order.
Embedded = Iterator[tuple[int, np.ndarray | None, str | None]]
# What embeds a list of files, and the device it runs on; loaded only when needed.
Embedder = Callable[[list[Path]], Embedded]


def decode_rgb(path: Path, max_pixels: int):
    """The image as 8-bit RGB for CLIP: 16-bit is scaled down, alpha and grey handled.
    Raises imageinfo.Unreadable (a ValueError) with the reason."""
    from PIL import Image

    pixels = decode(path, cv2.IMREAD_COLOR, max_pixels)
    return Image.fromarray(cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB))


def prefetch(fn: Callable, items: Iterable, workers: int, window: int) -> Iterator:
    """``map(fn, items)`` on ``workers`` threads, in order, with at most ``window``
    results computed ahead of the consumer."""
    items = iter(items)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending = deque(pool.submit(fn, x) for x in islice(items, window))
        while pending:
            result = pending.popleft().result()
            for x in islice(items, 1):
                pending.append(pool.submit(fn, x))
            yield result


def embed_files(paths: list[Path], model, preprocess, device: str, settings: ClipSettings,
                ) -> Embedded:
    """(index into ``paths``, embedding or None, error or None) for every file."""
    import torch

    def prepare(item: tuple[int, Path]):
        i, path = item
        try:
            return i, preprocess(decode_rgb(path, settings.max_pixels)), None
        except (OSError, ValueError, cv2.error) as exc:
            return i, None, str(exc)

    autocast = torch.autocast(device.split(":")[0], dtype=getattr(torch, {
        "fp16": "float16", "bf16": "bfloat16"}.get(settings.precision, "float32")),
        enabled=settings.precision != "fp32")

    def run(batch: list[tuple[int, object]]):
        with torch.inference_mode(), autocast:
            x = torch.stack([t for _, t in batch]).to(device, non_blocking=True)
            out = model.encode_image(x).float().cpu().numpy()
        return [(i, out[k], None) for k, (i, _) in enumerate(batch)]

    cv2.setNumThreads(1 if settings.workers > 1 else -1)  # the decode threads share the cores
    # A batch is a fixed slice of ``paths`` (less the files that fail), so which images
    # share a forward pass, which moves the last bits of an embedding on a multi-threaded
    # CPU, is the same here and on Ray's workers (``chunks``).
    batch: list[tuple[int, object]] = []
    for i, tensor, error in prefetch(prepare, enumerate(paths), settings.workers,
                                     2 * settings.batch_size):
        if batch and i // settings.batch_size != batch[0][0] // settings.batch_size:
            yield from run(batch)
            batch = []
        if error is None:
            batch.append((i, tensor))
        else:
            yield i, None, error
    if batch:
        yield from run(batch)


def chunks(paths: list[Path], size: int) -> list[tuple[int, list[Path]]]:
    """``paths`` as (offset, slice) batches of ``size``: embed_files' own batches."""
    return [(k, paths[k:k + size]) for k in range(0, len(paths), size)]


def embedding_cache(cache_dir: Path, model: str) -> ResultCache:
    safe = re.sub(r"[^A-Za-z0-9._+-]+", "_", model)
    return ResultCache(cache_dir / "embed" / f"{safe}-p{PREPROCESS_VERSION}.parquet",
                       ["content_hash"], DTYPES)


def members(groups: pd.DataFrame) -> pd.DataFrame:
    """One row per distinct readable image of the groups: content_hash, image_path."""
    rows = groups[["image_paths", "content_hashes"]].explode(["image_paths", "content_hashes"])
    rows = rows.rename(columns={"image_paths": "image_path", "content_hashes": "content_hash"})
    rows = rows[rows["content_hash"].notna()].astype({"image_path": "str", "content_hash": "str"})
    return rows.drop_duplicates("content_hash").sort_values("content_hash").reset_index(drop=True)


@dataclass
class EmbedResult:
    table: pd.DataFrame  # content_hash, embedding, model_id
    embedded: int  # images run through CLIP in this run
    cached: int
    failed: dict[str, str]  # image path -> why it could not be embedded
    model_id: str
    device: str | None  # None: nothing was embedded, no model loaded


def clip_embedder(settings: ClipSettings) -> tuple[Embedder, str]:
    """The CLIP model of ``settings`` on the best device, as an Embedder."""
    device = resolve_device(settings.device)
    model, preprocess = load_clip(settings, device)
    return (lambda paths: embed_files(paths, model, preprocess, device, settings)), device


class ClipWorker:
    """CLIP loaded once in a Ray actor holding ``cpus`` CPUs, running as many torch
    threads; called with one batch (offset, paths), it returns (offset, [(index in the
    batch, embedding, error)])."""

    def __init__(self, settings: ClipSettings, cpus: float) -> None:
        import torch

        threads = max(1, int(cpus))
        torch.set_num_threads(threads)
        self.embed, self.device = clip_embedder(replace(settings, workers=threads))

    def __call__(self, batch: tuple[int, list]) -> tuple[int, list]:
        offset, paths = batch
        return offset, list(self.embed(paths))


def ray_embedder(runner: RayRunner, settings: ClipSettings) -> tuple[Embedder, str]:
    """An Embedder sending embed_files' batches to a pool of ClipWorker actors, each of
    ``ray.actor_cpus`` CPUs, or by default as many as torch's threads here: the same
    batches on as many threads embed as a local run does, to the last bit."""
    import torch

    cpus = runner.cfg.actor_cpus or torch.get_num_threads()

    def embed(paths: list[Path]) -> Embedded:
        for offset, rows in runner.pool(partial(ClipWorker, settings),
                                        chunks(paths, settings.batch_size), cpus):
            for i, vector, error in rows:
                yield offset + i, vector, error
    return embed, "ray"


def embed_images(images: pd.DataFrame, root: Path, settings: ClipSettings, cache_dir: Path,
                 load: Callable[[ClipSettings], tuple[Embedder, str]] = clip_embedder
                 ) -> EmbedResult:
    """Embeddings of ``images`` (content_hash, image_path under ``root``), from the cache
    where it has them; ``load`` gives what embeds the rest (CLIP, or a test's stand-in)."""
    mid = model_id(settings)
    cache = embedding_cache(cache_dir, mid)
    hits, todo_keys = cache.lookup(images)
    todo = todo_keys.merge(images, on="content_hash", how="left")
    failed, device = {}, None
    done = np.zeros(len(todo), dtype=bool)
    block: np.ndarray | None = None  # row i: todo's image i; one allocation for the run
    if len(todo):
        embed, device = load(settings)
        paths = [root / p for p in todo["image_path"]]
        hashes = todo["content_hash"].tolist()

        def remember(result: tuple[int, np.ndarray | None, str | None]) -> list[dict]:
            nonlocal block
            i, vector, error = result
            if error is not None:
                failed[str(todo["image_path"].iat[i])] = error
                return []
            # Copied into one preallocated block: no allocation per image that would
            # outlive the model's large temporaries and fragment the heap, and no view
            # keeping a whole batch alive.
            if block is None:
                block = np.empty((len(todo), len(vector)), dtype=np.float32)
            block[i] = vector
            done[i] = True
            return [{"content_hash": hashes[i], "embedding": block[i]}]

        cache.fill(tqdm(embed(paths), total=len(paths), desc="embed: CLIP", unit="img",
                        disable=None), remember)
    fresh = np.flatnonzero(done)
    table = typed_frame(EmbeddingsTable, {
        "content_hash": pd.concat([hits["content_hash"], todo["content_hash"].iloc[fresh]],
                                  ignore_index=True),
        "embedding": pd.Series([np.asarray(v, dtype=np.float32) for v in hits["embedding"]]
                               + ([] if block is None else list(block[fresh])), dtype="object"),
        "model_id": mid})
    table = table.sort_values("content_hash", kind="stable").reset_index(drop=True)
    return EmbedResult(table, len(fresh), len(hits), failed, mid, device)


def read_embeddings(path: Path) -> pd.DataFrame:
    return read_table(path, EmbeddingsTable, "embeddings")


def run(project: Project) -> str:
    started = time.perf_counter()
    settings = ClipSettings.from_config(project.settings.embed, project.root,
                                        project.settings.scan.max_pixels)
    groups = read_stage_tables(project, ["groups"])["groups"]
    images = members(groups)
    with open_runner(project, settings.workers) as runner:
        load = partial(ray_embedder, runner) if isinstance(runner, RayRunner) else clip_embedder
        result = embed_images(images, project.path("original_dir"), settings,
                              project.cache_dir, load)
        where = runner.where() if result.device == "ray" else result.device
    write_table(result.table, project.output("embeddings"), EmbeddingsTable, "embeddings")
    unreadable = sum(len(u) for u in groups["unreadable"])
    lines = [
        # The three counts add up to the distinct readable images; renders the scan
        # already found unreadable are not among them and are counted apart.
        f"embed {project.name}: {len(images):,} distinct images: {result.embedded:,} "
        f"embedded, {result.cached:,} from cache, {len(result.failed):,} failed to decode"
        + (f"; {unreadable:,} unreadable renders (scan) not embedded" if unreadable else "")
        + f"; model {result.model_id}"
        + (f" on {where}" if where else "")
        + f"; {time.perf_counter() - started:.1f}s -> "
        f"{project.output('embeddings').relative_to(project.root)}"
    ]
    lines += [f"  could not embed {path}: {why}" for path, why in sorted(result.failed.items())]
    return "\n".join(lines)
