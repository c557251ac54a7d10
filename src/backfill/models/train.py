"""train: a new model version from the recovered decisions of one or more projects.

The ranker learns pairwise (the kept image must outscore each other image of its group
by a margin; pairs from anomaly groups weigh more), the crop proposer learns boxes with
an IoU loss. Groups are split into training and held-out sets by a hash of their id, and
the held-out figures are measured exactly as ``compare`` measures any version. Output:
``data/models/<name>/`` (checkpoints in the person's format, metadata.json) and
``conf/model/<name>.yaml``, the version's config, ready for ``predict`` and ``compare``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import blake3
import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from backfill.config.errors import UserError
from backfill.config.project import NAME_PATTERN, Project
from backfill.config.settings import EvaluateConfig
from backfill.contracts.schemas import CROP_BOX
from backfill.contracts.tables import read_stage_tables
from backfill.files.atomic import write_json
from backfill.models.evaluate import anomalies, describe_metrics, evaluate
from backfill.models.predictor import predict_groups
from backfill.models.versions import (
    ModelSpec,
    ModelVersion,
    crop_inputs,
    file_sha256,
    mlp,
    normalise,
    save_checkpoint,
)


@dataclass
class Dataset:
    """Every project's tables stacked, group ids made unique by the project's name."""

    truth: pd.DataFrame
    groups: pd.DataFrame
    embeddings: pd.DataFrame
    projects: dict[str, dict]  # name -> what was used (group count, table hashes)

    @property
    def embedding_model(self) -> str:
        return str(self.embeddings["model_id"].iloc[0])

    def row_of(self) -> dict[str, int]:
        """Content hash -> its row in ``embeddings``."""
        return dict(zip(self.embeddings["content_hash"], range(len(self.embeddings)),
                        strict=True))


def load_dataset(projects: list[Project]) -> Dataset:
    truths, groups, embeddings, used = [], [], [], {}
    for p in projects:
        names = ["truth", "groups", "embeddings"]
        tables = read_stage_tables(p, names)
        paths = {t: p.output(t) for t in names}
        t, g = tables["truth"], tables["groups"]
        for df in (t, g):
            df["group_id"] = p.name + "/" + df["group_id"]
        truths.append(t)
        groups.append(g)
        embeddings.append(tables["embeddings"])
        used[p.name] = {"groups": len(g), **{f"{k}_sha256": file_sha256(v)
                                             for k, v in paths.items()}}
    models = sorted({m for e in embeddings for m in e["model_id"].unique()})
    if len(models) > 1:
        raise UserError(f"the projects' embeddings come from different CLIP models "
                          f"({', '.join(models)}): train on projects embedded alike.")
    if not models:
        raise UserError("no embeddings to train on: the projects have no grouped images.")
    emb = pd.concat(embeddings, ignore_index=True).drop_duplicates("content_hash")
    return Dataset(pd.concat(truths, ignore_index=True), pd.concat(groups, ignore_index=True),
                   emb.sort_values("content_hash").reset_index(drop=True), used)


def held_out(group_ids: pd.Series, share: float) -> pd.Series:
    """A group's side never changes: it is decided by a hash of its id alone."""
    def fraction(gid: str) -> float:
        return int(blake3.blake3(gid.encode()).hexdigest()[:8], 16) / 16**8

    return group_ids.map(fraction) < share


def _usable(truth: pd.DataFrame, cfg: DictConfig) -> pd.DataFrame:
    t = truth[truth["user_selected_index"].notna()]
    return t[~t["needs_review"]] if cfg.skip_needs_review else t


def ranker_pairs(data: Dataset, truth: pd.DataFrame, anomaly_weight: float
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(winner rows, loser rows, weights): the kept image against each other member."""
    row_of = data.row_of()
    hashes = data.groups.set_index("group_id")["content_hashes"]
    weights = np.where(anomalies(truth, data.groups), anomaly_weight, 1.0)
    win, lose, w = [], [], []
    for gid, kept, weight in zip(truth["group_id"], truth["user_selected_index"], weights,
                                 strict=True):
        rows = [row_of.get(h) for h in hashes[gid]]
        if rows[int(kept)] is None:
            continue
        for k, r in enumerate(rows):
            if k != kept and r is not None:
                win.append(rows[int(kept)])
                lose.append(r)
                w.append(weight)
    return np.array(win, dtype=int), np.array(lose, dtype=int), np.array(w, dtype=np.float32)


def crop_samples(data: Dataset, truth: pd.DataFrame, actions: list[str]
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(embedding rows, widths, heights, boxes) of the kept images that teach the crop."""
    t = truth[truth["user_action"].isin(actions) & truth[CROP_BOX].notna().all(axis=1)]
    row_of = data.row_of()
    g = data.groups.set_index("group_id")
    rows, widths, heights, boxes = [], [], [], []
    for gid, kept, box in zip(t["group_id"], t["user_selected_index"],
                              t[CROP_BOX].to_numpy(float), strict=True):
        r = row_of.get(g.at[gid, "content_hashes"][int(kept)])
        if r is not None:
            rows.append(r)
            widths.append(g.at[gid, "widths"][int(kept)])
            heights.append(g.at[gid, "heights"][int(kept)])
            boxes.append(box)
    return (np.array(rows, dtype=int), np.array(widths, float), np.array(heights, float),
            np.array(boxes, dtype=np.float32).reshape(-1, 4))


@contextlib.contextmanager
def deterministic():
    """Deterministic torch kernels while training; as it was before, afterwards."""
    import torch

    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


def _steps(n: int, batch_size: int, epochs: int, generator):
    import torch

    for _ in range(epochs):
        order = torch.randperm(n, generator=generator)
        yield from order.split(batch_size)


def fit_ranker(vectors: np.ndarray, pairs: tuple, spec: ModelSpec, cfg: DictConfig, seed: int):
    import torch

    torch.manual_seed(seed)
    net = mlp(vectors.shape[1], spec.hidden, 1, spec.dropout, sigmoid=False)
    x = torch.from_numpy(normalise(vectors, spec.normalization))
    win, lose, weight = (torch.from_numpy(a) for a in pairs)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    net.train()
    gen = torch.Generator().manual_seed(seed)
    for idx in _steps(len(win), cfg.batch_size, cfg.epochs, gen):
        gap = net(x[win[idx]]).squeeze(1) - net(x[lose[idx]]).squeeze(1)
        w = weight[idx]
        loss = (w * torch.relu(cfg.margin - gap)).sum() / w.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


def box_iou(a, b):
    """IoU of [x1, y1, x2, y2] rows, differentiable (torch)."""
    import torch

    w = (torch.minimum(a[:, 2], b[:, 2]) - torch.maximum(a[:, 0], b[:, 0])).clamp(min=0)
    h = (torch.minimum(a[:, 3], b[:, 3]) - torch.maximum(a[:, 1], b[:, 1])).clamp(min=0)
    inter = w * h
    area = ((a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
            + (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]))
    return inter / (area - inter).clamp(min=1e-6)


def fit_crop(inputs: np.ndarray, boxes: np.ndarray, spec: ModelSpec, cfg: DictConfig,
             seed: int):
    import torch

    torch.manual_seed(seed)
    net = mlp(inputs.shape[1], spec.hidden, 4, spec.dropout, sigmoid=True)
    x, y = torch.from_numpy(inputs), torch.from_numpy(boxes)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    net.train()
    gen = torch.Generator().manual_seed(seed)
    for idx in _steps(len(x), cfg.batch_size, cfg.epochs, gen):
        pred = net(x[idx])
        loss = (1 - box_iou(pred, y[idx])).mean() + cfg.l1_weight * (pred - y[idx]).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


def version_yaml(name: str, embedding_model: str, cfg: DictConfig, projects: list[str]) -> str:
    body = {
        "name": name,
        "embedding_model": embedding_model,
        "ranker": {"architecture": "mlp", "checkpoint": f"data/models/{name}/ranker.pt",
                   "hidden": list(cfg.ranker.hidden), "normalization": cfg.ranker.normalization},
        "crop": {"architecture": "mlp", "checkpoint": f"data/models/{name}/crop_proposer.pt",
                 "hidden": list(cfg.crop.hidden), "normalization": cfg.crop.normalization,
                 "size_divisor": cfg.crop.size_divisor},
    }
    return (f"# Trained by `backfill train {name}` on {', '.join(projects)}; its data, "
            f"settings and held-out\n# figures: data/models/{name}/metadata.json.\n"
            + OmegaConf.to_yaml(OmegaConf.create(body)))


@dataclass
class TrainResult:
    version: ModelVersion
    metadata: dict
    config_path: Path


def train(name: str, projects: list[Project], cfg: DictConfig, root: Path,
          force: bool = False) -> TrainResult:
    """Train, save and measure version ``name`` on ``projects``' recovered decisions."""
    import torch

    if not NAME_PATTERN.match(name):
        raise UserError(f"version name '{name}' must be letters, digits, '_' or '-'.")
    config_path = root / "conf" / "model" / f"{name}.yaml"
    out = root / "data" / "models" / name
    if (config_path.exists() or out.exists()) and not force:
        raise UserError(f"model version '{name}' exists ({config_path.relative_to(root)}): "
                          "choose another name, or pass --force to replace it.")
    data = load_dataset(projects)
    truth = _usable(data.truth, cfg)
    test = held_out(truth["group_id"], cfg.holdout)
    fit_truth = truth[~test.to_numpy()]
    vectors = np.stack(data.embeddings["embedding"].to_numpy()).astype(np.float32)
    pairs = ranker_pairs(data, fit_truth, cfg.ranker.anomaly_weight)
    rows, widths, heights, boxes = crop_samples(data, fit_truth, list(cfg.crop.actions))
    if not len(pairs[0]):
        raise UserError("no training pairs: the projects have no kept image with another "
                          "readable image in its group.")
    if not len(rows):
        raise UserError(f"no crops to learn from (actions {list(cfg.crop.actions)}): add "
                          "projects, or train.crop.actions=[crop,approve].")
    ranker_spec = ModelSpec("mlp", out / "ranker.pt", tuple(cfg.ranker.hidden),
                            cfg.ranker.dropout, cfg.ranker.normalization)
    crop_spec = ModelSpec("mlp", out / "crop_proposer.pt", tuple(cfg.crop.hidden),
                          cfg.crop.dropout, cfg.crop.normalization, cfg.crop.size_divisor)
    with deterministic():
        ranker = fit_ranker(vectors, pairs, ranker_spec, cfg.ranker, cfg.seed)
        crop = fit_crop(crop_inputs(vectors[rows], widths, heights, crop_spec), boxes,
                        crop_spec, cfg.crop, cfg.seed)
    save_checkpoint(ranker, ranker_spec.checkpoint)
    save_checkpoint(crop, crop_spec.checkpoint)
    version = ModelVersion(name, data.embedding_model, ranker_spec, crop_spec)
    # Measured as `compare` would, with the first project's evaluate settings, counting
    # what training counted.
    base = projects[0].settings.evaluate
    settings = EvaluateConfig(base.crop_tolerance, not cfg.skip_needs_review)
    test_ids = truth.loc[test.to_numpy(), "group_id"]
    groups = data.groups[data.groups["group_id"].isin(test_ids)]
    held = evaluate(data.truth[data.truth["group_id"].isin(test_ids)], groups,
                    predict_groups(groups, data.embeddings, version), settings)
    metadata = {
        "version": name,
        "embedding_model": data.embedding_model,
        "projects": data.projects,
        "training": {"groups": int(len(fit_truth)), "ranker_pairs": int(len(pairs[0])),
                     "anomaly_groups": int(anomalies(fit_truth, data.groups).sum()),
                     "crop_boxes": int(len(rows))},
        "held_out": held,
        "settings": OmegaConf.to_container(cfg),
        "checkpoints": {"ranker.pt": file_sha256(ranker_spec.checkpoint),
                        "crop_proposer.pt": file_sha256(crop_spec.checkpoint)},
        "torch": torch.__version__,
    }
    write_json(metadata, out / "metadata.json")
    config_path.parent.mkdir(parents=True, exist_ok=True)
    config_path.write_text(version_yaml(name, data.embedding_model, cfg, list(data.projects)))
    return TrainResult(version, metadata, config_path)


def train_settings(root: Path, overrides: list[str]) -> DictConfig:
    """params.yaml's train section with ``overrides`` (KEY=VALUE) applied, checked as
    conf/ is: types, ranges and unknown keys are a UserError naming the setting."""
    from backfill.config.project import load_params
    from backfill.config.settings import SettingError, TrainConfig, typed

    cfg = load_params(root).get("train")
    if cfg is None:
        raise UserError("params.yaml has no train section: run `backfill compose`.")
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise UserError(f"train overrides look like KEY=VALUE, e.g. ranker.epochs=60: {bad}")
    try:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
        typed(TrainConfig, cfg, prefix="train.")
    except SettingError as exc:
        raise UserError(str(exc)) from None
    except Exception as exc:  # OmegaConf's own parse errors: any of several types
        raise UserError(f"bad train override {list(overrides)}: {exc}") from None
    return cfg


def describe_training(result: TrainResult, projects: list[Project], root: Path) -> str:
    """What `backfill train` says: what it learned from, how the held-out groups
    scored, what it wrote and what to run next."""
    name, seen = result.version.name, result.metadata["training"]
    return "\n".join([
        f"trained model version '{name}' on {', '.join(p.name for p in projects)} "
        f"({seen['groups']} groups, {seen['ranker_pairs']} ranker pairs, "
        f"{seen['crop_boxes']} crop boxes)",
        f"held out: {describe_metrics(result.metadata['held_out'])}",
        f"wrote data/models/{name}/ and {result.config_path.relative_to(root)}; "
        f"compare it: `backfill compare baseline {name}`"])
