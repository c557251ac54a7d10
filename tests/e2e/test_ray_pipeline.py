"""End to end: `dvc repro` with executor ray, joined to a Ray instance by its address,
writes the tables a local run writes, to the byte."""

import re
import shutil

import pytest

from backfill.demo.synthetic import make_project
from tests.conftest import run

pytestmark = pytest.mark.slow

TABLES = ("embeddings", "truth", "finals")


def test_dvc_repro_on_a_ray_cluster_writes_the_local_tables(repo_copy, tmp_path, ray_cluster):
    project = make_project(tmp_path / "p", n_groups=6, seed=5, scale=0.1, odd_names=True)
    run(["backfill", "project", "add", "p", "--original-dir", str(project.original_dir),
         "--final-dir", str(project.final_dir), "embed.pretrained=null"], repo_copy)
    first = run(["dvc", "repro", "embed@p", "extract@p"], repo_copy).stdout
    assert re.search(r"embed p: .* on cpu;", first) and "on 2 threads" in first
    local = {t: (repo_copy / "data" / "p" / f"{t}.parquet").read_bytes() for t in TABLES}

    config = repo_copy / "conf" / "config.yaml"
    text = config.read_text().replace("executor: local", "executor: ray")
    config.write_text(text.replace("  address: null", f"  address: {ray_cluster}", 1))
    run(["backfill", "compose"], repo_copy)
    status = run(["dvc", "status"], repo_copy).stdout
    assert "embed@p" not in status and "extract@p" not in status  # where is no parameter
    shutil.rmtree(repo_copy / "data" / "cache")  # so that the work is done again, on Ray
    for stage in ("embed@p", "extract@p"):
        out = run(["dvc", "repro", "--single-item", "--force", stage], repo_copy).stdout
        assert f"on ray ({ray_cluster}: 2 CPUs, 0 GPUs" in out, out
    for t in TABLES:
        assert (repo_copy / "data" / "p" / f"{t}.parquet").read_bytes() == local[t], t
