"""The everyday no-op: `dvc repro` across many registered projects when nothing changed.

A throwaway repository (this one's pipeline, as tests' repo_copy makes it) gets
--projects generated projects (``make_project``: --groups groups each, every file its
own copy, each with a partial production DB), registered with `backfill project add`
(random CLIP weights: offline). The first is built with `dvc repro`; the others are
copies of its outputs, recorded with `dvc commit -f` (they hold the same pictures; one
`dvc repro` then rewrites what names the project's own production DB, after which the
baseline run below must re-run nothing but scan and merge). Then, with nothing changed:

- baseline: `dvc repro` with BACKFILL_QUICK=0 (scan and merge load their libraries and
  do their full no-change work for every project, as before the check existed);
- quick: `dvc repro` as users run it (the first run notes what each stage saw; the
  median of --repeats runs after it is the figure);
- one process: `backfill scan` and `backfill merge` of one project, each way;
- the walk at the person's size: the image folders of 21 projects hold about 200k
  renders, so walking --walk-files empty files (listed and stat'ed, never read) is
  timed apart and added to the quick figure as a projection.

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
    """Seconds to walk ``files`` entries in folders of 500, as the check does."""
    from backfill.quick import walk

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
        # validate for the copies; after it the baseline must re-run scan and merge only.
        settle, _ = sh(["dvc", "repro"], repo, BACKFILL_QUICK="0")
        print(f"first repro of the copies: {settle:.1f}s")
        baseline, out = sh(["dvc", "repro"], repo, BACKFILL_QUICK="0")
        ran = sorted({line.split("'")[1].split("@")[0] for line in out.splitlines()
                      if line.startswith("Running stage")})
        print(f"baseline (BACKFILL_QUICK=0): {baseline:.1f}s; stages run: {', '.join(ran)}")
        if ran != ["merge", "scan"]:
            sys.exit("the copied outputs are not what a build writes: no fair baseline")
        first, _ = sh(["dvc", "repro"], repo)
        quick = []
        for _ in range(args.repeats):
            took, out = sh(["dvc", "repro"], repo)
            quick.append(took)
            assert out.count("nothing it reads changed") == 2 * args.projects, out
        median = statistics.median(quick)
        print(f"quick: first {first:.1f}s (notes what each stage saw), then "
              f"{', '.join(f'{t:.1f}s' for t in quick)}")
        one = {}
        for stage in ("scan", "merge"):
            full, _ = sh(["backfill", stage, "p01"], repo, BACKFILL_QUICK="0")
            sh(["backfill", stage, "p01"], repo)
            fast, _ = sh(["backfill", stage, "p01"], repo)
            one[stage] = (full, fast)
        walked = walk_cost(root, args.walk_files)
        projected = median + walked
        print()
        print(f"{'measure':<52}{'before':>10}{'after':>10}{'ratio':>8}")
        for stage, (full, fast) in one.items():
            print(f"{f'backfill {stage} p01 (one process)':<52}{full:>9.2f}s{fast:>9.2f}s"
                  f"{full / fast:>7.1f}x")
        print(f"{f'no-op dvc repro, {args.projects} projects':<52}{baseline:>9.1f}s"
              f"{median:>9.1f}s{baseline / median:>7.1f}x")
        print(f"{f'walking {args.walk_files:,} entries (not read)':<52}{'':>10}{walked:>9.2f}s")
        verdict = "OK" if projected <= TARGET_S else "MISSED"
        print(f"{'no-op with the walk of the projects size added':<52}{'':>10}"
              f"{projected:>9.1f}s   target <= {TARGET_S:.0f}s: {verdict}")


if __name__ == "__main__":
    main()
