"""Ray's overhead: the same project's embed and extract, local against executor ray.

Generates a project (``--groups`` groups at ``--scale`` of the person's render sizes,
with nameless finals so content pairing runs), scans and groups it, then times on the
same files in the same run, each with an empty cache:
- local: ``embed_images`` (CLIP in this process) and ``extract_project`` (threads);
- ray: a Ray instance of this machine's own (``ray.init``, as ``ray.address: null``
  starts per stage), then the same two calls on it: CLIP on a pool of actors, extract's
  locates and signatures as tasks.
It also measures what Ray adds per unit of work: start-up (``ray.init``), an actor's
start with CLIP loaded (time to its first result, less a batch's compute), and an empty
task's round trip. The tables of both runs must be identical; the benchmark says so.
On a GPU machine (``--device auto`` finds it), the ray run's 1 actor holds a GPU:
images per second, 1 actor against the local embed.

    python benchmarks/bench_ray.py [--groups 24] [--scale 0.25] [--tasks 200]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import tempfile
from functools import partial
from pathlib import Path

import numpy as np
from timing import timed

from backfill.config.settings import GroupConfig, RayConfig, section
from backfill.demo.synthetic import make_project
from backfill.executors.ray_runner import RayRunner
from backfill.models.clip import ClipSettings
from backfill.stages.embed import embed_images, members, ray_embedder
from backfill.stages.extract.stage import ExtractSettings, extract_project
from backfill.stages.group import group_table
from backfill.stages.scan import ScanSettings, scan_project

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def pipeline():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(REPO / "conf"), version_base=None):
        cfg = compose(config_name="pipeline/default").pipeline
    return cfg, compose_ray()


def compose_ray() -> RayConfig:
    from omegaconf import OmegaConf

    from backfill.config.settings import section

    return section(RayConfig, OmegaConf.load(REPO / "conf" / "config.yaml").ray, "ray")


def same(a, b) -> bool:
    """Two (embed, extract) results hold the same tables, to the last bit."""
    ea, eb = a[0].table, b[0].table
    return (ea["content_hash"].equals(eb["content_hash"])
            and all(np.array_equal(x, y) for x, y in zip(ea["embedding"], eb["embedding"],
                                                       strict=True))
            and a[1].truth.equals(b[1].truth) and a[1].finals.equals(b[1].finals))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--groups", type=int, default=24)
    ap.add_argument("--scale", type=float, default=0.25)
    ap.add_argument("--tasks", type=int, default=200, help="empty tasks for the round trip")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    import ray

    cfg, ray_cfg = pipeline()
    clip = dataclasses.replace(ClipSettings.from_config(cfg.embed, REPO, cfg.scan.max_pixels),
                               pretrained=None, device=args.device)
    extract = ExtractSettings.from_config(cfg.extract, cfg.scan.max_pixels)
    tmp = Path(tempfile.mkdtemp(prefix="bench_ray-"))
    try:
        gen = make_project(tmp / "p", n_groups=args.groups, seed=7, scale=args.scale,
                           odd_names=True)
        scan = scan_project({"original": gen.original_dir, "final": gen.final_dir},
                            ScanSettings.from_config(cfg.scan), tmp / "scan").table
        groups, ungrouped = group_table(scan, section(GroupConfig, cfg.group, "group"), "p")
        images = members(groups)
        print(f"project: {args.groups} groups at {args.scale:g} of the person's sizes, "
              f"{len(images)} renders to embed, {os.cpu_count()} CPUs; empty caches\n")

        def extract_all(cache: Path, runner=None):
            return timed(lambda: extract_project(groups, scan, ungrouped, extract,
                                                 gen.original_dir, gen.final_dir, cache, runner))

        def both(cache: Path, runner=None):
            load = {} if runner is None else {"load": partial(ray_embedder, runner)}
            t_embed, e = timed(lambda: embed_images(images, gen.original_dir, clip, cache,
                                                    **load))
            t_extract, x = extract_all(cache, runner)
            return (e, x), t_embed, t_extract

        local, l_embed, l_extract = both(tmp / "local")
        t_init, _ = timed(lambda: ray.init(num_cpus=os.cpu_count(), include_dashboard=False,
                                           log_to_driver=False))
        runner = RayRunner(ray_cfg)
        try:
            remote, r_embed, r_extract = both(tmp / "ray", runner)
            where = runner.where()
            warm_extract, _ = extract_all(tmp / "ray-warm", runner)  # workers started now
            t_tasks, _ = timed(lambda: list(runner.map(abs, range(args.tasks))))
        finally:
            runner.close()
            ray.shutdown()
        rows = [("embed", l_embed, r_embed), ("extract", l_extract, r_extract),
                ("both", l_embed + l_extract, r_embed + r_extract),
                ("extract, Ray's workers already started", l_extract, warm_extract)]
        print(f"{'':40}{'local':>10}{'ray':>10}{'ray/local':>11}")
        for name, a, b in rows:
            print(f"{name:40}{a:9.1f}s{b:9.1f}s{b / a:10.2f}x")
        n = remote[0].embedded
        print(f"\nembed: local {n / l_embed:.1f} images/s on {local[0].device}; ray "
              f"{n / r_embed:.1f} images/s on {where}")
        print(f"ray start-up (ray.init, a local instance): {t_init:.1f}s, paid by every stage "
              "with ray.address: null (a running cluster, `ray start --head`, saves it)")
        print(f"ray per task: {1000 * t_tasks / args.tasks:.1f} ms round trip "
              f"({args.tasks} empty tasks, {ray_cfg.in_flight or 'twice the CPUs'} in flight)")
        print(f"ray's share of embed beyond the local run: {r_embed - l_embed:+.1f}s "
              "(actor start, CLIP loaded in the actor, first batch before any result)")
        print(f"tables identical to the local run's: {'yes' if same(local, remote) else 'NO'}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
