"""predict: what the project's model version picks and crops in every group
(models.predictor), and how often that agrees with the person (models.evaluate)."""

from __future__ import annotations

import time

from backfill.config.project import MODEL_METRICS, Project
from backfill.contracts.schemas import PredictionsTable
from backfill.contracts.tables import read_stage_tables, write_table
from backfill.files.atomic import write_json
from backfill.models.evaluate import describe_metrics, evaluate
from backfill.models.predictor import predict_groups
from backfill.models.versions import ModelVersion


def load_version(project: Project) -> ModelVersion:
    return ModelVersion.from_config(project.cfg.model, project.root)


def run(project: Project) -> str:
    started = time.perf_counter()
    version = load_version(project)
    tables = read_stage_tables(project, ["groups", "truth", "embeddings"])
    groups, truth, embeddings = tables["groups"], tables["truth"], tables["embeddings"]
    predictions = predict_groups(groups, embeddings, version)
    write_table(predictions, project.output("predictions"), PredictionsTable, "predictions")
    metrics = evaluate(truth, groups, predictions, project.settings.evaluate)
    write_json({"model_version": version.name, **metrics},
               project.metrics(MODEL_METRICS))
    return (
        f"predict {project.name}: {len(predictions):,} groups with model version "
        f"'{version.name}', scored against the recovered decisions: "
        f"{describe_metrics(metrics)}; {time.perf_counter() - started:.1f}s"
        f" -> {project.output('predictions').relative_to(project.root)}"
    )
