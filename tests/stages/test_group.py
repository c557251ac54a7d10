"""The nearest-up rule: the reference's pinned cases, then whole generated projects."""

from datetime import datetime, timedelta

import pytest

from backfill.config.settings import GroupConfig, section
from backfill.stages.group import ALONE, SKIPPED, exact_timestamp, group_table, nearest_up
from backfill.stages.scan import ScanSettings, scan_project
from tests.conftest import pipeline_config
from tests.helpers.stage_settings import DEFAULTS, settings

T0 = datetime(2025, 7, 8, 6, 0, 0)




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




SCAN = ScanSettings(frozenset({".png", ".jpg", ".jpeg"}), (".DS_Store", "._*"), True, 2, 10**8)


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

    from backfill.config.errors import UserError

    cfg = pipeline_config().group
    with pytest.raises(UserError, match=message):
        section(GroupConfig, OmegaConf.merge(cfg, change), "group")


def _two_sources(tmp_path, folders: dict[str, int]):
    """An original folder holding generated projects side by side, one per subfolder
    (``name -> seed``): the same names, other pictures. Returns the generated projects."""
    import shutil

    from backfill.demo.synthetic import make_project

    root = tmp_path / "p"
    (root / "final").mkdir(parents=True)
    made = {}
    for folder, seed in folders.items():
        gen = make_project(tmp_path / f"gen_{folder}", n_groups=4, seed=seed, scale=0.05,
                           bad_files=False, companions=False, variants=False)
        shutil.copytree(gen.original_dir, root / "original" / folder)
        made[folder] = gen
    return root, made


def _scan_and_group(root, tmp_path):
    roots = {"original": root / "original", "final": root / "final"}
    return group_table(scan_project(roots, SCAN, tmp_path / "cache").table, settings(), "p")


def test_a_name_clash_never_mixes_two_sources(tmp_path):
    # Two machines wrote the same timestamped names with other pictures. Machine b's
    # last two groups were taken a day later, so only its first two groups clash.
    root, made = _two_sources(tmp_path, {"machine_a": 1, "machine_b": 2})
    later = {p for g in made["machine_b"].groups[2:] for p in g.rel_paths}
    for rel in later:
        path = root / "original" / "machine_b" / rel
        path.rename(path.with_name(path.name.replace("20250708_", "20250709_")))
    groups, ungrouped = _scan_and_group(root, tmp_path)

    def on_disk(folder, rel):
        moved = folder == "machine_b" and rel in later
        return f"{folder}/{rel.replace('20250708_', '20250709_') if moved else rel}"

    clashing = {p.rsplit("/", 1)[1] for g in made["machine_b"].groups[:2] for p in g.rel_paths}
    clashing &= {p.rsplit("/", 1)[1] for g in made["machine_a"].groups for p in g.rel_paths}
    assert clashing
    # Every group of both machines, each machine's clashing copies in their own group.
    expected = {tuple(on_disk(folder, p) for p in g.rel_paths)
                for folder, gen in made.items() for g in gen.groups}
    assert {tuple(p) for p in groups["image_paths"]} == expected
    assert not any({p.split("/")[0] for p in g} == {"machine_a", "machine_b"}
                   for g in groups["image_paths"])
    assert groups["group_id"].is_unique
    assert len(ungrouped) == 0


def test_a_clashing_copy_left_out_says_it_clashes(tmp_path):
    root, made = _two_sources(tmp_path, {"machine_a": 1, "machine_b": 2})
    g = made["machine_b"].groups[0]
    for rel in g.rel_paths[1:]:  # machine b kept only the first render of its group
        (root / "original" / "machine_b" / rel).unlink()
    groups, ungrouped = _scan_and_group(root, tmp_path)
    assert {tuple(p) for p in groups["image_paths"]} == {
        tuple(f"{folder}/{p}" for p in t.rel_paths) for folder, gen in made.items()
        for t in gen.groups if t is not g}
    why = ungrouped.set_index("rel_path")["reason"][f"machine_b/{g.rel_paths[0]}"]
    assert why.startswith(ALONE)
    assert f"name clash: {g.rel_paths[0].rsplit('/', 1)[1]} also in machine_a/" in why


def test_identical_copies_are_grouped_once_and_are_no_clash(tmp_path):
    import shutil

    root, made = _two_sources(tmp_path, {"machine_a": 1})
    shutil.copytree(root / "original" / "machine_a", root / "original" / "machine_a_backup")
    groups, ungrouped = _scan_and_group(root, tmp_path)
    truth = {tuple(f"machine_a/{p}" for p in g.rel_paths) for g in made["machine_a"].groups}
    assert {tuple(p) for p in groups["image_paths"]} == truth
    assert ungrouped["rel_path"].str.startswith("machine_a_backup/").all()
    assert len(ungrouped) == sum(len(g) for g in truth)
    assert ungrouped["reason"].str.startswith("copy of machine_a/").all()
    assert not ungrouped["reason"].str.contains("clash").any()


def test_clash_folders_are_where_the_copies_paths_part():
    from backfill.files.clashes import TOP, clash_folders, clash_sides, visible

    assert clash_folders(["a/x/n.png", "b/x/n.png"]) == ["a/", "b/"]
    assert clash_folders(["m/a/n.png", "m/b/n.png"]) == ["m/a/", "m/b/"]
    # A copy at the top: only the other side is a folder of its own.
    assert clash_folders(["n.png", "b/n.png"]) == ["b/"]
    # Each clash has its sides; a file under neither side of a clash is neutral to it.
    sides = clash_sides(["a/x/1.png", "b/2.png", "c/3.png", "a/4.png", "k.png", "5.png"],
                        ["a/n.png", "b/n.png", "a/x/m.png", "a/y/m.png", "k.png", "c/k.png"])
    ab, xy, top = ("a/", "b/"), ("a/x/", "a/y/"), ("c/",)
    assert sides == [{ab: "a/", xy: "a/x/"}, {ab: "b/"}, {top: "c/"}, {ab: "a/"},
                     {top: TOP}, {}]
    assert visible(sides[0], sides[3]) and not visible(sides[0], sides[1])
    assert visible({}, sides[1]) and visible(sides[1], {})


def _before_clashes(stages, times, lookahead, time_gap_minutes, min_group_size,
                    max_group_size):
    """The nearest-up rule as it stood before name clashes were grouped in one list."""
    gap = timedelta(minutes=time_gap_minutes) if time_gap_minutes is not None else None
    n, i, groups, left_out = len(stages), 0, [], {}

    def ends(prev_stage, prev_time, k):
        return stages[k] <= prev_stage or bool(
            gap is not None and prev_time and times[k] and times[k] - prev_time > gap)

    while i < n:
        group = [i]
        i += 1
        while i < n and len(group) < max_group_size:
            window, k = [], i
            while k < n and k - i < lookahead and not ends(stages[group[-1]],
                                                           times[group[-1]], k):
                window.append(k)
                k += 1
            if not window:
                break
            chosen = next(k for k in window if stages[k] == min(stages[j] for j in window))
            left_out.update(dict.fromkeys(range(i, chosen), SKIPPED))
            group.append(chosen)
            i = chosen + 1
        if len(group) >= min_group_size:
            groups.append(group)
        else:
            left_out.update(dict.fromkeys(group, ALONE))
    return groups, left_out


@pytest.mark.parametrize("seed", range(20))
def test_with_no_clash_the_rule_is_as_before(seed):
    import random

    rng = random.Random(seed)
    n = rng.randint(0, 60)
    stages = [rng.choice([1.0, 1.5, 2.0, 3.0]) for _ in range(n)]
    times = sorted(T0 + timedelta(seconds=rng.randint(0, 900)) for _ in range(n))
    kw = dict(lookahead=rng.choice([1, 3, 50]), time_gap_minutes=rng.choice([None, 2]),
              min_group_size=rng.choice([2, 3]), max_group_size=rng.choice([2, 4]))
    before = _before_clashes(stages, times, **kw)
    assert nearest_up(stages, times, **kw) == before
    assert nearest_up(stages, times, **kw, sides=[{}] * n) == before


def test_a_group_never_takes_a_file_from_the_other_side_of_a_clash():
    ab = ("a/", "b/")
    a, b = {ab: "a/"}, {ab: "b/"}
    stages = [1.0, 1.0, 1.5, 2.0, 2.0, 3.0]
    sides = [a, b, {}, a, b, {}]  # the neutral ones go to whichever group comes first
    groups, left_out = nearest_up(stages, [T0] * 6, **DEFAULTS, sides=sides)
    assert groups == [[0, 2, 3, 5], [1, 4]] and left_out == {}
    groups, _ = exact_timestamp(stages[:2] + stages[3:5], ["t"] * 4, 2, 4,
                                sides=[a, b, a, b])
    assert groups == [[0, 2], [1, 3]]
    assert exact_timestamp(stages[:2] + stages[3:5], ["t"] * 4, 2, 4)[0] == [[0, 2]]


def test_a_clash_with_identical_copies_groups_each_picture_once(tmp_path):
    import shutil

    root, made = _two_sources(tmp_path, {"machine_a": 1, "machine_b": 2})
    shutil.copytree(root / "original" / "machine_a", root / "original" / "machine_a_backup")
    groups, ungrouped = _scan_and_group(root, tmp_path)
    assert {tuple(p) for p in groups["image_paths"]} == {
        tuple(f"{folder}/{p}" for p in g.rel_paths) for folder, gen in made.items()
        for g in gen.groups}
    assert ungrouped["rel_path"].str.startswith("machine_a_backup/").all()
    assert ungrouped["reason"].str.startswith("copy of machine_a/").all()
