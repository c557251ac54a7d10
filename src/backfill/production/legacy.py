"""The person's older records (the v3 plan): ``{project}_decisions.csv`` decision logs, and
the ``.decision`` sidecars the reviewer leaves beside files it routes to ``crop/``,
``crop_auto/`` and ``selected/``.

The CSV is read into v3 rows so that it can stand as a production source; the sidecars
answer the v3 plan's ``ai_crop_accepted`` backfill rule. Pure readers: nothing is written.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from backfill.db.cells import (
    comparable_name,
    encode_box,
    encode_images,
    image_names,
    read_flag,
)
from backfill.db.schema import COLUMNS

IMAGE_COLUMNS = [f"image_{i}_filename" for i in range(1, 5)]
AI_BOX = ["ai_crop_x1", "ai_crop_y1", "ai_crop_x2", "ai_crop_y2"]
FINAL_BOX = ["final_crop_x1", "final_crop_y1", "final_crop_x2", "final_crop_y2"]
REQUIRED = ["group_id", "timestamp", "user_selected_index", "user_action", *IMAGE_COLUMNS[:1]]
INTEGERS = ["batch_number", "ai_selected_index", "user_selected_index", "image_width",
            "image_height"]


def _box(frame: pd.DataFrame, cols: list[str]) -> list[str | None]:
    if not set(cols) <= set(frame.columns):
        return [None] * len(frame)
    values = frame[cols].apply(pd.to_numeric, errors="coerce").to_numpy(float)
    return [encode_box(row) for row in values]


def _integers(s: pd.Series) -> pd.Series:
    n = pd.to_numeric(s, errors="coerce")
    whole = n.notna() & (n == n.round())
    return pd.Series([int(v) if ok else None for v, ok in zip(n, whole, strict=True)],
                     index=s.index, dtype=object)


def read_decisions_csv(path: Path, project: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(v3 rows, problems) from a v3 decision log. Rows the CSV cannot fill
    (no group id, no images, an unreadable index) are problems, not rows."""
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} cannot be read as a decision CSV: {exc}") from None
    missing = [c for c in REQUIRED if c not in raw.columns]
    if missing:
        raise ValueError(f"{path} lacks the columns {missing} of the v3 plan's decision log "
                         f"header (group_id, timestamp, ..., {', '.join(IMAGE_COLUMNS)}, ...)")
    raw = raw.replace("", None)
    rows = pd.DataFrame({c: pd.Series([None] * len(raw), dtype=object) for c in COLUMNS})
    for col in COLUMNS:
        if col in raw.columns:
            rows[col] = raw[col].astype(object)
    rows["project_id"] = rows["project_id"].fillna(project)
    names = raw[[c for c in IMAGE_COLUMNS if c in raw.columns]]
    rows["images"] = [encode_images(n for n in r if isinstance(n, str)) for r in
                      names.itertuples(index=False)]
    for col in INTEGERS:
        rows[col] = _integers(rows[col])
    rows["ai_confidence"] = pd.Series([None if pd.isna(v) else float(v) for v in
                                       pd.to_numeric(rows["ai_confidence"], errors="coerce")],
                                      dtype=object)
    for col in ("ai_crop_accepted", "selection_match", "crop_match"):
        rows[col] = rows[col].map(read_flag).astype(object)
    rows["ai_crop_coords"] = _box(raw, AI_BOX)
    rows["final_crop_coords"] = _box(raw, FINAL_BOX)
    bad = pd.Series("", index=rows.index)
    bad[rows["group_id"].isna()] = "no group_id"
    bad[(bad == "") & (rows["images"] == "[]")] = "no image file names"
    bad[(bad == "") & rows["user_selected_index"].isna()] = "user_selected_index unreadable"
    bad[(bad == "") & rows["timestamp"].isna()] = "no timestamp"
    bad[(bad == "") & rows["group_id"].duplicated(keep="first")] = "group_id repeated"
    problems = pd.DataFrame({"group_id": rows.loc[bad != "", "group_id"].fillna(""),
                             "detail": [f"{path.name} line {i + 2}: {why}"
                                        for i, why in bad[bad != ""].items()]})
    rows = rows[bad == ""].reset_index(drop=True).astype(object)
    return rows.where(rows.notna(), None), problems.reset_index(drop=True)


@dataclass(frozen=True)
class ReviewFolders:
    """What lies in the reviewer's routing folders: image stems per folder, and the
    sidecars (by stem and by the group_id they name) per folder. Stems are held and
    looked up composed (NFC), as every name is compared."""

    images: dict[str, frozenset[str]] = field(default_factory=dict)
    sidecar_stems: dict[str, frozenset[str]] = field(default_factory=dict)
    sidecar_groups: dict[str, frozenset[str]] = field(default_factory=dict)

    def has_image(self, folder: str, stem: str) -> bool:
        return comparable_name(stem) in self.images.get(folder, frozenset())

    def has_sidecar(self, folder: str, stem: str, group_id: str) -> bool:
        return (comparable_name(stem) in self.sidecar_stems.get(folder, frozenset())
                or group_id in self.sidecar_groups.get(folder, frozenset()))


def read_review_folders(root: Path, folders: list[str],
                        extensions: list[str]) -> tuple[ReviewFolders, list[str]]:
    """Index ``root/<folder>`` for each folder; unreadable sidecars are listed, not fatal."""
    images, stems, groups, problems = {}, {}, {}, []
    exts = {e.lower() for e in extensions}
    for folder in folders:
        base = root / folder
        files = [p for p in base.rglob("*") if p.is_file()] if base.is_dir() else []
        images[folder] = frozenset(comparable_name(p.stem) for p in files
                                   if p.suffix.lower() in exts)
        sidecars = [p for p in files if p.suffix == ".decision"]
        stems[folder] = frozenset(comparable_name(p.stem) for p in sidecars)
        named = set()
        for p in sidecars:
            try:
                gid = json.loads(p.read_text(encoding="utf-8")).get("group_id")
            except (OSError, ValueError, AttributeError) as exc:
                problems.append(f"{p}: unreadable sidecar ({exc.__class__.__name__})")
                continue
            if isinstance(gid, str):
                named.add(gid)
        groups[folder] = frozenset(named)
    return ReviewFolders(images, stems, groups), problems


def crop_acceptance(rows: pd.DataFrame, review: ReviewFolders, accepted: str,
                    declined: str) -> pd.Series:
    """The v3 decisions plan's ai_crop_accepted backfill rule, for rows where it is NULL: True when
    the approved AI pick sits in ``accepted`` (crop_auto/) with a sidecar; False when it
    sits in ``declined`` (selected/) and no sidecar in ``accepted`` names it; else NULL."""
    out = pd.Series([None] * len(rows), index=rows.index, dtype=object)
    pick = pd.to_numeric(rows["user_selected_index"], errors="coerce")
    eligible = (rows["ai_crop_coords"].notna() & (rows["user_action"] == "approve")
                & (pd.to_numeric(rows["ai_selected_index"], errors="coerce") == pick)
                & rows["ai_crop_accepted"].isna())
    for i in rows.index[eligible]:
        try:
            name = image_names(rows.at[i, "images"])[int(pick[i])]
        except (TypeError, ValueError, IndexError):
            continue
        stem, gid = Path(str(name)).stem, rows.at[i, "group_id"]
        if review.has_image(accepted, stem) and review.has_sidecar(accepted, stem, gid):
            out[i] = True
        elif review.has_image(declined, stem) and not review.has_sidecar(accepted, stem, gid):
            out[i] = False
    return out
