"""executor ray: the heavy work of embed and extract on a Ray cluster.

Tasks (extract's pairs) and actors (embed's CLIP workers, each loading the model once)
get their files as paths, which the workers read on storage mounted at the same paths,
or, with ``ray.ship_bytes``, as bytes this process read (imageinfo.Shipped). Ray retries
a task, or an actor's call, whose worker died: only that item is lost, and only until
the retry. backfill's own code travels with the job (a runtime_env py_module), so the
nodes need its packages (requirements.lock), not a checkout.
"""

from __future__ import annotations

import itertools
import logging
import socket
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import backfill
from backfill.config.errors import ConfigError
from backfill.config.settings import RayConfig
from backfill.files.imageinfo import Shipped, read_where

T = TypeVar("T")
R = TypeVar("R")

RETRIES = 3  # a lost worker's item is tried this many more times
CALLS_PER_ACTOR = 2  # one running, one ready: an actor never waits for the driver
SETTINGS = "conf/config.yaml"
_END = object()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def check_reachable(address: str, timeout: float) -> None:
    """A ConfigError, in one line, unless ``address`` (host:port, ray:// or not) accepts
    a connection within ``timeout`` seconds: Ray itself retries for minutes."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        why = exc.strerror or str(exc) or type(exc).__name__
        raise ConfigError(
            f"cannot reach the Ray cluster at ray.address={address!r} ({why}, waited up to "
            f"{timeout:g} s): start it (`ray start --head`), fix ray.address in {SETTINGS}, "
            "or set executor: local") from None


def shipped(item: Any) -> Any:
    """``item`` with every Path in it (in tuples, lists and dicts) replaced by its bytes."""
    if isinstance(item, Path):
        return Shipped.read(item)
    if isinstance(item, list | tuple) and not hasattr(item, "_fields"):
        return type(item)(shipped(x) for x in item)
    if isinstance(item, dict):
        return {k: shipped(v) for k, v in item.items()}
    return item


def _on_worker() -> None:
    """What every worker process sets before our code runs there."""
    import cv2

    cv2.setNumThreads(1)  # Ray gives each task one CPU
    read_where(f" (on Ray worker {socket.gethostname()}, which reads files at the paths this "
               "machine uses: mount the same storage there at the same path, or set "
               f"ray.ship_bytes: true in {SETTINGS})")


def _run_task(fn: Callable[[T], R], item: T) -> R:
    _on_worker()
    return fn(item)


class _Hosted:
    """A worker object living in a Ray actor: built once, called once per item."""

    def __init__(self, factory: Callable[[float], Callable], cpus: float) -> None:
        _on_worker()
        self.worker = factory(cpus)

    def run(self, item: Any) -> Any:
        return self.worker(item)


class RayRunner:
    """Joins the cluster at its first piece of work; ``close`` leaves it."""

    def __init__(self, cfg: RayConfig) -> None:
        self.cfg = cfg
        self._ray: Any = None
        self._joined = False  # this runner called ray.init, so it calls ray.shutdown
        self.cpus = 0.0
        self.gpus = 0.0
        self.actors = 0

    def _connect(self) -> Any:
        if self._ray is not None:
            return self._ray
        try:
            import ray
        except ImportError:
            raise ConfigError("executor: ray needs the ray package: `make venv` installs it "
                              "(requirements.lock); or set executor: local") from None
        address = self.cfg.address
        if address not in (None, "auto"):
            check_reachable(address, self.cfg.connect_timeout_s)
        if not ray.is_initialized():
            options: dict[str, Any] = {"address": address, "log_to_driver": False,
                                       "logging_level": logging.WARNING}
            if address is None:  # our own instance: no dashboard to serve
                options["include_dashboard"] = False
            else:  # backfill's code travels with the job; nodes need only its packages
                options["runtime_env"] = {"py_modules": [str(Path(backfill.__file__).parent)]}
            try:
                ray.init(**options)
            except (ConnectionError, RuntimeError, ValueError, TimeoutError) as exc:
                raise ConfigError(
                    f"cannot join the Ray cluster at ray.address={address!r}: "
                    f"{_first_line(exc)}. Start it (`ray start --head`), fix ray.address in "
                    f"{SETTINGS}, or set executor: local") from None
            self._joined = True
        self._ray = ray
        resources = ray.cluster_resources()
        self.cpus, self.gpus = float(resources.get("CPU", 0)), float(resources.get("GPU", 0))
        return ray

    def close(self) -> None:
        if self._joined:
            self._ray.shutdown()
            self._joined = False
        self._ray = None

    def describe(self) -> str:
        where = self.cfg.address or "a local instance"
        if self._ray is None:
            return f"ray ({where})"
        actors = f", {self.actors} actor{'s' if self.actors != 1 else ''}" if self.actors else ""
        return f"ray ({where}: {self.cpus:g} CPUs, {self.gpus:g} GPUs{actors})"

    def _ship(self, item: Any) -> Any:
        return shipped(item) if self.cfg.ship_bytes else item

    def _window(self) -> int:
        return self.cfg.in_flight or max(2, int(2 * self.cpus))

    def _get(self, ref: Any) -> Any:
        ray = self._ray
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as exc:
            cause = exc.cause if hasattr(exc, "cause") else None
            if isinstance(cause, ImportError):
                raise ConfigError(
                    f"a Ray worker cannot import what backfill needs ({_first_line(cause)}): "
                    "install requirements.lock on every node") from None
            raise
        except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError,
                ray.exceptions.ObjectLostError) as exc:
            raise ConfigError(
                f"a Ray worker was lost {RETRIES + 1} times on one item, or could not start "
                f"({_first_line(exc)}); its log: `ray logs` on the cluster") from None

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
        """``fn(item)`` as one Ray task per item (one CPU each), at most ``in_flight``
        sent ahead, yielded in the items' order. Joins the cluster at the first item."""
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
                    yield self._get(pending.popleft())
            while pending:
                yield self._get(pending.popleft())
        finally:  # an interrupted run leaves no work queued on the cluster
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
        if gpus:
            per_node = [(int(n.get("GPU", 0) // gpus), n.get("CPU", 0)) for n in nodes]
            per_node = [(k, c) for k, c in per_node if k]
            cpus = cfg.actor_cpus or max(1.0, min(c // k for k, c in per_node))
            fit = sum(min(k, int(c // cpus)) for k, c in per_node)
        else:
            fit = sum(int(n.get("CPU", 0) // cpus) for n in nodes)
        if fit < 1:
            held = "ray.actor_cpus" if cfg.actor_cpus else "this machine's torch threads " \
                "(ray.actor_cpus: null)"
            raise ConfigError(f"an embed worker needs {cpus:g} CPUs ({held}), more than any "
                              f"node of the cluster has: set ray.actor_cpus in {SETTINGS}")
        return min(cfg.actors or fit, fit), cpus, gpus

    def pool(self, factory: Callable[[float], Callable[[T], R]], items: Iterable[T],
             cpus: float) -> Iterator[R]:
        """``worker(item)`` for every item, on a pool of actors (of ``cpus`` CPUs when
        they get no GPU), each holding one ``factory(cpus)`` built once (a loaded model);
        yielded as they finish, in any order. A lost actor is restarted and its call
        retried. Joins the cluster, and starts the actors, at the first item."""
        items = iter(items)
        first = next(items, _END)
        if first is _END:
            return
        items = itertools.chain([first], items)
        ray = self._connect()
        self.actors, cpus, gpus = self._actor_shape(cpus)
        hosted = ray.remote(num_cpus=cpus, num_gpus=gpus, max_restarts=RETRIES,
                            max_task_retries=RETRIES)(_Hosted)
        actors = [hosted.remote(factory, cpus) for _ in range(self.actors)]
        free = deque(actors * CALLS_PER_ACTOR)
        pending: dict = {}
        try:
            more = True
            while True:
                while more and free:
                    item = next(items, _END)
                    if item is _END:
                        more = False
                        break
                    actor = free.popleft()
                    pending[actor.run.remote(self._ship(item))] = actor
                if not pending:
                    return
                [done], _ = ray.wait(list(pending), num_returns=1)
                free.append(pending.pop(done))
                yield self._get(done)
        finally:
            for ref in pending:
                ray.cancel(ref)
            for actor in actors:
                ray.kill(actor)
