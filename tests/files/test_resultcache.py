"""ResultCache.fill: the one way cached work runs (extract's locates, content pairing's
signatures and locates, embed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from backfill.files.resultcache import ResultCache


def cache_at(path: Path) -> ResultCache:
    return ResultCache(path, ["key"], {"key": "str", "value": "float64"})


def test_fill_adds_what_remember_returns_and_an_interrupted_run_keeps_it(tmp_path):
    path = tmp_path / "store.parquet"
    cache = cache_at(path)
    _, todo = cache.lookup(cache.frame({"key": ["a", "b", "c", "d"]}))
    seen = []

    def work():
        for key in todo["key"]:
            if key == "d":
                raise KeyboardInterrupt  # Ctrl-C mid-run
            yield key, None if key == "b" else 1.0  # b fails: never cached

    def remember(result):
        seen.append(result)
        key, value = result
        return [] if value is None else [{"key": key, "value": value}]

    with pytest.raises(KeyboardInterrupt):
        cache.fill(work(), remember)
    assert [k for k, _ in seen] == ["a", "b", "c"]
    hits, todo = cache_at(path).lookup(cache.frame({"key": ["a", "b", "c", "d"]}))
    assert list(hits["key"]) == ["a", "c"] and list(todo["key"]) == ["b", "d"]
