"""File times outside a believable range (a wrong clock, a tool that stamps 1970, a
year typed as 2150) are a scan warning and never a decision time."""

import os
from datetime import UTC, datetime

import pytest

from backfill.config.settings import section
from backfill.demo.synthetic import make_project
from backfill.files.filetimes import FileTimes
from tests.conftest import pipeline_config

FUTURE = int(datetime(2150, 1, 1, tzinfo=UTC).timestamp()) * 10**9
PAST = int(datetime(1960, 6, 1, tzinfo=UTC).timestamp()) * 10**9
NOW = int(datetime(2026, 1, 1, tzinfo=UTC).timestamp()) * 10**9


def test_the_believable_range_comes_from_the_settings():
    times = FileTimes.from_config(pipeline_config().scan)
    hour = 3_600 * 10**9
    got = times.believable([PAST, 0, None, NOW, NOW + 23 * hour, NOW + 25 * hour, FUTURE],
                           now_ns=NOW)
    assert got.tolist() == [False, False, False, True, True, False, False]
    assert FileTimes.from_config(
        pipeline_config("scan.earliest_file_time=1950-01-01").scan).believable([PAST])[0]
    assert times.problem(FUTURE).startswith("file time not believable: 2150-01-01 00:00 UTC")


@pytest.fixture(scope="module")
def odd_times(tmp_path_factory):
    """A project whose first crop's final is dated 2150, and whose first reject group's
    renders are all dated 1960, taken through scan, group, extract and the merge rows."""
    from backfill.config.settings import GroupConfig
    from backfill.stages.extract.stage import ExtractSettings, extract_project
    from backfill.stages.group import group_table
    from backfill.stages.merge import MergeSettings, backfill_rows
    from backfill.stages.scan import ScanSettings, scan_project

    root = tmp_path_factory.mktemp("times")
    cfg = pipeline_config()
    gen = make_project(root / "p", n_groups=8, seed=6, scale=0.05, variants=False,
                       bad_files=False, companions=False)
    crop = next(g for g in gen.groups if g.action == "crop")
    reject = next(g for g in gen.groups if g.action == "reject")
    os.utime(gen.final_dir / crop.final_rel_path, ns=(FUTURE, FUTURE))
    for rel in reject.rel_paths:
        os.utime(gen.original_dir / rel, ns=(PAST, PAST))
    times = FileTimes.from_config(cfg.scan)
    scan = scan_project({"original": gen.original_dir, "final": gen.final_dir},
                        ScanSettings.from_config(cfg.scan), root / "cache", times).table
    groups, ungrouped = group_table(scan, section(GroupConfig, cfg.group, "group"), "p")
    settings = ExtractSettings.from_config(cfg.extract, cfg.scan.max_pixels, file_times=times)
    truth = extract_project(groups, scan, ungrouped, settings, gen.original_dir,
                            gen.final_dir, root / "cache").truth
    settings = MergeSettings.from_config(cfg.merge, cfg.evaluate, scan_cfg=cfg.scan)
    rows, prov = backfill_rows("p", groups, truth, scan, None, settings)
    return gen, crop, reject, scan, truth, rows, prov


def test_scan_warns_of_each_file_whose_time_is_not_believable(odd_times):
    gen, crop, reject, scan, *_ = odd_times
    odd = scan[scan["reason"].fillna("").str.contains("not believable")]
    assert sorted(odd["rel_path"]) == sorted([crop.final_rel_path, *reject.rel_paths])
    assert (odd["status"] == "warning").all()
    # One kind in `backfill summary`, whatever the times.
    from backfill.reports.summary import _reason_head
    assert set(odd["reason"].map(_reason_head)) == {"file time not believable"}
    assert scan.loc[~scan.index.isin(odd.index), "status"].eq("ok").all()


def test_no_unbelievable_time_becomes_a_decision_time(odd_times):
    gen, crop, reject, scan, truth, rows, prov = odd_times
    gid = f"p_group_{crop.first_timestamp}"
    row = truth.set_index("group_id").loc[gid]
    assert row.user_action == "crop"  # the decision itself stands...
    assert row.crop_timestamp is None or row.crop_timestamp != row.crop_timestamp
    assert row.final_modified_at is None or row.final_modified_at != row.final_modified_at
    assert row.needs_review
    assert "kept final's file time not believable: 2150-01-01" in row.review_reason
    times = rows.set_index("group_id")["timestamp"]
    assert not times.str.startswith(("2150", "1960")).any()
    assert times.notna().all()  # the DB needs one per row

    rejected = f"p_group_{reject.first_timestamp}"
    flagged = prov.set_index("group_id").loc[rejected]
    assert flagged.needs_review and "no file time of the group is believable" in \
        flagged.review_reason
    assert times[rejected].startswith(reject.rel_paths[-1].rsplit("/", 1)[-1][:4])
    assert prov["needs_review"].sum() == truth["needs_review"].sum() + 1
