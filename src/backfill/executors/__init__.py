"""Where embed's and extract's heavy work runs: this machine's threads (``executor:
local``) or a Ray cluster (``executor: ray``; README, "Scale out").

A runner runs pure functions of files and settings (decoding, locating, CLIP) and hands
their results back. The stage's own process, the driver, still reads and writes every
table and cache as the results arrive, so nothing downstream knows where the work ran,
and an interrupted run keeps what it got.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Protocol, TypeVar

import cv2

from backfill.config.errors import UserError
from backfill.config.project import Project

T = TypeVar("T")
R = TypeVar("R")


class Runner(Protocol):
    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
        """``fn(item)`` for every item, yielded in the items' order. ``fn`` must catch
        what an item can fail with and return it: an exception stops the run."""

    def where(self) -> str:
        """Where the work runs, in words, for the stage's summary line."""


class LocalRunner:
    """Threads of this process: OpenCV and torch release the GIL while they work."""

    def __init__(self, workers: int) -> None:
        self.workers = workers

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
        cv2.setNumThreads(1 if self.workers > 1 else -1)  # -1: OpenCV's default
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            yield from pool.map(fn, items)

    def where(self) -> str:
        return f"{self.workers} thread{'s' if self.workers != 1 else ''}"


@contextmanager
def open_runner(project: Project, workers: int) -> Iterator[Runner]:
    """The runner of ``project.executor``; a Ray cluster is joined at its first task
    (nothing to do: no connection) and left when the block ends."""
    if project.executor != "ray":
        yield LocalRunner(workers)
        return
    from backfill.executors.ray_runner import RayRunner

    if project.ray is None:
        raise UserError("executor: ray needs the ray section of conf/config.yaml: run "
                          "`backfill compose`")
    runner = RayRunner(project.ray)
    try:
        yield runner
    finally:
        runner.close()
