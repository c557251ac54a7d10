"""validate: the last stage. Every table against its contract, the emitted DB against
the guide's checks; then the project's metrics and plot data for DVC, and the report.

A failed check stops the stage (and `dvc repro`) with the table, column or check, the
failing values and their count. Rows that come from production as the person's tools
wrote them are the person's record: what they break is a warning in the report, never a
reason to stop (the merge reports and leaves them).

A group whose kept final cannot be read (truth action 'unreadable') is in no ai_decisions
row of this run: the merge reports it as final_unreadable and the report lists it, so it
is accounted for; metrics count it apart (unreadable_finals), the counts by action are
those of the DB's actions. So is a group that kept nothing but holds renders that cannot
be read (truth action 'broken_reject', merge issue broken_reject, broken_rejects). Run
before the merge, the stage says to run it.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from backfill.config.errors import UserError
from backfill.config.project import METRICS, PLOTS, Project
from backfill.config.settings import EvaluateConfig
from backfill.contracts.plan import group_endings, unaccounted
from backfill.contracts.schemas import BROKEN_REJECT, FULL_FRAME, HELD, TABLES, UNREADABLE
from backfill.contracts.tables import ContractError, read_table
from backfill.db.cells import (
    comparable_name,
    decode_box,
    encode_images,
    image_names,
    name_keys,
)
from backfill.db.schema import ACTIONS, read_rows, violations
from backfill.files.atomic import write_json, write_text
from backfill.models.evaluate import evaluate, scored


@dataclass
class Finding:
    check: str
    severity: str  # error: stops the stage; warning: shown in the report
    group_ids: list[str] = field(default_factory=list)
    detail: str = ""

    def line(self, limit: int = 5) -> str:
        shown = ", ".join(self.group_ids[:limit])
        more = f" (+{len(self.group_ids) - limit} more)" if len(self.group_ids) > limit else ""
        return f"{self.check}: {len(self.group_ids)} row(s){': ' + shown if shown else ''}{more}" \
               f"{' - ' + self.detail if self.detail else ''}"




def check_inputs(project: Project) -> None:
    """Stop with one line when validate runs before the stages that make its inputs.

    `dvc repro merge@<p>` makes them all: it runs every stage before the merge (scan,
    group, extract, embed, predict), and those write every other table too."""
    wanted = [project.output(name) for name in TABLES] + [project.merged_db]
    missing = [p for p in wanted if not p.exists()]
    if not missing:
        return
    names = [str(p.relative_to(project.root)) + (" (the merged DB)" if p == project.merged_db
                                                  else "") for p in missing]
    raise UserError(f"project '{project.name}' has no {', '.join(names)}: run "
                      f"`dvc repro merge@{project.name}` first (it runs the stages before it).")


def read_tables(project: Project) -> tuple[dict[str, pd.DataFrame], list[str]]:
    """Every stage table, validated lazily; a broken one is an error."""
    tables, errors = {}, []
    for name, schema in TABLES.items():
        try:
            tables[name] = read_table(project.output(name), schema, name)
        except ContractError as exc:
            errors.append(str(exc))
    return tables, errors


def _coords(values: pd.Series) -> np.ndarray:
    """Stored boxes as rows of 4 numbers, NaN where a box is missing or malformed."""
    out = np.full((len(values), 4), np.nan)
    for i, v in enumerate(values):
        box = decode_box(v)
        if box is not None:
            out[i] = box
    return out


def check_unreadable(truth: pd.DataFrame, issues: pd.DataFrame,
                     provenance: pd.DataFrame) -> list[Finding]:
    """Groups whose kept final cannot be read, and rejects of groups with unreadable
    renders: each reported by the merge (final_unreadable, broken_reject), none written
    to the DB from the files."""
    written = set(provenance.loc[provenance["source"] == "backfill", "backfill_group_id"])
    findings = []
    for action, kind in HELD.items():
        what = {UNREADABLE: "unreadable finals", BROKEN_REJECT: "broken rejects"}[action]
        held = set(truth.loc[truth["user_action"] == action, "group_id"])
        reported = set(issues.loc[issues["kind"] == kind, "group_id"])
        if held - reported:
            findings.append(Finding(f"{what} the merge did not report", "error",
                                    sorted(held - reported), f"expected kind {kind}"))
        if held & written:
            findings.append(Finding(f"{what} written to the DB", "error", sorted(held & written),
                                    "the files prove no decision"))
    return findings


def check_decisions(rows: pd.DataFrame, sources: pd.Series, scan_names: set[str],
                    approve_tolerance: float, case_sensitive: bool = False
                    ) -> list[Finding]:
    """The backfill guide's validation queries and this project's own invariants over the emitted
    rows. ``sources``: per row, where it came from (production rows only warn).
    ``case_sensitive``: whether names that differ only in case are two names."""
    # A matched row keeps the person's values wherever the files had nothing to add.
    live = sources.isin(["production", "legacy_csv", "merged"]).to_numpy()
    findings = []

    def add(check: str, bad: np.ndarray, detail: str = "") -> None:
        for severity, mask in (("error", bad & ~live), ("warning", bad & live)):
            if mask.any():
                findings.append(Finding(check, severity, rows.loc[mask, "group_id"].tolist(),
                                        detail))

    add("crop rows without coordinates",
        ((rows["user_action"] == "crop") & rows["final_crop_coords"].isna()).to_numpy(),
        "the backfill guide's check: should be 0")
    coords = _coords(rows["final_crop_coords"])
    off = np.nan_to_num(np.abs(coords - FULL_FRAME).max(axis=1), nan=0.0) > approve_tolerance
    add("approve rows not at full frame", (rows["user_action"] == "approve").to_numpy() & off,
        f"a coordinate more than {approve_tolerance} from [0, 0, 1, 1]")
    broken = violations(rows)
    add("rows breaking the v3 plan's CHECKs", rows["group_id"].isin(broken["group_id"]).to_numpy(),
        "; ".join(broken["detail"].head(3)))
    # Names as the merge matched them: any form older tools wrote, accents composed,
    # folder prefixes (and case, unless told apart) aside, or the render's stem for a
    # name logged with another extension.
    known = name_keys(encode_images(sorted(scan_names)), case_sensitive)
    missing = rows["images"].map(lambda s: any(
        not name_keys(encode_images([n]), case_sensitive) & known
        for n in image_names(s))).to_numpy()
    add("rows naming images the scan did not find", missing)
    # One image, one decision: a name (compared as everywhere) that two rows claim. The
    # merge never adds such a row; two of the person's own rows only warn.
    keys = [{comparable_name(n, case_sensitive) for n in image_names(s)}
            for s in rows["images"]]
    counts = pd.Series([k for ks in keys for k in ks], dtype=object).value_counts()
    claimed = {k for k, n in counts.items() if n > 1}
    add("image names claimed by two rows", np.array([bool(ks & claimed) for ks in keys],
                                                    dtype=bool),
        ", ".join(sorted(claimed)[:3]))
    return findings


def check_accounted(groups: pd.DataFrame, provenance: pd.DataFrame,
                    issues: pd.DataFrame) -> list[Finding]:
    """Every group ends exactly one way, as the merge decides it (group_endings): merged
    into a live row, added as a new row, or reported and left out; and is in the DB
    at most once."""
    written = provenance.dropna(subset=["backfill_group_id"])
    endings = group_endings(
        groups["group_id"], written.loc[written["source"] == "merged", "backfill_group_id"],
        written.loc[written["source"] == "backfill", "backfill_group_id"], issues)
    lost, several = unaccounted(endings)
    findings = []
    if lost:
        findings.append(Finding("groups missing from the DB", "error", lost,
                                "neither merged, added nor reported"))
    if several:
        findings.append(Finding("groups that ended more than one way", "error", several,
                                "each is merged, added or reported, only one"))
    ids = written["backfill_group_id"]
    twice = ids[ids.duplicated(keep=False)]
    if len(twice):
        findings.append(Finding("groups in the DB twice", "error", sorted(set(twice))))
    return findings


@dataclass
class Emitted:
    rows: pd.DataFrame
    provenance: pd.DataFrame
    integrity: str


def read_emitted(path: Path) -> Emitted:
    """The merged DB (read-only); sqlite3.Error when it is not one the merge wrote."""
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        rows, _ = read_rows(conn)
        provenance = pd.read_sql_query("SELECT * FROM backfill_provenance", conn)
        integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
    except pd.errors.DatabaseError as exc:  # pandas wraps SQLite's error
        raise sqlite3.DatabaseError(str(exc)) from None
    finally:
        conn.close()
    return Emitted(rows, provenance, integrity)


# The model version's figures: predict's model_metrics.json holds them for DVC; the
# report shows them beside the project's counts.
QUALITY = ("selection_accuracy", "anomaly_accuracy", "crop_accuracy", "mean_iou",
           "selection_n", "anomaly_n", "crop_n")


def project_metrics(tables: dict[str, pd.DataFrame], emitted: Emitted,
                    findings: list[Finding]) -> dict:
    """The figures `dvc metrics show/diff` compares across projects, commits and runs.

    The model's figures are left to model_metrics.json: a name in two metrics files
    makes `dvc exp show` prefix it with the file's path, too wide for a terminal."""
    truth, scan = tables["truth"], tables["scan"]
    actions = truth["user_action"].value_counts()
    return {
        "groups": int(len(truth)),
        **{a: int(actions.get(a, 0)) for a in ACTIONS},  # the DB's actions
        "unreadable_finals": int(actions.get(UNREADABLE, 0)),  # in no DB row: see the report
        "broken_rejects": int(actions.get(BROKEN_REJECT, 0)),  # likewise
        "needs_review": int(truth["needs_review"].sum()),
        "orphans": int((tables["finals"]["role"] == "orphan").sum()),
        "unreadable_files": int((scan["status"] == "error").sum()),
        "db_rows": int(len(emitted.rows)),
        "warnings": int(sum(len(f.group_ids) for f in findings if f.severity == "warning")),
    }


def plot_data(tables: dict[str, pd.DataFrame], settings: EvaluateConfig) -> dict[str, pd.DataFrame]:
    """Plot tables for `dvc plots`: IoU distribution, accuracy by kept stage, and the AI's
    pick against the person's by stage."""
    s = scored(tables["truth"], tables["groups"], tables["predictions"], settings)
    edges = np.linspace(0, 1, 11)
    counts, _ = np.histogram(s.loc[s["boxed"], "iou"].to_numpy(float), bins=edges)
    labels = [f"{a:.1f}-{b:.1f}" for a, b in zip(edges[:-1], edges[1:], strict=True)]
    iou_bins = pd.DataFrame({"iou": labels, "decisions": counts})
    by_stage = (s.groupby("kept_stage")["right"].agg(["mean", "size"]).reset_index()
                .rename(columns={"mean": "selection_accuracy", "size": "decisions"}))
    by_stage["kept_stage"] = by_stage["kept_stage"].map(lambda v: f"stage {v:g}")
    picks = pd.DataFrame({"ai_stage": s["ai_stage"].map(
        lambda v: "none" if v is None or pd.isna(v) else f"stage {v:g}"),
        "user_stage": s["kept_stage"].map(lambda v: f"stage {v:g}")})
    return {"iou": iou_bins, "accuracy_by_stage": by_stage, "picks": picks}


def run(project: Project) -> str:
    from backfill.reports.report import write_report

    started = time.perf_counter()
    check_inputs(project)
    tables, errors = read_tables(project)
    db = project.merged_db
    emitted = None
    try:
        emitted = read_emitted(db)
    except sqlite3.Error as exc:  # the merge's own output, gone bad: rebuilding fixes it
        raise UserError(f"the merged DB {db.relative_to(project.root)} cannot be read "
                        f"({exc}): run `dvc repro merge@{project.name}` to rebuild it") from None
    if errors:
        raise ContractError(f"validate {project.name}: {len(errors)} check(s) failed\n"
                            + "\n".join(errors))
    if emitted.integrity != "ok":
        errors.append(f"{db.name}: PRAGMA integrity_check says {emitted.integrity}")
    sources = emitted.rows["group_id"].map(emitted.provenance.set_index("group_id")["source"])
    originals = tables["scan"].loc[tables["scan"]["source"] == "original", "name"]
    findings = check_decisions(
        emitted.rows, sources.fillna("production"), set(originals),
        project.settings.extract.approve_tolerance, project.case_sensitive)
    findings += check_accounted(tables["groups"], emitted.provenance, tables["merge_issues"])
    findings += check_unreadable(tables["truth"], tables["merge_issues"], emitted.provenance)
    errors += [f.line() for f in findings if f.severity == "error"]
    if errors:
        raise ContractError(f"validate {project.name}: {len(errors)} check(s) failed\n  - "
                            + "\n  - ".join(errors))
    settings = project.settings.evaluate
    metrics = project_metrics(tables, emitted, findings)
    write_json(metrics, project.metrics(METRICS))
    plots = plot_data(tables, settings)
    for name in PLOTS:  # dvc.yaml declares each
        write_text(plots[name].to_csv(index=False), project.metrics(f"plots/{name}.csv"))
    quality = evaluate(tables["truth"], tables["groups"], tables["predictions"], settings)
    report = write_report(project, tables, {**metrics, **{k: quality[k] for k in QUALITY}},
                          findings, plots)
    warned = sum(len(f.group_ids) for f in findings)
    return (f"validate {project.name}: {len(TABLES)} tables and {len(emitted.rows):,} DB rows "
            f"pass; {warned:,} warning(s) on production rows; "
            f"{time.perf_counter() - started:.1f}s -> {report.relative_to(project.root)}")
