"""Broken renders make no decision, and kept finals in other image formats are read.

A generated project holds, beside ordinary groups:

- a text file named like a render inside a real 3-render group: not a render, ungrouped
  with its reason, and the group stays whole;
- a truncated render in a rejected group: the reject is no decision (not written to
  ai_decisions, reported, counted apart); a truncated render in a kept group flags it;
- a truncated and an empty render of one timestamp: the empty file is not a render, the
  truncated one alone makes no group;
- kept finals saved as .webp and .tif (cropped): read, located and labelled;
- a kept final saved as .heic, which this Pillow cannot read: listed with its reason,
  and its group flagged, never a silent reject.

Every stage from scan to the export runs in-process on a few small images.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from backfill.config.settings import GroupConfig, section
from backfill.contracts.schemas import PredictionsTable, TruthTable
from backfill.contracts.tables import typed_frame
from backfill.contracts.tables import validate as check
from backfill.demo.synthetic import STAGE_LABELS, crop_box, render_stages
from backfill.reports.export import build_records
from backfill.stages.extract.stage import ExtractSettings, extract_project
from backfill.stages.group import group_table
from backfill.stages.merge import MergeInputs, MergeSettings, backfill_rows, plan_merge
from backfill.stages.scan import ScanSettings, scan_project
from backfill.stages.validate import Emitted, project_metrics
from tests.conftest import pipeline_config

BROKEN = "broken_reject"
DAY = "20250708"


def _name(clock: str, stage: float) -> str:
    return f"{DAY}_{clock}_{STAGE_LABELS[stage]}.png"


def _bytes(img: Image.Image, fmt: str) -> bytes:
    out = io.BytesIO()
    img.convert("RGB").save(out, format=fmt)
    return out.getvalue()


@dataclass
class Layout:
    root: Path
    original: Path
    final: Path
    boxes: dict[str, list[float]]  # group id -> the true normalised box of a cropped final


def make_layout(root: Path) -> Layout:
    """The project the module docstring describes (group ids by first timestamp)."""
    rng = np.random.default_rng(11)
    original, final = root / "original", root / "final"
    original.mkdir(parents=True)
    final.mkdir()
    boxes = {}

    def renders(hour_min: str, stages=(1.0, 1.5, 2.0)) -> dict[float, tuple[str, Image.Image]]:
        images = render_stages(rng, stages, 0.12)
        out = {}
        for stage, seconds in zip(stages, ("00", "15", "30"), strict=False):
            name = _name(f"{hour_min}{seconds}", stage)
            images[stage].save(original / name)
            out[stage] = (name, images[stage])
        return out

    def cropped(group: str, name: str, img: Image.Image, fmt: str, ext: str) -> None:
        box = crop_box(rng, "free", img.width, img.height)
        (final / (name.removesuffix(".png") + ext)).write_bytes(_bytes(img.crop(box), fmt))
        boxes[group] = [box[0] / img.width, box[1] / img.height, box[2] / img.width,
                        box[3] / img.height]

    # A real 3-render group with a text file named like a stage1 render inside it.
    split = renders("0600")
    (original / _name("060010", 1.0)).write_bytes(b"not an image, just notes\n" * 10)
    name = split[1.5][0]
    (final / name).write_bytes((original / name).read_bytes())  # approved as is
    # A rejected group with a truncated member.
    rejected = renders("0610")
    data = (original / rejected[1.5][0]).read_bytes()
    (original / rejected[1.5][0]).write_bytes(data[: len(data) // 2])
    # A kept group with a truncated member.
    kept = renders("0620")
    data = (original / kept[2.0][0]).read_bytes()
    (original / kept[2.0][0]).write_bytes(data[: len(data) // 2])
    cropped("p_group_20250708_062000", *kept[1.5], "PNG", ".png")
    # A truncated and an empty render of one timestamp.
    good = _bytes(render_stages(rng, (1.0,), 0.12)[1.0], "PNG")
    (original / _name("063000", 1.0)).write_bytes(good[: len(good) // 2])
    (original / _name("063000", 2.0)).write_bytes(b"")
    # Kept finals saved as WebP and TIFF, cropped.
    webp = renders("0640")
    cropped("p_group_20250708_064000", *webp[2.0], "WEBP", ".webp")
    tif = renders("0650")
    cropped("p_group_20250708_065000", *tif[1.0], "TIFF", ".tif")
    # A kept final saved as HEIC, which Pillow here cannot read.
    heic = renders("0700")
    (final / heic[2.0][0].replace(".png", ".heic")).write_bytes(
        b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 200)
    return Layout(root, original, final, boxes)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The layout taken through scan, group, extract, merge (no production DB), the
    metrics and the export."""
    root = tmp_path_factory.mktemp("broken")
    lay = make_layout(root / "p")
    cfg = pipeline_config()
    scan = scan_project({"original": lay.original, "final": lay.final},
                        ScanSettings.from_config(cfg.scan), root / "cache").table
    groups, ungrouped = group_table(scan, section(GroupConfig, cfg.group, "group"), "p")
    settings = ExtractSettings.from_config(cfg.extract, cfg.scan.max_pixels)
    result = extract_project(groups, scan, ungrouped, settings, lay.original, lay.final,
                             root / "cache")
    truth = check(result.truth, TruthTable, "truth")
    merge_settings = MergeSettings.from_config(cfg.merge, cfg.evaluate)
    rows, prov = backfill_rows("p", groups, truth, scan, None, merge_settings)
    production = pd.DataFrame({c: pd.Series(dtype=object) for c in rows.columns})
    reasons = dict(zip(prov["group_id"], prov["review_reason"], strict=True))
    plan = plan_merge(rows, production, merge_settings, MergeInputs(reasons=reasons))
    tables = {"truth": truth, "scan": scan, "groups": groups, "finals": result.finals,
              "predictions": typed_frame(PredictionsTable)}
    metrics = project_metrics(tables, Emitted(plan.merged, prov, "ok"), [])
    export = build_records("p", groups, truth, lay.original, lay.final)
    return lay, scan, groups, ungrouped, truth, plan, metrics, export


def figures(built) -> dict:
    """What the issue counts, measured on the built project."""
    lay, scan, groups, ungrouped, truth, plan, metrics, export = built
    by_id = truth.set_index("group_id")
    unreadable = {str(lay.original / p) for p in
                  scan.loc[(scan["source"] == "original") & (scan["status"] == "error"),
                           "rel_path"]}
    written = set(plan.merged["group_id"])
    broken = {"p_group_20250708_061000", "p_group_20250708_063000"}
    listed = sum(bool(unreadable & {*r.neg_paths, r.chosen_path})
                 for r in export.itertuples(index=False))
    recovered = sum(by_id.loc[g, "user_action"] == "crop" if g in by_id.index else False
                    for g in ("p_group_20250708_064000", "p_group_20250708_065000"))
    heic = "p_group_20250708_070000"
    return {
        "broken groups written to ai_decisions": len(broken & written),
        "real groups split": int("p_group_20250708_060000" not in set(groups["group_id"])
                                 or groups.set_index("group_id").loc[
                                     "p_group_20250708_060000", "n_images"] != 3),
        "exported entries listing an unreadable image": listed,
        "webp/tif finals recovered": recovered,
        "heic final group silently rejected": int(
            heic in written and by_id.loc[heic, "user_action"] == "reject"
            and not by_id.loc[heic, "needs_review"]),
        "broken rejects counted": metrics.get("broken_rejects"),
    }


def test_the_issue_figures(built):
    assert figures(built) == {
        "broken groups written to ai_decisions": 0,
        "real groups split": 0,
        "exported entries listing an unreadable image": 0,
        "webp/tif finals recovered": 2,
        "heic final group silently rejected": 0,
        "broken rejects counted": 1,
    }


def test_a_file_with_no_image_signature_is_not_a_render(built):
    _, _, groups, ungrouped, *_ = built
    g = groups.set_index("group_id").loc["p_group_20250708_060000"]
    assert g["n_images"] == 3 and _name("060010", 1.0) not in g["image_names"]
    why = ungrouped.set_index("name")["reason"]
    assert why[_name("060010", 1.0)].startswith("not an image")
    assert why[_name("063000", 2.0)].startswith("empty file")
    # The truncated one is an image: it keeps its place, and alone it makes no group.
    assert "unreadable: truncated" in why[_name("063000", 1.0)]
    assert not groups["group_id"].str.endswith("063000").any()


def test_a_reject_of_a_group_with_an_unreadable_member_is_no_decision(built):
    lay, scan, groups, ungrouped, truth, plan, metrics, export = built
    t = truth.set_index("group_id")
    gid = "p_group_20250708_061000"
    assert t.loc[gid, "user_action"] == BROKEN and t.loc[gid, "needs_review"]
    assert _name("061015", 1.5) in t.loc[gid, "review_reason"]
    assert gid not in set(plan.merged["group_id"])
    issue = plan.issues[plan.issues["group_id"] == gid]
    assert issue["kind"].tolist() == [BROKEN]
    assert "not written to ai_decisions" in issue["detail"].iat[0]
    assert metrics["broken_rejects"] == 1 and metrics["reject"] == 0
    assert gid not in set(export["group_id"])


def test_a_kept_group_with_an_unreadable_member_is_flagged_and_exported_without_it(built):
    lay, scan, groups, ungrouped, truth, plan, metrics, export = built
    gid = "p_group_20250708_062000"
    t = truth.set_index("group_id").loc[gid]
    assert t["user_action"] == "crop" and t["user_selected_index"] == 1
    assert t["needs_review"] and _name("062030", 2.0) in t["review_reason"]
    assert gid in set(plan.merged["group_id"])
    entry = export.set_index("group_id").loc[gid]
    assert entry["neg_paths"] == [str(lay.original / _name("062000", 1.0))]
    assert entry["neg_stages"] == [1.0]


@pytest.mark.parametrize("gid", ["p_group_20250708_064000", "p_group_20250708_065000"])
def test_webp_and_tif_finals_are_read_and_located(built, gid):
    lay, scan, groups, ungrouped, truth, plan, metrics, export = built
    t = truth.set_index("group_id").loc[gid]
    assert t["user_action"] == "crop" and not t["needs_review"], t["review_reason"]
    box = [t[c] for c in ("crop_x1", "crop_y1", "crop_x2", "crop_y2")]
    assert np.allclose(box, lay.boxes[gid], atol=0.02)


def test_a_final_in_a_format_not_read_is_listed_and_flags_its_group(built):
    lay, scan, groups, ungrouped, truth, plan, metrics, export = built
    row = scan.set_index("rel_path").loc[_name("070030", 2.0).replace(".png", ".heic")]
    assert row["status"] == "error" and "cannot read .heic" in row["reason"]
    t = truth.set_index("group_id").loc["p_group_20250708_070000"]
    assert t["user_action"] == "unreadable" and t["needs_review"]
    assert ".heic" in t["review_reason"]
    kinds = plan.issues.set_index("group_id")["kind"]
    assert kinds["p_group_20250708_070000"] == "final_unreadable"
