"""compare: several model versions measured on the same recovered decisions.

Each version predicts every group of each project from the same embeddings; the figures
are evaluate's (the v3 plan's measures), per project and pooled over all of them ("all").
Written as a CSV table and as DVC metrics, so `dvc metrics show/diff` reads them too.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf

from backfill.config.errors import UserError
from backfill.config.project import Project
from backfill.contracts.schemas import EmbeddingsTable, GroupsTable, TruthTable
from backfill.contracts.tables import read_table
from backfill.files.atomic import write_json
from backfill.models.evaluate import evaluate
from backfill.models.predictor import predict_groups
from backfill.models.versions import ModelVersion, check_version_name

POOLED = "all"
COLUMNS = ["version", "project", "groups", "selection_n", "selection_accuracy", "anomaly_n",
           "anomaly_accuracy", "crop_n", "crop_accuracy", "mean_iou",
           "excluded_needs_review"]


def version_from_file(root: Path, name: str) -> ModelVersion:
    """A version straight from conf/model/<name>.yaml."""
    check_version_name(root, name)
    cfg = OmegaConf.load(root / "conf" / "model" / f"{name}.yaml")
    if cfg.get("name") != name:
        raise UserError(f"conf/model/{name}.yaml says name: {cfg.get('name')}; make it {name}.")
    return ModelVersion.from_config(cfg, root)


def _tables(project: Project) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    try:
        return (read_table(project.output("truth"), TruthTable, "truth"),
                read_table(project.output("groups"), GroupsTable, "groups"),
                read_table(project.output("embeddings"), EmbeddingsTable, "embeddings"))
    except FileNotFoundError as exc:
        raise UserError(f"{exc} (`dvc repro embed@{project.name} extract@{project.name}`)"
                          ) from None


def compare(versions: list[ModelVersion], projects: list[Project]) -> pd.DataFrame:
    """One row per (version, project) and per version pooled over the projects."""
    settings = projects[0].settings.evaluate
    tables = {p.name: _tables(p) for p in projects}
    rows = []
    for version in versions:
        pooled = []
        for name, (truth, groups, embeddings) in tables.items():
            predictions = predict_groups(groups, embeddings, version)
            rows.append({"version": version.name, "project": name,
                         **evaluate(truth, groups, predictions, settings)})
            pooled.append([df.assign(group_id=name + "/" + df["group_id"])
                           for df in (truth, groups, predictions)])
        if len(projects) > 1:
            truth, groups, predictions = (pd.concat(parts, ignore_index=True)
                                          for parts in zip(*pooled, strict=True))
            rows.append({"version": version.name, "project": POOLED,
                         **evaluate(truth, groups, predictions, settings)})
    table = pd.DataFrame(rows, columns=COLUMNS)
    overall = table[table["project"] == (POOLED if len(projects) > 1 else projects[0].name)]
    order = overall.sort_values(["selection_accuracy", "mean_iou", "version"],
                                ascending=[False, False, True], na_position="last")["version"]
    rank = {v: i for i, v in enumerate(order)}
    return table.sort_values(["version", "project"], key=lambda c: c.map(rank)
                             if c.name == "version" else c).reset_index(drop=True)


def write(table: pd.DataFrame, out_dir: Path) -> tuple[Path, Path]:
    """compare.csv and metrics.json ({version: {project: figures}}) in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    csv = out_dir / "compare.csv"
    table.to_csv(csv, index=False, float_format="%.6g")
    metrics: dict = {}
    for row in table.to_dict("records"):
        figures = {k: (None if pd.isna(v) else v) for k, v in row.items()
                   if k not in ("version", "project")}
        metrics.setdefault(row["version"], {})[row["project"]] = figures
    path = out_dir / "metrics.json"
    write_json(metrics, path)
    return csv, path


def comparison_table(table: pd.DataFrame) -> str:
    """The table for a terminal, best version first."""
    def pct(x) -> str:
        return "   n/a" if pd.isna(x) else f"{x:6.1%}"

    lines = [f"{'version':<16} {'project':<12} {'select':>6} {'anomaly':>7} {'crop':>6} "
             f"{'IoU':>5}  groups (kept/anomaly/boxed)"]
    for r in table.itertuples():
        iou = "  n/a" if pd.isna(r.mean_iou) else f"{r.mean_iou:5.3f}"
        lines.append(f"{r.version:<16} {r.project:<12} {pct(r.selection_accuracy)} "
                     f"{pct(r.anomaly_accuracy):>7} {pct(r.crop_accuracy)} {iou}  "
                     f"{r.groups} ({r.selection_n}/{r.anomaly_n}/{r.crop_n})")
    return "\n".join(lines)
