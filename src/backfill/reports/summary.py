"""Summaries of projects' tables, for people: one row per project (``backfill summary``),
or one project in full (``backfill summary NAME --detail``)."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pandas as pd
import pyarrow.parquet as pq

from backfill.config.project import MERGE_SUMMARY, MODEL_METRICS, Project
from backfill.contracts.schemas import ACTIONS, TRUTH_ACTIONS
from backfill.contracts.tables import ContractError
from backfill.models.evaluate import percent
from backfill.production.publish import Waiting, waiting


def _section(title: str, rows: list[tuple[str, object]]) -> list[str]:
    width = max((len(k) for k, _ in rows), default=0)
    lines = [title]
    lines += [f"  {k:<{width}}  {v:>8,}" if isinstance(v, int) else f"  {k:<{width}}  {v}"
              for k, v in rows]
    return lines


def _reason_head(reason: str) -> str:
    """The kind of a reason, without the detail after a colon or in brackets."""
    if not isinstance(reason, str):
        return "-"
    head = reason.removeprefix("unreadable: ")
    return head.split(":")[0].split("(")[0].strip()


def summarize(project: Project) -> str:
    """What the pipeline knows about a project, from whatever tables exist so far."""
    lines = [f"== {project.name} ==  ({project.out_dir.relative_to(project.root)}/)"]
    scan_path = project.output("scan")
    if not scan_path.exists():
        return "\n".join(lines + ["  not scanned yet: run `dvc repro`"])
    scan = pd.read_parquet(scan_path)
    per_source = scan["source"].value_counts().sort_index()
    rows = [(f"{source} files", int(n)) for source, n in per_source.items()]
    rows += [(f"status {s}", int(n)) for s, n in scan["status"].value_counts().sort_index().items()]
    lines += _section("scan", rows)
    problems = scan[scan["status"] != "ok"]
    if len(problems):
        kinds = problems["reason"].map(_reason_head).value_counts()
        lines += _section("  files with problems, by kind", [(k, int(n)) for k, n in kinds.items()])
    groups_path = project.output("groups")
    if groups_path.exists():
        groups = pd.read_parquet(groups_path)
        ungrouped = pd.read_parquet(project.output("ungrouped"))
        sizes = groups["n_images"].value_counts().sort_index()
        rows = [("groups", len(groups))]
        rows += [(f"  of {k} images", int(n)) for k, n in sizes.items()]
        rows += [("ungrouped originals", len(ungrouped))]
        kinds = ungrouped["reason"].map(_reason_head).value_counts()
        rows += [(f"  {k}", int(n)) for k, n in kinds.items()]
        lines += _section("group", rows)
    truth_path = project.output("truth")
    if truth_path.exists():
        truth = pd.read_parquet(truth_path)
        finals = pd.read_parquet(project.output("finals"))
        actions = truth["user_action"].value_counts()
        rows = [(a, int(actions.get(a, 0))) for a in TRUTH_ACTIONS]
        rows += [("need review", int(truth["needs_review"].sum()))]
        kinds = truth["review_reason"].dropna().str.split("; ").explode().map(_reason_head)
        rows += [(f"  {k}", int(n)) for k, n in kinds.value_counts().items()]
        roles = finals["role"].value_counts()
        rows += [(f"finals {r}", int(roles.get(r, 0))) for r in ("kept", "copy", "extra", "orphan")]
        lines += _section("extract", rows)
    embeddings_path = project.output("embeddings")
    if embeddings_path.exists():
        model = pq.read_table(embeddings_path, columns=["model_id"]).column(0)
        rows = [("images embedded", len(model))]
        rows += [("model", model[0].as_py() if len(model) else "-")]
        lines += _section("embed", rows)
    metrics_path = project.metrics(MODEL_METRICS)
    if metrics_path.exists():
        m = json.loads(metrics_path.read_text())
        def share(key: str, n: str) -> str:
            return f"{percent(m[key])} of {m[n]:,}"

        iou = "n/a" if m["mean_iou"] is None else f"{m['mean_iou']:.3f}"
        lines += _section(f"predict (model version {m['model_version']})", [
            ("selection accuracy", share("selection_accuracy", "selection_n")),
            ("anomaly accuracy", share("anomaly_accuracy", "anomaly_n")),
            ("crop accuracy", share("crop_accuracy", "crop_n")),
            ("mean IoU", iou)])
    merge_path = project.metrics(MERGE_SUMMARY)
    if merge_path.exists():
        m = json.loads(merge_path.read_text())
        live = project.cfg.get("real_db") or "none (built from scratch)"
        rows = [("production DB", str(live)), ("matched", m["matched"]),
                ("added", m["added"] + m["imported"]), ("filled", m["filled"]),
                ("corrected", m["corrected"]), ("preserved timestamps", m["preserved_timestamps"]),
                ("rows after", m["rows_after"])]
        rows += [(k.removeprefix("issues_").replace("_", " "), v) for k, v in sorted(m.items())
                 if k.startswith("issues_")]
        lines += _section(f"merge (`backfill publish {project.name} --dry-run` shows the plan)",
                          rows)
    return "\n".join(lines)


# -- the table of many projects (`backfill summary`): one row each --------------------

ACTIONS_HEAD = "/".join(ACTIONS)  # approve/crop/reject
HEADERS = ("project", "groups", ACTIONS_HEAD, "needs review", "errors", "to publish")
WIDTH = 120  # the table fits this many columns: long names are cut to make room
STALE = "*"  # marks rows planned against a DB that has changed since


@dataclass(frozen=True)
class Figures:
    """One project's summary figures; None where the stage has not run yet."""

    name: str
    built: bool  # scanned at least
    groups: int | None = None
    actions: tuple[int, ...] | None = None  # per ACTIONS
    needs_review: int | None = None
    errors: int | None = None  # scan errors + merge issues
    waiting: int | None = None  # rows the merge plan would write to production
    current: bool | None = True  # the production DB unchanged since planning
    has_db: bool = False  # a real_db to publish to


def _merge_issues(project: Project) -> int | None:
    path = project.metrics(MERGE_SUMMARY)
    if not path.exists():
        return None
    m = json.loads(path.read_text())
    return sum(int(v) for k, v in m.items() if k.startswith("issues_"))


def _waiting(project: Project) -> Waiting | None:
    try:
        return waiting(project)
    except ContractError:
        return Waiting(0, None)  # a plan that does not read back: publish refuses it too


def figures(project: Project) -> Figures:
    """The figures of the table, from whatever tables exist so far."""
    scan_path = project.output("scan")
    if not scan_path.exists():
        return Figures(project.name, built=False)
    status = pq.read_table(scan_path, columns=["status"]).column(0).to_pandas()
    errors = int((status == "error").sum())
    issues = _merge_issues(project)
    groups_path = project.output("groups")
    groups = pq.read_metadata(groups_path).num_rows if groups_path.exists() else None
    actions = review = None
    truth_path = project.output("truth")
    if truth_path.exists():
        truth = pd.read_parquet(truth_path, columns=["user_action", "needs_review"])
        counts = truth["user_action"].value_counts()
        actions = tuple(int(counts.get(a, 0)) for a in ACTIONS)
        review = int(truth["needs_review"].sum())
    plan = _waiting(project)
    return Figures(project.name, True, groups, actions, review,
                   errors + (issues or 0), plan.rows if plan else None,
                   plan.current if plan else True, bool(project.cfg.get("real_db")))


def _number(n: int | None) -> str:
    return "-" if n is None else f"{n:,}"


def cells(f: Figures) -> tuple[str, ...]:
    actions = "-" if f.actions is None else "/".join(f"{n:,}" for n in f.actions)
    if not f.has_db:
        publish = "no DB"
    else:
        publish = _number(f.waiting) + ("" if f.current else STALE)
    return (f.name, _number(f.groups), actions, _number(f.needs_review), _number(f.errors),
            publish)


def _cut(name: str, width: int) -> str:
    return name if len(name) <= width else name[:width - 3] + "..."


def _total(rows: list[Figures]) -> Figures:
    def add(values: list[int | None]) -> int | None:
        known = [v for v in values if v is not None]
        return sum(known) if known else None

    built = [f for f in rows if f.built]
    actions = [f.actions for f in built if f.actions is not None]
    return Figures(
        "total", True, add([f.groups for f in built]),
        tuple(map(sum, zip(*actions, strict=True))) if actions else None,
        add([f.needs_review for f in built]), add([f.errors for f in built]),
        add([f.waiting for f in built]), all(f.current for f in built),
        any(f.has_db for f in built))


def table(rows: list[Figures]) -> str:
    """One line per project (and a total when there are several), numbers right-aligned;
    a project not built yet says so across its figures."""
    lines = [cells(f) if f.built else (f.name,) for f in rows]
    if len(rows) > 1:
        lines.append(cells(_total(rows)))
    widths = [max(len(r[i]) for r in [HEADERS, *lines] if len(r) > i)
              for i in range(len(HEADERS))]
    # The figures keep their width; the names get what is left of WIDTH.
    widths[0] = max(len(HEADERS[0]), min(widths[0], WIDTH - sum(widths[1:]) - 2 * len(widths[1:])))
    lines = [(_cut(r[0], widths[0]), *r[1:]) for r in lines]

    def line(row: tuple[str, ...]) -> str:
        if len(row) == 1:  # not built: the note takes the figures' place
            return f"{row[0]:<{widths[0]}}  not built yet: run `dvc repro`"
        return "  ".join([row[0].ljust(widths[0]),
                          *(c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True))])

    out = [line(HEADERS), *map(line, lines)]
    if len(rows) > 1:
        out.insert(-1, "-" * len(out[0]))
    notes = []
    if any(f.built and f.has_db and not f.current for f in rows):
        notes.append(f"{STALE} the production DB changed since these rows were planned (a "
                     "publish, the reviewer app) or cannot be read now: `dvc repro` plans "
                     "again.")
    if any(f.built and f.waiting for f in rows):
        notes.append("`backfill publish NAME --dry-run` shows what would be written.")
    notes.append("`backfill summary NAME --detail` shows a project stage by stage.")
    return "\n".join(out + notes)
