"""Two machines that wrote the same render names with other pixels (a name clash): only
the groups holding a clashing name are touched, each machine's copies form their own
group, and the kept finals are paired with the right machine's render by their pixels."""

from types import SimpleNamespace

import pytest

from backfill.demo.synthetic import make_two_machine_project
from backfill.stages.extract.stage import ExtractSettings, extract_project
from backfill.stages.group import GroupSettings, group_table
from backfill.stages.scan import ScanSettings, scan_project
from tests.conftest import pipeline_config


def _recover(root, clash: bool) -> SimpleNamespace:
    cfg = pipeline_config()
    gen = make_two_machine_project(root / "p", n_groups=30, clashing=4, seed=11, clash=clash)
    scan = scan_project({"original": gen.original_dir, "final": gen.final_dir},
                        ScanSettings.from_config(cfg.scan), root / "fp").table
    groups, ungrouped = group_table(scan, GroupSettings.from_config(cfg.group), "p")
    result = extract_project(groups, scan, ungrouped,
                             ExtractSettings.from_config(cfg.extract, cfg.scan.max_pixels),
                             gen.original_dir, gen.final_dir, root / "cache")
    return SimpleNamespace(gen=gen, groups=groups, ungrouped=ungrouped, truth=result.truth,
                           finals=result.finals)


@pytest.fixture(scope="module")
def clash(tmp_path_factory) -> SimpleNamespace:
    return _recover(tmp_path_factory.mktemp("clash"), clash=True)


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> SimpleNamespace:
    return _recover(tmp_path_factory.mktemp("plain"), clash=False)


def _group_of(run: SimpleNamespace) -> dict[tuple[str, ...], str]:
    return {tuple(p): g for g, p in zip(run.groups["group_id"], run.groups["image_paths"],
                                        strict=True)}


def figures(run: SimpleNamespace) -> dict[str, object]:
    """Against the generator's truth: renders of true groups left ungrouped, true groups
    missing, kept finals not kept, and the share of groups whose action is right."""
    found = _group_of(run)
    truth = run.truth.set_index("group_id")
    role = run.finals.set_index("rel_path")["role"]
    right = 0
    for g in run.gen.groups:
        gid = found.get(tuple(g.rel_paths))
        if gid is None:
            continue
        row = truth.loc[gid]
        right += row.user_action == g.action and (
            g.kept_index is None or row.user_selected_index == g.kept_index)
    return {
        "ungrouped": int(run.ungrouped["rel_path"].isin(
            {p for g in run.gen.groups for p in g.rel_paths}).sum()),
        "lost": sum(tuple(g.rel_paths) not in found for g in run.gen.groups),
        "orphaned": sum(role.get(g.final_rel_path) != "kept"
                        for g in run.gen.groups if g.final_rel_path),
        "accuracy": round(float(right) / len(run.gen.groups), 3),
    }


def test_figures(clash, plain):
    print("\nwith the clash:", figures(clash), "without:", figures(plain))
    assert figures(clash) == {"ungrouped": 0, "lost": 0, "orphaned": 0, "accuracy": 1.0}


def test_no_unrelated_group_is_lost_or_changed(clash, plain):
    mine = {k for pair in clash.gen.clash_pairs for k in pair}
    unrelated = [g for k, g in enumerate(clash.gen.groups) if k not in mine]
    assert len(unrelated) == len(plain.gen.groups) - len(clash.gen.clash_pairs)
    cols = ["user_action", "user_selected_index", "final_path", "crop_x1", "crop_y1",
            "crop_x2", "crop_y2", "needs_review"]
    with_clash = clash.truth.set_index("group_id")
    without = plain.truth.set_index("group_id")
    found, before = _group_of(clash), _group_of(plain)
    for g in unrelated:
        gid = found[tuple(g.rel_paths)]
        assert gid == before[tuple(g.rel_paths)]
        assert with_clash.loc[gid, cols].equals(without.loc[gid, cols]), gid


def test_each_machine_forms_its_own_groups_and_finals_pair_by_pixels(clash):
    found = _group_of(clash)
    truth = clash.truth.set_index("group_id")
    for pair in clash.gen.clash_pairs:
        ids = []
        for k in pair:
            g = clash.gen.groups[k]
            gid = found[tuple(g.rel_paths)]  # exactly this machine's renders
            ids.append(gid)
            row = truth.loc[gid]
            assert row.final_path == g.final_rel_path
            assert row.user_selected_index == g.kept_index
            assert row.user_action == g.action
        assert ids[0] != ids[1]


def test_only_what_the_pixels_cannot_tell_is_reported(clash):
    stranger = next(r for r, kind in clash.gen.other_finals.items() if kind == "orphan")
    finals = clash.finals.set_index("rel_path")
    assert finals.loc[stranger, "role"] == "orphan"
    assert "pixels" in finals.loc[stranger, "reason"]
    first = clash.gen.clash_pairs[0]
    found = _group_of(clash)
    flagged = {found[tuple(clash.gen.groups[k].rel_paths)] for k in first}
    truth = clash.truth.set_index("group_id")
    assert set(truth.index[truth["needs_review"]]) == flagged
    for gid in flagged:
        assert stranger in truth.loc[gid, "review_reason"]
    orphans = set(finals.index[finals["role"] == "orphan"])
    assert orphans == {r for r, kind in clash.gen.other_finals.items() if kind == "orphan"}
