"""Projects and their settings: Hydra composition, params.yaml, and where outputs go.

``conf/`` is the source of settings; ``params.yaml`` is its composition, written by
``backfill compose`` (or by ``dvc exp run``, which composes through DVC's own Hydra
support) and read by every stage. Every composition is checked against the typed
settings (``backfill.config.settings``) before it is used or written, and a stage never runs
on a params.yaml that no longer matches the content of conf/.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from backfill.config.composed import (
    COMPOSED_FROM,
    CONFIG_NAME,
    PARAMS_FILE,
    composed_record,
    conf_digest,
    conf_files,
    ensure_reviews,
    find_config_root,
    params_trusted,
    reviews_file,
)
from backfill.config.errors import UserError
from backfill.config.settings import ProjectConfig, RayConfig, Settings, escaped, section

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
# A project's line in conf/config.yaml's defaults list: `  - project@projects.NAME: NAME`.
ENTRY = re.compile(r"^\s*-\s*project@projects\.([^:\s]+):", flags=re.M)


def registered_names(root: Path) -> list[str]:
    """The projects conf/config.yaml registers, in its order (read as text: this works
    while a project's own file is broken)."""
    text = (root / "conf" / f"{CONFIG_NAME}.yaml").read_text()
    return ENTRY.findall(text)


def _reads_as_text(name: str) -> bool:
    """Whether YAML (and so Hydra's defaults list) reads ``name`` back as this text, not
    as a number, a date, true/false or null."""
    try:
        return yaml.safe_load(name) == name and OmegaConf.create({"n": name}).n == name \
            and OmegaConf.create(f"n: {name}").n == name
    except Exception:  # noqa: BLE001 - whatever YAML makes of it, it is not a plain name
        return False


def name_problem(name: str, others: list[str] | tuple[str, ...] = ()) -> str | None:
    """Why ``name`` cannot name a project beside ``others``, in one line, or None.

    A name names a file, a folder and DVC stages, and sits in Hydra's defaults list: it
    must read as text there, and it must not differ from another only by case, since a
    Mac or Windows checkout holds one file for both."""
    if not NAME_PATTERN.match(name) or not _reads_as_text(name):
        return (f"project name '{name}' must be letters, digits, '_' or '-', start with a "
                "letter or digit and not read as a number, a date, true/false or null "
                "(it names folders and DVC stages): choose another name.")
    twin = next((o for o in others if o != name and o.casefold() == name.casefold()), None)
    if twin:
        return (f"project name '{name}' differs from project '{twin}' only by case: a Mac "
                f"or Windows checkout holds one conf/project/{twin}.yaml for both; choose "
                "another name.")
    return None


def _names_problem(root: Path, only: list[str] | None = None) -> str | None:
    """The first registered project name (of ``only``, when given) that breaks the
    naming rule, or None."""
    names = registered_names(root)
    for i, name in enumerate(names):
        if only is not None and name not in only:
            continue
        problem = name_problem(name, names[:i])
        if problem:
            return f"conf/{CONFIG_NAME}.yaml: {problem}"
    return None


def checked(cfg: DictConfig | dict, root: Path | None = None) -> Settings:
    """``cfg`` as the typed Settings; a UserError, one line per bad setting, when it
    fails the settings' types, ranges or (with ``root``) the projects' folder layout."""
    from backfill.config.settings import SettingError, check

    try:
        return check(cfg, root)
    except SettingError as exc:
        raise UserError(str(exc)) from None


def find_root(start: Path | None = None) -> Path:
    """The repository root: the nearest folder up from ``start`` holding conf/config.yaml."""
    root = find_config_root(start)
    if root is not None:
        return root
    here = (start or Path.cwd()).resolve()
    raise UserError(
        f"no conf/{CONFIG_NAME}.yaml in {here} or above: run backfill from the repository."
    )


def _yaml_problem(root: Path, skip: set[Path] = frozenset()) -> str | None:
    """The first conf file (but those in ``skip``) that is not valid YAML, in one line,
    or None."""
    for path in conf_files(root):
        if path in skip:
            continue
        try:
            yaml.safe_load(path.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            where = getattr(exc, "problem_mark", None)
            at = f" (line {where.line + 1}, column {where.column + 1})" if where else ""
            what = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            return f"{path.relative_to(root)} is not valid YAML{at}: {what}. Fix it, then " \
                   "run `backfill compose`."
    return None


def _conf_with_only(root: Path, only: list[str], into: Path) -> set[Path]:
    """A copy of conf/ under ``into`` that registers only the projects ``only`` names
    (Hydra reads every file its defaults list names, even one an override drops); returns
    the other projects' files, which the copy leaves out."""
    import shutil

    folder = root / "conf" / "project"
    left_out = {p for p in folder.glob("*.yaml") if p.stem not in only}
    shutil.copytree(root / "conf", into, ignore=lambda d, names: [
        n for n in names if Path(d, n) in left_out])
    config = into / f"{CONFIG_NAME}.yaml"
    config.write_text("".join(
        line for line in config.read_text().splitlines(keepends=True)
        if not (m := ENTRY.match(line))
        or m.group(1) in only))
    return left_out


def compose(root: Path, overrides: list[str] | None = None,
            only: list[str] | None = None) -> DictConfig:
    """Compose conf/ the way DVC does, check every setting, write nothing.

    With ``only``, the other projects are left out (their files are not even read), so
    one project's broken file does not stop reading another."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    apart = tempfile.TemporaryDirectory(prefix="backfill-conf-") if only is not None \
        else contextlib.nullcontext()
    with apart as tmp:
        conf, skip = root / "conf", set()
        if only is not None:
            conf = Path(tmp) / "conf"
            skip = _conf_with_only(root, only, conf)
        problem = _names_problem(root, only) or _yaml_problem(root, skip)
        if problem:
            raise UserError(problem)
        try:
            with initialize_config_dir(str(conf), version_base=None):
                cfg = hydra_compose(config_name=CONFIG_NAME, overrides=overrides or [])
            # Resolved once, then held as literal text: a folder named `${x}` stays a name.
            cfg = OmegaConf.create(escaped(OmegaConf.to_container(cfg, resolve=True)))
        except (HydraException, OmegaConfBaseException) as exc:
            raise UserError(f"conf/ does not compose: {str(exc).splitlines()[0]}") from None
    checked(cfg, root)
    return cfg


def _say(line: str) -> None:
    print(f"backfill: warning: {line}", file=sys.stderr)


def _dump(root: Path) -> str:
    """params.yaml's text as composing conf/ gives it, with DVC's own function (as
    `dvc exp run` would), written nowhere."""
    from dvc.utils.hydra import compose_and_dump

    with tempfile.TemporaryDirectory(prefix="backfill-params-") as tmp:
        out = Path(tmp) / PARAMS_FILE
        compose_and_dump(out, str(root / "conf"), None, CONFIG_NAME, str(root), [])
        return out.read_text(encoding="utf-8")


# What compose does with values params.yaml holds that conf/ does not (`dvc exp apply`,
# an edit): refuse to go on, write them into conf/ first, or put conf/'s values back.
EDITS = ("refuse", "keep", "discard")


# Writes the values params.yaml holds that conf/ does not into their conf/ files:
# (root, params.yaml as it was, the changed keys, the last composition, tell).
# backfill.config.keep.keep_values, passed in by the caller (it builds on this module).
Keeper = Callable[[Path, dict, list, "dict | None", Callable[[str], None]], None]


def write_params(root: Path, warn: Callable[[str], None] = _say,
                 edits: str = "refuse", tell: Callable[[str], None] = print,
                 keeper: Keeper | None = None) -> Path:
    """Compose conf/ into params.yaml with DVC's own function, as `dvc exp run` would,
    after checking the composition; record which conf/ content it came from.

    A value of params.yaml that was changed after it was composed (by `dvc exp apply`,
    or by hand) is never lost silently. ``edits``: "refuse" stops with UserError
    naming each such key, both values and the commands that keep or drop them; "keep"
    first writes them into their conf/ files with ``keeper`` (keep.keep_values), so that
    params.yaml holds them still; "discard" replaces them by what conf/ gives, ``warn``
    getting one line per key with both values and the file where a lasting change goes.
    ``tell`` gets one line per conf/ file that keeping changed."""
    from backfill.files.atomic import write_text

    if edits not in EDITS:
        raise ValueError(f"edits={edits!r}: one of {EDITS}")
    if edits == "keep" and keeper is None:
        raise ValueError("edits='keep' needs a keeper: backfill.config.keep.keep_values")
    cfg = compose(root)  # refuse a bad setting before params.yaml is touched
    out = root / PARAMS_FILE
    try:
        before = yaml.safe_load(out.read_text()) if out.exists() else None
    except yaml.YAMLError:
        before = None  # nothing of it can be told apart: it is replaced whole
    text = _dump(root)
    changed = []
    if isinstance(before, dict):
        last = _composed_params(root)
        changed = replaced_values(before, yaml.safe_load(text),
                                  last if isinstance(last, dict) else None)
    if changed and edits == "refuse":
        raise UserError(refusal(changed))
    if changed and edits == "keep":
        keeper(root, before, changed, last if isinstance(last, dict) else None, tell)
        cfg = compose(root)  # what conf/ holds now, kept values included
        text = _dump(root)
    elif changed:
        for key, held, given in by_version(changed):
            warn(f"params.yaml held {key}: {_shown(held)}; conf/ gives {_shown(given)}, "
                 f"which it holds now. A change made in params.yaml does not last: put it "
                 f"in {_home(key)}.")
    write_text(text, out)
    ensure_reviews(root, (cfg.get("projects") or {}).keys())
    for line in model_folders(root, cfg):
        warn(line)
    _record_composed(root)
    return out


def by_version(changed: list[tuple[str, Any, Any]]) -> list[tuple[str, Any, Any]]:
    """``changed`` with a project's model settings said as one change of its model
    version (``projects.<name>.model``: the version names) where the version changed,
    as `dvc exp run -S 'model@projects.<name>.model=VERSION'` sets them."""
    versions = {key.split(".")[1]: (held, given) for key, held, given in changed
                if re.fullmatch(r"projects\.[^.]+\.model\.name", key)}
    out, said = [], set()
    for key, held, given in changed:
        parts = key.split(".")
        if parts[0] == "projects" and parts[2:3] == ["model"] and parts[1] in versions:
            if parts[1] not in said:
                said.add(parts[1])
                out.append((f"projects.{parts[1]}.model", *versions[parts[1]]))
            continue
        out.append((key, held, given))
    return out


def refusal(changed: list[tuple[str, Any, Any]], shown: int = 4) -> str:
    """One line: the values params.yaml holds that conf/ does not, and what to run."""
    homes = sorted({_home(key).split(" (")[0] for key, _, _ in changed})
    changed = by_version(changed)
    keys = [f"{key}: {_shown(held)} (conf/ gives {_shown(given)})"
            for key, held, given in changed[:shown]]
    if len(changed) > shown:
        keys.append(f"and {len(changed) - shown} more")
    return (f"params.yaml holds {len(changed)} value(s) that conf/ does not (from `dvc exp "
            f"apply`, or an edit): {'; '.join(keys)}. Keep them: `backfill compose --keep` "
            f"(writes them into {', '.join(homes)}); or drop them: `backfill compose "
            "--discard` (puts conf/'s values back). Nothing was changed.")


def model_folders(root: Path, cfg: DictConfig) -> list[str]:
    """Make ``data/models/<version>/`` for each version a project names: each project's
    predict stage depends on its version's folder, which DVC refuses to find missing (a
    version whose files are not copied yet then fails in predict, saying which file to
    copy). Returns one line per checkpoint kept outside its version's folder, whose
    changes `dvc repro` cannot see."""
    lines: dict[str, None] = {}
    for project in (cfg.get("projects") or {}).values():
        model = project.get("model") or {}
        version = str(model.get("name") or "")
        if not NAME_PATTERN.match(version):
            continue  # not a folder name: the version's own check says so
        folder = root / "data" / "models" / version
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            lines[f"cannot make data/models/{version}/ ({exc.strerror}): the predict "
                  f"stages of model version '{version}' need it."] = None
        for part in ("ranker", "crop"):
            checkpoint = (model.get(part) or {}).get("checkpoint")
            if not checkpoint:
                continue
            path = Path(str(checkpoint)).expanduser()
            path = path if path.is_absolute() else root / path
            if not path.resolve().is_relative_to(folder.resolve()):
                lines[f"model version '{version}' reads {checkpoint}, outside "
                      f"data/models/{version}/: `dvc repro` does not see it change. Move it "
                      f"there and name it so in conf/model/{version}.yaml."] = None
    return list(lines)


_ABSENT = object()


def _flat(tree: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def replaced_values(before: dict, composed: dict,
                    last: dict | None) -> list[tuple[str, Any, Any]]:
    """(key, value in ``before``, value in ``composed``) for each setting a compose
    replaced that was not what the last compose wrote (``last``); without ``last``,
    every setting both hold with different values. Absent: ``_ABSENT``."""
    b, c = _flat(before), _flat(composed)
    edited = None if last is None else _flat(last)
    out = []
    for key in sorted(b.keys() | c.keys()):
        held, given = b.get(key, _ABSENT), c.get(key, _ABSENT)
        if held == given:
            continue
        if edited is None:
            if held is _ABSENT or given is _ABSENT:
                continue  # a project added or removed in conf/, not an edit
        elif edited.get(key, _ABSENT) == held:
            continue  # as the last compose wrote it: conf/ changed since
        out.append((key, held, given))
    return out


def _shown(value: Any) -> str:
    return "(absent)" if value is _ABSENT else json.dumps(value, default=str)


def _home(key: str) -> str:
    """The conf/ file where a lasting change of ``key`` goes."""
    parts = key.split(".")
    if parts[0] == "projects" and len(parts) > 2:
        return f"conf/project/{parts[1]}.yaml (or conf/pipeline/default.yaml for every project)"
    if parts[0] == "train":
        return "conf/train/default.yaml"
    return f"conf/{CONFIG_NAME}.yaml"


def _record_composed(root: Path) -> None:
    """Note what conf/ held and what params.yaml was, so that a later compose can tell
    an edit of params.yaml from a change of conf/."""
    record = root / COMPOSED_FROM
    try:
        record.parent.mkdir(parents=True, exist_ok=True)
        tmp = record.with_name(f".{record.name}.{os.getpid()}")
        tmp.write_text(json.dumps({"conf": conf_digest(root),
                                   "params": (root / PARAMS_FILE).read_text()}))
        os.replace(tmp, record)
    except OSError:  # only a shortcut: without it freshness is judged by composing
        pass


def _composed_params(root: Path) -> Any:
    """params.yaml as the last compose wrote it (None: not known)."""
    text = composed_record(root).get("params")
    try:
        return yaml.safe_load(text) if isinstance(text, str) else None
    except yaml.YAMLError:
        return None


def _only(tree: dict, only: list[str] | None) -> dict:
    """``tree`` (a composition) with only the projects ``only`` names (all: None)."""
    if only is None:
        return tree
    projects = tree.get("projects") or {}
    return {**tree, "projects": {n: projects[n] for n in only if n in projects}}


def check_params_fresh(root: Path, only: list[str] | None = None) -> None:
    """Stop when conf/'s content changed since params.yaml was composed from it.

    While conf/ holds what it held at the last `backfill compose`, params.yaml is
    trusted even where it differs (`dvc exp run -S` overrides), as it is inside a
    `dvc exp run`, which composes today's conf/ itself. Otherwise params.yaml must equal
    what composing conf/ gives now. Content is compared, never modification times: a
    file restored by `cp -p`, `rsync -t` or `tar x` keeps an old time. With ``only``,
    only those projects (and the shared settings) are composed and compared.
    """
    params = root / PARAMS_FILE
    if not params.exists():
        raise UserError("params.yaml is missing: run `backfill compose`, then `dvc repro`.")
    if params_trusted(root):
        return
    current = _only(_read_params(root), only)
    if OmegaConf.to_container(compose(root, only=only), resolve=True) != current:
        which = "" if only is None else f" for {', '.join(only)}"
        raise UserError(
            f"params.yaml is stale{which}: conf/ changed since it was composed. Run "
            "`backfill compose` (then `dvc repro`), or use `dvc exp run`."
        )
    if only is None:
        _record_composed(root)


def _read_params(root: Path) -> dict:
    try:
        return yaml.safe_load((root / PARAMS_FILE).read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"params.yaml is not valid YAML ({str(exc).splitlines()[0]}): "
                          "run `backfill compose`.") from None


def load_params(root: Path, only: list[str] | None = None) -> DictConfig:
    """params.yaml, fresh and checked (a `dvc exp run -S` value is first seen here).

    With ``only``, just those projects (and the shared settings) are judged and kept:
    what a command that reads some projects needs, whatever another project's config
    holds."""
    return _checked_params(root, only)[0]


def _checked_params(root: Path, only: list[str] | None = None) -> tuple[DictConfig, Settings]:
    """params.yaml as load_params gives it, and the typed settings its check built."""
    check_params_fresh(root, only)
    cfg = OmegaConf.create(escaped(_only(_read_params(root), only)))  # literal text
    return cfg, checked(cfg)


@dataclass(frozen=True)
class Project:
    """One project's settings and the places its inputs and outputs live."""

    name: str
    root: Path  # the repository root
    cfg: DictConfig
    cache_dir: Path
    executor: str = "local"  # where embed and extract work: local or ray
    ray: RayConfig | None = None  # with executor ray: the cluster and how to use it
    typed_config: ProjectConfig | None = field(default=None, repr=False, compare=False)

    @cached_property
    def settings(self) -> ProjectConfig:
        """The project's settings, typed: every value of the type and range its section
        allows. From load_project, those params.yaml's check built; else typed here."""
        return self.typed_config or section(ProjectConfig, self.cfg, f"projects.{self.name}")

    def path(self, key: str) -> Path:
        """An input path from the project's config, relative paths taken from the root."""
        value = self.cfg.get(key)
        if value is None:
            raise UserError(
                f"project '{self.name}' has no {key}: set it in conf/project/{self.name}.yaml."
            )
        return self.locate(str(value))

    def locate(self, value: str) -> Path:
        """A path as configured or recorded (``recorded``): relative ones from the root."""
        p = Path(value).expanduser()
        return p if p.is_absolute() else self.root / p

    def recorded(self, key: str) -> str:
        """Input path ``key`` as outputs record it: relative to the root when it lies inside
        the repository, else as configured. Clones in other folders then write the same
        bytes; ``locate`` finds the file again."""
        where = Path(os.path.normpath(self.path(key)))
        try:
            return where.relative_to(os.path.normpath(self.root)).as_posix()
        except ValueError:
            return str(self.cfg.get(key))

    @property
    def case_sensitive(self) -> bool:
        """``names.case_sensitive`` as a yes/no: auto asks original_dir's file system."""
        from backfill.config.settings import NamesConfig
        from backfill.files.casing import case_sensitive

        names = section(NamesConfig, self.cfg.get("names") or {"case_sensitive": "auto"},
                        "names")
        return case_sensitive(names.case_sensitive, self.path("original_dir"))

    @property
    def out_dir(self) -> Path:
        return self.root / "data" / self.name

    @property
    def merged_db(self) -> Path:
        """The merge's DB: the production DB as publishing would leave it (as in dvc.yaml)."""
        return self.out_dir / MERGED_DB

    @property
    def report(self) -> Path:
        """validate's HTML report (as in dvc.yaml)."""
        return self.out_dir / REPORT

    def output(self, table: str) -> Path:
        """Where a stage's table lives: ``data/<project>/<table>.parquet`` (as in dvc.yaml)."""
        return self.out_dir / f"{table}.parquet"

    @property
    def reviews(self) -> Path:
        """Your answers in `backfill review` (as in dvc.yaml's extract deps)."""
        return reviews_file(self.root, self.name)

    def metrics(self, name: str) -> Path:
        """Where a metrics or plot file lives: ``metrics/<project>/<name>`` (as in dvc.yaml).

        Small files committed to git, not the git-ignored data/: every commit and every
        experiment then holds them, so `dvc exp show`, `dvc metrics diff` and `dvc plots
        diff` compare them, on a fresh clone too."""
        return self.root / "metrics" / self.name / name


# Every file a stage writes besides its tables, named once: readers ask the project for
# it, and the layout test checks each against dvc.yaml's outs, metrics and plots.
MERGED_DB = "ai_decisions.db"
REPORT = "report.html"
MODEL_METRICS = "model_metrics.json"  # predict: the model version's accuracy
MERGE_SUMMARY = "merge_summary.json"  # merge: added, filled, corrected, preserved
METRICS = "metrics.json"  # validate: counts by action, problems, DB rows
PLOTS = ("iou", "accuracy_by_stage", "picks")  # validate: plots/<name>.csv


def load_project(name: str, root: Path | None = None, alone: bool = False) -> Project:
    """Project ``name`` from params.yaml. ``alone``: judged on its own settings only, for
    commands that read (another project's broken config does not stop them)."""
    root = root or find_root()
    params, settings = _checked_params(root, [name] if alone else None)
    projects = params.get("projects") or {}
    if name not in projects:
        known = ", ".join(sorted(_read_params(root).get("projects") or {})) or "none yet"
        raise UserError(
            f"no project '{name}' in params.yaml (known: {known}). Add it with "
            "`backfill project add NAME --original-dir DIR --final-dir DIR`."
        )
    cache = Path(str(params.get("cache_dir", "data/cache"))).expanduser()
    return Project(name, root, projects[name], cache if cache.is_absolute() else root / cache,
                   settings.executor, settings.ray, settings.projects[name])
