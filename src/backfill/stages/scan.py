"""scan: every image under a project's original_dir and final_dir, with its facts.

``walk`` lists and stats; ``file_row`` reads one file (header and bytes, never the
pixels) and parses its name; ``finish_table`` shapes the table. Only files whose
(size, mtime, inode) changed since the last run are described again: the rest come
from the fingerprint cache.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import re
import stat
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import NamedTuple

import pandas as pd
from tqdm import tqdm

from backfill.config.errors import UserError
from backfill.config.project import Project
from backfill.contracts.schemas import ScanTable
from backfill.contracts.tables import write_table
from backfill.db.cells import comparable_name
from backfill.files.filenames import parse_name
from backfill.files.filetimes import FileTimes
from backfill.files.fingerprints import KNOWN, FingerprintCache, typed
from backfill.files.imageinfo import (
    READ_EXTENSIONS,
    not_read,
    not_regular,
    pixel_problem,
    probe,
)


class Found(NamedTuple):
    """A file (or folder that could not be listed) met while walking a root."""

    source: str
    rel_path: str
    path: str  # absolute
    ext: str
    size_bytes: int
    mtime_ns: int
    inode: int
    problem: str | None  # set when the entry is not a file that may be read, and why


# Explicit dtypes: pandas infers a column's dtype from its values, so one entry with a
# problem would turn every other row's missing problem into NaN of a text column.
FOUND_DTYPES = {"source": "str", "rel_path": "str", "path": "str", "ext": "str",
                "size_bytes": "int64", "mtime_ns": "int64", "inode": "int64", "problem": "str"}


def found_frame(records: list[tuple]) -> pd.DataFrame:
    """``walk``'s records as a typed frame, the same dtypes for one, many or no rows."""
    return pd.DataFrame.from_records(records, columns=list(FOUND_DTYPES)).astype(FOUND_DTYPES)


def _unreadable(source: str, rel_path: str, path: str, ext: str, problem: str) -> Found:
    return Found(source, rel_path, path, ext, 0, 0, 0, problem)


def _not_scanned(ext: str) -> str:
    """Why an image file of a listed (not scanned) extension is not used."""
    if ext in READ_EXTENSIONS:
        return f"not scanned: {ext} is not in scan.extensions; add it to use the file"
    return not_read(f"{ext} files")


def _shown(name: str) -> str:
    """A name as text that is valid UTF-8 (Parquet needs it): bytes that are not UTF-8
    are written as \\xNN escapes, so two such names never read the same."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def _stat_problem(entry: os.DirEntry, exc: OSError) -> str:
    """Why an entry that lists but cannot be stat'ed is skipped, in the user's words."""
    if exc.errno == errno.ELOOP:
        return "symlink loop: the link leads back to itself; fix or remove it"
    if exc.errno == errno.ENOENT and entry.is_symlink():
        try:
            target = _shown(os.readlink(entry.path))
        except OSError:
            target = "?"
        return f"broken symlink: its target {target} does not exist (a drive not mounted?)"
    return f"unreadable: {exc.strerror or exc}"


@dataclass(frozen=True)
class ScanSettings:
    extensions: frozenset[str]
    ignore: tuple[str, ...]  # glob patterns of file names
    follow_symlinks: bool
    workers: int
    max_pixels: int  # larger images (from the header) are errors: never decoded
    # Image files not read: listed as errors with the reason, so none goes unnoticed.
    unread: frozenset[str] = frozenset()

    @classmethod
    def from_config(cls, cfg) -> ScanSettings:
        """From the project's scan section; an image extension that could be read but is
        not in ``extensions`` is listed too, so narrowing them never hides a kept final."""
        extensions = frozenset(e.lower() for e in cfg.extensions)
        return cls(
            extensions=extensions,
            ignore=tuple(cfg.ignore),
            follow_symlinks=bool(cfg.follow_symlinks),
            workers=int(cfg.workers),
            max_pixels=int(cfg.max_pixels),
            unread=(frozenset(e.lower() for e in cfg.unread_extensions)
                    | READ_EXTENSIONS) - extensions,
        )

    @cached_property
    def ignored(self) -> re.Pattern:
        return re.compile("|".join(fnmatch.translate(p) for p in self.ignore) or "(?!)")

    def selects(self, name: str) -> bool:
        """Whether a file of this name is an image these settings scan (or list)."""
        ext = name[name.rfind("."):].lower() if "." in name else ""
        return (ext in self.extensions or ext in self.unread) and not self.ignored.match(name)


def walk(root: Path, source: str, settings: ScanSettings) -> list[tuple]:
    """Every candidate image under ``root``; hidden folders skipped, symlink loops cut.

    A plain scandir loop: on a warm scan this listing and one stat per file is nearly
    all the work, so it is kept lean. Nothing is opened here: an entry that is not a
    regular file (a FIFO would block any open), cannot be stat'ed (a broken link, a
    link loop) or has a name that is not UTF-8 is one row with its problem, and every
    other entry of its folder is walked as usual.
    """
    ignored = settings.ignored
    extensions, unread = settings.extensions, settings.unread
    seen_dirs: set[tuple[int, int]] = set()
    found: list[tuple] = []
    stack = [(str(root), "")]
    while stack:
        folder, prefix = stack.pop()
        try:
            st = os.stat(folder)
            if (st.st_dev, st.st_ino) in seen_dirs:  # a link back to a folder already walked
                continue
            seen_dirs.add((st.st_dev, st.st_ino))
            with os.scandir(folder) as listing:
                entries = sorted(listing, key=lambda e: e.name)
        except OSError as exc:
            found.append(_unreadable(source, prefix.rstrip("/") or ".", folder, "",
                                     f"cannot list folder: {exc.strerror or exc}"))
            continue
        subfolders = []
        for entry in entries:
            name = entry.name
            try:
                is_dir = entry.is_dir(follow_symlinks=settings.follow_symlinks)
            except OSError:
                is_dir = False
            try:
                name.encode("utf-8")
            except UnicodeEncodeError:  # bytes that are not UTF-8 (possible on Linux)
                shown = _shown(name)
                if is_dir and not name.startswith("."):
                    found.append(_unreadable(
                        source, prefix + shown, os.path.join(folder, shown), "",
                        "folder name is not valid UTF-8: rename it; its files were not scanned"))
                elif not is_dir and settings.selects(shown):
                    found.append(_unreadable(
                        source, prefix + shown, os.path.join(folder, shown),
                        shown[shown.rfind("."):].lower(),
                        "file name is not valid UTF-8: rename it (shown with \\x escapes)"))
                continue
            if is_dir:
                if not name.startswith("."):
                    subfolders.append((entry.path, f"{prefix}{name}/"))
                continue
            ext = name[name.rfind("."):].lower() if "." in name else ""
            if (ext not in extensions and ext not in unread) or ignored.match(name):
                continue  # companions (.yaml, .caption, ...), junk and other files
            try:
                fst = entry.stat()
            except OSError as exc:
                found.append(_unreadable(source, prefix + name, entry.path, ext,
                                         _stat_problem(entry, exc)))
                continue
            if not stat.S_ISREG(fst.st_mode):
                if stat.S_ISDIR(fst.st_mode):
                    continue  # a linked folder, not followed as the settings say
                found.append(_unreadable(source, prefix + name, entry.path, ext,
                                         not_regular(fst.st_mode)))
                continue
            # A plain tuple in Found's field order: a NamedTuple costs more per file.
            found.append((source, prefix + name, entry.path, ext, fst.st_size,
                          fst.st_mtime_ns, fst.st_ino,
                          None if ext in extensions else _not_scanned(ext)))
        stack.extend(reversed(subfolders))
    return found


def _merge(*pairs: tuple[str, str | None]) -> tuple[str, str | None]:
    """Worst status wins; the reasons of every non-ok part are kept, in order."""
    if all(s == "ok" for s, _ in pairs):
        return "ok", None
    order = {"ok": 0, "warning": 1, "error": 2}
    status = max((s for s, _ in pairs), key=order.__getitem__)
    reasons = [r for s, r in pairs if s != "ok" and r]
    return status, "; ".join(reasons) if reasons else None


def file_row(f: Found) -> dict:
    """Everything the scan says of one file (the KNOWN columns): facts, name, verdict."""
    name = comparable_name(os.path.basename(f.rel_path))
    parsed = parse_name(name) if f.ext else None
    # Found rows come out of a frame: a missing problem may be NaN there, not None.
    problem = f.problem if isinstance(f.problem, str) else None
    facts = probe(f.path, f.ext, f.size_bytes) if problem is None else None
    if facts is None:
        status, reason = "error", problem
    else:
        status, reason = _merge(
            (facts.status, facts.reason), ("warning" if parsed.problem else "ok", parsed.problem)
        )
    usable = facts is not None and facts.status != "error"
    return {
        "format": facts.format if facts else None,
        "width": facts.width if usable else None,
        "height": facts.height if usable else None,
        "mode": facts.mode if usable else None,
        "content_hash": facts.content_hash if facts else None,
        "timestamp": parsed.timestamp if parsed else None,
        "stage": parsed.stage if parsed else 0.0,
        "stage_label": parsed.stage_label if parsed else None,
        "status": status,
        "reason": reason,
    }


def file_rows(found: pd.DataFrame, workers: int, label: str) -> pd.DataFrame:
    """``file_row`` for every row of ``found``, reading files on ``workers`` threads."""
    items = [Found(*row) for row in found[list(Found._fields)].itertuples(index=False)]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = list(tqdm(pool.map(file_row, items), total=len(items), desc=f"scan {label}",
                            unit="file", disable=None, mininterval=0.5))
    return pd.DataFrame(results, columns=KNOWN, index=found.index)


SCAN_COLUMNS = [
    "source", "rel_path", "name", "ext", "size_bytes", "mtime_ns", "format", "width",
    "height", "mode", "content_hash", "timestamp", "stage", "stage_label", "status", "reason",
]


def finish_table(rows: pd.DataFrame) -> pd.DataFrame:
    """The scan table from found files joined to what is known of them: typed and sorted."""
    # rel_path stays as on disk (it opens the file); the name is in the form names are
    # compared and written to the DB in (NFC), whatever form the drive left it in.
    df = rows.assign(name=rows["rel_path"].str.rsplit("/", n=1).str[-1].map(comparable_name))
    # Same dtypes whether a row came from the cache or was just read: same bytes out.
    df = typed(df[SCAN_COLUMNS])
    return df.sort_values(["source", "rel_path"], kind="stable").reset_index(drop=True)


def limit_pixels(table: pd.DataFrame, max_pixels: int) -> pd.DataFrame:
    """``table`` with every image whose header size is over ``max_pixels`` an error.

    Applied after the fingerprint cache, from the width and height it holds, so a cached
    row never carries the verdict of another limit. Such a row keeps its format and hash
    (facts of its bytes) but no size, like any other file that is not decoded.
    """
    area = (table["width"] * table["height"]).fillna(0).to_numpy()
    over = (table["status"] != "error").to_numpy() & (area > max_pixels)
    if not over.any():
        return table
    table = table.copy()
    sizes = table.loc[over, ["width", "height", "reason"]].itertuples(index=False)
    table.loc[over, "reason"] = [
        pixel_problem(int(w), int(h), max_pixels) + (f"; {r}" if isinstance(r, str) else "")
        for w, h, r in sizes
    ]
    table.loc[over, "status"] = "error"
    table.loc[over, ["width", "height", "mode"]] = pd.NA
    return table


def flag_file_times(table: pd.DataFrame, file_times: FileTimes,
                    now_ns: int | None = None) -> pd.DataFrame:
    """``table`` with every file whose time is not believable a warning that says so.

    Applied after the fingerprint cache, like the pixel limit: a cached row never
    carries the verdict of another range or another day's clock."""
    # An error row is never used, and one that could not be stat'ed has no time at all.
    usable = (table["status"] != "error").to_numpy()
    odd = usable & ~file_times.believable(table["mtime_ns"], now_ns)
    if not odd.any():
        return table
    table = table.copy()
    pairs = table.loc[odd, ["mtime_ns", "reason"]].itertuples(index=False)
    table.loc[odd, "reason"] = [
        (f"{r}; " if isinstance(r, str) else "") + file_times.problem(t) for t, r in pairs
    ]
    table.loc[odd, "status"] = "warning"
    return table


@dataclass(frozen=True)
class ScanResult:
    table: pd.DataFrame
    probed: int  # files read this run
    cached: int  # files whose facts came from the cache


def scan_project(
    roots: dict[str, Path], settings: ScanSettings, cache_dir: Path,
    file_times: FileTimes | None = None,
) -> ScanResult:
    """Walk every root (``{"original": dir, "final": dir}``) and describe each file,
    from the cache when its identity is unchanged; then apply the pixel limit and
    (given ``file_times``) warn of file times that are not believable."""
    parts, probed, n_files = [], 0, 0
    for source, root in roots.items():
        found = found_frame(walk(root, source, settings))
        cache = FingerprintCache(cache_dir, root)
        rows = cache.lookup(found)
        misses = rows["status"].isna()
        if misses.any():
            # As objects: pandas cannot set a slice of the cache's nullable integer
            # columns from a frame with another index; finish_table types them again.
            rows = rows.astype(dict.fromkeys(KNOWN, object))
            rows.loc[misses, KNOWN] = file_rows(rows[misses], settings.workers, source)
        files = rows["problem"].isna()
        fresh = misses & files & (rows["status"] != "error")
        cache.update(rows[files], described=bool(fresh.any()), selected=settings.selects)
        probed += int((misses & files).sum())
        n_files += int(files.sum())
        parts.append(rows)
    table = limit_pixels(finish_table(pd.concat(parts, ignore_index=True)), settings.max_pixels)
    if file_times is not None:
        table = flag_file_times(table, file_times)
    return ScanResult(table, probed, n_files - probed)


def run(project: Project) -> str:
    started = time.perf_counter()
    roots = {}
    for source in ("original", "final"):
        folder = project.path(f"{source}_dir")
        if not folder.is_dir():
            # Before anything is written: the last scan.parquet stays as it was.
            what = "is not a folder." if folder.exists() else \
                "is missing: is the drive mounted?"
            raise UserError(
                f"{source}_dir {folder} {what} Project '{project.name}' was not scanned "
                f"(its tables are kept); if the folder moved, fix conf/project/"
                f"{project.name}.yaml."
            )
        roots[source] = Path(os.path.abspath(folder))
    result = scan_project(
        roots,
        ScanSettings.from_config(project.settings.scan),
        project.cache_dir / "fingerprints",
        FileTimes.from_config(project.settings.scan),
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
