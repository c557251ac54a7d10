"""Every setting's type and allowed range: Hydra structured configs, one dataclass per
section of conf/pipeline/default.yaml (and conf/train/default.yaml).

The YAML files hold the values and their comments; these classes hold what a value may
be. ``check`` merges a composition onto them, so OmegaConf refuses a wrong type or an
unknown key, then runs the range checks that sit beside each field. It runs wherever
settings enter: `backfill project add`, `backfill compose`, every stage when it reads
params.yaml (the first to see a `dvc exp run -S` value) and `backfill train`'s
overrides. A wrong value is one line naming the key, the value and what is allowed.

They are not in Hydra's ConfigStore: `dvc exp run` composes in DVC's own process, which
never imports this module, so conf/ cannot name them in its defaults lists; the check
is applied to what was composed instead, in every process alike.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from datetime import date
from pathlib import Path
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, MissingMandatoryValue, OmegaConfBaseException

from backfill.config.errors import UserError
from backfill.db.schema import MAX_IMAGES
from backfill.files.casing import CASE_SETTINGS

PIL_LIMIT = 2 * 89_478_485  # PIL.Image.MAX_IMAGE_PIXELS x 2: Pillow's DecompressionBombError

PRECISIONS = ["fp32", "fp16", "bf16"]
NORMALIZATIONS = ["raw", "l2"]
GROUP_METHODS = ["nearest_up", "exact_timestamp"]
EXECUTORS = ["local", "ray"]
# auto, ray://host:port (Ray Client) or host:port (the head's GCS); IPv6 in brackets.
RAY_ADDRESS = re.compile(r"auto|(ray://)?(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):\d{1,5}")


def rule(allowed: str, ok: Callable[[Any], bool], each: bool = False) -> Any:
    """A field with no default (conf/ gives it) and a range check: ``ok(value)`` must
    hold (for every item when ``each``); ``allowed`` says what may be set. None passes:
    a field that may be null says so in its type."""
    return field(default=MISSING, metadata={"allowed": allowed, "ok": ok, "each": each})


def at_least(low: float) -> Any:
    return rule(f"a number >= {low}", lambda v: v >= low)


def above(low: float) -> Any:
    return rule(f"a number > {low}", lambda v: v > low)


def fraction() -> Any:
    return rule("a number from 0 to 1", lambda v: 0 <= v <= 1)


def one_of(choices: list[str]) -> Any:
    return rule(f"one of {', '.join(choices)}", lambda v: v in choices)


def required() -> Any:
    return field(default=MISSING)


def threads(workers: int | None) -> int:
    """A ``workers`` setting as a thread count: null means one per core."""
    return (os.cpu_count() or 1) if workers is None else int(workers)


def _is_date(value: Any) -> bool:
    try:
        date.fromisoformat(str(value))
    except ValueError:
        return False
    return True


@dataclass
class ScanConfig:
    extensions: list[str] = rule("a list of extensions such as [.png, .jpg]",
                                 lambda v: bool(re.fullmatch(r"\.[A-Za-z0-9]+", v)), each=True)
    unread_extensions: list[str] = rule("a list of extensions such as [.heic]",
                                        lambda v: bool(re.fullmatch(r"\.[A-Za-z0-9]+", v)),
                                        each=True)
    ignore: list[str] = required()
    follow_symlinks: bool = required()
    workers: int = at_least(1)
    # Up to Pillow's own guard, which stays on: it refuses anything larger as a bomb.
    max_pixels: int = rule(f"a number from 1 to {PIL_LIMIT} (Pillow's own bomb guard)",
                           lambda v: 1 <= v <= PIL_LIMIT)
    earliest_file_time: str = rule("a date such as 1990-01-01", _is_date)
    future_file_time_hours: float = at_least(0)

    def cross(self) -> list[tuple[str, Any, str]]:
        if not self.extensions:
            return [("extensions", [], "at least one extension")]
        both = sorted({e.lower() for e in self.extensions}
                      & {e.lower() for e in self.unread_extensions})
        if both:
            return [("unread_extensions", both, "no extension that is also in extensions")]
        return []


@dataclass
class GroupConfig:
    method: str = one_of(GROUP_METHODS)
    lookahead: int = at_least(1)
    time_gap_minutes: float | None = above(0)
    min_group_size: int = rule(f"2 to {MAX_IMAGES}", lambda v: 2 <= v <= MAX_IMAGES)
    max_group_size: int = rule(f"2 to {MAX_IMAGES} (the DB indexes images 0-3)",
                               lambda v: 2 <= v <= MAX_IMAGES)
    id_format: str = rule("text naming {timestamp} (and optionally {project})",
                          lambda v: "{timestamp}" in v
                          and set(re.findall(r"{(\w*)}", v)) <= {"timestamp", "project"})

    def cross(self) -> list[tuple[str, Any, str]]:
        if self.min_group_size > self.max_group_size:
            return [("min_group_size", self.min_group_size,
                     f"at most max_group_size ({self.max_group_size})")]
        return []


@dataclass
class MatchConfig:
    coarse_size: int = at_least(32)
    sweep_size: int = at_least(16)
    accept_score: float = fraction()
    min_scale: float = rule("a number > 0 and <= 1", lambda v: 0 < v <= 1)
    max_scale: float = at_least(1)
    scale_step: float = above(1)
    patch_size: int = at_least(8)
    patch_grid: int = at_least(1)
    verify_size: int = at_least(16)
    candidates: int = at_least(1)

    def key(self) -> str:
        """A short id of these settings, for the locate cache's file name."""
        blob = repr(sorted(asdict(self).items())).encode()
        return hashlib.blake2b(blob, digest_size=8).hexdigest()


@dataclass
class ExtractConfig:
    approve_tolerance: float = rule("a number from 0 to 0.5", lambda v: 0 <= v <= 0.5)
    min_confidence: float = fraction()
    ambiguity_margin: float = fraction()
    workers: int | None = at_least(1)
    content_candidates: int = rule("a whole number >= 0 (0: no content pairing)",
                                   lambda v: v >= 0)
    match: MatchConfig = field(default_factory=MatchConfig)


@dataclass
class EmbedConfig:
    model: str = required()
    pretrained: str | None = required()
    seed: int = at_least(0)
    device: str = rule("auto, cpu, mps, cuda or cuda:N",
                       lambda v: bool(re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", v)))
    batch_size: int = at_least(1)
    workers: int | None = at_least(1)
    precision: str = one_of(PRECISIONS)


@dataclass
class EvaluateConfig:
    crop_tolerance: float = fraction()
    include_needs_review: bool = required()


@dataclass
class MergeConfig:
    coord_tolerance: float = fraction()
    fix_invalid_actions: bool = required()
    accepted_folder: str = required()
    declined_folder: str = required()
    lock_timeout_s: float = at_least(0)


@dataclass
class ValidateConfig:
    thumbnail_px: int = at_least(16)
    max_cases: int = at_least(0)
    workers: int | None = at_least(1)


@dataclass
class NamesConfig:
    case_sensitive: str = rule(", ".join(CASE_SETTINGS),
                               lambda v: str(v).lower() in CASE_SETTINGS)


@dataclass
class ProjectConfig:
    """One project: its folders and DBs, every pipeline section, its model version."""

    original_dir: str = required()
    final_dir: str = required()
    real_db: str | None = required()
    legacy_csv: str | None = required()
    review_dir: str | None = required()
    scan: ScanConfig = field(default_factory=ScanConfig)
    group: GroupConfig = field(default_factory=GroupConfig)
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    merge: MergeConfig = field(default_factory=MergeConfig)
    validate: ValidateConfig = field(default_factory=ValidateConfig)
    names: NamesConfig = field(default_factory=NamesConfig)
    model: Any = MISSING  # conf/model/<version>.yaml; checked by models.ModelVersion


@dataclass
class NetTrainConfig:
    """What the ranker and the crop proposer are both trained with."""

    hidden: list[int] = rule("a list of layer sizes >= 1", lambda v: v >= 1, each=True)
    dropout: float = rule("a number from 0 to below 1", lambda v: 0 <= v < 1)
    normalization: str = one_of(NORMALIZATIONS)
    epochs: int = at_least(1)
    lr: float = above(0)
    weight_decay: float = at_least(0)
    batch_size: int = at_least(1)


@dataclass
class RankerTrainConfig(NetTrainConfig):
    margin: float = above(0)
    anomaly_weight: float = above(0)


@dataclass
class CropTrainConfig(NetTrainConfig):
    size_divisor: float = above(0)
    actions: list[str] = rule("a list of approve, crop", lambda v: v in ("approve", "crop"),
                              each=True)
    l1_weight: float = at_least(0)


@dataclass
class TrainConfig:
    seed: int = at_least(0)
    holdout: float = rule("a number above 0 and below 1", lambda v: 0 < v < 1)
    skip_needs_review: bool = required()
    ranker: RankerTrainConfig = field(default_factory=RankerTrainConfig)
    crop: CropTrainConfig = field(default_factory=CropTrainConfig)


@dataclass
class RayConfig:
    """Where and how embed and extract run when ``executor`` is ray."""

    address: str | None = rule("auto, ray://host:port, host:port, or null (a Ray instance "
                               "of this machine's own)", lambda v: bool(RAY_ADDRESS.fullmatch(v)))
    ship_bytes: bool = required()
    actors: int | None = at_least(1)
    actor_cpus: float | None = above(0)
    actor_gpus: float = at_least(0)
    in_flight: int | None = at_least(1)
    connect_timeout_s: float = above(0)


@dataclass
class Settings:
    """The whole composition: params.yaml."""

    projects: dict[str, ProjectConfig] = field(default_factory=dict)
    cache_dir: str = required()
    executor: str = one_of(EXECUTORS)
    ray: RayConfig = field(default_factory=RayConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def escape(value: str) -> str:
    """``value`` as a literal OmegaConf string: a folder named ``${x}`` is no interpolation."""
    return value.replace("${", "\\${")


def escaped(tree: Any) -> Any:
    """Every string in a plain tree escaped, for trees of resolved (literal) values."""
    if isinstance(tree, dict):
        return {k: escaped(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [escaped(v) for v in tree]
    return escape(tree) if isinstance(tree, str) else tree


class SettingError(ValueError):
    """A setting of the wrong type, shape or range; the message is one line per problem."""


_KINDS = {int: "a whole number", float: "a number", bool: "true or false", str: "text"}


def _expected(schema: type, path: list[str]) -> str:
    """What the field at ``path`` under ``schema`` takes, in words."""
    import typing

    kind: Any = schema
    meta: dict = {}
    nullable = False
    for part in path:
        if is_dataclass(kind):
            hints = typing.get_type_hints(kind)
            if part not in hints:
                return ""
            meta = {f.name: f.metadata for f in fields(kind)}[part]
            kind = hints[part]
        elif typing.get_origin(kind) is dict:
            kind = typing.get_args(kind)[1]
        else:
            return ""
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        nullable = type(None) in typing.get_args(kind)
        if nullable and len(args) == 1:
            kind = args[0]
    if "allowed" in meta:  # the field's own words say more than its type
        return f"{meta['allowed']} or null" if nullable else meta["allowed"]
    if typing.get_origin(kind) is list:
        item = _KINDS.get(typing.get_args(kind)[0], "values")
        words = f"a list of {item.removeprefix('a ')}s" if item.startswith("a ") else \
            f"a list of {item}"
    else:
        words = _KINDS.get(kind, "a section of settings" if is_dataclass(kind) else "")
    return f"{words} or null" if words and nullable else words


def _type_error(exc: OmegaConfBaseException, schema: type, cfg: Any, prefix: str
                ) -> SettingError:
    key = str(getattr(exc, "full_key", "") or "")
    path = [k for k in key.split(".") if k]
    if isinstance(exc, ConfigKeyError) or "not in struct" in str(exc):
        hint = f"{prefix}{key}"
        return SettingError(f"unknown setting '{hint}' (see conf/pipeline/default.yaml, or "
                            "conf/train/default.yaml for train.*)")
    if isinstance(exc, MissingMandatoryValue):  # a setting newer than the composed params
        return SettingError(f"setting '{prefix}{key}' is missing: params.yaml was composed "
                            "by an older backfill; run `backfill compose` (it takes the "
                            "default from conf/pipeline/default.yaml)")
    value = OmegaConf.select(OmegaConf.create(cfg), key, default=None,
                             throw_on_missing=False) if key else None
    allowed = _expected(schema, path)
    use = f"use {allowed}" if allowed else str(exc).splitlines()[0]
    return SettingError(f"{prefix}{key}={value!r} is not allowed: {use}")


def _problems(obj: Any, prefix: str) -> list[str]:
    """Every range check that fails, walking nested sections, as 'key=value: allowed'."""
    out = []
    for f in fields(obj):
        value, key = getattr(obj, f.name), f"{prefix}{f.name}"
        if is_dataclass(value):
            out += _problems(value, key + ".")
        elif isinstance(value, dict) and value and all(is_dataclass(v) for v in value.values()):
            for name, section in value.items():
                out += _problems(section, f"{key}.{name}.")
        elif "ok" in f.metadata and value is not None:
            items = value if f.metadata["each"] else [value]
            if not all(f.metadata["ok"](v) for v in items):
                out.append(f"{key}={value!r} is not allowed: use {f.metadata['allowed']}")
    for name, value, allowed in getattr(obj, "cross", list)():
        out.append(f"{prefix}{name}={value!r} is not allowed: use {allowed}")
    return out


def typed(schema: type, cfg: DictConfig | dict, prefix: str = "") -> Any:
    """``cfg`` as the ``schema`` dataclass: types, shapes and known keys checked by
    OmegaConf, then every range check. Raises SettingError naming each bad key."""
    plain = escaped(OmegaConf.to_container(OmegaConf.create(cfg), resolve=True))
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), plain)
        obj = OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        raise _type_error(exc, schema, plain, prefix) from None
    problems = _problems(obj, prefix)
    if problems:
        raise SettingError("\n".join(problems))
    return obj


def section(schema: type, cfg: DictConfig | dict, name: str) -> Any:
    """One section of a project's settings (``name``: ``group``, ``extract``, ...) as its
    typed class, checked: what a stage's own settings are built from, so each range is
    checked in one place. A bad value is a UserError naming the key."""
    try:
        return typed(schema, cfg, prefix=f"{name}.")
    except SettingError as exc:
        raise UserError(str(exc)) from None


def check(cfg: DictConfig | dict, root: Path | None = None) -> Settings:
    """The composition ``cfg`` checked (see ``typed``), and each project's folders too
    when ``root`` (the repository, against which relative paths are taken) is given."""
    settings = typed(Settings, cfg)
    if root is not None:
        problems = [p for name, project in settings.projects.items()
                    for p in folder_problems(name, project, root)]
        if problems:
            raise SettingError("\n".join(problems))
    return settings


def _resolved(value: str, root: Path) -> Path:
    path = Path(value).expanduser()
    return Path(*(path if path.is_absolute() else root / path).resolve().parts)


def folder_problems(name: str, project: ProjectConfig, root: Path) -> list[str]:
    """Layouts that would give silently wrong decisions: the final folder inside the
    originals (its crops would be scanned as renders), or the two being one folder."""
    original, final = (_resolved(project.original_dir, root), _resolved(project.final_dir, root))
    if original == final:
        return [f"projects.{name}: original_dir and final_dir are one folder ({original}); "
                "the kept images must be in a folder of their own"]
    if original in final.parents:
        return [f"projects.{name}: final_dir {final} is inside original_dir {original}, so "
                "the kept crops would be scanned as renders; move it out, or point "
                "original_dir at the renders' own subfolder"]
    if final in original.parents:
        return [f"projects.{name}: original_dir {original} is inside final_dir {final}, so "
                "every render would be taken as a kept image; use two separate folders"]
    return []
