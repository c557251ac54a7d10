"""export: training pairs from past projects, in the v2 plan's format (JSONL and CSV).

One entry per group. A kept group is a 'selection': the kept render (chosen) against
the group's other renders (negatives), with its stage, whether it was cropped and
whether it is an anomaly (a lower stage than the highest kept; evaluate's definition).
A rejected group is a 'rejected' entry: every render a negative, nothing chosen
(the v2 plan: "Store as negative examples"). Decisions flagged needs_review are kept and
flagged, since they may be wrong, unless the caller leaves them out.

A group whose kept final cannot be read (truth action 'unreadable') is left out: its box
is unknown, and the v2 plan's entry says whether the image was cropped, which cannot be
told. Its pick is known, but an entry that teaches a half-known decision is worse than
none; the next export after the file is fixed (and `dvc repro`) includes it. So is a
group that kept nothing but holds renders that cannot be read ('broken_reject'): no
decision. No entry lists a render that cannot be read: such a render is no negative
(the entry is flagged, its reason names it), and an entry left with no negative is none.

JSONL nests the provenance under ``metadata``; CSV is flat, its list cells JSON arrays
and its empty cells null. Both read back to the same table (``read_jsonl``,
``read_csv``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from backfill.config.errors import UserError
from backfill.config.project import Project
from backfill.contracts.schemas import CROP_BOX, HELD, TrainingExportTable
from backfill.contracts.tables import read_stage_tables, validate
from backfill.files.atomic import write_text
from backfill.models.evaluate import anomalies, percent

# The historical extraction plan's training entry, plus what the entry is and
# whether it is an anomaly...
TOP = ["project", "kind", "timestamp", "chosen_path", "chosen_stage", "neg_paths",
       "neg_stages", "was_cropped", "anomaly"]
# ...and where it comes from, nested under "metadata" in JSONL.
METADATA = ["group_id", "user_action", "crop_box", "needs_review", "review_reason",
            "match_confidence", "final_path", "final_modified_at"]
COLUMNS = TOP + METADATA
LISTS = ["neg_paths", "neg_stages", "crop_box"]
BOOLS = ["was_cropped", "anomaly", "needs_review"]
FLOATS = ["chosen_stage", "match_confidence"]
FORMATS = ("jsonl", "csv")
COMBINED = "_all"  # project names cannot start with '_', so this file is never a project's


def _entry(project: str, row, original_dir: Path, final_dir: Path) -> dict:
    paths = [str(original_dir / p) for p in row.image_paths]
    stages = [float(s) for s in row.stages]
    kept = None if pd.isna(row.user_selected_index) else int(row.user_selected_index)
    unreadable = set(row.unreadable)
    others = [k for k in range(len(paths)) if k != kept and row.image_paths[k] not in unreadable]
    box = [float(getattr(row, c)) for c in CROP_BOX]
    return {
        "project": project,
        "kind": "rejected" if kept is None else "selection",
        "timestamp": row.first_timestamp,
        "chosen_path": None if kept is None else paths[kept],
        "chosen_stage": math.nan if kept is None else stages[kept],
        "neg_paths": [paths[k] for k in others],
        "neg_stages": [stages[k] for k in others],
        "was_cropped": row.user_action == "crop",
        "anomaly": bool(row.anomaly),
        "group_id": row.group_id,
        "user_action": row.user_action,
        "crop_box": None if any(math.isnan(v) for v in box) else box,
        "needs_review": bool(row.needs_review),
        "review_reason": None if pd.isna(row.review_reason) else row.review_reason,
        "match_confidence": math.nan if pd.isna(row.confidence) else float(row.confidence),
        "final_path": None if pd.isna(row.final_path) else str(final_dir / row.final_path),
        "final_modified_at": None if pd.isna(row.final_modified_at) else row.final_modified_at,
    }


def _table(rows: list[dict]) -> pd.DataFrame:
    """Rows as the contract's table; dtypes set so that an empty table passes too."""
    df = pd.DataFrame(rows, columns=COLUMNS)
    texts = [c for c in COLUMNS if c not in LISTS + BOOLS + FLOATS]
    df = df.astype({**dict.fromkeys(BOOLS, bool), **dict.fromkeys(FLOATS, float),
                    **dict.fromkeys(texts, "str")})  # None stays missing
    return validate(df.reset_index(drop=True), TrainingExportTable, "export")


def build_records(project: str, groups: pd.DataFrame, truth: pd.DataFrame,
                  original_dir: Path, final_dir: Path) -> pd.DataFrame:
    """Every group's training entry (TrainingExportTable), in group order; none for a
    group that holds no decision (HELD: its kept final, or with nothing kept one of its
    renders, cannot be read), nor for one whose only other renders cannot be read."""
    t = truth.merge(groups, on="group_id", how="inner", validate="one_to_one")
    if not len(t) == len(groups) == len(truth):
        raise UserError(f"project '{project}': truth.parquet and groups.parquet name "
                          f"different groups; run `dvc repro extract@{project}`.")
    t = t[~t["user_action"].isin(list(HELD))]
    t["anomaly"] = anomalies(t, groups).to_numpy()
    t = t.sort_values("group_id")
    entries = (_entry(project, r, original_dir, final_dir) for r in t.itertuples(index=False))
    return _table([e for e in entries if e["neg_paths"]])


def select(records: pd.DataFrame, exclude_needs_review: bool) -> pd.DataFrame:
    """The entries to write: all, or those whose decision is not flagged for review."""
    if not exclude_needs_review:
        return records
    return records[~records["needs_review"]].reset_index(drop=True)


def export_stats(records: pd.DataFrame, exclude_needs_review: bool) -> dict[str, int]:
    """The historical extraction plan's figures over the entries written; excluded
    ones are counted apart."""
    written = select(records, exclude_needs_review)
    chosen = written["kind"] == "selection"
    return {
        "groups": len(records),
        "with_winner": int(chosen.sum()),
        "rejected": int((~chosen).sum()),
        "anomaly": int(written["anomaly"].sum()),
        "cropped": int(written["was_cropped"].sum()),
        "needs_review": int(written["needs_review"].sum()),
        "excluded_needs_review": len(records) - len(written),
    }


def total_stats(stats: list[dict[str, int]]) -> dict[str, int]:
    """The figures of several projects (at least one) added up."""
    return {k: sum(s[k] for s in stats) for k in stats[0]}


def _share(n: int, of: int) -> str:
    return f"{n:,} ({percent(n / of if of else None)})"


def render_stats(title: str, s: dict[str, int], excluded: bool = False) -> str:
    """The historical extraction plan's statistics block: winner and rejected shares of
    all groups, anomaly
    and cropped shares of the groups with a winner."""
    lines = [
        f"{title}:",
        f"  Total groups: {s['groups']:,}",
        f"  Groups with winner: {_share(s['with_winner'], s['groups'])}",
        f"  Rejected: {_share(s['rejected'], s['groups'])}",
        f"  Anomaly cases (chose lower stage): {_share(s['anomaly'], s['with_winner'])}",
        f"  Cropped: {_share(s['cropped'], s['with_winner'])}",
    ]
    if excluded:  # --exclude-needs-review: say so even when none was flagged
        lines.append(f"  Needs review: {s['excluded_needs_review']:,} (excluded)")
    else:
        lines.append(f"  Needs review: {s['needs_review']:,} (included, flagged)")
    return "\n".join(lines)


def _plain(value):
    """A cell as JSON has it: numpy scalars and arrays made Python, NaN and NA made None."""
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    return value


def to_json_rows(records: pd.DataFrame) -> list[dict]:
    """Entries as JSONL writes them: the v2 plan's fields, provenance under 'metadata'."""
    rows = []
    for rec in records[COLUMNS].to_dict("records"):
        row = {k: _plain(rec[k]) for k in TOP}
        row["metadata"] = {k: _plain(rec[k]) for k in METADATA}
        rows.append(row)
    return rows


def from_json_rows(rows: list[dict]) -> pd.DataFrame:
    return _table([{**{k: r[k] for k in TOP}, **r["metadata"]} for r in rows])


def to_jsonl(records: pd.DataFrame) -> str:
    return "".join(json.dumps(row) + "\n" for row in to_json_rows(records))


def _csv_cell(column: str, value) -> str:
    value = _plain(value)
    if column in LISTS:
        return "" if value is None else json.dumps(value)
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)  # repr: exact floats


def to_csv(records: pd.DataFrame) -> str:
    cells = pd.DataFrame({c: [_csv_cell(c, v) for v in records[c]] for c in COLUMNS},
                         columns=COLUMNS)
    return cells.to_csv(index=False, lineterminator="\n")


def _from_csv_cell(column: str, text: str):
    if column in LISTS:
        return json.loads(text) if text else None
    if column in BOOLS:
        return text == "true"
    if column in FLOATS:
        return float(text) if text else math.nan
    return text or None


def read_jsonl(path: Path) -> pd.DataFrame:
    lines = path.read_text(encoding="utf-8").splitlines()
    return from_json_rows([json.loads(line) for line in lines if line])


def read_csv(path: Path) -> pd.DataFrame:
    raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    return _table([{c: _from_csv_cell(c, rec[c]) for c in COLUMNS}
                   for rec in raw.to_dict("records")])


def write_export(records: pd.DataFrame, out_dir: Path, stem: str,
                 formats: tuple[str, ...] = FORMATS) -> list[Path]:
    """``<out_dir>/<stem>.jsonl`` and/or ``.csv``, each written atomically."""
    render = {"jsonl": to_jsonl, "csv": to_csv}
    paths = []
    for fmt in formats:
        paths.append(out_dir / f"{stem}.{fmt}")
        write_text(render[fmt](records), paths[-1])
    return paths


def load_records(project: Project) -> pd.DataFrame:
    """A project's entries, from its groups and truth tables."""
    tables = read_stage_tables(project, ["groups", "truth"])
    groups, truth = tables["groups"], tables["truth"]
    # The folders as configured (relative to the repository when inside it), so an export
    # names no folder of this machine the user did not name.
    original, final = (Path(project.recorded(k)).expanduser()
                       for k in ("original_dir", "final_dir"))
    return build_records(project.name, groups, truth, original, final)


def run(projects: list[Project], out_dir: Path, formats: tuple[str, ...] = FORMATS,
        exclude_needs_review: bool = False, combined: bool = False) -> tuple[str, list[Path]]:
    """Write each project's files (and the combined ones); the statistics, and the files."""
    blocks, stats, written, files = [], [], [], []
    for p in projects:
        records = load_records(p)
        stats.append(export_stats(records, exclude_needs_review))
        written.append(select(records, exclude_needs_review))
        files += write_export(written[-1], out_dir, p.name, formats)
        blocks.append(render_stats(p.name, stats[-1], exclude_needs_review))
    if combined:
        both = pd.concat(written, ignore_index=True) if written else _table([])
        files += write_export(both, out_dir, COMBINED, formats)
    if len(projects) > 1:
        blocks.append(render_stats(f"Total ({len(projects)} projects)", total_stats(stats),
                                   exclude_needs_review))
    return "\n".join(blocks), files
