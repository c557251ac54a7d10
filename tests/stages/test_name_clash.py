"""Two machines that wrote the same render names with other pixels (a name clash): only
the groups holding a clashing name are touched, each machine's copies form their own
group, and the kept finals are paired with the right machine's render by their pixels."""

import json
from types import SimpleNamespace

import pandas as pd
import pytest

from backfill.config.settings import GroupConfig, section
from backfill.db.schema import COLUMNS
from backfill.demo.synthetic import make_two_machine_project
from backfill.stages.extract.pairing import pair_finals
from backfill.stages.extract.stage import ExtractSettings, extract_project
from backfill.stages.group import group_table
from backfill.stages.merge import MergeSettings, backfill_rows, plan_merge
from backfill.stages.scan import ScanSettings, scan_project
from tests.conftest import pipeline_config
from tests.helpers.extract_rows import NO_UNGROUPED, file_row, ungrouped_rows
from tests.helpers.recover import recover


def _recover(root, clash: bool) -> SimpleNamespace:
    gen = make_two_machine_project(root / "p", n_groups=30, clashing=4, seed=11, clash=clash)
    return recover(gen, root / "cache")


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


def test_a_live_row_naming_a_clashing_name_is_reported_never_matched(clash):
    pair = clash.gen.clash_pairs[1]
    found = _group_of(clash)
    ids = [found[tuple(clash.gen.groups[k].rel_paths)] for k in pair]
    settings = MergeSettings(coord_tolerance=0.01, crop_tolerance=0.05)
    rows, _ = backfill_rows("p", clash.groups, clash.truth, clash.scan, None, settings)
    # With no live row, each machine's group is a row of its own.
    alone = plan_merge(rows, pd.DataFrame(columns=COLUMNS), settings)
    assert set(ids) <= set(alone.changes.loc[alone.changes["rule"] == "added", "group_id"])
    name = clash.gen.groups[pair[0]].rel_paths[0].rsplit("/", 1)[1]
    live = pd.DataFrame([{**dict.fromkeys(COLUMNS), "group_id": "live1",
                          "timestamp": "2025-10-01T10:00:00Z", "project_id": "p",
                          "images": json.dumps([name]), "user_selected_index": 0,
                          "user_action": "approve", "image_width": 40, "image_height": 60}],
                        columns=COLUMNS)
    plan = plan_merge(rows, live, settings)
    assert not set(ids) & set(plan.pairs["backfill_id"])
    ambiguous = plan.issues[plan.issues["kind"] == "ambiguous_match"]
    assert "live1" in set(ambiguous["group_id"])
    assert all(i in ambiguous.set_index("group_id").at["live1", "detail"] for i in ids)
    assert not set(ids) & set(plan.changes["group_id"])  # neither added beside the row


# --- pairing by pixels, with no pixels decoded -----------------------------------

R1, R2 = "20250706_121137_stage1_generated.png", "20250706_121252_stage2_upscaled.png"
A, B = [f"machine_a/{R1}", f"machine_a/{R2}"], [f"machine_b/{R1}", f"machine_b/{R2}"]


def _pair(finals: list[dict], groups: list[list[str]], by_pixels=None, ungrouped=NO_UNGROUPED):
    """pair_finals over both machines' renders (each copy with its own content), the
    groups given (``ga`` holds machine a's, ``gb`` machine b's)."""
    originals = [file_row("original", p) for p in A + B]
    frame = pd.DataFrame([{"group_id": f"g{paths[0][8]}", "image_paths": paths,
                           "image_names": [p.rsplit("/", 1)[1] for p in paths],
                           "stages": [1.0, 2.0], "unreadable": []} for paths in groups],
                         columns=["group_id", "image_paths", "image_names", "stages",
                                  "unreadable"])
    pairs, out = pair_finals(frame, pd.DataFrame(originals + finals), ungrouped,
                             by_pixels=by_pixels)
    return pairs.set_index("group_id"), out.set_index("rel_path")


def _hash(rel: str) -> str:
    return file_row("original", rel)["content_hash"]


def test_a_final_with_one_copys_bytes_is_that_copy():
    pairs, finals = _pair([file_row("final", R1, _hash(B[0]))], [A, B])
    assert finals.loc[R1, "role"] == "kept" and finals.loc[R1, "group_id"] == "gb"
    assert pairs.loc["gb", "user_selected_index"] == 0
    assert pairs["review"].isna().all() and pd.isna(pairs.loc["ga", "final_path"])


def test_the_pixels_decide_and_what_they_cannot_tell_is_reported():
    seen = []

    def by_pixels(jobs: pd.DataFrame) -> dict:
        seen.append(sorted(jobs["original_path"]))
        return {r: (A[1], "its pixels") if r == "x/" + R2 else (None, "its pixels cannot tell")
                for r in jobs["rel_path"]}

    finals = [file_row("final", "x/" + R2, "c" * 64), file_row("final", R1, "d" * 64)]
    pairs, out = _pair(finals, [A, B], by_pixels)
    assert seen == [sorted([A[1], B[1], A[0], B[0]])]  # every copy of both names
    assert out.loc["x/" + R2, "group_id"] == "ga" and pairs.loc["ga", "user_selected_index"] == 1
    assert out.loc[R1, "role"] == "orphan" and "cannot tell" in out.loc[R1, "reason"]
    for g in ("ga", "gb"):
        assert R1 in pairs.loc[g, "review"] and "name clash" in pairs.loc[g, "review"]
    # Without pixels to compare, nothing is guessed either.
    pairs, out = _pair(finals[:1], [A, B])
    assert out.loc["x/" + R2, "role"] == "orphan"
    assert pairs["review"].str.contains("not compared").all()


def test_a_final_showing_a_copy_in_no_group_is_an_orphan_and_flags_nothing():
    ungrouped = ungrouped_rows({R1: "no higher stage followed it"})
    pairs, out = _pair([file_row("final", R1, _hash(B[0]))], [A], ungrouped=ungrouped)
    assert out.loc[R1, "role"] == "orphan" and B[0] in out.loc[R1, "reason"]
    assert "in no group" in out.loc[R1, "reason"]
    assert pairs["review"].isna().all()
    pairs, out = _pair([file_row("final", R1, _hash(A[0]))], [A], ungrouped=ungrouped)
    assert out.loc[R1, "group_id"] == "ga"


def test_an_unreadable_final_of_a_clashing_name_is_reported():
    bad = file_row("final", R1, None, status="error", reason="truncated")
    pairs, out = _pair([bad], [A, B], lambda jobs: {})
    assert out.loc[R1, "role"] == "orphan" and "cannot be read" in out.loc[R1, "reason"]
    assert pairs["review"].notna().all()


def test_renders_of_two_sources_mixed_in_one_group_are_flagged(tmp_path):
    # Both machines' renders copied into the same batch folders: folders cannot tell the
    # machines apart (a's stage 2 sits beside b's stage 1), so the groups mix them. The
    # pictures can: both groups are flagged, never trusted quietly.
    import numpy as np

    from backfill.demo.synthetic import render_stages

    names = [R1, R2]
    # Machine a's renders in batch_00 and batch_01, machine b's in batch_01 and batch_02.
    for k, folders in enumerate([["batch_00", "batch_01"], ["batch_01", "batch_02"]]):
        images = render_stages(np.random.default_rng(k), (1.0, 2.0), 0.05)
        for folder, name, img in zip(folders, names, images.values(), strict=True):
            (tmp_path / "original" / folder).mkdir(parents=True, exist_ok=True)
            img.save(tmp_path / "original" / folder / name)
    (tmp_path / "final").mkdir()
    cfg = pipeline_config()
    scan = scan_project({"original": tmp_path / "original", "final": tmp_path / "final"},
                        ScanSettings.from_config(cfg.scan), tmp_path / "fp").table
    groups, ungrouped = group_table(scan, section(GroupConfig, cfg.group, "group"), "p")
    assert len(groups) == 2 and len(ungrouped) == 0
    truth = extract_project(groups, scan, ungrouped,
                            ExtractSettings.from_config(cfg.extract, cfg.scan.max_pixels),
                            tmp_path / "original", tmp_path / "final", tmp_path / "c").truth
    assert truth["needs_review"].all()
    assert truth["review_reason"].str.contains("may be mixed").all()
