"""The nearest-up rule: the reference's pinned cases, then whole generated projects."""

from datetime import datetime, timedelta

import pytest

from backfill.group import ALONE, SKIPPED, GroupSettings, exact_timestamp, group_table, nearest_up
from backfill.scan import ScanSettings, scan_project
from conftest import REPO

T0 = datetime(2025, 7, 8, 6, 0, 0)


# The reference's defaults (as in conf/pipeline/default.yaml).
DEFAULTS = dict(lookahead=50, time_gap_minutes=None, min_group_size=2, max_group_size=4)


def groups_of(stages, minutes=None, **kw):
    times = [T0 + timedelta(minutes=m) for m in (minutes or range(len(stages)))]
    groups, left_out = nearest_up(stages, times, **{**DEFAULTS, **kw})
    return [[stages[i] for i in g] for g in groups], left_out


def test_waits_for_the_nearest_higher_stage():
    assert groups_of([1, 3, 2, 3])[0] == [[1, 2, 3]]


def test_the_stage_jumped_over_is_reported():
    _, left_out = groups_of([1, 3, 2, 3])
    assert left_out == {1: SKIPPED}


def test_repeated_stage_restarts():
    assert groups_of([3, 3, 2, 3])[0] == [[2, 3]]


@pytest.mark.parametrize("stages", [[2, 2, 2], [3, 2, 1], [3, 2, 1.5, 1]])
def test_equal_or_decreasing_stages_make_no_group(stages):
    groups, left_out = groups_of(stages)
    assert groups == []
    assert set(left_out.values()) == {ALONE}


def test_a_time_gap_splits_when_set():
    assert groups_of([1, 2], minutes=[0, 3])[0] == [[1, 2]]
    assert groups_of([1, 2], minutes=[0, 3], time_gap_minutes=2)[0] == []
    assert groups_of([1, 2], minutes=[0, 1], time_gap_minutes=2)[0] == [[1, 2]]


def test_lookahead_matters():
    # stage1, then 15 stage3 renders, then a stage2: only a long window sees the stage2.
    stages = [1.0] + [3.0] * 15 + [2.0]
    short, _ = groups_of(stages, lookahead=10)
    long, _ = groups_of(stages, lookahead=25)
    assert short[0] == [1.0, 3.0]
    assert long[0] == [1.0, 2.0]


def test_groups_hold_at_most_max_group_size():
    assert groups_of([1, 1.5, 2, 3, 4, 5])[0] == [[1, 1.5, 2, 3], [4, 5]]


def test_min_group_size():
    assert groups_of([1, 2, 1, 2, 3], min_group_size=3)[0] == [[1, 2, 3]]


def test_exact_timestamp_groups_only_shared_timestamps():
    stages = [1.0, 2.0, 2.0, 1.0, 1.0, 3.0]
    stamps = ["a", "a", "a", "b", "c", "c"]
    groups, left_out = exact_timestamp(stages, stamps, min_group_size=2, max_group_size=4)
    assert groups == [[0, 1], [4, 5]]
    assert set(left_out) == {2, 3}


def settings(**kw) -> GroupSettings:
    base = dict(method="nearest_up", id_format="{project}_group_{timestamp}", **DEFAULTS)
    return GroupSettings(**{**base, **kw})


SCAN = ScanSettings(frozenset({".png", ".jpg", ".jpeg"}), (".DS_Store", "._*"), True, 2)


def scan_of(project, tmp_path):
    roots = {"original": project.original_dir, "final": project.final_dir}
    return scan_project(roots, SCAN, tmp_path / "cache").table


def test_generated_project_groups_equal_the_truth(small_project, tmp_path):
    groups, ungrouped = group_table(scan_of(small_project, tmp_path), settings(), "p")
    truth = {tuple(g.rel_paths) for g in small_project.groups}
    assert {tuple(p) for p in groups["image_paths"]} == truth
    # Files of one group are spread over subfolders: grouping ignores folders.
    assert any(len({p.split("/")[0] for p in paths}) > 1 for paths in groups["image_paths"])
    assert set(groups["group_id"]) == {f"p_group_{g.first_timestamp}" for g in small_project.groups}
    # Every bad original is ungrouped, with a reason.
    bad = set(small_project.bad_files)
    assert bad <= set(ungrouped["rel_path"])
    assert ungrouped["reason"].str.len().gt(0).all()


def test_group_ids_stay_unique_when_the_format_repeats(small_project, tmp_path):
    groups, _ = group_table(scan_of(small_project, tmp_path), settings(id_format="{project}"), "p")
    assert groups["group_id"].is_unique
    assert set(groups["group_id"]) == {"p"} | {f"p_{k}" for k in range(2, len(groups) + 1)}


def test_exact_timestamp_option_on_a_project(small_project, tmp_path):
    # Each stage carries its own timestamp, so exact grouping finds nothing here: the
    # reason it is an option, never the default.
    groups, ungrouped = group_table(
        scan_of(small_project, tmp_path), settings(method="exact_timestamp"), "p"
    )
    assert len(groups) == 0
    assert ungrouped["reason"].str.contains("no other stage shares its timestamp").any()


def test_an_unreadable_render_keeps_its_place_in_its_group(small_project, tmp_path):
    import shutil

    project = tmp_path / "p"
    shutil.copytree(small_project.root, project, symlinks=True)
    group = next(g for g in small_project.groups if len(g.rel_paths) >= 3)
    middle = project / "original" / group.rel_paths[1]
    middle.write_bytes(middle.read_bytes()[:100])  # truncated on disk since
    roots = {"original": project / "original", "final": project / "final"}
    scan = scan_project(roots, SCAN, tmp_path / "c").table
    groups, ungrouped = group_table(scan, settings(), "p")
    row = groups.set_index("group_id").loc[f"p_group_{group.first_timestamp}"]
    assert list(row.image_paths) == group.rel_paths  # same members, same indexes
    assert list(row.unreadable) == [group.rel_paths[1]]
    assert row.widths[1] is None and row.heights[1] is None
    assert group.rel_paths[1] not in set(ungrouped.rel_path)


def test_a_zero_time_gap_splits_any_gap():
    assert groups_of([1, 2], minutes=[0, 1], time_gap_minutes=0)[0] == []


@pytest.mark.parametrize(
    ("change", "message"),
    [({"lookahead": 0}, "lookahead"), ({"max_group_size": 5}, "0-3"),
     ({"min_group_size": 3, "max_group_size": 2}, "min_group_size"),
     ({"min_group_size": 1}, "min_group_size"), ({"method": "x"}, "method")],
)
def test_bad_group_settings_are_refused(change, message):
    from omegaconf import OmegaConf

    from backfill.project import ConfigError

    cfg = OmegaConf.load(REPO / "conf" / "pipeline" / "default.yaml").group
    with pytest.raises(ConfigError, match=message):
        GroupSettings.from_config(OmegaConf.merge(cfg, change))
