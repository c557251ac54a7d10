"""embed's memory stays flat as the number of images grows (issue 12, item 19), and the
result cache's periodic save appends without re-reading its store, keeping what a killed
run saved.

The model is a stand-in (an Embedder given to embed_images through ``load``): the real
decoder and the real bookkeeping (results, cache adds, periodic saves, the final table)
are what is measured. On the code before this fix, the same workload grew by about
8 KB of Python allocations per image (one DataFrame per image, kept twice) and took
about 20 s; now under 0.1 KB (results fill one block allocated once) and about 2 s.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import backfill.stages.embed as embed
from backfill.files.resultcache import ResultCache
from backfill.models.clip import ClipSettings
from tests.conftest import REPO, pipeline_config

PIPELINE = pipeline_config()
SETTINGS = dataclasses.replace(
    ClipSettings.from_config(PIPELINE.embed, REPO, PIPELINE.scan.max_pixels), pretrained=None)
N, DIM, BATCH = 3000, 16, 32
FIRST = 500  # growth is measured from this image to the last
BOUND = 1024  # bytes of Python allocations per image; the old bookkeeping took ~8,000


def tiny_images(folder: Path, n: int) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for k in range(n):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(
            folder / f"{k:05d}.png")
    return pd.DataFrame({"content_hash": [f"{k:064x}" for k in range(n)],
                         "image_path": [f"img/{k:05d}.png" for k in range(n)]})


def stand_in(marks: dict[int, int]):
    """A ``load`` for embed_images: decodes each file for real and yields, per batch,
    views into one array (as CLIP's embed_files does); records the traced memory when it
    hands over image FIRST and the last image."""
    def load(settings: ClipSettings):
        def embed_paths(paths: list[Path]):
            for start in range(0, len(paths), BATCH):
                idx = range(start, min(start + BATCH, len(paths)))
                out = np.empty((len(idx), DIM), np.float32)
                for j, i in enumerate(idx):
                    out[j] = np.asarray(embed.decode_rgb(paths[i], settings.max_pixels)).mean()
                for j, i in enumerate(idx):
                    if i in (FIRST, len(paths) - 1):
                        marks[i] = tracemalloc.get_traced_memory()[0]
                    yield i, out[j], None
        return embed_paths, "stand-in"
    return load


@pytest.mark.slow  # embeds thousands of images
def test_embedding_thousands_of_images_keeps_memory_flat(tmp_path, monkeypatch):
    images = tiny_images(tmp_path / "img", N)
    make_cache = embed.embedding_cache

    def saving_often(cache_dir, model):  # many periodic saves within the test's seconds
        cache = make_cache(cache_dir, model)
        cache.save_every = 0.1
        return cache

    monkeypatch.setattr(embed, "embedding_cache", saving_often)
    marks: dict[int, int] = {}
    tracemalloc.start()
    try:
        result = embed.embed_images(images, tmp_path, SETTINGS, tmp_path / "cache",
                                    load=stand_in(marks))
    finally:
        tracemalloc.stop()
    per_image = (marks[N - 1] - marks[FIRST]) / (N - 1 - FIRST)
    assert per_image < BOUND, f"{per_image:.0f} bytes per image"

    assert result.embedded == N and result.device == "stand-in" and not result.failed
    table = result.table
    assert list(table["content_hash"]) == sorted(images["content_hash"])
    assert {v.dtype for v in table["embedding"]} == {np.dtype(np.float32)}
    parts = list((tmp_path / "cache" / "embed").glob("*.part-*.parquet"))
    assert len(parts) >= 1  # saved as it went
    # Everything saved is found again: nothing is embedded the second time.
    again = embed.embed_images(images, tmp_path, SETTINGS, tmp_path / "cache",
                               load=pytest.fail)
    assert (again.embedded, again.cached) == (0, N)
    assert np.array_equal(np.stack(again.table["embedding"]), np.stack(table["embedding"]))
    assert not list((tmp_path / "cache" / "embed").glob("*.part-*.parquet"))  # compacted


def cache_at(path: Path, save_every: float = 30.0) -> ResultCache:
    return ResultCache(path, ["key"], {"key": "str", "value": "float64"}, save_every)


def test_a_save_writes_only_the_new_rows_and_never_reads_the_store(tmp_path, monkeypatch):
    path = tmp_path / "store.parquet"
    cache = cache_at(path)
    reads = []
    monkeypatch.setattr(cache, "_read", lambda p: reads.append(p))
    for k in range(5):
        cache.add({"key": f"k{k}", "value": float(k)})
        cache.save()
    assert reads == []
    parts = sorted(tmp_path.glob("store.part-*.parquet"))
    assert [len(pd.read_parquet(p)) for p in parts] == [1] * 5
    monkeypatch.undo()
    reopened = cache_at(path)
    assert list(reopened.known["key"]) == [f"k{k}" for k in range(5)]
    assert not list(tmp_path.glob("store.part-*.parquet")) and path.exists()
    hits, todo = reopened.lookup(pd.DataFrame({"key": ["k1", "new"]}))
    assert list(hits["value"]) == [1.0] and list(todo["key"]) == ["new"]


def test_an_empty_store_and_an_empty_lookup_keep_their_dtypes(tmp_path):
    cache = cache_at(tmp_path / "store.parquet")
    hits, todo = cache.lookup(pd.DataFrame({"key": pd.Series([], dtype=object)}))
    assert len(hits) == len(todo) == 0
    assert str(hits["value"].dtype) == "float64" and str(todo["key"].dtype) == "str"
    cache.save()  # nothing added: nothing written
    assert not list(tmp_path.iterdir())


KILLED = """
import os, signal, sys
from pathlib import Path
from backfill.files.resultcache import ResultCache
cache = ResultCache(Path(sys.argv[1]), ["key"], {"key": "str", "value": "float64"}, -1.0)
for k in range(50):
    cache.add({"key": f"k{k}", "value": float(k)})  # save_every < 0: each add is saved
    if k == 29:
        os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_killed_run_keeps_every_row_it_saved(tmp_path):
    path = tmp_path / "store.parquet"
    cache_at(path).add({"key": "before", "value": -1.0})  # never saved: lost, as documented
    cache = cache_at(path)
    cache.add({"key": "kept", "value": 0.5})
    cache.save()
    proc = subprocess.run([sys.executable, "-c", KILLED, str(path)], capture_output=True,
                          env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    assert proc.returncode == -signal.SIGKILL
    known = cache_at(path).known.set_index("key")["value"]
    assert set(known.index) == {"kept", *(f"k{k}" for k in range(30))}
    assert known["k29"] == 29.0 and not list(tmp_path.glob(".*tmp*"))
