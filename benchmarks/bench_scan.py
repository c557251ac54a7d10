"""Scan throughput, cold (empty fingerprint cache) and warm (nothing changed).

Generates a project of N renders (small random PNGs, distinct bytes each) in a temporary
folder and scans it three times, printing files/s and the warm/cold ratios:
- cold, from disk: no fingerprint cache, and the files evicted from the OS page cache
  first, as on the first scan of a drive;
- cold, page cache: no fingerprint cache, files already in memory (the lower bound of
  a cold scan: hashing and header parsing only);
- warm: nothing changed since the last scan, so nothing is read.

    python benchmarks/bench_scan.py [--files 20000] [--side 64] [--workers 8]
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from timing import timed

from backfill.contracts.schemas import ScanTable
from backfill.contracts.tables import write_table
from backfill.demo.synthetic import STAGE_DELAY, STAGE_LABELS
from backfill.stages.scan import ScanSettings, scan_project


def generate(root: Path, n_files: int, side: int, seed: int = 0) -> int:
    rng = np.random.default_rng(seed)
    stages = list(STAGE_LABELS)
    written = 0
    group = 0
    while written < n_files:
        t0 = 1_751_954_400 + 300 * group  # 2025-07-08, groups 5 minutes apart
        folder = root / "original" / f"batch_{group % 20:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        for stage in stages[: min(len(stages), n_files - written)]:
            stamp = time.strftime("%Y%m%d_%H%M%S", time.gmtime(t0 + STAGE_DELAY[stage]))
            pixels = rng.integers(0, 256, size=(side, side, 3), dtype=np.uint8)
            buf = io.BytesIO()
            Image.fromarray(pixels).save(buf, format="PNG", compress_level=1)
            (folder / f"{stamp}_{STAGE_LABELS[stage]}.png").write_bytes(buf.getvalue())
            written += 1
        group += 1
    (root / "final").mkdir(exist_ok=True)
    return written


def evict_from_page_cache(root: Path) -> None:
    """Ask the OS to forget the files' pages, so the next read comes from the disk."""
    os.sync()
    for path in root.rglob("*.png"):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=20_000)
    parser.add_argument("--side", type=int, default=64, help="image side in pixels")
    parser.add_argument("--workers", type=int, default=8)
    args = parser.parse_args()
    settings = ScanSettings(frozenset({".png", ".jpg", ".jpeg"}), (".DS_Store", "._*"), True,
                            args.workers, 10**8)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        gen_s, n = timed(lambda: generate(root, args.files, args.side))
        size_mb = sum(p.stat().st_size for p in root.rglob("*.png")) / 1e6
        print(f"generated {n:,} renders ({size_mb:,.0f} MB) in {gen_s:.1f}s")
        roots = {"original": root / "original", "final": root / "final"}
        cache = root / "cache"
        runs = {}
        for label in ("cold, from disk", "cold, page cache", "warm"):
            if label.startswith("cold"):
                shutil.rmtree(cache, ignore_errors=True)
            if label == "cold, from disk":
                evict_from_page_cache(root / "original")
            scan_s, result = timed(lambda: scan_project(roots, settings, cache))
            out = root / "scan.parquet"
            write_s, _ = timed(lambda r=result, o=out: write_table(r.table, o, ScanTable, "scan"))
            runs[label] = scan_s + write_s
            print(f"{label:>16}: read {result.probed:,} files; scan {scan_s:.2f}s "
                  f"({n / scan_s:,.0f} files/s); validate+write {write_s:.2f}s; "
                  f"total {scan_s + write_s:.2f}s")
        for label in ("cold, from disk", "cold, page cache"):
            print(f"warm / {label}: {runs['warm'] / runs[label]:.1%}")

if __name__ == "__main__":
    main()
