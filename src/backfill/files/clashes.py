"""Render names held by more than one file: copies, and name clashes.

Names are how renders, finals and DB rows find one another, so one name should mean one
picture. Two files with one name in different subfolders are either copies (same
content) or a **name clash** (other content: two machines that wrote the same
timestamped names into their own folders). group keeps each clashing copy apart from
the other side's renders; extract decides by pixels which copy a final of that name
shows.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import pandas as pd


def _folder(rel_path: str) -> str:
    head = rel_path.rpartition("/")[0]
    return f"{head}/" if head else "the top folder"


# How names are compared: by default as they are; the stages pass the project's
# comparable form (accents composed, case aside where the file system ignores it).
NameKey = Callable[[str], str]


def _as_is(name: str) -> str:
    return name


def shared_names(files: pd.DataFrame, key: NameKey = _as_is
                 ) -> tuple[dict[str, str], dict[str, str]]:
    """Files that share their name with another: ``(copies, clashes)``, each
    ``rel_path -> reason``. ``copies``: identical copies but the first by path (grouped
    once, as that file); ``clashes``: the first copy by path of each content of a name
    that holds several.
    ``files`` has rel_path, name and content_hash; a copy with no hash (unreadable) is
    taken for other content, never for a copy. Names are compared by ``key``."""
    copies: dict[str, str] = {}
    clashes: dict[str, str] = {}
    keys = files["name"].map(key)
    dupes = files.assign(key=keys)[keys.duplicated(keep=False)].sort_values(
        "rel_path", kind="stable")
    for _, same_name in dupes.groupby("key", sort=True):
        name = same_name["name"].iat[0]
        paths = same_name["rel_path"].tolist()
        content = [h if isinstance(h, str) else f"unknown:{p}"
                   for h, p in zip(same_name["content_hash"], paths, strict=True)]
        first = dict(zip(reversed(content), reversed(paths), strict=True))  # by content
        copies.update({p: f"copy of {first[c]} (same name, same pixels): grouped once, "
                          "as that file" for p, c in zip(paths, content, strict=True)
                       if p != first[c]})
        if len(first) == 1:
            continue
        for mine, path in first.items():
            others = sorted({_folder(p) for c, p in first.items() if c != mine})
            clashes[path] = f"name clash: {name} also in {', '.join(others)} with other pixels"
    return copies, clashes


def _parting(a: list[str], b: list[str]) -> int:
    """How many leading folders two folder lists share."""
    return next((k for k, (x, y) in enumerate(zip(a, b, strict=False)) if x != y),
                min(len(a), len(b)))


def clash_folders(clashing: list[str], key: NameKey = _as_is) -> list[str]:
    """For each two copies of a clashing name, the folder on each side just below where
    their paths part (two machines' folders, say). ``clashing``: the rel_paths of every
    clashing copy."""
    by_name: dict[str, list[list[str]]] = {}
    for path in clashing:
        *folders, name = path.split("/")
        by_name.setdefault(key(name), []).append(folders)
    out = set()
    for copies in by_name.values():
        for a in copies:
            for b in copies:
                common = _parting(a, b)
                if a is not b and len(a) > common:
                    out.add("/".join(a[:common + 1]) + "/")
    return sorted(out)


TOP = ""  # the side of a clashing copy that sits where the other copies' paths part


def clash_sides(paths: Sequence[str], clashing: list[str], key: NameKey = _as_is
                ) -> list[dict[tuple[str, ...], str]]:
    """Each path's side of each clash it is under: ``{clash: side}``.

    A clash is the set of side folders (clash_folders) of one clashing name; names whose
    copies part at the same folders are one clash. A path's side is the deepest of the
    clash's folders holding it (a clashing copy at the top of its clash: TOP). A path
    under none of a clash's folders is on neither side of it (neutral)."""
    by_name: dict[str, list[str]] = {}
    for path in clashing:
        by_name.setdefault(key(path.rpartition("/")[2]), []).append(path)
    by_folder: dict[str, list[tuple[str, ...]]] = {}  # side folder -> its clashes
    tops: dict[str, list[tuple[str, ...]]] = {}  # clashing copy at the top -> its clashes
    for copies in by_name.values():
        clash = tuple(clash_folders(copies, key))
        for folder in clash:
            by_folder.setdefault(folder, []).append(clash)
        for p in copies:
            if not any(p.startswith(f) for f in clash):
                tops.setdefault(p, []).append(clash)
    out: list[dict[tuple[str, ...], str]] = []
    for path in paths:
        sides: dict[tuple[str, ...], str] = {}
        parts = path.split("/")[:-1]
        for depth in range(1, len(parts) + 1):  # shallow to deep: the deepest side wins
            folder = "/".join(parts[:depth]) + "/"
            sides.update(dict.fromkeys(by_folder.get(folder, ()), folder))
        for clash in tops.get(path, ()):
            sides.setdefault(clash, TOP)
        out.append(sides)
    return out


def visible(taken: Mapping[tuple[str, ...], str], sides: Mapping[tuple[str, ...], str]
            ) -> bool:
    """May a group that has taken files of ``taken`` sides take a file of ``sides``?
    Not when they are on two sides of one clash."""
    return all(taken.get(key, side) == side for key, side in sides.items())
