"""scan: every image under a project's original_dir and final_dir, with its facts.

Walking and probing are I/O; turning what was found into the table is pure
(``scan_rows``). Only files whose (size, mtime, inode) changed since the last run are
read again.
"""

from __future__ import annotations

import fnmatch
import os
import stat
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from backfill.filenames import parse_name
from backfill.fingerprints import FingerprintCache
from backfill.imageinfo import ImageFacts, file_identity, probe
from backfill.project import ConfigError, Project
from backfill.schemas import ScanTable
from backfill.tables import write_table


@dataclass(frozen=True)
class Found:
    """A file (or folder that could not be listed) met while walking a root."""

    source: str
    rel_path: str
    abs_path: str
    ext: str
    st: os.stat_result | None
    problem: str | None = None  # set when the entry cannot even be stat'ed or listed


@dataclass(frozen=True)
class ScanSettings:
    extensions: frozenset[str]
    ignore: tuple[str, ...]  # glob patterns of file names
    follow_symlinks: bool
    workers: int

    @classmethod
    def from_config(cls, cfg) -> "ScanSettings":
        return cls(
            extensions=frozenset(e.lower() for e in cfg.extensions),
            ignore=tuple(cfg.ignore),
            follow_symlinks=bool(cfg.follow_symlinks),
            workers=int(cfg.workers),
        )


def walk(root: Path, source: str, settings: ScanSettings) -> Iterator[Found]:
    """Every candidate image under ``root``; hidden folders skipped, symlink loops cut."""
    seen_dirs: set[tuple[int, int]] = set()
    errors: list[OSError] = []
    for dirpath, dirnames, filenames in os.walk(
        root, followlinks=settings.follow_symlinks, onerror=errors.append
    ):
        while errors:
            err = errors.pop()
            rel = os.path.relpath(err.filename, root) if err.filename else "."
            yield Found(source, Path(rel).as_posix(), str(err.filename), "", None,
                        f"cannot list folder: {err.strerror or err}")
        try:
            st = os.stat(dirpath)
        except OSError:
            dirnames[:] = []
            continue
        if (st.st_dev, st.st_ino) in seen_dirs:  # a link back to a folder already walked
            dirnames[:] = []
            continue
        seen_dirs.add((st.st_dev, st.st_ino))
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if any(fnmatch.fnmatchcase(name, pattern) for pattern in settings.ignore):
                continue
            ext = os.path.splitext(name)[1].lower()
            if ext not in settings.extensions:
                continue  # companions (.yaml, .caption, ...) and other files
            abs_path = os.path.join(dirpath, name)
            rel_path = Path(os.path.relpath(abs_path, root)).as_posix()
            try:
                fst = os.stat(abs_path)
            except OSError as exc:
                yield Found(source, rel_path, abs_path, ext, None,
                            f"unreadable: {exc.strerror or exc} (a broken link?)")
                continue
            if not stat.S_ISREG(fst.st_mode):
                yield Found(source, rel_path, abs_path, ext, None, "not a regular file")
                continue
            yield Found(source, rel_path, abs_path, ext, fst)
    for err in errors:  # the root itself could not be listed
        yield Found(source, ".", str(root), "", None, f"cannot list folder: {err.strerror}")


def probe_all(
    found: list[Found], cache: FingerprintCache, workers: int, label: str
) -> tuple[dict[str, ImageFacts], int]:
    """Facts for every file, from the cache when its identity is unchanged.

    Returns the facts by absolute path and how many files had to be read.
    """
    facts: dict[str, ImageFacts] = {}
    todo: list[Found] = []
    for f in found:
        if f.st is None:
            continue
        hit = cache.get(f.abs_path, file_identity(f.st))
        if hit is None:
            todo.append(f)
        else:
            facts[f.abs_path] = hit
    if todo:
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            results = pool.map(lambda f: probe(f.abs_path, f.ext, f.st.st_size), todo)
            bar = tqdm(results, total=len(todo), desc=f"scan {label}", unit="file",
                       disable=None, mininterval=0.5)
            for f, result in zip(todo, bar):
                facts[f.abs_path] = result
                cache.put(f.abs_path, file_identity(f.st), result)
    return facts, len(todo)


def _merge(*pairs: tuple[str, str | None]) -> tuple[str, str | None]:
    """Worst status wins; the reasons of every non-ok part are kept, in order."""
    order = {"ok": 0, "warning": 1, "error": 2}
    status = max((s for s, _ in pairs), key=order.__getitem__)
    reasons = [r for s, r in pairs if s != "ok" and r]
    return status, "; ".join(reasons) if reasons else None


def scan_rows(found: Iterable[Found], facts: dict[str, ImageFacts]) -> pd.DataFrame:
    """The scan table: one sorted row per entry found, facts and parsed name joined."""
    rows = []
    for f in found:
        parsed = parse_name(os.path.basename(f.rel_path)) if f.ext else None
        fact = facts.get(f.abs_path)
        if f.problem is not None or fact is None:
            status, reason = "error", f.problem or "not probed"
        else:
            name_status = "warning" if parsed.problem else "ok"
            status, reason = _merge((fact.status, fact.reason), (name_status, parsed.problem))
        usable = fact is not None and fact.status != "error"
        rows.append({
            "source": f.source,
            "rel_path": f.rel_path,
            "name": os.path.basename(f.rel_path),
            "ext": f.ext,
            "size_bytes": f.st.st_size if f.st else 0,
            "mtime_ns": f.st.st_mtime_ns if f.st else 0,
            "format": fact.format if fact else None,
            "width": fact.width if usable else None,
            "height": fact.height if usable else None,
            "mode": fact.mode if usable else None,
            "content_hash": fact.content_hash if fact else None,
            "timestamp": parsed.timestamp if parsed else None,
            "stage": parsed.stage if parsed else 0.0,
            "stage_label": parsed.stage_label if parsed else None,
            "status": status,
            "reason": reason,
        })
    df = pd.DataFrame(rows, columns=SCAN_COLUMNS)
    df["width"] = df["width"].astype("Int64")
    df["height"] = df["height"].astype("Int64")
    df["stage"] = df["stage"].astype("float64")
    for col in ("size_bytes", "mtime_ns"):
        df[col] = df[col].astype("int64")
    return df.sort_values(["source", "rel_path"], kind="stable").reset_index(drop=True)


SCAN_COLUMNS = [
    "source", "rel_path", "name", "ext", "size_bytes", "mtime_ns", "format", "width",
    "height", "mode", "content_hash", "timestamp", "stage", "stage_label", "status", "reason",
]


@dataclass(frozen=True)
class ScanResult:
    table: pd.DataFrame
    probed: int  # files read this run
    cached: int  # files whose facts came from the cache


def scan_project(
    roots: dict[str, Path], settings: ScanSettings, cache_db: Path
) -> ScanResult:
    """Walk and probe every root (``{"original": dir, "final": dir}``)."""
    all_found: list[Found] = []
    all_facts: dict[str, ImageFacts] = {}
    probed = 0
    for source, root in roots.items():
        found = list(walk(root, source, settings))
        cache = FingerprintCache(cache_db, root)
        facts, n = probe_all(found, cache, settings.workers, source)
        cache.save()
        all_found += found
        all_facts.update(facts)
        probed += n
    table = scan_rows(all_found, all_facts)
    files = sum(1 for f in all_found if f.st is not None)
    return ScanResult(table, probed, files - probed)


def run(project: Project) -> str:
    started = time.perf_counter()
    roots = {}
    for source in ("original", "final"):
        folder = project.path(f"{source}_dir")
        if not folder.is_dir():
            raise ConfigError(
                f"{source}_dir of project '{project.name}' is not a folder: {folder}. "
                f"Fix it in conf/project/{project.name}.yaml (is the drive mounted?)."
            )
        roots[source] = Path(os.path.abspath(folder))
    result = scan_project(
        roots,
        ScanSettings.from_config(project.cfg.scan),
        project.cache_dir / "fingerprints.sqlite",
    )
    out = project.output("scan")
    write_table(result.table, out, ScanTable, "scan")
    t = result.table
    counts = t["status"].value_counts()
    per_source = t["source"].value_counts()
    return (
        f"scan {project.name}: {len(t):,} files ({per_source.get('original', 0):,} original, "
        f"{per_source.get('final', 0):,} final; {counts.get('warning', 0):,} warnings, "
        f"{counts.get('error', 0):,} errors); read {result.probed:,}, "
        f"cached {result.cached:,}; {time.perf_counter() - started:.1f}s -> "
        f"{out.relative_to(project.root)}"
    )
