"""executor ray: embed and extract on a local Ray instance (2 CPUs, no dashboard) give
the local run's tables to the byte; an unreachable cluster, a file a worker cannot read
and a worker lost mid-run each end the way the README says."""

from __future__ import annotations

import dataclasses
import os
import socket
import time
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from backfill.config.errors import UserError
from backfill.config.settings import GroupConfig, section
from backfill.contracts.schemas import EmbeddingsTable, FinalsTable, TruthTable
from backfill.contracts.tables import write_table
from backfill.demo.synthetic import make_project
from backfill.executors import ray_runner
from backfill.executors.ray_runner import RayRunner
from backfill.models.clip import ClipSettings
from backfill.stages.embed import embed_images, members, ray_embedder
from backfill.stages.extract.stage import ExtractSettings, extract_project
from backfill.stages.group import group_table
from backfill.stages.scan import ScanSettings, scan_project
from tests.conftest import REPO, pipeline_config
from tests.helpers.ray_cluster import ray_config

pytestmark = pytest.mark.slow  # each starts or uses a Ray instance

PIPELINE = pipeline_config()
CLIP = dataclasses.replace(ClipSettings.from_config(PIPELINE.embed, REPO,
                                                    PIPELINE.scan.max_pixels),
                           pretrained=None, batch_size=4)
EXTRACT = ExtractSettings.from_config(PIPELINE.extract, PIPELINE.scan.max_pixels)




@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A generated project with nameless finals (content pairing) and every bad-file kind,
    scanned and grouped; one grouped render is then deleted, so a batch has a failure."""
    root = tmp_path_factory.mktemp("ray")
    gen = make_project(root / "p", n_groups=8, seed=3, scale=0.1, odd_names=True)
    scan = scan_project({"original": gen.original_dir, "final": gen.final_dir},
                        ScanSettings.from_config(PIPELINE.scan), root / "scan-cache").table
    groups, ungrouped = group_table(scan, section(GroupConfig, PIPELINE.group, "group"), "p")
    images = members(groups)
    gone = images["image_path"].iloc[5]
    (gen.original_dir / gone).unlink()
    return gen, scan, groups, ungrouped, images, gone


def tables(result_embed, result_extract, folder: Path) -> dict[str, bytes]:
    """The three tables as the stages write them, as bytes."""
    folder.mkdir(parents=True)
    write_table(result_embed.table, folder / "embeddings.parquet", EmbeddingsTable, "e")
    write_table(result_extract.truth, folder / "truth.parquet", TruthTable, "truth")
    write_table(result_extract.finals, folder / "finals.parquet", FinalsTable, "finals")
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def run_both(project, cache: Path, runner=None):
    gen, scan, groups, ungrouped, images, _ = project
    load = {} if runner is None else {"load": partial(ray_embedder, runner)}
    embedded = embed_images(images, gen.original_dir, CLIP, cache, **load)
    extracted = extract_project(groups, scan, ungrouped, EXTRACT, gen.original_dir,
                                gen.final_dir, cache, runner)
    return embedded, extracted


@pytest.mark.parametrize("ship_bytes", [False, True], ids=["shared-paths", "ship-bytes"])
def test_ray_gives_the_local_tables_to_the_byte(project, ray_cluster, tmp_path, ship_bytes):
    gen, _, _, _, images, gone = project
    local = run_both(project, tmp_path / "local-cache")
    runner = RayRunner(ray_config(address=ray_cluster, ship_bytes=ship_bytes))
    try:
        remote = run_both(project, tmp_path / "ray-cache", runner)
        assert "2 CPUs" in runner.where() and "1 actor" in runner.where()
    finally:
        runner.close()
    assert remote[0].device == "ray" and remote[0].embedded == len(images) - 1
    assert remote[1].content.paired >= 1 and remote[1].matched >= 3  # both kinds of locate
    assert tables(*local, tmp_path / "l") == tables(*remote, tmp_path / "r")

    # The render deleted after the scan: no worker and not this machine can open it, so
    # its reason is the one a local run gives.
    assert remote[0].failed == local[0].failed and "No such file" in local[0].failed[gone]


def test_a_file_only_this_machine_can_open_stops_the_stage_naming_the_setting(
        project, ray_cluster, tmp_path, monkeypatch):
    gen, _, _, _, images, gone = project
    # As if this machine saw a mount the workers lack: it can open what they cannot.
    monkeypatch.setattr(ray_runner, "unopenable", lambda item: [])
    for attempt in ("embed", "map"):
        runner = RayRunner(ray_config(address=ray_cluster))
        try:
            with pytest.raises(UserError) as exc:
                if attempt == "embed":
                    embed_images(images, gen.original_dir, CLIP, tmp_path / attempt,
                                 partial(ray_embedder, runner))
                else:
                    list(runner.map(str, [(gen.original_dir / gone,)]))
        finally:
            runner.close()
        message = str(exc.value)
        assert "\n" not in message and str(gen.original_dir / gone) in message
        assert f"Ray worker {socket.gethostname()} cannot open" in message
        assert "ray.ship_bytes: true" in message


def test_an_unreachable_cluster_is_one_line_naming_the_setting():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for address in (f"127.0.0.1:{port}", f"ray://127.0.0.1:{port}"):
        runner = RayRunner(ray_config(address=address, connect_timeout_s=2))
        started = time.monotonic()
        with pytest.raises(UserError) as exc:
            list(runner.map(abs, [-1]))
        message = str(exc.value)
        assert time.monotonic() - started < 10
        assert "\n" not in message and f"ray.address='{address}'" in message
        assert "executor: local" in message
    nothing = RayRunner(ray_config(address=f"127.0.0.1:{port}"))
    assert list(nothing.map(abs, [])) == []  # no work: never connects, never fails


class DiesOnce:
    """A worker whose process exits on its first call while ``marker`` exists."""

    def __init__(self, marker: str, cpus: float) -> None:
        self.marker = Path(marker)

    def __call__(self, item: int) -> tuple[int, int]:
        if self.marker.exists():
            self.marker.unlink()
            os._exit(1)  # the actor's process is gone, mid-call
        return item, os.getpid()


def test_a_worker_lost_mid_run_costs_only_its_item(ray_cluster, tmp_path):
    marker = tmp_path / "die"
    marker.touch()
    runner = RayRunner(ray_config(address=ray_cluster))
    try:
        results = list(runner.pool(partial(DiesOnce, str(marker)), range(10), cpus=1))
    finally:
        runner.close()
    assert sorted(item for item, _ in results) == list(range(10))
    assert not marker.exists()  # one worker did die


def test_ray_map_keeps_order_and_bounds_what_is_in_flight(ray_cluster):
    runner = RayRunner(ray_config(address=ray_cluster, in_flight=3))
    sent = []

    def items():
        for i in range(12):
            sent.append(i)
            yield i

    try:
        seen = []
        for value in runner.map(np.negative, items()):
            seen.append(value)
            assert len(sent) - len(seen) <= 3
    finally:
        runner.close()
    assert seen == [-i for i in range(12)]


class FailsToStart:
    def __init__(self, cpus: float) -> None:
        raise RuntimeError("no weights at /models/clip.pt on this node")


def test_a_worker_that_cannot_start_says_why_in_one_line(ray_cluster):
    runner = RayRunner(ray_config(address=ray_cluster))
    try:
        with pytest.raises(UserError) as exc:
            list(runner.pool(FailsToStart, [1, 2], cpus=1))
    finally:
        runner.close()
    message = str(exc.value)
    assert "\n" not in message and "could not start" in message
    assert "no weights at /models/clip.pt on this node" in message


def test_a_slow_cluster_is_said_while_waiting_and_close_cancels_what_is_queued(
        ray_cluster, monkeypatch, capsys):
    import ray

    monkeypatch.setattr(ray_runner, "WAITING_NOTE_S", 0.5)
    runner = RayRunner(ray_config(address=ray_cluster, in_flight=2))
    results = runner.map(time.sleep, [2.0] + [30.0] * 5)
    assert next(results) is None
    assert "waiting for the Ray cluster: no task result for 0.5 s" in capsys.readouterr().err
    started = time.monotonic()
    runner.close()  # the stage stopped midway: the 30 s tasks are cancelled, not awaited
    assert time.monotonic() - started < 5
    assert ray.is_initialized()  # an instance this runner did not start keeps running
