"""Rows of the tables extract reads, built by hand for small exact cases."""

from __future__ import annotations

import pandas as pd
from blake3 import blake3

from backfill.files.filenames import parse_name
from backfill.stages.extract.pairing import pair_finals

H = "a" * 64


def file_row(source: str, rel: str, content: str | None = H, mtime: int = 0,
             status: str = "ok", reason: str | None = None) -> dict:
    """A scan row; an original's content hash comes from its path (renders differ)."""
    name = rel.rsplit("/", 1)[-1]
    parsed = parse_name(name)
    if source == "original" and content == H:
        content = blake3(rel.encode()).hexdigest()
    return {"source": source, "rel_path": rel, "name": name, "ext": "." + name.split(".")[-1],
            "status": status, "reason": reason, "content_hash": content, "mtime_ns": mtime,
            "width": 100, "height": 80, "timestamp": parsed.timestamp, "stage": parsed.stage}


def group(gid: str, names: list[str]) -> dict:
    return {"group_id": gid, "image_names": names, "image_paths": [f"o/{n}" for n in names],
            "stages": [1.0, 2.0, 3.0][: len(names)], "unreadable": []}


def ungrouped_rows(reasons: dict[str, str]) -> pd.DataFrame:
    names = list(reasons)
    return pd.DataFrame({"name": pd.Series(names, dtype=str),
                         "timestamp": [parse_name(n).timestamp for n in names],
                         "stage": pd.Series([parse_name(n).stage for n in names], dtype=float),
                         "reason": pd.Series(list(reasons.values()), dtype=str)})


NO_UNGROUPED = ungrouped_rows({})


def pair(groups: list[dict], files: list[dict], ungrouped=NO_UNGROUPED):
    originals = [file_row("original", p) for g in groups for p in g["image_paths"]]
    pairs, finals = pair_finals(pd.DataFrame(groups), pd.DataFrame(originals + files), ungrouped)
    return pairs.set_index("group_id"), finals.set_index("rel_path")
