"""discover: past projects' folder pairs under a root, named and ready to register.

Layouts recognised (the historical extraction plan and the before/after plan), in
ROOT itself and in each folder directly in it:

- ``sandbox/<p>/`` (every render) beside ``<p>/`` (the kept images): the before/after plan.
- ``<p>_raw/``, ``<p>_incoming/`` or ``<p>_raw_incoming/`` (every render) beside
  ``<p>_final/`` or else ``<p>/``: the historical extraction plan
  (``Aiko_raw_incoming`` + ``Aiko_raw_final`` is project ``Aiko_raw``). A raw folder
  one level down may have its final folder in ROOT itself (the historical extraction
  plan's ``archives/mojo1_raw`` with ``mojo1/``).

Folder names match case-insensitively; hidden folders are skipped. ``pair_folders`` and
``plan`` are pure (``plan`` only resolves paths); ``list_folders``, ``count_images`` and
``register`` touch the disk.
"""

from __future__ import annotations

import os
import re
import unicodedata
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import yaml

from backfill.config.errors import UserError
from backfill.config.project import name_problem
from backfill.db.cells import comparable_name

HERE = PurePosixPath(".")
# Where the person's review tools keep each project's decision DB: in the folder they
# run from, which also holds the projects' final folders (``mojo3/`` beside
# ``data/training/ai_training_decisions/mojo3.db``).
DB_FOLDER = PurePosixPath("data/training/ai_training_decisions")
# Longer stems first: "Aiko_raw_incoming" pairs with "Aiko_raw_final" before "Aiko_final".
RAW_SUFFIXES = ("_incoming", "_raw", "_raw_incoming")
FINAL_SUFFIXES = ("_final", "")


@dataclass(frozen=True)
class Pair:
    """An original folder and its final folder, relative to the discovery root."""

    folder_name: str  # the project's name as the folders spell it
    original: PurePosixPath
    final: PurePosixPath
    layout: str  # "sandbox" or "raw"


@dataclass(frozen=True)
class Unpaired:
    original: PurePosixPath
    reason: str


@dataclass(frozen=True)
class Row:
    """One discovered project as it would be registered."""

    name: str
    pair: Pair
    registered_as: str | None  # the registered project with this original_dir, if any
    note: str | None  # why the name differs from the folders'


def _key(name: str) -> str:
    """A folder name as folders are matched: case aside, accents composed (a drive
    copied from a Mac may hold "Café/" decomposed beside "Café_final/" composed)."""
    return comparable_name(name, case_sensitive=False)


def _lookup(dirs: Iterable[PurePosixPath]) -> dict[tuple[PurePosixPath, str], PurePosixPath]:
    return {(d.parent, _key(d.name)): d for d in dirs}


def pair_folders(dirs: Iterable[PurePosixPath]) -> tuple[list[Pair], list[Unpaired]]:
    """Pairs (original, final) among folder paths relative to the root, and the originals
    whose final folder is missing. Each folder is used at most once."""
    dirs = set(dirs)
    by_name = _lookup(dirs)
    children: dict[PurePosixPath, list[PurePosixPath]] = {}
    for d in sorted(dirs):
        children.setdefault(d.parent, []).append(d)
    used: set[PurePosixPath] = set()
    pairs: list[Pair] = []
    unpaired: list[Unpaired] = []

    def take(pair: Pair) -> None:
        pairs.append(pair)
        used.update((pair.original, pair.final))

    containers = [HERE, *children.get(HERE, [])]
    for c in containers:
        if c in used:
            continue  # a project's own folder, not a folder of projects
        sandbox = by_name.get((c, "sandbox"))
        for orig in children.get(sandbox, []) if sandbox else []:
            final = by_name.get((c, _key(orig.name)))
            if final and orig not in used and final not in used:
                take(Pair(orig.name, orig, final, "sandbox"))
            elif orig not in used:
                where = f"{c}/" if c != HERE else "the root"
                unpaired.append(Unpaired(orig, f"no folder {orig.name}/ in {where}"))
        # A final may sit beside its raw folder or, for a folder of archives, in the root.
        places = [c] if c == HERE else [c, HERE]
        for orig in children.get(c, []):
            if orig in used or orig == sandbox:
                continue
            stems = [orig.name[: -len(s)] for s in RAW_SUFFIXES
                     if orig.name.lower().endswith(s) and len(orig.name) > len(s)]
            if not stems:
                continue
            wanted = [f"{stem}{suffix}" for stem in stems for suffix in FINAL_SUFFIXES]
            match = next(((by_name[key], stem) for stem in stems for place in places
                          for suffix in FINAL_SUFFIXES
                          if (key := (place, _key(f"{stem}{suffix}"))) in by_name
                          and by_name[key] not in used), None)
            if match:
                take(Pair(match[1], orig, match[0], "raw"))
            else:
                names = ", ".join(f"{w}/" for w in wanted)
                unpaired.append(Unpaired(orig, f"no final folder beside it ({names})"))
    return pairs, [u for u in unpaired if u.original not in used]


def project_name(folder_name: str) -> str:
    """A valid project name (project.NAME_PATTERN) from a folder's name: characters
    other than letters, digits, '_' and '-' become '-' (accents dropped: é -> e)."""
    ascii_name = unicodedata.normalize("NFKD", folder_name).encode("ascii", "ignore").decode()
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", ascii_name)
    name = re.sub(r"^[^A-Za-z0-9]+", "", name).rstrip("-")
    if name and name_problem(name):  # a folder named like a number or a date: '2024'
        name = f"project-{name}"
    return name or "project"


def plan(pairs: list[Pair], root: Path, registered: dict[str, Path | None],
         taken: Iterable[str] = ()) -> list[Row]:
    """Name each pair, and tell those already registered (same original_dir) apart.

    ``registered`` maps registered names to their resolved original_dir; ``taken`` holds
    other names in use (a conf/project/<name>.yaml not registered)."""
    by_dir = {path: name for name, path in registered.items() if path is not None}
    # Compared by case too: 'Aiko' beside 'aiko' would be one file on a Mac checkout.
    used = {n.casefold() for n in (*registered, *taken)}
    rows = []
    for pair in pairs:
        already = by_dir.get((root / pair.original).resolve())
        if already:
            rows.append(Row(already, pair, already, None))
            continue
        base = name = project_name(pair.folder_name)
        n = 2
        while name.casefold() in used:
            name, n = f"{base}-{n}", n + 1
        used.add(name.casefold())
        notes = []
        if base != pair.folder_name:
            notes.append(f"name from '{pair.folder_name}'")
        if name != base:
            notes.append(f"'{base}' is taken")
        rows.append(Row(name, pair, None, "; ".join(notes) or None))
    return rows


def list_folders(root: Path) -> list[PurePosixPath]:
    """Folders in ``root`` two levels deep, and three deep under any ``sandbox/``."""
    out: list[PurePosixPath] = []
    stack = [(root, HERE)]
    while stack:
        folder, rel = stack.pop()
        try:
            with os.scandir(folder) as listing:
                subs = [e.name for e in listing
                        if not e.name.startswith(".") and e.is_dir(follow_symlinks=True)]
        except OSError:
            continue  # unreadable: nothing of it can be registered anyway
        for name in subs:
            sub = rel / name
            out.append(sub)
            if len(sub.parts) < 2 or (len(sub.parts) == 2 and name.lower() == "sandbox"):
                stack.append((folder / name, sub))
    return out


def count_images(folders: list[Path], repo: Path) -> dict[Path, int]:
    """Image files under each folder, as the scan stage finds them (its extensions and
    ignore patterns, hidden folders skipped); folders are walked in parallel."""
    from omegaconf import OmegaConf

    from backfill.stages.scan import ScanSettings, walk

    settings = ScanSettings.from_config(
        OmegaConf.load(repo / "conf" / "pipeline" / "default.yaml").scan)

    def count(folder: Path) -> int:
        return sum(1 for f in walk(folder, "", settings) if f[3])

    with ThreadPoolExecutor(max_workers=8) as pool:
        return dict(zip(folders, pool.map(count, folders), strict=True))


def registered_dirs(repo: Path) -> tuple[dict[str, Path | None], set[str]]:
    """Registered projects' resolved original_dir (from conf/project/<name>.yaml, so a
    stale params.yaml does not matter), and the names of unregistered project configs."""
    from backfill.projects.registry import registered

    names = registered(repo)
    out: dict[str, Path | None] = {}
    for name in names:
        path = repo / "conf" / "project" / f"{name}.yaml"
        value = (yaml.safe_load(path.read_text()) or {}).get("original_dir") \
            if path.is_file() else None
        p = Path(str(value)).expanduser() if value else None
        out[name] = (p if p.is_absolute() else repo / p).resolve() if p else None
    others = {p.stem for p in (repo / "conf" / "project").glob("*.yaml")} - set(names)
    return out, others


def find_db(root: Path, pair: Pair, name: str) -> Path | None:
    """The project's production DB, ``<tools>/data/training/ai_training_decisions/
    <project>.db``, where ``<tools>`` is a folder holding its final folder (the closest
    first, up to the folder above ``root``); the project as its folders name it, else as
    registered. Never the tools' ``<project>_backfill_temp.db``: that is not production."""
    final = root / pair.final
    places = [final.parent, *final.parent.parents]
    stop = places.index(root.parent) + 1 if root.parent in places else len(places)
    for place in places[:stop]:
        folder = place / DB_FOLDER
        for stem in dict.fromkeys((pair.folder_name, name)):
            db = folder / f"{stem}.db"
            if db.is_file():
                return db
    return None


@dataclass
class Discovery:
    root: Path
    rows: list[Row]
    unpaired: list[Unpaired]
    counts: dict[Path, int]
    dbs: dict[str, Path | None] = field(default_factory=dict)  # new projects' real_db

    @property
    def new(self) -> list[Row]:
        return [r for r in self.rows if r.registered_as is None]


def discover(root: Path, repo: Path) -> Discovery:
    """Find, name and count the projects under ``root`` (nothing is written)."""
    root = Path(os.path.normpath(root.expanduser().absolute()))
    if not root.is_dir():
        raise UserError(f"{root} is not a folder: give the folder that holds past projects.")
    pairs, unpaired = pair_folders(list_folders(root))
    pairs.sort(key=lambda p: (p.folder_name.lower(), str(p.original)))
    registered, taken = registered_dirs(repo)
    rows = plan(pairs, root, registered, taken)
    folders = [root / p for r in rows for p in (r.pair.original, r.pair.final)]
    dbs = {r.name: find_db(root, r.pair, r.name) for r in rows if r.registered_as is None}
    return Discovery(root, rows, unpaired, count_images(folders, repo), dbs)


def discovery_table(found: Discovery) -> str:
    """The table of what was found, and what registering would add."""
    lines = [f"under {found.root}: {len(found.rows)} project(s) found, {len(found.new)} new"]
    if found.rows:
        table = [("name", "layout", "original_dir", "images", "final_dir", "images", "status")]
        for r in found.rows:
            status = (f"registered as {r.registered_as}" if r.registered_as
                      else "new" + (f" ({r.note})" if r.note else ""))
            table.append((r.name, r.pair.layout, f"{r.pair.original}/",
                          f"{found.counts[found.root / r.pair.original]:,}", f"{r.pair.final}/",
                          f"{found.counts[found.root / r.pair.final]:,}", status))
        widths = [max(len(row[i]) for row in table) for i in range(len(table[0]) - 1)]
        right = {3, 5}  # counts
        for row in table:
            cells = [c.rjust(w) if i in right else c.ljust(w)
                     for i, (c, w) in enumerate(zip(row, widths, strict=False))]
            lines.append("  " + "  ".join(cells + [row[-1]]))
    for u in found.unpaired:
        lines.append(f"  not paired: {u.original}/ ({u.reason})")
    lines += _db_lines(found)
    return "\n".join(lines)


def _db_lines(found: Discovery) -> list[str]:
    """Which production DB each new project gets as real_db, and which have none."""
    out = [f"  production DB of {name}: {db}" for name, db in found.dbs.items() if db]
    missing = [name for name, db in found.dbs.items() if db is None]
    if missing:
        out += [f"  no production DB found for {', '.join(missing)}: built from scratch",
                f"    (looked for {DB_FOLDER}/<project>.db in the folders above the final "
                "folder; to set one later:",
                "    `backfill project add NAME ... --real-db DB --force`)"]
    return out


def register(found: Discovery, repo: Path, model: str = "baseline",
             overrides: list[str] | None = None) -> list[Row]:
    """Register every new project, with its production DB where one was found and the
    same KEY=VALUE ``overrides`` (as `project add` takes them) for each, then compose
    params.yaml once; on any failure the configs are restored as they were."""
    from backfill.config.project import write_params
    from backfill.projects.registry import add_project, config_path

    config = repo / "conf" / "config.yaml"
    before = config.read_text()
    # Named before any is written: a Ctrl-C inside add_project leaves no file unknown.
    paths = [repo / "conf" / "project" / f"{r.name}.yaml" for r in found.new]
    fresh = [p for p in paths if not p.exists()]
    try:
        for r in found.new:
            db = found.dbs.get(r.name)
            add_project(repo, r.name, config_path(found.root / r.pair.original, repo),
                        config_path(found.root / r.pair.final, repo),
                        config_path(db, repo) if db else None, overrides, model=model,
                        compose_params=False)
        write_params(repo)  # once for all: checked before params.yaml is touched
    except BaseException as exc:  # Ctrl-C too: conf/ is left as it was, as by `project add`
        config.write_text(before)
        for path in fresh:
            path.unlink(missing_ok=True)
        if isinstance(exc, UserError | KeyboardInterrupt):
            raise
        raise UserError(f"the discovered projects' configs do not compose ({exc}); "
                          "nothing was registered.") from exc
    return found.new
