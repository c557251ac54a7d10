"""train and compare: the losses learn what they should, training repeats exactly, and a
comparison of the baseline and a fresh version is reproducible."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from backfill.config.errors import UserError
from backfill.config.project import Project
from backfill.config.settings import GroupConfig, section
from backfill.contracts.schemas import EmbeddingsTable, GroupsTable, TruthTable
from backfill.contracts.tables import write_table
from backfill.demo.synthetic import make_project
from backfill.models.clip import ClipSettings
from backfill.models.compare import compare, comparison_table, version_from_file, write
from backfill.models.evaluate import iou
from backfill.models.train import Dataset, fit_crop, fit_ranker, held_out, ranker_pairs, train
from backfill.models.versions import ModelSpec
from backfill.stages.embed import embed_images, members
from backfill.stages.extract.stage import ExtractSettings, extract_project
from backfill.stages.group import group_table
from backfill.stages.scan import ScanSettings, scan_project
from tests.conftest import REPO, pipeline_config

PIPELINE = pipeline_config()  # what a registered project holds, as conftest composes it
TRAIN = OmegaConf.load(REPO / "conf" / "train" / "default.yaml")


# --- the losses, on embeddings with a known answer -----------------------------------

def test_the_pairwise_ranker_learns_which_image_people_keep():
    rng = np.random.default_rng(0)
    vectors = rng.normal(0, 1, (600, 32)).astype(np.float32)
    liked = rng.normal(0, 1, 32)
    # Pairs of images: the one more along `liked` is the one kept.
    a, b = np.arange(0, 600, 2), np.arange(1, 600, 2)
    a_wins = vectors[a] @ liked > vectors[b] @ liked
    win, lose = np.where(a_wins, a, b), np.where(a_wins, b, a)
    fit, test = slice(0, 250), slice(250, 300)
    cfg = OmegaConf.merge(TRAIN.ranker, {"epochs": 40})
    spec = ModelSpec("mlp", None, (64, 16), 0.1)
    net = fit_ranker(vectors, (win[fit], lose[fit], np.ones(250, np.float32)), spec, cfg, 0)
    with torch.inference_mode():
        s = net(torch.from_numpy(vectors)).squeeze(1).numpy()
    assert (s[win[test]] > s[lose[test]]).mean() > 0.85  # unseen pairs; chance is 0.5


def test_the_crop_proposer_learns_boxes_from_embeddings():
    rng = np.random.default_rng(1)
    x = rng.normal(0, 1, (400, 18)).astype(np.float32)
    centre = 1 / (1 + np.exp(-x[:, :2]))  # the box follows two features
    half = 0.15 + 0.1 / (1 + np.exp(-x[:, 2:3]))
    boxes = np.clip(np.hstack([centre - half, centre + half]), 0, 1).astype(np.float32)
    spec = ModelSpec("mlp", None, (64, 32), 0.0)
    cfg = OmegaConf.merge(TRAIN.crop, {"epochs": 80})
    net = fit_crop(x[:320], boxes[:320], spec, cfg, 0)
    with torch.inference_mode():
        pred = net(torch.from_numpy(x[320:])).numpy()
    assert iou(pred, boxes[320:]).mean() > 0.7
    assert iou(np.tile([0, 0, 1, 1], (80, 1)).astype(float), boxes[320:]).mean() < 0.3


def test_anomaly_pairs_weigh_more_and_unreadable_members_make_no_pairs():
    h = [f"{i:064x}" for i in range(6)]
    emb = pd.DataFrame({"content_hash": h[:5], "embedding": [np.zeros(4)] * 5, "model_id": "m"})
    groups = pd.DataFrame({"group_id": ["g1", "g2"], "n_images": [3, 3],
                           "content_hashes": [h[0:3], [h[3], h[4], h[5]]]})
    truth = pd.DataFrame({"group_id": ["g1", "g2"], "user_selected_index": pd.array([2, 0])})
    win, lose, w = ranker_pairs(Dataset(truth, groups, emb, {}), truth, anomaly_weight=10.0)
    assert list(zip(win, lose, w, strict=True)) == [(2, 0, 1.0), (2, 1, 1.0), (3, 4, 10.0)]


def test_held_out_groups_stay_held_out_as_data_grows():
    ids = pd.Series([f"p/g_{i}" for i in range(2000)])
    side = held_out(ids, 0.2)
    assert 0.17 < side.mean() < 0.23
    more = pd.concat([ids, pd.Series([f"q/g_{i}" for i in range(500)])], ignore_index=True)
    assert held_out(more, 0.2).iloc[:2000].equals(side)


# --- a generated project, trained and compared ---------------------------------------

@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A repository root with one generated project's tables, as `dvc repro` leaves them."""
    root = tmp_path_factory.mktemp("ws")
    (root / "conf" / "model").mkdir(parents=True)
    shutil.copy(REPO / "conf/model/baseline.yaml", root / "conf/model/baseline.yaml")
    gen = make_project(root / "images", n_groups=30, seed=8, scale=0.05, bad_files=False)
    cache = root / "data" / "cache"
    scan = scan_project({"original": gen.original_dir, "final": gen.final_dir},
                        ScanSettings.from_config(PIPELINE.scan), cache).table
    groups, ungrouped = group_table(scan, section(GroupConfig, PIPELINE.group, "group"), "gen")
    settings = ExtractSettings.from_config(PIPELINE.extract, PIPELINE.scan.max_pixels)
    truth = extract_project(groups, scan, ungrouped, settings, gen.original_dir,
                            gen.final_dir, cache).truth
    clip = dataclasses.replace(ClipSettings.from_config(PIPELINE.embed, root,
                                                        PIPELINE.scan.max_pixels), pretrained=None)
    embeddings = embed_images(members(groups), gen.original_dir, clip, cache).table
    cfg = OmegaConf.merge(PIPELINE, {"original_dir": str(gen.original_dir),
                                     "final_dir": str(gen.final_dir)})
    project = Project("gen", root, cfg, cache)
    write_table(truth, project.output("truth"), TruthTable, "truth")
    write_table(groups, project.output("groups"), GroupsTable, "groups")
    write_table(embeddings, project.output("embeddings"), EmbeddingsTable, "embeddings")
    return root, project


@pytest.mark.slow  # trains two versions on a generated project
def test_training_repeats_exactly_and_compare_ranks_baseline_and_the_new_version(workspace):
    root, project = workspace
    cfg = OmegaConf.merge(TRAIN, {"ranker": {"epochs": 5}, "crop": {"epochs": 5}})
    one = train("v1", [project], cfg, root)
    two = train("v1_again", [project], cfg, root)
    files = {n: (root / "data/models/v1" / n).read_bytes() for n in ("ranker.pt",
                                                                    "crop_proposer.pt")}
    assert files == {n: (root / "data/models/v1_again" / n).read_bytes() for n in files}
    assert one.metadata["held_out"] == two.metadata["held_out"]
    meta = json.loads((root / "data/models/v1/metadata.json").read_text())
    assert meta["embedding_model"] == "ViT-B-32/random-seed0"
    assert meta["projects"]["gen"]["groups"] == 30 and meta["settings"]["ranker"]["epochs"] == 5
    assert meta["training"]["ranker_pairs"] > 0 and meta["training"]["crop_boxes"] > 0
    assert set(meta["held_out"]) >= {"selection_accuracy", "anomaly_accuracy", "mean_iou"}

    versions = [version_from_file(root, n) for n in ("baseline", "v1", "v1_again")]
    table = compare(versions, [project])
    again = compare(versions, [project])
    pd.testing.assert_frame_equal(table, again)
    assert set(table["version"]) == {"baseline", "v1", "v1_again"}
    figures = table.set_index("version").drop(columns="project")
    pd.testing.assert_series_equal(figures.loc["v1"], figures.loc["v1_again"],
                                   check_names=False)
    accuracy = table["selection_accuracy"].tolist()
    assert accuracy == sorted(accuracy, reverse=True)  # best first
    base = figures.loc["baseline"]
    assert base["anomaly_accuracy"] == 0.0 or base["anomaly_n"] == 0  # by definition
    csv, metrics = write(table, root / "data" / "compare")
    assert json.loads(metrics.read_text())["baseline"]["gen"]["selection_n"] == \
        int(base["selection_n"])
    assert "baseline" in comparison_table(table) and csv.exists()


@pytest.mark.slow  # trains a version on a generated project
def test_a_version_name_in_use_is_not_overwritten_without_force(workspace):
    root, project = workspace
    cfg = OmegaConf.merge(TRAIN, {"ranker": {"epochs": 1}, "crop": {"epochs": 1}})
    train("taken", [project], cfg, root)
    with pytest.raises(UserError, match="exists .* pass --force"):
        train("taken", [project], cfg, root)
    train("taken", [project], cfg, root, force=True)
