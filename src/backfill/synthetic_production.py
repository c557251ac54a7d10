"""A partial production DB for a synthetic project, as the reviewer and the crop tool
would have written it live: for the demo, the tests and the merge benchmark.

Only some groups are logged; row ids follow the reviewer's own form (so matching must go
by image names); timestamps and AI predictions are ones the files cannot show; some
cells are NULL (to be filled), some crops are wrong (to be corrected) or off by less
than the tolerance (to be kept). ``schema="old"`` writes the table before seed 003's
CHECKs and ``ai_crop_accepted``, with a 'skip' row as the old scripts wrote.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from backfill.decisiondb import COLUMNS, TABLE, create
from backfill.synthetic import SyntheticProject

OLD_COLUMNS = [c for c in COLUMNS if c != "ai_crop_accepted"]


def old_table() -> str:
    """The v3 table without its CHECKs and without ai_crop_accepted (before 2025-10-24)."""
    lines = [ln for ln in TABLE.strip().splitlines()
             if "CHECK(" not in ln and "ai_crop_accepted" not in ln]
    body = "\n".join(lines[:-1]).rstrip().rstrip(",")
    return f"{body}\n)"


@dataclass
class ProductionTruth:
    """What the generated DB holds and what a correct merge must do with it."""

    path: Path
    rows: dict[str, dict]  # production group_id -> the row as written
    first_timestamp: dict[str, str]  # production group_id -> its group's first render
    null_cells: dict[str, list[str]] = field(default_factory=dict)  # to be filled
    wrong_coords: set[str] = field(default_factory=set)  # to be corrected
    close_coords: set[str] = field(default_factory=set)  # within tolerance: kept
    skip_rows: set[str] = field(default_factory=set)


def _box(values) -> str:
    return json.dumps([round(float(v), 6) for v in values])


def make_production_db(project: SyntheticProject, path: Path, share: float = 0.6,
                       seed: int = 0, schema: str = "v3") -> ProductionTruth:
    """Write ``path`` logging ``share`` of ``project``'s groups as the live tools would."""
    rng = np.random.default_rng(seed)
    name = project.root.name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    conn = sqlite3.connect(path)
    if schema == "v3":
        create(conn)
        columns = COLUMNS
    else:
        conn.execute(old_table())
        columns = OLD_COLUMNS
    truth = ProductionTruth(path, {}, {})
    logged = [g for g in project.groups if rng.random() < share]
    for n, g in enumerate(logged):
        batch, index = n // 100, n % 100
        gid = f"{name}_group_{g.first_timestamp}_batch{batch:03d}_img{index:03d}"
        names = [Path(p).name for p in g.rel_paths]
        kept = g.kept_index
        ai = int(rng.integers(len(names))) if rng.random() < 0.7 else None
        with Image.open(project.original_dir / g.rel_paths[kept if kept is not None else 0]) as im:
            width, height = im.size
        day = 20 + n % 5
        row = dict.fromkeys(columns)
        row.update({
            "group_id": gid, "project_id": name, "images": json.dumps(names),
            "timestamp": f"2025-10-{day:02d}T{n % 24:02d}:{n % 60:02d}:{(7 * n) % 60:02d}Z",
            "directory": str(Path(g.rel_paths[0]).parent) if rng.random() < 0.5 else None,
            "batch_number": batch, "ai_selected_index": ai,
            "ai_confidence": None if ai is None else round(float(rng.uniform(0.3, 1)), 4),
            "ai_crop_coords": None if ai is None else _box(sorted(rng.uniform(0, 0.4, 2))
                                                           + sorted(rng.uniform(0.6, 1, 2))),
            "user_selected_index": kept if kept is not None else (ai or 0),
            "user_action": g.action, "image_width": width, "image_height": height,
        })
        if kept is not None:
            true = g.crop or [0.0, 0.0, 1.0, 1.0]
            fate = rng.random()
            if fate < 0.3:  # not cropped yet, or never logged: filled from the images
                truth.null_cells.setdefault(gid, []).append("final_crop_coords")
            else:
                box = np.array(true, float)
                if fate < 0.45:
                    box[2] = min(1.0, box[2] + 0.1) if box[2] < 0.9 else box[2] - 0.1
                    truth.wrong_coords.add(gid)
                elif fate < 0.6:
                    box[0] = max(0.0, box[0] - 0.004) if box[0] > 0.004 else box[0] + 0.004
                    truth.close_coords.add(gid)
                row["final_crop_coords"] = _box(box)
                row["crop_timestamp"] = f"2025-10-{day:02d}T23:{n % 60:02d}:00Z"
        if row["directory"] is None:
            truth.null_cells.setdefault(gid, []).append("directory")
        if schema != "v3" and g.action == "reject" and not truth.skip_rows:
            row["user_action"] = "skip"
            truth.skip_rows.add(gid)
        marks = ", ".join("?" * len(columns))
        conn.execute(f"INSERT INTO ai_decisions ({', '.join(columns)}) VALUES ({marks})",
                     [row[c] for c in columns])
        truth.rows[gid] = row
        truth.first_timestamp[gid] = g.first_timestamp
    conn.commit()
    conn.close()
    return truth
