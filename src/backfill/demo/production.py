"""A partial production DB for a synthetic project, as the reviewer and the crop tool
would have written it live: for the demo, the tests and the merge benchmark.

Only some groups are logged; row ids follow the reviewer's own form (so matching must go
by image names); timestamps and AI predictions are ones the files cannot show; some
cells are NULL (to be filled), some crops are wrong (to be corrected) or off by less
than the tolerance (to be kept). ``schema="old"`` writes the table before the v3 plan's
CHECKs and ``ai_crop_accepted``, with a 'skip' row as the old scripts wrote.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from backfill.db.cells import BOX_DECIMALS, encode_box, encode_images, format_time
from backfill.db.schema import COLUMNS, TABLE, create
from backfill.demo.synthetic import STAGE_DELAY, STAGE_LABELS, STAGE_SETS, SyntheticProject

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
            "group_id": gid, "project_id": name, "images": encode_images(names),
            "timestamp": f"2025-10-{day:02d}T{n % 24:02d}:{n % 60:02d}:{(7 * n) % 60:02d}Z",
            "directory": str(Path(g.rel_paths[0]).parent) if rng.random() < 0.5 else None,
            "batch_number": batch, "ai_selected_index": ai,
            "ai_confidence": None if ai is None else round(float(rng.uniform(0.3, 1)), 4),
            "ai_crop_coords": None if ai is None else encode_box(sorted(rng.uniform(0, 0.4, 2))
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
                row["final_crop_coords"] = encode_box(box)
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



PROJECT = "bench"
T0 = datetime(2025, 7, 8, 6, 0, 0, tzinfo=UTC)  # groups 5 minutes apart from here
SIZES = {1.0: (832, 1216), 1.5: (832, 1216), 2.0: (1664, 2432), 3.0: (3072, 3072)}
MATCHED = 0.7  # share of the backfilled groups that match a production row


def _group(rng: np.random.Generator, k: int) -> dict:
    """Group ``k`` as the files show it: its renders, the person's pick and crop, and the
    AI's prediction."""
    t0 = T0 + timedelta(seconds=300 * k)
    stages = STAGE_SETS[int(rng.integers(len(STAGE_SETS)))]
    names = [f"{(t0 + timedelta(seconds=STAGE_DELAY[s])).strftime('%Y%m%d_%H%M%S')}_"
             f"{STAGE_LABELS[s]}.png" for s in stages]
    kept = None if rng.random() < 0.15 else int(rng.integers(len(stages)))
    if kept is None:
        action, box = "reject", None
    elif rng.random() < 0.4:
        action, box = "approve", [0.0, 0.0, 1.0, 1.0]
    else:
        action = "crop"
        box = list(np.concatenate([rng.uniform(0, 0.3, 2), rng.uniform(0.7, 1, 2)]))
    ai = int(rng.integers(len(stages)))
    width, height = SIZES[stages[kept if kept is not None else ai]]
    return {"k": k, "t0": t0, "names": names, "kept": kept, "action": action, "box": box,
            "ai": ai, "ai_confidence": round(float(rng.uniform(0.3, 1)), 4),
            "ai_box": list(np.concatenate([rng.uniform(0, 0.4, 2), rng.uniform(0.6, 1, 2)])),
            "width": width, "height": height,
            "directory": f"renders/batch_{k // 100:03d}"}


def backfill_row(g: dict, crop_tolerance: float) -> dict:
    """The merge stage's row for a group: its id form, the final's time, AI columns set."""
    when = format_time(g["t0"] + timedelta(minutes=40))  # the final's modification time
    kept = g["kept"]
    row = {
        "group_id": f"{PROJECT}_group_{g['t0'].strftime('%Y%m%d_%H%M%S')}",
        "timestamp": when, "project_id": PROJECT, "directory": g["directory"],
        "batch_number": None, "images": encode_images(g["names"]),
        "ai_selected_index": g["ai"], "ai_crop_coords": encode_box(g["ai_box"]),
        "ai_confidence": g["ai_confidence"],
        "user_selected_index": kept if kept is not None else g["ai"],
        "user_action": g["action"], "ai_crop_accepted": None,
        "final_crop_coords": None if g["box"] is None else encode_box(g["box"]),
        "crop_timestamp": None if g["box"] is None else when,
        "image_width": g["width"], "image_height": g["height"],
        "selection_match": None, "crop_match": None,
    }
    return _expected_flags(row, g["ai_box"], g["box"], crop_tolerance)


def production_row(rng: np.random.Generator, g: dict, n: int, crop_tolerance: float) -> dict:
    """The live tools' row for the same group: the reviewer's id form and log times, its
    own AI prediction (or none), and cells NULL or off as described above."""
    batch, index = n // 100, n % 100
    when = T0 + timedelta(days=100, seconds=97 * n)  # logged months later
    has_ai = rng.random() < 0.7
    ai = int(rng.integers(len(g["names"]))) if has_ai else None
    directory = g["directory"] if rng.random() < 0.6 else None
    ai_box = rng.uniform(0, 1, 4) if has_ai else None
    final_box = None
    kept = g["kept"]
    row = {
        "group_id": f"{PROJECT}_group_{g['t0'].strftime('%Y%m%d_%H%M%S')}"
                    f"_batch{batch:03d}_img{index:03d}",
        "timestamp": format_time(when), "project_id": PROJECT,
        "directory": directory, "batch_number": batch, "images": encode_images(g["names"]),
        "ai_selected_index": ai,
        "ai_crop_coords": encode_box(ai_box),
        "ai_confidence": round(float(rng.uniform(0.3, 1)), 4) if has_ai else None,
        "user_selected_index": kept if kept is not None else (ai or 0),
        "user_action": g["action"], "ai_crop_accepted": None,
        "final_crop_coords": None, "crop_timestamp": None,
        "image_width": g["width"], "image_height": g["height"],
        "selection_match": None, "crop_match": None,
    }
    if g["box"] is not None:
        fate = rng.random()
        if fate >= 0.3:  # below: not cropped yet (NULL, filled from the images)
            box = np.array(g["box"], float)
            if fate < 0.45:  # wrong by 0.1: corrected
                box[2] = box[2] + 0.1 if box[2] < 0.9 else box[2] - 0.1
            elif fate < 0.6:  # off by less than the tolerance: kept
                box[0] = box[0] + 0.004
            row["final_crop_coords"] = encode_box(box)
            row["crop_timestamp"] = format_time(when + timedelta(minutes=3))
            final_box = box
    return _expected_flags(row, ai_box, final_box, crop_tolerance)


def _expected_flags(row: dict, ai_box, final_box, crop_tolerance: float) -> dict:
    """selection_match and crop_match as the v3 plan defines them, from the generator's own
    values (not the merge's code, which the fixtures are there to test): NULL for a
    reject and where the AI made no prediction."""
    measured = row["user_action"] != "reject" and row["ai_selected_index"] is not None
    crop = None
    if measured and ai_box is not None and final_box is not None:
        # Rounded as the DB stores them, so the flag is the stored boxes'.
        ai, final = (np.round(np.asarray(b, float), BOX_DECIMALS) for b in (ai_box, final_box))
        crop = bool(np.all(np.abs(ai - final) <= crop_tolerance))
    return {**row,
            "selection_match": (row["ai_selected_index"] == row["user_selected_index"]
                                if measured else None),
            "crop_match": crop}


def decision_tables(n_rows: int, n_backfill: int, seed: int,
                    crop_tolerance: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(production rows, backfilled rows) with no images behind them, for the merge
    benchmark and the kill tests: production logs groups 0..n_rows-1 in another order;
    the backfill holds a random MATCHED share of them (cells NULL or off as
    production_row says) and new groups after them."""
    rng = np.random.default_rng(seed)
    n_matched = min(round(MATCHED * n_backfill), n_rows)
    groups = [_group(rng, k) for k in range(n_rows + n_backfill - n_matched)]
    production = [production_row(rng, groups[k], n, crop_tolerance) for n, k in
                  enumerate(rng.permutation(n_rows))]  # logged in another order
    matched = sorted(rng.choice(n_rows, n_matched, replace=False))
    backfill = [backfill_row(groups[k], crop_tolerance)
                for k in [*matched, *range(n_rows, len(groups))]]
    return (pd.DataFrame(production, columns=COLUMNS, dtype=object),
            pd.DataFrame(backfill, columns=COLUMNS, dtype=object))
