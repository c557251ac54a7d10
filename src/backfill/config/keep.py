"""Keeping an experiment: the values params.yaml holds that conf/ does not (after
`dvc exp apply`, or an edit) written into the conf/ files they belong to.

``projects.<name>.<key>`` goes to conf/project/<name>.yaml, ``train.<key>`` to the train
settings file conf/config.yaml names, any other key to conf/config.yaml. A project's
whole model section that is another version's goes in as that version's line in the
project's defaults list. Each file is edited in place (only those keys change), the
result must compose and pass the typed settings checks, and must give back exactly the
values kept; otherwise every file is put back as it was and nothing is kept.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from backfill.config.errors import UserError
from backfill.config.project import (
    _ABSENT,
    CONFIG_NAME,
    _flat,
    _shown,
    by_version,
    compose,
    write_params,
)
from backfill.config.yamledit import EditError, set_keys, set_model

_TRAIN = re.compile(r"^\s*-\s*train\s*:\s*(\S+)", flags=re.M)


def home(root: Path, key: str) -> tuple[Path, str]:
    """The conf/ file where ``key`` (dotted, as in params.yaml) is set, and its key there."""
    parts = key.split(".")
    if parts[0] == "projects" and len(parts) > 2:
        return root / "conf" / "project" / f"{parts[1]}.yaml", ".".join(parts[2:])
    config = root / "conf" / f"{CONFIG_NAME}.yaml"
    if parts[0] == "train" and len(parts) > 1:
        found = _TRAIN.search(config.read_text(encoding="utf-8"))
        if found:
            return root / "conf" / "train" / f"{found.group(1)}.yaml", ".".join(parts[1:])
    return config, key


def _composed(root: Path) -> dict[str, Any]:
    return _flat(OmegaConf.to_container(compose(root), resolve=True))


def _swap_models(root: Path, before: dict, keys: list[str], texts: dict[Path, str]) -> None:
    """For each project whose model settings changed and are, in params.yaml, a model
    version of conf/model/ (by its name), point the project's defaults line at it."""
    names = {k.split(".")[1] for k in keys if k.startswith("projects.") and
             k.split(".")[2:3] == ["model"]}
    for name in sorted(names):
        model = ((before.get("projects") or {}).get(name) or {}).get("model")
        version = model.get("name") if isinstance(model, dict) else None
        if not isinstance(version, str) or not (root / "conf" / "model" /
                                                 f"{version}.yaml").is_file():
            continue
        path = root / "conf" / "project" / f"{name}.yaml"
        text = texts.get(path, path.read_text(encoding="utf-8") if path.is_file() else None)
        swapped = None if text is None else set_model(text, version)
        if swapped is not None and swapped != text:
            texts[path] = swapped


def keep_values(root: Path, before: dict, changed: list[tuple[str, Any, Any]],
                last: dict | None, tell: Callable[[str], None]) -> list[Path]:
    """Write each (key, value in params.yaml, value conf/ gives) of ``changed`` into conf/
    so that composing conf/ gives params.yaml's value (``before``); ``last`` is params.yaml
    as the last compose wrote it (None: not known). Returns the files changed; ``tell``
    gets one line per file. UserError, with every file as it was, when one cannot be
    kept: a wrong value (the typed checks), a key conf/ changed as well since the last
    compose, a key params.yaml lacks."""
    was = _flat(last) if last is not None else None
    both = [k for k, _, given in changed if was is not None and was.get(k, _ABSENT) != given]
    if both:
        raise UserError(f"not kept: {', '.join(both)} changed in conf/ too since the last "
                          "compose; set the value you want in conf/ by hand, then run "
                          "`backfill compose --discard`. Nothing was changed.")
    held = {k: h for k, h, _ in changed}
    originals: dict[Path, str | None] = {}
    texts: dict[Path, str] = {}

    def write(new: dict[Path, str]) -> None:
        for path, text in new.items():
            if path not in originals:
                originals[path] = path.read_text(encoding="utf-8") if path.is_file() else None
            path.write_text(text, encoding="utf-8")

    try:
        _swap_models(root, before, list(held), texts)
        write(texts)
        now = _composed(root) if texts else None
        todo: dict[Path, dict[str, Any]] = {}
        by_line = set()
        for key, value in held.items():
            if now is not None and now.get(key, _ABSENT) == value:
                by_line.add(key)  # the model version's line gave it
                continue
            if value is _ABSENT:
                raise UserError(f"not kept: params.yaml has no {key}, which conf/ sets "
                                  f"({home(root, key)[0].relative_to(root)}); remove it there "
                                  "by hand, or run `backfill compose --discard`. Nothing was "
                                  "changed.")
            path, inner = home(root, key)
            if not path.is_file():
                raise UserError(f"not kept: {key} belongs in {path.relative_to(root)}, which "
                                  "does not exist (is the project registered?). Nothing was "
                                  "changed.")
            todo.setdefault(path, {})[inner] = value
        edited = {}
        for path, values in todo.items():
            try:
                edited[path] = set_keys(texts.get(path, path.read_text(encoding="utf-8")),
                                        values)
            except EditError as exc:
                raise UserError(f"not kept: {path.relative_to(root)} cannot be edited in "
                                  f"place ({exc}); set the values there by hand. Nothing was "
                                  "changed.") from None
        write(edited)
        texts.update(edited)
        try:
            now = _composed(root)  # the typed settings checks, on the kept values
        except UserError as exc:
            raise UserError(f"not kept: {exc}. Nothing was changed.") from None
        wrong = [k for k, v in held.items() if now.get(k, _ABSENT) != v]
        if wrong:
            raise UserError(f"not kept: with the values written, conf/ does not give "
                              f"params.yaml's {', '.join(wrong)} (set elsewhere in conf/?); "
                              "set them by hand. Nothing was changed.")
    except BaseException:  # Ctrl-C too: conf/ is left as it was
        for path, text in originals.items():
            if text is None:
                path.unlink(missing_ok=True)
            else:
                path.write_text(text, encoding="utf-8")
        raise
    for path in texts:
        mine = [*by_version([(k, v, None) for k, v in held.items() if k in by_line and
                             home(root, k)[0] == path]),
                *((k, v, None) for k, v in held.items() if k not in by_line and
                  home(root, k)[0] == path)]
        tell(f"kept in {path.relative_to(root)}: " + "; ".join(
            f"{k} = {_shown(v)}" for k, v, _ in mine))
    return list(texts)


def compose_params(root: Path, edits: str) -> tuple[Path, list[Path]]:
    """`backfill compose`: conf/ into params.yaml (``edits`` as write_params takes it,
    keeping with keep_values), and the conf/ files that keeping changed, to commit."""
    conf = {p: p.read_bytes() for p in (root / "conf").rglob("*.yaml")}
    out = write_params(root, edits=edits, keeper=keep_values)
    return out, sorted(p for p, text in conf.items()
                       if not p.is_file() or p.read_bytes() != text)
