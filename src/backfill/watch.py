"""The ``watch`` stage: what changed outside the repository, noted cheaply for DVC.

Scan reads the image folders and merge reads the production DB (with the legacy CSV
and the review folders), and DVC cannot track either: it cannot hash a broken link, a
link loop or a name that is not UTF-8, blocks forever on a FIFO, would read every image
a second time, and the reviewer writes the DB at any time. So this one stage runs on
every `dvc repro`, for every project at once, and writes a small stamp per project and
stage, ``data/watch/<project>/scan.json`` and ``merge.json``, which scan and merge
depend on. A stamp holds a digest of everything its stage reads from outside: every
entry of the image folders listed and stat'ed (name, type, size, modification time:
never a byte read, as scan's own table records them), and the bytes of the DB, its
journal files and the CSV (a few MB). It is rewritten only
when that digest changes, so with nothing changed DVC runs nothing else, and each
project's stages see only their own project's changes.

When the inputs cannot be judged this way (a folder missing or unreadable, a file time
ahead of the clock, which scan and merge judge against the time they run), the stamp
holds this run's time instead, so the stage runs in full, as every run did before.

Standard library only (and PyYAML for params.yaml): no pandas, no pandera, no torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from backfill.config.composed import PARAMS_FILE, ensure_reviews

STAMPS = Path("data") / "watch"  # as in dvc.yaml: the watch stage's output
WATCHED = ("scan", "merge")  # the stages that read from outside, each with its stamp
HOUR_NS = 3_600 * 10**9


class CannotTell(Exception):
    """Something a stat cannot judge: the stage must run in full."""


def _stat_line(st: os.stat_result) -> str:
    """Type, size and modification time, as make and rsync judge a change. No inode or
    device: a clone elsewhere, or a drive mounted again, stamps the same files alike."""
    return f"{stat.S_IFMT(st.st_mode)}:{st.st_size}:{st.st_mtime_ns}"


def _content_line(path: Path) -> str:
    """A file's content digest, or why there is none. The DB and the CSV are small (MBs)
    and often checked out by git: by content, a clone stamps them as the original does."""
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, lambda: hashlib.blake2b(digest_size=16)).hexdigest()
    except FileNotFoundError:
        return "absent"
    except OSError as exc:
        return f"unreadable: {exc.strerror}"


@dataclass(frozen=True)
class Folder:
    """A walk of one folder: a digest of every entry's name and stat, the latest file
    time in it and how many entries it holds."""

    digest: str
    latest_ns: int
    entries: int


def walk(folder: Path, follow_links: bool = True) -> Folder:
    """Every entry under ``folder``, in name order, without reading a byte of any file.
    Folders are entered as scan enters them: linked ones too with ``follow_links``
    (scan.follow_symlinks), each folder once (a link loop is cut), hidden ones never.
    A folder that is missing or cannot be listed is CannotTell."""
    h = hashlib.blake2b(digest_size=16)
    latest, entries = 0, 0
    if not folder.is_dir():
        raise CannotTell(f"{folder} is not a folder")
    seen: set[tuple[int, int]] = set()
    pending = [os.fsencode(folder)]
    while pending:
        here = pending.pop()
        try:
            st = os.stat(here)
            if (st.st_dev, st.st_ino) in seen:
                h.update(b"L" + here + b"\0")  # a loop, cut here as scan cuts it
                continue
            seen.add((st.st_dev, st.st_ino))
            with os.scandir(here) as it:
                listed = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            raise CannotTell(f"cannot list {os.fsdecode(here)}: {exc.strerror}") from None
        h.update(b"D" + here + b"\0")
        for entry in listed:
            entries += 1
            try:
                own = entry.stat(follow_symlinks=False)
            except OSError as exc:  # gone since the listing, or unreadable
                raise CannotTell(f"cannot stat {os.fsdecode(entry.path)}: {exc.strerror}") \
                    from None
            try:
                target = os.stat(entry.path) if stat.S_ISLNK(own.st_mode) else own
            except OSError:
                target = None  # a broken link (or a loop): its own stat says so
            h.update(entry.name + b"\0" + _stat_line(own).encode())
            if target is not own:
                h.update(b"->" + (_stat_line(target).encode() if target else b"broken"))
            h.update(b"\n")
            if target is None:
                continue
            if stat.S_ISDIR(target.st_mode):
                if not entry.name.startswith(b".") and (target is own or follow_links):
                    pending.append(entry.path)
            else:
                latest = max(latest, own.st_mtime_ns, target.st_mtime_ns)
    return Folder(h.hexdigest(), latest, entries)


def _configured(root: Path, value: object) -> Path | None:
    if value is None or value == "":
        return None
    path = Path(str(value)).expanduser()
    return path if path.is_absolute() else root / path


def _digest(lines: list[str]) -> str:
    return hashlib.blake2b("\n".join(lines).encode("utf-8", "surrogateescape"),
                           digest_size=16).hexdigest()


def stamps(root: Path, cfg: dict, now_ns: int) -> dict[str, dict]:
    """One project's stamps, {stage: stamp}, from its settings in params.yaml."""
    scan_cfg = cfg.get("scan") or {}
    follow = bool(scan_cfg.get("follow_symlinks", True))
    try:
        ahead_ns = int(float(scan_cfg.get("future_file_time_hours", 0)) * HOUR_NS)
    except (TypeError, ValueError):
        ahead_ns = None
    scan: dict = {}
    latest = 0
    try:
        for key in ("original_dir", "final_dir"):
            folder = _configured(root, cfg.get(key))
            if folder is None:
                raise CannotTell(f"no {key} set")
            seen = walk(folder, follow)
            scan[key] = {"entries": seen.entries, "digest": seen.digest}
            latest = max(latest, seen.latest_ns)
        if ahead_ns is None:
            raise CannotTell("scan.future_file_time_hours is not a number")
        # A file time over the believable limit now may fall under it later (the clock
        # moves on): scan flags it and merge passes over it, each judged as it runs.
        if latest > now_ns + ahead_ns:
            raise CannotTell("a file time is ahead of this machine's clock")
        times = None
    except CannotTell as exc:
        scan, times = {"runs in full": str(exc), "at": now_ns}, str(exc)
    merge: dict = {}
    lines = []
    db = _configured(root, cfg.get("real_db"))
    if db is not None:  # SQLite's own files beside it hold writes not yet in the DB
        lines += [f"{end}={_content_line(Path(f'{db}{end}'))}"
                  for end in ("", "-wal", "-journal")]
    csv = _configured(root, cfg.get("legacy_csv"))
    if csv is not None:
        lines.append(f"legacy_csv={_content_line(csv)}")
    review = _configured(root, cfg.get("review_dir"))
    try:
        if review is not None:
            lines.append(f"review_dir={walk(review, follow).digest}")
        if times:
            raise CannotTell(times)
        merge["digest"] = _digest(lines)
    except CannotTell as exc:
        merge = {"runs in full": str(exc), "at": now_ns}
    return {"scan": scan, "merge": merge}


def _write_if_changed(path: Path, stamp: dict) -> bool:
    text = json.dumps(stamp, sort_keys=True, indent=1) + "\n"
    try:
        if path.read_text() == text:
            return False
    except (OSError, UnicodeDecodeError):
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
    return True


def _load_params(root: Path) -> dict:
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        with open(root / PARAMS_FILE, "rb") as f:
            params = yaml.load(f, Loader=loader)  # noqa: S506 (a safe loader)
    except (OSError, yaml.YAMLError):
        params = None
    return params if isinstance(params, dict) else {}


def _forget_others(folder: Path, registered: set[str]) -> None:
    """Remove the stamps of projects no longer registered (only the stamp files this
    stage writes, and their folder when nothing else is in it)."""
    if not folder.is_dir():
        return
    for child in folder.iterdir():
        if child.is_dir() and child.name not in registered:
            for stage in WATCHED:
                (child / f"{stage}.json").unlink(missing_ok=True)
            try:
                child.rmdir()
            except OSError:  # something else is in it: not ours to remove
                pass


def run(root: Path) -> str:
    """Every registered project's stamps, each rewritten only when it changed; a summary
    line. A project whose settings cannot be read gets stamps that make it run in full
    (its own stages then say what is wrong)."""
    started, now_ns = time.perf_counter(), time.time_ns()
    projects = _load_params(root).get("projects") or {}
    changed, full = [], []
    for name, cfg in projects.items():
        made = stamps(root, cfg if isinstance(cfg, dict) else {}, now_ns)
        for stage, stamp in made.items():
            if _write_if_changed(root / STAMPS / str(name) / f"{stage}.json", stamp):
                changed.append(f"{stage}@{name}")
            if "runs in full" in stamp:
                full.append(f"{stage}@{name} ({stamp['runs in full']})")
    _forget_others(root / STAMPS, {str(n) for n in projects})
    # A project registered before answers were kept has no answers file, which its
    # extract stage depends on: an empty one, never one that exists.
    ensure_reviews(root, map(str, projects))
    took = time.perf_counter() - started
    said = f"watch: {len(projects)} project(s), {took:.2f}s; "
    said += f"changed outside the repository: {', '.join(changed)}" if changed else \
        "nothing changed outside the repository"
    if full:
        said += f"; run in full every time: {'; '.join(full)}"
    return said
