"""What the runners decide without a cluster: the local runner's order, how many embed
actors a cluster's nodes hold, and what ship_bytes sends."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from backfill.config.errors import UserError
from backfill.executors import LocalRunner
from backfill.executors.ray_runner import RayRunner, shipped
from backfill.files.imageinfo import Shipped, Unreadable, decode
from tests.helpers.ray_cluster import ray_config


def test_the_local_runner_keeps_the_items_order():
    assert list(LocalRunner(3).map(lambda x: -x, range(50))) == [-x for x in range(50)]
    assert LocalRunner(1).where() == "1 thread" and list(LocalRunner(2).map(abs, [])) == []


def test_a_runner_with_nothing_to_send_says_it_never_joined():
    runner = RayRunner(ray_config(address="auto"))
    assert list(runner.map(abs, [])) == [] and list(runner.pool(abs, [], cpus=1)) == []
    assert runner.where() == "ray (auto, not joined: nothing to send)"
    runner.close()


def cluster(*nodes: dict, alive: bool = True) -> RayRunner:
    runner = RayRunner(ray_config())
    runner._ray = SimpleNamespace(nodes=lambda: [{"Alive": alive, "Resources": n}
                                                 for n in nodes])
    runner.cpus = sum(n.get("CPU", 0) for n in nodes)
    runner.gpus = sum(n.get("GPU", 0) for n in nodes)
    return runner


def test_cpu_actors_are_as_many_as_each_node_holds():
    runner = cluster({"CPU": 16}, {"CPU": 6}, {"CPU": 2})
    assert runner._actor_shape(4) == (5, 4, 0.0)  # 4 + 1 + 0, never one split over nodes
    assert runner._actor_shape(10) == (1, 10, 0.0)
    runner.cfg = ray_config(actors=2)
    assert runner._actor_shape(4)[0] == 2
    with pytest.raises(UserError, match="needs 20 CPUs .* set ray.actor_cpus"):
        runner._actor_shape(20)


def test_gpu_actors_get_one_gpu_and_a_share_of_their_node_cpus():
    runner = cluster({"CPU": 16, "GPU": 2}, {"CPU": 8, "GPU": 1}, {"CPU": 32})
    actors, cpus, gpus = runner._actor_shape(10)  # the CPU-only share plays no part
    assert (actors, cpus, gpus) == (3, 8, 1)
    runner.cfg = ray_config(actor_gpus=0)  # GPUs left alone: CPU actors
    assert runner._actor_shape(10) == (4, 10, 0.0)  # 1 + 0 + 3


def test_dead_nodes_hold_nothing():
    with pytest.raises(UserError):
        cluster({"CPU": 64}, alive=False)._actor_shape(1)


def test_ship_bytes_sends_every_path_in_an_item_and_reasons_for_what_it_cannot_read(
        tmp_path: Path):
    good = tmp_path / "a.png"
    good.write_bytes(b"\x89PNG not really")
    item = (7, [good, tmp_path / "gone.png"], {"final": good}, "text")
    sent = shipped(item)
    assert sent[0] == 7 and sent[3] == "text"
    assert sent[1][0] == Shipped(str(good), good.read_bytes(), None)
    assert sent[1][1].data is None and "No such file" in sent[1][1].error
    assert sent[2]["final"].data == good.read_bytes()
    with pytest.raises(Unreadable, match="No such file"):
        decode(sent[1][1], 0, 10**8)
