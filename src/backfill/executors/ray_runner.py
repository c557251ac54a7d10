"""executor ray: the heavy work of embed and extract on a Ray cluster.

Tasks (extract's pairs) and actors (embed's CLIP workers, each loading the model once)
get their files as paths, which the workers read on storage mounted at the same paths,
or, with ``ray.ship_bytes``, as bytes this process read (imageinfo.Shipped). A worker
says which of its item's paths it could not open; a file this process can open is then
a storage problem, which stops the stage in one line, and a file nobody can open gives
the reason a local run gives, so the tables stay the same. Ray retries a call whose
worker died: only that item is lost, and only until the retry. backfill's own code
travels with the job (a runtime_env py_module), so the nodes need its packages
(requirements.lock), not a checkout.
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import backfill
from backfill.config.errors import UserError
from backfill.config.settings import RayConfig
from backfill.files.imageinfo import Shipped
from backfill.files.network import unreachable

T = TypeVar("T")
R = TypeVar("R")

RETRIES = 3  # a call whose worker was lost is tried this many more times
CALLS_PER_ACTOR = 2  # one running, one ready: an actor never waits for the driver
WAITING_NOTE_S = 60.0  # said on stderr after this long with no result: never a silent hang
SETTINGS = "conf/config.yaml"
_END = object()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _last_line(exc: BaseException) -> str:
    """The last line of an error's text: where Ray puts the remote exception itself."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


def check_reachable(address: str, timeout: float) -> None:
    """A UserError, in one line, unless ``address`` (host:port, ray:// or not) accepts
    a connection within ``timeout`` seconds: Ray itself retries for minutes."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    why = unreachable(host.strip("[]"), int(port), timeout)
    if why:
        raise UserError(
            f"cannot reach the Ray cluster at ray.address={address!r} ({why}, waited up to "
            f"{timeout:g} s): start it (`ray start --head`), fix ray.address in {SETTINGS}, "
            "or set executor: local")


def _mapped(item: Any, on_path: Callable[[Path], Any]) -> Any:
    """``item`` with every Path in it (in tuples, lists and dicts) replaced by
    ``on_path(path)``."""
    if isinstance(item, Path):
        return on_path(item)
    if isinstance(item, list | tuple) and not hasattr(item, "_fields"):
        return type(item)(_mapped(x, on_path) for x in item)
    if isinstance(item, dict):
        return {k: _mapped(v, on_path) for k, v in item.items()}
    return item


def shipped(item: Any) -> Any:
    """``item`` with every Path in it replaced by its bytes (imageinfo.Shipped)."""
    return _mapped(item, Shipped.read)


def unopenable(item: Any) -> list[str]:
    """The paths in ``item`` that this machine cannot open for reading."""
    found: list[str] = []
    _mapped(item, lambda p: None if os.access(p, os.R_OK) else found.append(str(p)))
    return found


class _Done(NamedTuple):
    """A worker's answer: the result, where it ran, and the paths it could not open."""

    result: Any
    host: str
    unopened: list[str]


def _on_worker() -> None:
    import cv2

    cv2.setNumThreads(1)  # the worker's CPUs are its threads' (embed sets its own)


def _run_task(fn: Callable[[T], R], item: T) -> _Done:
    _on_worker()
    return _Done(fn(item), socket.gethostname(), unopenable(item))


class _Hosted:
    """A worker object living in a Ray actor: built once, called once per item."""

    def __init__(self, factory: Callable[[float], Callable], cpus: float) -> None:
        _on_worker()
        self.worker = factory(cpus)

    def run(self, item: Any) -> _Done:
        return _Done(self.worker(item), socket.gethostname(), unopenable(item))


class RayRunner:
    """Joins the cluster at its first piece of work; ``close`` leaves it."""

    def __init__(self, cfg: RayConfig) -> None:
        self.cfg = cfg
        self._ray: Any = None
        self._joined = False  # this runner called ray.init, so it calls ray.shutdown
        self.cpus = 0.0
        self.gpus = 0.0
        self.actors = 0
        self._open: list[Iterator] = []  # map's and pool's generators, closed by close()

    def _connect(self) -> Any:
        if self._ray is not None:
            return self._ray
        try:
            import ray
        except ImportError:
            raise UserError("executor: ray needs the ray package: `make venv` installs it "
                              "(requirements.lock); or set executor: local") from None
        address = self.cfg.address
        if address not in (None, "auto"):
            check_reachable(address, self.cfg.connect_timeout_s)
        if not ray.is_initialized():
            # "local": always an instance of our own, never RAY_ADDRESS's or the one
            # `ray start` left running (that is what "auto" is for).
            options: dict[str, Any] = {"address": address or "local", "log_to_driver": False,
                                       "logging_level": logging.WARNING}
            if address is None:  # our own instance: no dashboard to serve
                options["include_dashboard"] = False
            else:  # backfill's code travels with the job; nodes need only its packages
                options["runtime_env"] = {"py_modules": [str(Path(backfill.__file__).parent)]}
            try:
                ray.init(**options)
            # Ray exits (SystemExit) when a head it found, e.g. the one "auto" names, is
            # gone after all its retries.
            except (ConnectionError, RuntimeError, ValueError, TimeoutError, SystemExit
                    ) as exc:
                raise UserError(
                    f"cannot join the Ray cluster at ray.address={address!r}: "
                    f"{_first_line(exc)}. Start it (`ray start --head`), fix ray.address in "
                    f"{SETTINGS}, or set executor: local") from None
            self._joined = True
        self._ray = ray
        resources = ray.cluster_resources()
        self.cpus, self.gpus = float(resources.get("CPU", 0)), float(resources.get("GPU", 0))
        return ray

    def close(self) -> None:
        """Cancel what is still queued (a stage stopped midway), then leave the cluster
        if this runner joined it."""
        for generator in self._open:
            generator.close()
        self._open.clear()
        if self._joined:
            self._ray.shutdown()
            self._joined = False
        self._ray = None

    def where(self) -> str:
        where = self.cfg.address or "a local instance"
        if self._ray is None:
            return f"ray ({where}, not joined: nothing to send)"
        actors = f", {self.actors} actor{'s' if self.actors != 1 else ''}" if self.actors else ""
        return f"ray ({where}: {self.cpus:g} CPUs, {self.gpus:g} GPUs{actors})"

    def _ship(self, item: Any) -> Any:
        return shipped(item) if self.cfg.ship_bytes else item

    def _window(self) -> int:
        return self.cfg.in_flight or max(2, int(2 * self.cpus))

    def _wait(self, refs: list, what: str) -> Any:
        """The first of ``refs`` to finish (in order when there is one), saying on
        stderr, every WAITING_NOTE_S, that the cluster has not answered yet."""
        while True:
            done, _ = self._ray.wait(refs, num_returns=1, timeout=WAITING_NOTE_S)
            if done:
                return done[0]
            print(f"backfill: waiting for the Ray cluster: no {what} for "
                  f"{WAITING_NOTE_S:g} s. Its CPUs or GPUs may be held by other jobs, or "
                  f"nodes still starting; `ray status` tells (ray.actors, actor_cpus and "
                  f"actor_gpus in {SETTINGS} size what is asked)", file=sys.stderr)

    def _next(self, pending: deque) -> Any:
        """The oldest of ``pending``, once finished, taken off it (left on it, to be
        cancelled, when the wait is interrupted)."""
        self._wait([pending[0]], "task result")
        return pending.popleft()

    def _get(self, ref: Any) -> Any:
        """The result of ``ref``, once its worker's unopened paths are accounted for."""
        ray = self._ray
        try:
            done = ray.get(ref)
        except ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, ImportError):
                raise UserError(
                    f"a Ray worker cannot import what backfill needs ({_first_line(cause)}): "
                    "install requirements.lock on every node") from None
            raise
        except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError,
                ray.exceptions.ObjectLostError) as exc:
            if getattr(exc, "actor_init_failed", False):
                why = _last_line(exc)
                hint = ("install requirements.lock on every node" if "Import" in why
                        or "ModuleNotFound" in why else "a checkpoint named by "
                        "embed.pretrained must be at the same path on every node, and hub "
                        "weights downloadable or cached there")
                raise UserError(f"an embed worker could not start on the Ray cluster "
                                  f"({why}): {hint}") from None
            raise UserError(f"a Ray worker was lost {RETRIES + 1} times on one item "
                              f"({_first_line(exc)}); its log: `ray logs` on the cluster"
                              ) from None
        seen_here = [p for p in done.unopened if not unopenable(Path(p))]
        if seen_here:
            more = f" and {len(seen_here) - 1:,} more" if len(seen_here) > 1 else ""
            raise UserError(
                f"Ray worker {done.host} cannot open {seen_here[0]}{more}, which this "
                "machine reads: the workers read files at this machine's paths, so mount "
                "the same storage there at the same path, or set ray.ship_bytes: true in "
                f"{SETTINGS}")
        return done.result  # a file nobody can open: the reason a local run gives

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
        """``fn(item)`` as one Ray task per item (one CPU each), at most ``in_flight``
        sent ahead, yielded in the items' order. Joins the cluster at the first item."""
        generator = self._map(fn, items)
        self._open.append(generator)
        return generator

    def _map(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
        items = iter(items)
        first = next(items, _END)
        if first is _END:
            return
        ray = self._connect()
        task = ray.remote(num_cpus=1, max_retries=RETRIES)(_run_task)
        fn_ref = ray.put(fn)  # sent once, not with every task
        pending: deque = deque()
        try:
            for item in itertools.chain([first], items):
                pending.append(task.remote(fn_ref, self._ship(item)))
                if len(pending) >= self._window():
                    yield self._get(self._next(pending))
            while pending:
                yield self._get(self._next(pending))
        finally:  # an interrupted run leaves no work queued on the cluster
            if ray.is_initialized():
                for ref in pending:
                    ray.cancel(ref)

    def _actor_shape(self, cpus: float) -> tuple[int, float, float]:
        """(actors, CPUs and GPUs each) that the cluster's live nodes can hold at once.
        ``cpus`` is a CPU actor's share; a GPU actor's is ``ray.actor_cpus``, else an
        even share of its node's CPUs among the node's GPU actors (decoding feeds the
        GPU)."""
        cfg = self.cfg
        nodes = [n["Resources"] for n in self._ray.nodes() if n.get("Alive")]
        gpus = cfg.actor_gpus if self.gpus >= cfg.actor_gpus > 0 else 0.0
        per_node = [(int(n.get("GPU", 0) // gpus), n.get("CPU", 0)) for n in nodes] if gpus \
            else []
        per_node = [(k, c) for k, c in per_node if k]
        if gpus and not per_node:
            raise UserError(f"ray.actor_gpus={gpus:g} is more than any one node of the "
                              f"cluster has: lower it in {SETTINGS} (0: CPUs only)")
        if gpus:
            cpus = cfg.actor_cpus or max(1.0, min(c // k for k, c in per_node))
            fit = sum(min(k, int(c // cpus)) for k, c in per_node)
        else:
            fit = sum(int(n.get("CPU", 0) // cpus) for n in nodes)
        if fit < 1:
            held = "ray.actor_cpus" if cfg.actor_cpus else "this machine's torch threads " \
                "(ray.actor_cpus: null)"
            raise UserError(f"an embed worker needs {cpus:g} CPUs ({held}), more than any "
                              f"node of the cluster has: set ray.actor_cpus in {SETTINGS}")
        return min(cfg.actors or fit, fit), cpus, gpus

    def pool(self, factory: Callable[[float], Callable[[T], R]], items: Sequence[T],
             cpus: float) -> Iterator[R]:
        """``worker(item)`` for every item, on a pool of actors (of ``cpus`` CPUs when
        they get no GPU; no more actors than items), each holding one ``factory(cpus)``
        built once (a loaded model); yielded as they finish, in any order. A lost actor
        is restarted and its call retried. Joins the cluster, and starts the actors, at
        the first item."""
        generator = self._pool(factory, items, cpus)
        self._open.append(generator)
        return generator

    def _pool(self, factory: Callable[[float], Callable[[T], R]], items: Sequence[T],
              cpus: float) -> Iterator[R]:
        if not items:
            return
        ray = self._connect()
        fit, cpus, gpus = self._actor_shape(cpus)
        self.actors = min(fit, len(items))
        # Restarted without limit (a long run may lose several nodes); each call is
        # retried RETRIES times.
        hosted = ray.remote(num_cpus=cpus, num_gpus=gpus, max_restarts=-1,
                            max_task_retries=RETRIES)(_Hosted)
        actors = [hosted.remote(factory, cpus) for _ in range(self.actors)]
        free = deque(actors * CALLS_PER_ACTOR)
        pending: dict = {}
        queue = iter(items)
        try:
            more = True
            while True:
                while more and free:
                    item = next(queue, _END)
                    if item is _END:
                        more = False
                        break
                    actor = free.popleft()
                    pending[actor.run.remote(self._ship(item))] = actor
                if not pending:
                    return
                done = self._wait(list(pending), "result from the embed workers")
                free.append(pending.pop(done))
                yield self._get(done)
        finally:
            if ray.is_initialized():
                for ref in pending:
                    ray.cancel(ref)
                for actor in actors:
                    ray.kill(actor)
