"""A project whose upstream tables are ready for the merge, and how to read a DB's rows."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from backfill.config.project import Project
from backfill.db.schema import read_rows
from backfill.files.atomic import write_parquet


def fake_predictions(groups: pd.DataFrame, seed: int = 1) -> pd.DataFrame:
    """A learned model's predictions: a pick and a box per group."""
    rng = np.random.default_rng(seed)
    n = len(groups)
    low, high = rng.uniform(0, 0.4, (n, 2)), rng.uniform(0.6, 1, (n, 2))
    return pd.DataFrame({
        "group_id": groups["group_id"],
        "ai_selected_index": pd.array([int(rng.integers(k)) for k in groups["n_images"]],
                                      dtype="Int64"),
        "ai_confidence": rng.uniform(0.3, 1, n),
        "ai_scores": [list(rng.normal(size=k)) for k in groups["n_images"]],
        "ai_crop_x1": low[:, 0], "ai_crop_y1": low[:, 1],
        "ai_crop_x2": high[:, 0], "ai_crop_y2": high[:, 1],
        "model_version": "v1", "ranker": "mlp:abc", "crop_proposer": "mlp:def",
        "embedding_model": "ViT-B-32/openai"})


def make_stage_project(tmp: Path, recovered, **paths) -> Project:
    """A Project whose upstream tables are the recovered ones, ready for merge.run."""
    cfg = OmegaConf.merge(recovered.cfg, {
        "original_dir": str(recovered.gen.original_dir), "final_dir": str(recovered.gen.final_dir),
        **{k: None if v is None else str(v) for k, v in paths.items()}})
    project = Project("p", tmp, cfg, tmp / "cache")
    write_parquet(recovered.scan, project.output("scan"))
    write_parquet(recovered.groups, project.output("groups"))
    write_parquet(recovered.truth, project.output("truth"))
    write_parquet(fake_predictions(recovered.groups), project.output("predictions"))
    return project


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def rows_of(path: Path) -> pd.DataFrame:
    with sqlite3.connect(path) as conn:
        rows, _ = read_rows(conn)
    return rows.set_index("group_id")
