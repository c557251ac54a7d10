"""Setting a few keys in a hand-written YAML file, leaving every other byte as it was.

A config file is the user's: its comments, order, quoting and indentation are theirs. So
a value is set by replacing the text of that one value (its line keeps its comment), and
a key the file lacks is added as a line or two at the end of its section. The result is
read back and compared with what was meant; anything else is refused, never written.
"""

from __future__ import annotations

import re
from typing import Any

import yaml


class EditError(ValueError):
    """The file cannot be edited in place as asked (the message says which key)."""


def flow(value: Any) -> str:
    """``value`` as YAML on one line (flow style), as it would be written after a key."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10**9, sort_keys=False,
                          allow_unicode=True)
    return text.removesuffix("\n").removesuffix("\n...").strip()


def _find(node: yaml.Node, key: str) -> tuple[yaml.Node, yaml.Node] | None:
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode) and k.value == key:
                return k, v
    return None


def _last_end(node: yaml.Node) -> int:
    """Where the text of ``node`` ends: the end of its last scalar for a block collection
    (PyYAML's own end of a block runs on to the next key, over comments and blank lines)."""
    if isinstance(node, yaml.MappingNode | yaml.SequenceNode) and not node.flow_style \
            and node.value:
        last = node.value[-1]
        return _last_end(last[1] if isinstance(last, tuple) else last)
    return node.end_mark.index


def _line_end(text: str, index: int) -> int:
    end = text.find("\n", index)
    return len(text) if end < 0 else end


def _block(path: list[str], value: Any, indent: int) -> str:
    pad = " " * indent
    if len(path) == 1:
        return f"{pad}{path[0]}: {flow(value)}"
    return f"{pad}{path[0]}:\n" + _block(path[1:], value, indent + 2)


def _set_one(text: str, path: list[str], value: Any) -> str:
    root = yaml.compose(text) if text.strip() else None
    if root is None:
        sep = "" if text.endswith("\n") or not text else "\n"
        return text + sep + _block(path, value, 0) + "\n"
    node, depth = root, 0
    while depth < len(path):
        found = _find(node, path[depth])
        if found is None:
            break
        key_node, child = found
        if depth == len(path) - 1 or not isinstance(child, yaml.MappingNode):
            # The key itself, or a value that is no mapping (null, a scalar) where a
            # section is wanted: its text is replaced by the value, in flow style.
            rest = path[depth + 1:]
            new = value
            for part in reversed(rest):
                new = {part: new}
            if isinstance(child, yaml.ScalarNode) and child.style not in ("|", ">") \
                    and child.start_mark.index < child.end_mark.index:
                return text[:child.start_mark.index] + flow(new) + text[child.end_mark.index:]
            end = _last_end(child)
            return text[:key_node.end_mark.index] + f": {flow(new)}" + text[end:]
        node, depth = child, depth + 1
    if not isinstance(node, yaml.MappingNode):
        raise EditError(f"{'.'.join(path[:depth])} is not a section")
    if node.flow_style or not node.value:
        new = yaml.safe_load(text[node.start_mark.index:node.end_mark.index]) or {}
        sub = new
        for part in path[depth:-1]:
            sub = sub.setdefault(part, {})
        sub[path[-1]] = value
        return text[:node.start_mark.index] + flow(new) + text[node.end_mark.index:]
    indent = node.value[0][0].start_mark.column
    at = _line_end(text, _last_end(node))
    return text[:at] + "\n" + _block(path[depth:], value, indent) + text[at:] \
        + ("" if at < len(text) else "\n")


def set_keys(text: str, values: dict[str, Any]) -> str:
    """``text`` (a YAML mapping) with each dotted key of ``values`` set, and nothing else
    changed; EditError when that cannot be done, or cannot be read back as meant."""
    meant = yaml.safe_load(text) or {}
    for key, value in values.items():
        path = key.split(".")
        sub = meant
        for part in path[:-1]:
            if not isinstance(sub.get(part), dict):
                sub[part] = {}
            sub = sub[part]
        sub[path[-1]] = value
        try:
            text = _set_one(text, path, value)
        except yaml.YAMLError as exc:
            raise EditError(f"{key}: the file is not valid YAML ({exc})") from None
    try:
        got = yaml.safe_load(text)
    except yaml.YAMLError:
        got = None
    if got != meant:
        raise EditError(f"setting {', '.join(values)} in place would change more than "
                        "those keys")
    return text


_MODEL_LINE = re.compile(r"^(\s*-\s*/model@model\s*:\s*)(\S+)(.*)$", flags=re.M)


def set_model(text: str, version: str) -> str | None:
    """A project file's model version line (``- /model@model: NAME``) set to ``version``,
    or None when the file has no such line."""
    if len(_MODEL_LINE.findall(text)) != 1:
        return None
    return _MODEL_LINE.sub(lambda m: f"{m.group(1)}{version}{m.group(3)}", text)
