"""Ctrl-C and kill -9 in every stage: the re-run gives byte-identical outputs.

Outputs are replaced atomically and caches only ever gain whole rows, so a stage stopped
at any moment leaves either its old outputs or none, and running it again gives exactly
what an undisturbed run gives. A SIGINT is one line (exit 130), a SIGTERM too (exit 143),
never a traceback.
"""

import hashlib
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from backfill.demo.production import make_production_db
from backfill.demo.synthetic import make_project
from backfill.pipeline import STAGES as PIPELINE_STAGES
from tests.conftest import BIN, run

pytestmark = pytest.mark.slow

STAGES = [s.name for s in PIPELINE_STAGES]


def outputs(folder: Path) -> dict[str, str]:
    """Every file a stage wrote under data/<p>/, by content."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def interrupt(cmd: list[str], cwd: Path, sig: int, after: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    time.sleep(after)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A project built stage by stage once, undisturbed: the reference outputs, and how
    long each stage took."""
    from backfill.demo.workspace import scratch_repo
    from tests.conftest import REPO

    root = tmp_path_factory.mktemp("interrupt")
    repo = scratch_repo(REPO, root / "repo")
    gen = make_project(root / "p", n_groups=24, seed=11, scale=0.12)
    live = make_production_db(gen, root / "live" / "p.db", seed=11).path
    run(["backfill", "project", "add", "p", "--original-dir", str(gen.original_dir),
         "--final-dir", str(gen.final_dir), "--real-db", str(live),
         "embed.pretrained=null"], repo)
    took = {}
    for stage in STAGES:
        started = time.perf_counter()
        run(["backfill", stage, "p"], repo)
        took[stage] = time.perf_counter() - started
    return repo, outputs(repo / "data" / "p"), took


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL],
                         ids=["SIGINT", "SIGTERM", "SIGKILL"])
def test_a_stage_stopped_midway_reruns_to_identical_outputs(built, sig):
    repo, reference, took = built
    data = repo / "data" / "p"
    for stage in STAGES:
        # Stopped at about two thirds of its usual time: past start-up, mid-work.
        stopped = interrupt(["backfill", stage, "p"], repo, sig, took[stage] * 0.66)
        if sig in (signal.SIGINT, signal.SIGTERM):
            said = "interrupted" if sig == signal.SIGINT else "terminated"
            assert stopped.returncode in (0, 128 + sig), (stage, stopped.stderr)
            assert "Traceback" not in stopped.stderr, (stage, stopped.stderr)
            if stopped.returncode == 128 + sig:
                assert f"backfill: {said}" in stopped.stderr
        run(["backfill", stage, "p"], repo)
        after = outputs(data)
        assert after == reference, (stage, sig, {k for k in after.keys() | reference.keys()
                                                 if after.get(k) != reference.get(k)})
    # Nothing half-written is left beside the outputs or in the caches.
    left = [p for p in (repo / "data").rglob("*") if ".tmp-" in p.name]
    assert left == []
