"""Issue 12, items 4, 5, 9 and 15 for extract, embed, predict, validate and the report:

- a project with no group at all (only bad files) builds, each stage writing empty
  tables of its contract's dtypes; every pure function takes empty and one-row input;
- a kept final that cannot be read (truncated, a decompression bomb, over
  scan.max_pixels) is the truth action 'unreadable' with its reason, in no DB row,
  reported by the merge, counted in metrics.json, listed in the report, left out of the
  export; fixed, the next run recovers it;
- scan.max_pixels reaches extract, embed and the report's thumbnails;
- a stage run before its inputs exist says which stage to run.
"""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf
from PIL import Image

from backfill import cli
from backfill.config.errors import UserError
from backfill.config.project import Project
from backfill.config.settings import EvaluateConfig, section
from backfill.contracts.schemas import (
    EmbeddingsTable,
    FinalsTable,
    GroupsTable,
    PredictionsTable,
    ScanTable,
    TruthTable,
    UngroupedTable,
)
from backfill.contracts.tables import typed_frame
from backfill.contracts.tables import validate as check
from backfill.demo.synthetic import make_project
from backfill.models import predictor
from backfill.models.clip import ClipSettings
from backfill.models.evaluate import evaluate
from backfill.models.versions import ModelVersion
from backfill.reports import export, report
from backfill.stages import embed, extract, group, merge, predict, scan, validate
from tests.conftest import REPO, pipeline_config

pytestmark = pytest.mark.slow  # whole projects through every stage

PIPELINE = pipeline_config()
BASELINE = OmegaConf.load(REPO / "conf" / "model" / "baseline.yaml")
MAX_PIXELS = int(PIPELINE.scan.max_pixels)


def project_at(root: Path, original: Path, final: Path, **settings) -> Project:
    """A project with the shipped settings, random CLIP weights and the baseline model."""
    cfg = OmegaConf.merge(PIPELINE, {"model": BASELINE, "original_dir": str(original),
                                     "final_dir": str(final), "embed": {"pretrained": None,
                                                                        "workers": 1}},
                          settings)
    return Project("p", root, cfg, root / "cache")


def png(width: int = 40, height: int = 30, seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def bomb(side: int = 30000) -> bytes:
    """A ~100-byte PNG whose header claims side x side 1-bit pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


# --- empty and one-row input, stage by stage ------------------------------------------

def test_extract_of_no_group_gives_empty_tables_of_the_contracts_dtypes(tmp_path):
    settings = extract.ExtractSettings.from_config(PIPELINE.extract, MAX_PIXELS)
    result = extract.extract_project(typed_frame(GroupsTable), typed_frame(ScanTable),
                                     typed_frame(UngroupedTable), settings, tmp_path, tmp_path,
                                     tmp_path / "cache")
    check(result.truth, TruthTable, "truth")
    check(result.finals, FinalsTable, "finals")
    assert len(result.truth) == len(result.finals) == result.matched == 0
    assert ("0 groups (0 approve, 0 crop, 0 reject, 0 unreadable, 0 broken_reject)"
            in extract.decisions_line(result.truth, result.finals))


def test_embed_of_no_image_loads_no_model_and_writes_a_typed_empty_table(tmp_path):
    images = embed.members(typed_frame(GroupsTable))
    assert len(images) == 0 and str(images["content_hash"].dtype) == "str"
    settings = ClipSettings.from_config(PIPELINE.embed, REPO, MAX_PIXELS)
    result = embed.embed_images(images, tmp_path, settings, tmp_path / "cache", load=pytest.fail)
    check(result.table, EmbeddingsTable, "embeddings")
    assert result.device is None and len(result.table) == 0


def one_group() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """One group of two renders, kept the lower one, as a crop; its embeddings."""
    hashes = [f"{i:064x}" for i in (1, 2)]
    groups = typed_frame(GroupsTable, [{
        "group_id": "p_group_1", "first_timestamp": "20250101_000000",
        "last_timestamp": "20250101_000100", "n_images": 2, "image_paths": ["a.png", "b.png"],
        "image_names": ["a.png", "b.png"], "stages": [1.0, 2.0], "widths": [40, 40],
        "heights": [30, 30], "content_hashes": hashes, "unreadable": []}])
    truth = typed_frame(TruthTable, [{
        "group_id": "p_group_1", "user_action": "crop", "user_selected_index": 0,
        "kept_stage": 1.0, "final_copies": 0, "crop_x1": 0.1, "crop_y1": 0.1, "crop_x2": 0.9,
        "crop_y2": 0.9, "needs_review": False}])
    embeddings = typed_frame(EmbeddingsTable, {
        "content_hash": hashes, "embedding": [np.ones(4, np.float32)] * 2,
        "model_id": ["m"] * 2})
    return groups, truth, embeddings


@pytest.mark.parametrize("rows", [0, 1])
def test_predict_and_evaluate_take_empty_and_one_row_input(rows):
    groups, truth, embeddings = (t.head(rows) for t in one_group())
    version = ModelVersion.from_config(BASELINE, REPO)
    predictions = predictor.predict_groups(groups, embeddings, version)
    check(predictions, PredictionsTable, "predictions")
    assert len(predictions) == rows
    metrics = evaluate(truth, groups, predictions,
                       section(EvaluateConfig, PIPELINE.evaluate, "evaluate"))
    assert metrics["groups"] == metrics["selection_n"] == rows
    if rows:  # the baseline picks the highest stage; the person kept the lower one
        assert metrics["selection_accuracy"] == 0.0 and metrics["anomaly_n"] == 1
    else:
        assert metrics["selection_accuracy"] is None and metrics["mean_iou"] is None


def test_an_unreadable_final_counts_for_selection_but_never_for_crop():
    groups, truth, _ = one_group()
    truth = typed_frame(TruthTable, truth.assign(
        user_action="unreadable", crop_x1=np.nan, crop_y1=np.nan, crop_x2=np.nan,
        crop_y2=np.nan, needs_review=True, review_reason="final unreadable: truncated"))
    predictions = predictor.predict_groups(groups, typed_frame(EmbeddingsTable),
                                         ModelVersion.from_config(BASELINE, REPO))
    counted = EvaluateConfig(0.05, include_needs_review=True)
    metrics = evaluate(truth, groups, predictions, counted)
    assert (metrics["selection_n"], metrics["crop_n"], metrics["crop_accuracy"]) == (1, 0, None)
    default = evaluate(truth, groups, predictions, EvaluateConfig(0.05, False))
    assert default["selection_n"] == 0 and default["excluded_needs_review"] == 1


# --- a project of only bad files, stage by stage through run() -------------------------

def test_a_project_of_only_bad_files_builds_through_validate(tmp_path):
    original, final = tmp_path / "original", tmp_path / "final"
    original.mkdir()
    final.mkdir()
    good = png()
    for name, data in {"20250101_000000_stage2_upscaled.png": b"",
                       "20250101_010000_stage2_upscaled.png": good[: len(good) // 2],
                       "20250101_020000_stage2_upscaled.png": b"not an image at all",
                       "20250101_030000_stage2_upscaled.png": bomb()}.items():
        (original / name).write_bytes(data)
    project = project_at(tmp_path, original, final)
    messages = [stage.run(project) for stage in (scan, group, extract, embed, predict, merge)]
    assert "0 groups" in messages[2] and "0 distinct images: 0 embedded" in messages[3]
    assert "validate p:" in validate.run(project)
    for name, schema in (("truth", TruthTable), ("finals", FinalsTable),
                         ("embeddings", EmbeddingsTable), ("predictions", PredictionsTable)):
        table = pd.read_parquet(project.output(name))
        assert len(table) == 0
        check(table, schema, name)
    metrics = json.loads(project.metrics("metrics.json").read_text())
    assert (metrics["groups"], metrics["db_rows"], metrics["unreadable_finals"]) == (0, 0, 0)
    assert metrics["unreadable_files"] == 4
    model = json.loads(project.metrics("model_metrics.json").read_text())
    assert model["groups"] == 0 and model["selection_accuracy"] is None
    assert (project.out_dir / "report.html").stat().st_size > 1000


# --- one unreadable kept final, then fixed -------------------------------------------

@pytest.fixture
def built(tmp_path):
    """A small generated project taken through every stage, and a crop group of it."""
    gen = make_project(tmp_path / "images", n_groups=4, seed=7, scale=0.05, bad_files=False,
                       variants=False)
    project = project_at(tmp_path, gen.original_dir, gen.final_dir)
    kept = next(g for g in gen.groups if g.action == "crop")
    return project, gen, kept


def build(project: Project) -> list[str]:
    return [stage.run(project) for stage in (scan, group, extract, embed, predict, merge,
                                              validate)]


@pytest.mark.parametrize("damage", ["truncated", "bomb", "over max_pixels"])
def test_an_unreadable_kept_final_is_reported_not_written_and_recovered_once_fixed(
        built, damage):
    project, gen, kept = built
    gid = f"p_group_{kept.first_timestamp}"
    final = gen.final_dir / kept.final_rel_path
    intact = final.read_bytes()
    if damage == "truncated":
        final.write_bytes(intact[: len(intact) // 2])
    elif damage == "bomb":
        final.write_bytes(bomb())
    else:  # a real image over a limit that every original is within
        sizes = [Image.open(p).size for p in gen.original_dir.rglob("*.png")]
        width, height = max(sizes, key=lambda s: s[0] * s[1])
        final.write_bytes(png(width * 2, height * 2))
        project = Project(project.name, project.root, OmegaConf.merge(project.cfg, {
            "scan": {"max_pixels": width * height}}), project.cache_dir)

    messages = build(project)
    truth = pd.read_parquet(project.output("truth")).set_index("group_id")
    row = truth.loc[gid]
    assert row.user_action == "unreadable" and row.user_selected_index == kept.kept_index
    assert row.needs_review and row.review_reason.startswith("final unreadable: ")
    assert pd.isna(row.crop_x1) and pd.isna(row.crop_timestamp)
    assert f"kept final of {gid} not used" in messages[2]
    issues = pd.read_parquet(project.output("merge_issues"))
    assert gid in set(issues.loc[issues["kind"] == "final_unreadable", "group_id"])
    assert gid not in merged_ids(project)
    metrics = json.loads(project.metrics("metrics.json").read_text())
    others = truth.drop(index=gid)
    assert metrics["unreadable_finals"] == 1 and metrics["groups"] == len(truth)
    for action in ("approve", "crop", "reject"):
        assert metrics[action] == int((others["user_action"] == action).sum())
    assert metrics["db_rows"] == len(others)
    page = (project.out_dir / "report.html").read_text()
    start = page.index('<section id="unreadable-finals">')
    section = page[start:page.index("</section>", start)]
    assert gid in section and 'data-count="unreadable_final_rows">1<' in section
    assert 'data-count="unreadable_finals">1<' in page
    records = export.build_records("p", pd.read_parquet(project.output("groups")),
                                   pd.read_parquet(project.output("truth")), gen.original_dir,
                                   gen.final_dir)
    assert gid not in set(records["group_id"]) and len(records) == len(others)

    final.write_bytes(intact)  # fixed: the next run recovers the decision
    build(project)
    row = pd.read_parquet(project.output("truth")).set_index("group_id").loc[gid]
    assert row.user_action == "crop" and not pd.isna(row.crop_x1)
    assert gid in merged_ids(project)
    assert json.loads(project.metrics("metrics.json").read_text())["unreadable_finals"] == 0


def merged_ids(project: Project) -> set[str]:
    import sqlite3

    with sqlite3.connect(project.out_dir / "ai_decisions.db") as conn:
        ids = {r[0] for r in conn.execute("SELECT backfill_group_id FROM backfill_provenance")}
    conn.close()
    return ids


def test_max_pixels_reaches_extract_embed_and_the_thumbnails(built, tmp_path):
    project, gen, kept = built
    for stage in (scan, group):
        stage.run(project)
    tight = Project(project.name, project.root, OmegaConf.merge(project.cfg, {
        "scan": {"max_pixels": 64}}), project.cache_dir)  # scanned before it was lowered
    extract.run(tight)
    truth = pd.read_parquet(project.output("truth"))
    kept_rows = truth[truth["user_selected_index"].notna()
                      & (truth["match_method"].isna() | (truth["match_method"] != "identical"))]
    assert len(kept_rows) and (kept_rows["user_action"] == "unreadable").all()
    assert kept_rows["review_reason"].str.contains("too large to decode").all()
    message = embed.run(tight)
    assert "0 embedded" in message and "too large to decode" in message
    image = gen.original_dir / kept.rel_paths[0]
    assert report.thumbnail(image, 32, 64) is None
    assert report.thumbnail(image, 32, MAX_PIXELS).startswith("data:image/jpeg;base64,")
    assert report.thumbnail(tmp_path / "nothing.png", 32, MAX_PIXELS) is None


# --- stages run before their inputs ----------------------------------------------------

@pytest.mark.parametrize(("stage", "expected"), [
    # The latest stage of the missing tables: `dvc repro` runs those before it too.
    (extract, "run `dvc repro group@p` first"), (embed, "run `dvc repro group@p` first"),
    (predict, "run `dvc repro embed@p` first")])
def test_a_stage_before_its_inputs_names_the_stage_to_run(tmp_path, stage, expected,
                                                          monkeypatch, capsys):
    project = project_at(tmp_path, tmp_path, tmp_path)
    with pytest.raises(UserError, match=expected.replace("`", ".")):
        stage.run(project)
    monkeypatch.setattr(cli, "load_project", lambda name: project)
    assert cli.main([stage.__name__.rsplit(".", 1)[1], "p"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0]


def test_validate_before_merge_names_the_merged_db_and_the_merge(built, monkeypatch, capsys):
    project, _, _ = built
    for stage in (scan, group, extract, embed, predict):
        stage.run(project)
    with pytest.raises(UserError) as err:
        validate.run(project)
    text = str(err.value)
    assert "data/p/ai_decisions.db (the merged DB)" in text
    assert "run `dvc repro merge@p` first" in text and "production" not in text
    # Through the CLI: one line on stderr and exit 2.
    monkeypatch.setattr(cli, "load_project", lambda name: project)
    assert cli.main(["validate", "p"]) == 2
    err_lines = capsys.readouterr().err.strip().splitlines()
    assert len(err_lines) == 1 and "merged DB" in err_lines[0]


def test_a_merged_db_gone_bad_is_one_line_saying_to_rebuild_it(built, monkeypatch, capsys):
    project, _, _ = built
    for stage in (scan, group, extract, embed, predict, merge):
        stage.run(project)
    project.merged_db.write_bytes(b"not a database, half-copied")
    monkeypatch.setattr(cli, "load_project", lambda name: project)
    assert cli.main(["validate", "p"]) == 2  # the user's to fix, as a setting is: exit 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "run `dvc repro merge@p` to rebuild it" in lines[0]
