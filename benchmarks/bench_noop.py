"""The everyday no-op: `dvc repro` across many registered projects when nothing changed.

A throwaway repository (this one's pipeline, as tests' repo_copy makes it) gets
--projects generated projects (``make_project``: --groups groups each, every file its
own copy, each with a partial production DB), registered with `backfill project add`
(random CLIP weights: offline). The first is built with `dvc repro`; the others are
copies of its outputs, recorded with `dvc commit -f` (they hold the same pictures; one
`dvc repro` then rewrites what names the project's own production DB). Then, with
nothing changed, measured in the same run:

- no-op: `dvc repro` as users run it (median of --repeats): the watch stage runs and
  finds nothing changed, so nothing else runs;
- DVC's floor: `dvc status`, DVC reading the pipeline, params.yaml and dvc.lock for
  every stage with nothing run;
- before: what each no-op paid on top of that when scan and merge ran on every repro,
  one process per project and stage (`backfill scan p` and `backfill merge p` for each,
  timed; DVC also rewrote dvc.lock after each of them, not counted here, so the real
  figure was higher);
- the walk at the person's size: the image folders of 21 projects hold about 200k
  renders, so walking --walk-files empty files (listed and stat'ed, never read) is
  timed apart and added to the no-op as a projection.

Target: a no-op `dvc repro` across 21 projects within 15 s on a 2-core machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TARGET_S = 15.0


def sh(cmd: list[str], cwd: Path, **env: str) -> tuple[float, str]:
    """Run ``cmd`` (venv first on PATH); its seconds and stdout. Stops on a failure."""
    full = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", **env}
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=full, capture_output=True, text=True)
    took = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return took, proc.stdout


def build(root: Path, n: int, groups: int) -> Path:
    from backfill.demo.production import make_production_db
    from backfill.demo.synthetic import make_project
    from backfill.demo.workspace import scratch_repo

    repo = scratch_repo(REPO, root / "repo")
    first = make_project(root / "images" / "p00", n_groups=groups, seed=3, scale=0.05)
    make_production_db(first, root / "live" / "p00.db", seed=3)
    for i in range(n):
        name = f"p{i:02d}"
        if i:  # the same pictures, in files of its own
            shutil.copytree(root / "images" / "p00", root / "images" / name, symlinks=True)
            shutil.copy2(root / "live" / "p00.db", root / "live" / f"{name}.db")
        images = root / "images" / name
        sh(["backfill", "project", "add", name, "--original-dir", str(images / "original"),
            "--final-dir", str(images / "final"), "--real-db",
            str(root / "live" / f"{name}.db"), "embed.pretrained=null"], repo)
    took, _ = sh(["dvc", "repro", "validate@p00"], repo)
    print(f"built p00 in {took:.1f}s; copying its outputs to {n - 1} more projects")
    for i in range(1, n):
        name = f"p{i:02d}"
        shutil.copytree(repo / "data" / "p00", repo / "data" / name)
        shutil.copytree(repo / "metrics" / "p00", repo / "metrics" / name)
    sh(["dvc", "commit", "-f", "-q"], repo)
    return repo


def walk_cost(root: Path, files: int) -> float:
    """Seconds to walk ``files`` entries in folders of 500, as the watch stage does."""
    from backfill.watch import walk

    folder = root / "walk"
    for i in range(files):
        sub = folder / f"{i // 500:04d}"
        if i % 500 == 0:
            sub.mkdir(parents=True)
        (sub / f"{i:07d}_stage1.png").touch()
    walk(folder)  # the listing in the page cache, as a repeat run finds it
    started = time.perf_counter()
    seen = walk(folder)
    assert seen.entries == files + files // 500
    return time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--projects", type=int, default=21)
    ap.add_argument("--groups", type=int, default=4, help="groups per project")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--walk-files", type=int, default=200_000)
    ap.add_argument("--out", type=Path, help="work folder (default: a temporary one)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-noop-") as tmp:
        root = args.out or Path(tmp)
        repo = build(root, args.projects, args.groups)
        # A copy's merged DB names its own production DB, so the first repro re-runs
        # merge and validate for the copies; after it nothing is left to run.
        settle, _ = sh(["dvc", "repro"], repo)
        print(f"first repro of the copies: {settle:.1f}s")
        noop = []
        for _ in range(args.repeats):
            took, out = sh(["dvc", "repro"], repo)
            noop.append(took)
            ran = [line.split("'")[1] for line in out.splitlines()
                   if line.startswith("Running stage")]
            if ran != ["watch"] or "nothing changed outside" not in out:
                sys.exit(f"a no-op ran more than the watch stage: {ran}\n{out}")
        median = statistics.median(noop)
        status, _ = sh(["dvc", "status"], repo)
        watch, _ = sh(["backfill", "watch"], repo)
        before = 0.0
        for i in range(args.projects):
            for stage in ("scan", "merge"):
                took, _ = sh(["backfill", stage, f"p{i:02d}"], repo)
                before += took
        print(f"no-op dvc repro: {', '.join(f'{t:.1f}s' for t in noop)}")
        walked = walk_cost(root, args.walk_files)
        projected = median + walked
        n = args.projects
        print()
        print(f"{'measure (' + str(n) + ' projects, nothing changed)':<58}{'seconds':>9}")
        print(f"{'no-op dvc repro (median)':<58}{median:>9.1f}")
        print(f"{'  DVC alone: dvc status (its floor)':<58}{status:>9.1f}"
              f"   repro / status: {median / status:.2f}x")
        print(f"{'  the watch stage alone (backfill watch)':<58}{watch:>9.2f}")
        print(f"{'before: scan + merge per project, one process each':<58}{before:>9.1f}"
              f"   (+ DVC's floor: {before + status:.1f}s; now {median:.1f}s, "
              f"{(before + status) / median:.1f}x less)")
        print(f"{f'walking {args.walk_files:,} entries (listed, not read)':<58}{walked:>9.2f}")
        verdict = "OK" if projected <= TARGET_S else "MISSED"
        print(f"{'no-op with that walk added':<58}{projected:>9.1f}"
              f"   target <= {TARGET_S:.0f}s: {verdict}")

if __name__ == "__main__":
    main()
