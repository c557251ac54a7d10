"""The one-screen summary of a project's tables, for people (``backfill summary``)."""

from __future__ import annotations

import json

import pandas as pd
import pyarrow.parquet as pq

from backfill.config.project import Project
from backfill.contracts.schemas import TRUTH_ACTIONS
from backfill.models.evaluate import percent


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
    metrics_path = project.metrics("model_metrics.json")
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
    merge_path = project.metrics("merge_summary.json")
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
