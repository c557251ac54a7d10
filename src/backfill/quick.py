"""The ``backfill`` console script: a no-change check for the always-run stages, then the
full command.

DVC runs ``scan`` and ``merge`` on every ``dvc repro`` (their inputs, the image folders
and the production DB, are outside what DVC can track). Most of the time nothing
changed, and a full run spends seconds loading pandas, pandera and the rest only to
find that out. So before loading any of it, this stats what the stage reads: every
entry of the image folders (scan), the production DB, the legacy CSV and the review
folders (merge); the tables before it; the project's settings in params.yaml; the
code; and the outputs the last full run wrote. When every one of them is as the last
successful run left it, the outputs stand (dvc.yaml keeps them: ``persist: true``) and
the command ends at once. Anything else, or anything this cannot judge (a folder
missing or unreadable, a params.yaml not composed from today's conf/), runs the
full command, which then records what it saw.

In the folders, sizes, modification times and inodes stand for content, as they do in
DVC's own state and in scan's fingerprint cache; the project's own tables and outputs
(a few MB) are hashed. ``BACKFILL_QUICK=0`` turns the check off.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from backfill.config.composed import PARAMS_FILE, find_config_root, params_trusted

# What each always-run stage writes, as in dvc.yaml (tests/test_layout.py checks them).
OUTPUTS = {
    "scan": ("data/{p}/scan.parquet",),
    "merge": ("data/{p}/ai_decisions.db", "data/{p}/merge_plan.parquet",
              "data/{p}/merge_issues.parquet", "metrics/{p}/merge_summary.json"),
}
# The tables each reads, as in dvc.yaml.
TABLES = {
    "scan": (),
    "merge": ("data/{p}/scan.parquet", "data/{p}/groups.parquet", "data/{p}/truth.parquet",
              "data/{p}/predictions.parquet"),
}
RECORDS = Path(".dvc") / "tmp" / "backfill-unchanged"  # DVC's tmp: ignored by git
OFF = "BACKFILL_QUICK"
HOUR_NS = 3_600 * 10**9


class CannotTell(Exception):
    """Something the check does not judge: the full command decides."""


def _stat_line(st: os.stat_result) -> str:
    return f"{stat.S_IFMT(st.st_mode)}:{st.st_size}:{st.st_mtime_ns}:{st.st_ino}:{st.st_dev}"


def _path_line(path: Path) -> str:
    """One path's identity (its link's and its target's), or that it is absent."""
    try:
        own = os.lstat(path)
    except FileNotFoundError:
        return "absent"
    line = _stat_line(own)
    if stat.S_ISLNK(own.st_mode):
        try:
            line += "->" + _stat_line(os.stat(path))
        except OSError:
            line += "->broken"
    return line


def _content_line(path: Path) -> str:
    """A file's content digest, or that it is absent. For the tables and outputs: after
    a run DVC may move a file into its cache and link or copy it back, a new inode and
    time for the same bytes."""
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, lambda: hashlib.blake2b(digest_size=16)).hexdigest()
    except FileNotFoundError:
        return "absent"


@dataclass
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
    A folder that cannot be listed is CannotTell."""
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
            raise CannotTell(f"cannot list {here!r}: {exc}") from None
        h.update(b"D" + here + b"\0")
        for entry in listed:
            entries += 1
            try:
                own = entry.stat(follow_symlinks=False)
            except OSError as exc:  # gone since the listing, or unreadable
                raise CannotTell(f"cannot stat {entry.path!r}: {exc}") from None
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


def _load_params(root: Path) -> dict:
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with open(root / PARAMS_FILE, "rb") as f:
        params = yaml.load(f, Loader=loader)  # noqa: S506 (a safe loader)
    if not isinstance(params, dict):
        raise CannotTell("params.yaml holds no settings")
    return params


def _code_lines() -> Iterable[str]:
    """The code: every file of this package, and each folder Python imports from (a
    package added, removed or upgraded changes its folder's time)."""
    package = Path(__file__).resolve().parent
    for path in sorted(package.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            yield f"{path.relative_to(package).as_posix()}={_path_line(path)}"
    yield sys.version
    for entry in sys.path:
        if entry and os.path.isdir(entry):
            yield f"{entry}={_path_line(Path(entry))}"


@dataclass
class Check:
    """What one always-run stage of one project would read, as it is now."""

    stage: str
    project: str
    root: Path
    fingerprint: str
    latest_ns: int  # the latest file time in the image folders (scan), else 0
    ahead_ns: int  # scan.future_file_time_hours
    entries: int

    @property
    def record(self) -> Path:
        key = hashlib.blake2b(self.project.encode("utf-8", "surrogateescape"),
                              digest_size=8).hexdigest()
        return self.root / RECORDS / f"{self.stage}-{key}.json"

    def outputs(self) -> dict[str, str]:
        return {o.format(p=self.project): _content_line(self.root / o.format(p=self.project))
                for o in OUTPUTS[self.stage]}

    def _saved(self) -> dict:
        try:
            saved = json.loads(self.record.read_text())
        except (OSError, ValueError):
            return {}
        return saved if isinstance(saved, dict) else {}

    def unchanged(self) -> bool:
        """Whether the last full run saw exactly this, its outputs are as it left them,
        and no file time it judged could be judged otherwise now."""
        saved = self._saved()
        return (saved.get("project") == self.project
                and saved.get("fingerprint") == self.fingerprint
                and saved.get("outputs") == self.outputs()
                and saved.get("clock_free") is True
                and (self.stage != "merge" or self._scan_clock_free()))

    def _scan_clock_free(self) -> bool:
        """Merge judges render times too: true when scan's record describes today's scan
        table and saw no file time ahead of its clock."""
        scan = Check("scan", self.project, self.root, "", 0, 0, 0)
        saved = scan._saved()
        return saved.get("clock_free") is True and saved.get("outputs") == scan.outputs()

    def save(self, started_ns: int) -> None:
        """Note what the full run that began at ``started_ns`` saw and wrote. A file
        time over the believable limit then may fall under it later (the clock moves
        on), so such a run is not taken as lasting."""
        record = {"project": self.project, "fingerprint": self.fingerprint,
                  "outputs": self.outputs(),
                  "clock_free": self.latest_ns <= started_ns + self.ahead_ns}
        try:
            self.record.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.record.with_name(f".{self.record.name}.{os.getpid()}")
            tmp.write_text(json.dumps(record, sort_keys=True))
            os.replace(tmp, self.record)
        except OSError:  # only a shortcut: without it, the next run is a full one
            pass


def _configured(root: Path, value: object) -> Path | None:
    if value is None or value == "":
        return None
    path = Path(str(value)).expanduser()
    return path if path.is_absolute() else root / path


def check_for(stage: str, project: str, root: Path) -> Check:
    """What ``backfill <stage> <project>`` reads, now (CannotTell: the full run decides)."""
    if not params_trusted(root):
        raise CannotTell("params.yaml is not known to be composed from today's conf/")
    params = _load_params(root)
    projects = params.get("projects") or {}
    cfg = projects.get(project)
    if not isinstance(cfg, dict):
        raise CannotTell(f"no project {project!r} in params.yaml")
    shared = {k: v for k, v in params.items() if k != "projects"}
    lines = [stage, project, json.dumps([shared, cfg], sort_keys=True, default=str),
             *sorted(f"{k}={v}" for k, v in os.environ.items()
                     if k.startswith("BACKFILL_") and k != OFF),
             *_code_lines()]
    lines += [f"{t}={_content_line(root / t.format(p=project))}" for t in TABLES[stage]]
    latest, entries = 0, 0
    if stage == "scan":
        for key in ("original_dir", "final_dir"):
            folder = _configured(root, cfg.get(key))
            if folder is None:
                raise CannotTell(f"no {key}")
            seen = walk(folder, bool((cfg.get("scan") or {}).get("follow_symlinks", True)))
            lines.append(f"{key}={seen.digest}")
            latest, entries = max(latest, seen.latest_ns), entries + seen.entries
    else:
        db = _configured(root, cfg.get("real_db"))
        if db is not None:  # SQLite's own files beside it hold writes not yet in the DB
            lines += [f"{db}{end}={_path_line(Path(f'{db}{end}'))}"
                      for end in ("", "-wal", "-journal")]
        csv = _configured(root, cfg.get("legacy_csv"))
        if csv is not None:
            lines.append(f"legacy_csv={_path_line(csv)}")
        review = _configured(root, cfg.get("review_dir"))
        if review is not None:
            lines.append(f"review_dir={walk(review).digest}")
    scan_cfg = cfg.get("scan") or {}
    try:
        ahead = int(float(scan_cfg.get("future_file_time_hours", 0)) * HOUR_NS)
    except (TypeError, ValueError):
        raise CannotTell("scan.future_file_time_hours is not a number") from None
    digest = hashlib.blake2b("\n".join(lines).encode("utf-8", "surrogateescape"),
                             digest_size=16).hexdigest()
    return Check(stage, project, root, digest, latest, ahead, entries)


def quick_check(argv: list[str]) -> Check | None:
    """The check for ``argv`` when it runs an always-run stage of one project (None:
    another command, the check turned off, or nothing it can judge)."""
    if os.environ.get(OFF, "1") == "0" or len(argv) != 2 or argv[0] not in OUTPUTS \
            or argv[1].startswith("-"):
        return None
    root = find_config_root()
    if root is None:
        return None
    try:
        return check_for(argv[0], argv[1], root)
    # Anything at all (a YAML error, an odd value): the check is only a shortcut, and
    # the full command says what is wrong in its own words.
    except Exception:  # noqa: BLE001
        return None


def entry() -> None:
    """The console script."""
    argv = sys.argv[1:]
    started = time.perf_counter()
    try:
        check = quick_check(argv)
        if check is not None and check.unchanged():
            what = f" ({check.entries:,} files and folders)" if check.stage == "scan" else ""
            print(f"{check.stage} {check.project}: nothing it reads changed since its last "
                  f"run{what}; outputs kept ({time.perf_counter() - started:.2f}s; "
                  f"{OFF}=0 runs it in full)")
            sys.exit(0)
    except KeyboardInterrupt:
        print("backfill: interrupted", file=sys.stderr)
        sys.exit(130)
    started_ns = time.time_ns()
    from backfill import cli  # the full command: a Ctrl-C while it loads is one line

    code = cli.main(argv)
    if code == 0 and check is not None:
        check.save(started_ns)
    cli.finish(code)
