"""What params.yaml was composed from: the names of conf/ and params.yaml, conf/'s digest
and the record the last `backfill compose` left; where each project's review answers live
beside them. Standard library and blake3 only, so
that the watch stage, which runs on every `dvc repro`, finds the repository without
loading Hydra."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

import blake3

CONFIG_NAME = "config"
PARAMS_FILE = "params.yaml"
# What conf/ held when params.yaml was last composed from it (ignored by git: DVC's tmp).
COMPOSED_FROM = Path(".dvc") / "tmp" / "backfill-composed.json"


# Your answers in `backfill review`: inputs, not outputs. They live in git beside conf/
# (an afternoon's answers must survive a `dvc gc` or a fresh clone).
REVIEWS = "reviews"


def reviews_file(root: Path, name: str) -> Path:
    """Project ``name``'s answers: ``reviews/<name>.jsonl`` at the repository root."""
    return root / REVIEWS / f"{name}.jsonl"


def ensure_reviews(root: Path, names: Iterable[str]) -> None:
    """An empty answers file for each project that has none: extract depends on it, and
    DVC refuses a dependency that does not exist. Never touches one that does."""
    for name in names:
        path = reviews_file(root, name)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()


def find_config_root(start: Path | None = None) -> Path | None:
    """The nearest folder up from ``start`` holding conf/config.yaml, or None."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "conf" / f"{CONFIG_NAME}.yaml").is_file():
            return folder
    return None


def conf_files(root: Path) -> list[Path]:
    return sorted(p for p in (root / "conf").rglob("*.yaml") if p.is_file())


def conf_digest(root: Path) -> str:
    """A hash of conf/'s content (names and bytes; modification times play no part)."""
    h = blake3.blake3()
    for path in conf_files(root):
        h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def composed_record(root: Path) -> dict:
    """What the last compose noted ({} when nothing readable is there)."""
    try:
        record = json.loads((root / COMPOSED_FROM).read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def composed_from(root: Path) -> str | None:
    conf = composed_record(root).get("conf")
    return conf if isinstance(conf, str) else None


def params_trusted(root: Path) -> bool:
    """Whether params.yaml is taken as it is: inside a `dvc exp run` (which composes
    today's conf/ itself), or while conf/ holds what it held at the last compose."""
    return bool(os.environ.get("DVC_EXP_NAME")) or composed_from(root) == conf_digest(root)
