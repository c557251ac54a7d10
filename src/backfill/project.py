"""Projects and their settings: Hydra composition, params.yaml, and where outputs go.

``conf/`` is the source of settings; ``params.yaml`` is its composition, written by
``backfill compose`` (or by ``dvc exp run``, which composes through DVC's own Hydra
support) and read by every stage. A stage never runs on a params.yaml that no longer
matches conf/.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml
from omegaconf import DictConfig, OmegaConf

CONFIG_NAME = "config"
PARAMS_FILE = "params.yaml"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


class ConfigError(Exception):
    """A problem with the configuration; the message says what to do."""


def find_root(start: Path | None = None) -> Path:
    """The repository root: the nearest folder up from ``start`` holding conf/config.yaml."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "conf" / f"{CONFIG_NAME}.yaml").is_file():
            return folder
    raise ConfigError(
        f"no conf/{CONFIG_NAME}.yaml in {here} or above: run backfill from the repository."
    )


def compose(root: Path, overrides: list[str] | None = None) -> DictConfig:
    """Compose conf/ the way DVC does, without writing anything."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(str(root / "conf"), version_base=None):
        cfg = hydra_compose(config_name=CONFIG_NAME, overrides=overrides or [])
    OmegaConf.resolve(cfg)
    return cfg


def write_params(root: Path) -> Path:
    """Compose conf/ into params.yaml with DVC's own function, as `dvc exp run` would."""
    from dvc.utils.hydra import compose_and_dump

    out = root / PARAMS_FILE
    compose_and_dump(out, str(root / "conf"), None, CONFIG_NAME, str(root), [])
    return out


def _newest_conf_file(root: Path) -> Path | None:
    files = [p for p in (root / "conf").rglob("*.yaml") if p.is_file()]
    return max(files, key=lambda p: p.stat().st_mtime_ns, default=None)


def check_params_fresh(root: Path) -> None:
    """Stop when params.yaml is older than conf/ and differs from its composition.

    A params.yaml newer than conf/ may hold `dvc exp run -S` overrides, so it is trusted;
    an older one is stale only if composing conf/ now would give something else.
    """
    params = root / PARAMS_FILE
    if not params.exists():
        raise ConfigError("params.yaml is missing: run `backfill compose`, then `dvc repro`.")
    newest = _newest_conf_file(root)
    if newest is None or newest.stat().st_mtime_ns <= params.stat().st_mtime_ns:
        return
    current = yaml.safe_load(params.read_text()) or {}
    if OmegaConf.to_container(compose(root)) != current:
        raise ConfigError(
            f"params.yaml is stale: {newest.relative_to(root)} changed after it was "
            "composed. Run `backfill compose` (then `dvc repro`), or use `dvc exp run`."
        )


def load_params(root: Path) -> DictConfig:
    check_params_fresh(root)
    return OmegaConf.create(yaml.safe_load((root / PARAMS_FILE).read_text()) or {})


@dataclass(frozen=True)
class Project:
    """One project's settings and the places its inputs and outputs live."""

    name: str
    root: Path  # the repository root
    cfg: DictConfig
    cache_dir: Path

    def path(self, key: str) -> Path:
        """An input path from the project's config, relative paths taken from the root."""
        value = self.cfg.get(key)
        if value is None:
            raise ConfigError(
                f"project '{self.name}' has no {key}: set it in conf/project/{self.name}.yaml."
            )
        p = Path(str(value)).expanduser()
        return p if p.is_absolute() else self.root / p

    @property
    def out_dir(self) -> Path:
        return self.root / "data" / self.name

    def output(self, table: str) -> Path:
        """Where a stage's table lives: ``data/<project>/<table>.parquet`` (as in dvc.yaml)."""
        return self.out_dir / f"{table}.parquet"


def load_project(name: str, root: Path | None = None) -> Project:
    root = root or find_root()
    params = load_params(root)
    projects = params.get("projects") or {}
    if name not in projects:
        known = ", ".join(sorted(projects)) or "none yet"
        raise ConfigError(
            f"no project '{name}' in params.yaml (known: {known}). Add it with "
            "`backfill project add NAME --original-dir DIR --final-dir DIR`."
        )
    cache = Path(str(params.get("cache_dir", "data/cache"))).expanduser()
    return Project(name, root, projects[name], cache if cache.is_absolute() else root / cache)
