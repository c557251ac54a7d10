"""embed: a CLIP embedding of every grouped render, each image embedded once, ever.

Embeddings are cached by (content hash, model id) in one store per model under the
cache folder, shared by every project and run: a re-run embeds nothing and three new
renders embed three. The CLIP model is loaded only when something is left to embed.
Threads decode and preprocess the next images while the model runs on the current
batch; at most ``window`` prepared images wait, so memory stays bounded.
"""

from __future__ import annotations

import re
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from backfill.clip import ClipSettings, load_clip, model_id, resolve_device
from backfill.project import Project
from backfill.resultcache import ResultCache
from backfill.schemas import EmbeddingsTable, GroupsTable
from backfill.tables import read_table, write_table

# Bump when decoding or preprocessing changes what an image embeds to: cached
# embeddings of other versions are then not reused. (Not the module's source hash, as
# the locate cache uses: re-embedding 200k renders for an edited comment costs hours.)
PREPROCESS_VERSION = 1
DTYPES = {"content_hash": "str", "embedding": "object"}


def decode_rgb(path: Path):
    """The image as 8-bit RGB for CLIP: 16-bit is scaled down, alpha and grey handled."""
    from PIL import Image

    data = np.fromfile(path, dtype=np.uint8)
    pixels = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if pixels is None:
        raise ValueError(f"cannot decode {path.name}")
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
                ) -> Iterator[tuple[int, np.ndarray | None, str | None]]:
    """(index into ``paths``, embedding or None, error or None) for every file."""
    import torch

    def prepare(item: tuple[int, Path]):
        i, path = item
        try:
            return i, preprocess(decode_rgb(path)), None
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
    batch: list[tuple[int, object]] = []
    for i, tensor, error in prefetch(prepare, enumerate(paths), settings.workers,
                                     2 * settings.batch_size):
        if error is not None:
            yield i, None, error
            continue
        batch.append((i, tensor))
        if len(batch) == settings.batch_size:
            yield from run(batch)
            batch = []
    if batch:
        yield from run(batch)


def embedding_cache(cache_dir: Path, model: str) -> ResultCache:
    safe = re.sub(r"[^A-Za-z0-9._+-]+", "_", model)
    return ResultCache(cache_dir / "embed" / f"{safe}-p{PREPROCESS_VERSION}.parquet",
                       ["content_hash"], DTYPES)


def members(groups: pd.DataFrame) -> pd.DataFrame:
    """One row per distinct readable image of the groups: content_hash, image_path."""
    rows = groups[["image_paths", "content_hashes"]].explode(["image_paths", "content_hashes"])
    rows = rows.rename(columns={"image_paths": "image_path", "content_hashes": "content_hash"})
    rows = rows[rows["content_hash"].notna()]
    return rows.drop_duplicates("content_hash").sort_values("content_hash").reset_index(drop=True)


@dataclass
class EmbedResult:
    table: pd.DataFrame  # content_hash, embedding, model_id
    embedded: int  # images run through CLIP in this run
    cached: int
    failed: dict[str, str]  # image path -> why it could not be embedded
    model_id: str
    device: str | None  # None: nothing was embedded, no model loaded


def embed_images(images: pd.DataFrame, root: Path, settings: ClipSettings,
                 cache_dir: Path) -> EmbedResult:
    """Embeddings of ``images`` (content_hash, image_path under ``root``), from the cache
    where it has them."""
    mid = model_id(settings)
    cache = embedding_cache(cache_dir, mid)
    hits, todo_keys = cache.lookup(images)
    todo = todo_keys.merge(images, on="content_hash", how="left")
    failed, device, fresh = {}, None, []
    if len(todo):
        device = resolve_device(settings.device)
        model, preprocess = load_clip(settings, device)
        paths = [root / p for p in todo["image_path"]]
        hashes = todo["content_hash"].tolist()
        try:
            for i, vector, error in tqdm(embed_files(paths, model, preprocess, device,
                                                     settings), total=len(paths),
                                         desc="embed: CLIP", unit="img", disable=None):
                if error is not None:
                    failed[todo["image_path"].iat[i]] = error
                    continue
                row = pd.DataFrame({"content_hash": [hashes[i]], "embedding": [vector]})
                fresh.append(row)
                cache.add(row)
        finally:  # an interrupted run keeps what it embedded
            cache.save()
    found = pd.concat([hits, *fresh], ignore_index=True) if fresh else hits
    table = found.astype(DTYPES).sort_values("content_hash").reset_index(drop=True)
    table["embedding"] = [np.asarray(v, dtype=np.float32) for v in table["embedding"]]
    table["model_id"] = mid
    return EmbedResult(table, len(fresh), len(hits), failed, mid, device)


def read_embeddings(path: Path) -> pd.DataFrame:
    return read_table(path, EmbeddingsTable, "embeddings")


def run(project: Project) -> str:
    started = time.perf_counter()
    settings = ClipSettings.from_config(project.cfg.embed, project.root)
    groups = read_table(project.output("groups"), GroupsTable, "groups")
    images = members(groups)
    result = embed_images(images, project.path("original_dir"), settings, project.cache_dir)
    write_table(result.table, project.output("embeddings"), EmbeddingsTable, "embeddings")
    unreadable = sum(len(u) for u in groups["unreadable"])
    lines = [
        f"embed {project.name}: {len(images):,} images: {result.embedded:,} embedded, "
        f"{result.cached:,} from cache, {len(result.failed) + unreadable:,} unreadable; "
        f"model {result.model_id}"
        + (f" on {result.device}" if result.device else "")
        + f"; {time.perf_counter() - started:.1f}s -> "
        f"{project.output('embeddings').relative_to(project.root)}"
    ]
    lines += [f"  could not embed {path}: {why}" for path, why in sorted(result.failed.items())]
    return "\n".join(lines)
