"""Names with accents, as a copy between macOS and other systems leaves them: decomposed
(NFD) on disk, composed (NFC) in the live DB. One name is one name in either form."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pandas as pd
import pytest

from backfill.db.cells import image_names
from backfill.demo.synthetic import make_project
from tests.conftest import pipeline_config
from tests.helpers.mac_names import accented, mac_copied_project, nfc, nfd


@pytest.fixture(scope="module")
def merged(tmp_path_factory):
    from backfill.config.settings import GroupConfig, section
    from backfill.db.schema import read_rows
    from backfill.production.publish import publish_plan
    from backfill.stages.extract.stage import ExtractSettings, extract_project
    from backfill.stages.group import group_table
    from backfill.stages.merge import MergeSettings, backfill_rows, plan_merge
    from backfill.stages.scan import ScanSettings, scan_project

    root = tmp_path_factory.mktemp("nfd")
    gen, live = mac_copied_project(root)
    cfg = pipeline_config()
    scan = scan_project({"original": gen.original_dir, "final": gen.final_dir},
                        ScanSettings.from_config(cfg.scan), root / "cache").table
    groups, ungrouped = group_table(scan, section(GroupConfig, cfg.group, "group"), "p")
    truth = extract_project(groups, scan, ungrouped,
                            ExtractSettings.from_config(cfg.extract, cfg.scan.max_pixels),
                            gen.original_dir, gen.final_dir, root / "cache").truth
    settings = MergeSettings.from_config(cfg.merge, cfg.evaluate)
    rows, _ = backfill_rows("p", groups, truth, scan, None, settings)
    with sqlite3.connect(live.path) as conn:
        production, _ = read_rows(conn)
    conn.close()
    plan = plan_merge(rows, production, settings)
    publish_plan(live.path, plan.changes)
    with sqlite3.connect(live.path) as conn:
        after, _ = read_rows(conn)
    conn.close()
    return dict(gen=gen, live=live, scan=scan, groups=groups, truth=truth, plan=plan,
                after=after)


def test_the_files_really_are_decomposed_and_the_db_composed(merged):
    on_disk = [n for _, _, files in os.walk(merged["gen"].original_dir) for n in files]
    assert on_disk and all(n == nfd(n) != nfc(n) for n in on_disk)
    logged = [n for r in merged["live"].rows.values() for n in image_names(r["images"])]
    assert logged and all(n == nfc(n) != nfd(n) for n in logged)


def test_scan_keeps_the_path_on_disk_and_gives_the_composed_name(merged):
    scan = merged["scan"]
    assert all(rel == nfd(rel) for rel in scan["rel_path"])  # opens the file as it is
    assert all(name == nfc(name) for name in scan["name"])
    assert (scan["status"] == "ok").all()


def test_every_group_and_final_is_recovered(merged):
    gen, groups, truth = merged["gen"], merged["groups"], merged["truth"]
    assert len(groups) == len(gen.groups)
    kept = {g.first_timestamp: g.kept_index for g in gen.groups}
    got = dict(zip(groups["first_timestamp"],
                   truth.set_index("group_id").loc[groups["group_id"], "user_selected_index"],
                   strict=True))
    assert {t: (None if pd.isna(v) else int(v)) for t, v in got.items()} == kept


def test_merge_matches_every_live_row_and_adds_none_twice(merged):
    plan, live = merged["plan"], merged["live"]
    matched = set(plan.pairs["production_id"])
    print(f"live rows matched: {len(matched)} of {len(live.rows)}; new records added: "
          f"{int((plan.changes['rule'] == 'added').sum())}")
    assert matched == set(live.rows)
    added = plan.changes.loc[plan.changes["rule"] == "added", "group_id"]
    assert len(added) == len(merged["groups"]) - len(live.rows)


def test_publish_leaves_no_image_name_claimed_by_two_rows(merged):
    after = merged["after"]
    names = pd.Series([nfc(n).lower() for s in after["images"] for n in image_names(s)])
    twice = sorted(set(names[names.duplicated()]))
    print(f"image names claimed by two rows: {len(twice)}")
    assert twice == []
    # New rows name their images in the live DB's form (composed), as the person's
    # tools wrote them; the folder too.
    for col in ("images", "directory"):
        assert all(v == nfc(v) for v in after[col].dropna())


def test_validate_finds_every_image_the_db_names(merged):
    from backfill.stages.validate import check_decisions

    after, scan = merged["after"], merged["scan"]
    originals = set(scan.loc[scan["source"] == "original", "name"])
    findings = check_decisions(after, pd.Series(["backfill"] * len(after)), originals, 0.02)
    checks = {f.check for f in findings}
    assert not checks & {"rows naming images the scan did not find",
                         "image names claimed by two rows"}


def test_validate_stops_on_a_new_row_that_claims_a_live_rows_image_in_the_other_form():
    from backfill.stages.validate import check_decisions
    from tests.helpers.merge_rows import frame, row

    rows = frame(row("live1", [CAFE, "x.png"]), row("g1", [nfd(CAFE)]), row("g2", ["y.png"]))
    found = check_decisions(rows, pd.Series(["production", "backfill", "backfill"]), set(),
                            0.02)
    claimed = [(f.severity, f.group_ids) for f in found
               if f.check == "image names claimed by two rows"]
    assert claimed == [("error", ["g1"]), ("warning", ["live1"])]


# --- each comparison on its own: a name in two forms is one name ---------------------

CAFE = "20250708_060000_stage1_generated_café.png"


def _scan(root: Path, original: Path, final: Path):
    from backfill.stages.scan import ScanSettings, scan_project

    final.mkdir(parents=True, exist_ok=True)
    return scan_project({"original": original, "final": final},
                        ScanSettings.from_config(pipeline_config().scan), root / "cache").table


def _two_folders(root: Path, same_pixels: bool, second: str) -> Path:
    """Three renders in machine_a/ named with decomposed accents, and the same names in
    machine_b/ spelled ``second`` (composed or otherwise), with the same or other pixels."""
    from tests.conftest import add_renders

    original = root / "original"
    for folder, seed, form in (("machine_a", 5, nfd), ("machine_b", 5 if same_pixels else 6,
                                                       second)):
        for path in add_renders(original / folder, "20250708_0600", seed=seed):
            path.rename(path.with_name(form(path.stem + "_café") + path.suffix))
    return original


@pytest.mark.parametrize("same_pixels", [True, False])
def test_one_name_in_two_forms_in_two_folders_is_a_copy_or_a_clash(tmp_path, same_pixels):
    from backfill.config.settings import GroupConfig, section
    from backfill.stages.group import group_table

    original = _two_folders(tmp_path, same_pixels, nfc)
    scan = _scan(tmp_path, original, tmp_path / "final")
    assert len(set(scan["rel_path"])) == 6 and len(set(scan["name"])) == 3
    groups, ungrouped = group_table(scan, section(GroupConfig, pipeline_config().group, "group"),
                                    "p")
    if same_pixels:  # grouped once, the other folder's files are copies
        assert len(groups) == 1
        assert ungrouped["reason"].str.startswith("copy of machine_a/").all()
    else:  # a name clash: each folder's copies form their own group, no folder mixed
        assert len(groups) == 2 and ungrouped.empty
        for paths in groups["image_paths"]:
            assert len({p.split("/")[0] for p in paths}) == 1
        names = groups["image_names"].tolist()
        assert names[0] == names[1]  # one name in both forms: the same three names


def test_a_composed_final_pairs_by_name_with_its_decomposed_render(tmp_path):
    from backfill.config.settings import GroupConfig, section
    from backfill.stages.extract.pairing import pair_finals
    from backfill.stages.group import group_table

    gen = make_project(tmp_path / "p", n_groups=8, seed=11, scale=0.05, variants=False,
                       bad_files=False, companions=False, reject_rate=0.2)
    for g in gen.groups:
        for rel in g.rel_paths:
            (gen.original_dir / nfd(accented(rel))).parent.mkdir(exist_ok=True)
            os.rename(gen.original_dir / rel, gen.original_dir / nfd(accented(rel)))
        if g.final_rel_path:
            os.rename(gen.final_dir / g.final_rel_path,
                      gen.final_dir / nfc(accented(g.final_rel_path)))
    for folder in gen.original_dir.iterdir():
        if folder.name.startswith("batch"):
            folder.rmdir()
    scan = _scan(tmp_path, gen.original_dir, gen.final_dir)
    groups, ungrouped = group_table(scan, section(GroupConfig, pipeline_config().group, "group"),
                                    "p")
    pairs, finals = pair_finals(groups, scan, ungrouped)
    kept = [g for g in gen.groups if g.final_rel_path]
    assert (finals["role"] == "kept").sum() == len(kept)
    assert set(pairs["pair_method"].dropna()) == {"name"}


def test_publish_refuses_a_new_row_whose_image_a_live_row_names_in_the_other_form(tmp_path):
    from backfill.db.schema import create, insert_rows
    from backfill.production.apply import PlanConflict
    from backfill.production.publish import publish_plan
    from backfill.stages.merge import MergeSettings, plan_merge
    from tests.helpers.merge_rows import frame, row

    db = tmp_path / "live.db"
    with sqlite3.connect(db) as conn:
        create(conn)
    conn.close()
    plan = plan_merge(frame(row("g1", [nfd(CAFE)], user_action="reject")), frame(),
                      MergeSettings(0.01, 0.05))
    with sqlite3.connect(db) as conn:  # the reviewer logs the render after planning
        insert_rows(conn, frame(row("live1", [CAFE], user_action="reject")))
    conn.close()
    with pytest.raises(PlanConflict, match="holds one of its images now"):
        publish_plan(db, plan.changes)


# --- case: as the person's file system does it ---------------------------------------

def test_the_case_setting_is_auto_true_or_false_and_auto_asks_the_file_system(tmp_path):
    from backfill.config.errors import UserError
    from backfill.files.casing import case_sensitive, tells_case_apart

    folder = tmp_path / "Renders"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"x")
    # This machine's file system (Linux) tells case apart; a Mac's would not.
    swapped = (tmp_path / "rENDERS").exists()
    assert tells_case_apart(folder) is not swapped
    assert case_sensitive("auto", folder) is not swapped
    assert case_sensitive("false", folder) is False and case_sensitive(True, folder) is True
    digits = tmp_path / "2025"  # no letter in its own name: one of its entries is asked
    digits.mkdir()
    (digits / "b.png").write_bytes(b"x")
    assert tells_case_apart(digits) is not swapped
    with pytest.raises(UserError, match="names.case_sensitive='maybe'"):
        pipeline_config("names.case_sensitive=maybe")
    from backfill.config.settings import NamesConfig, section

    for value, expected in (("true", True), ("false", False), ("auto", not swapped)):
        names = section(NamesConfig, pipeline_config(f"names.case_sensitive={value}").names,
                        "names")  # YAML's true/false arrive as booleans
        assert case_sensitive(names.case_sensitive, folder) is expected


@pytest.mark.parametrize("case_sensitive", [True, False])
def test_names_that_differ_only_in_case_follow_the_setting(tmp_path, case_sensitive):
    from backfill.config.settings import GroupConfig, section
    from backfill.stages.extract.pairing import pair_finals
    from backfill.stages.group import group_table
    from tests.conftest import add_renders

    original = tmp_path / "original"
    upper = [p.rename(p.with_name(p.name.upper())) for p in
             add_renders(original / "machine_a", "20250708_0600", seed=5)]
    add_renders(original / "machine_b", "20250708_0600", seed=6)  # other pixels
    final = tmp_path / "final"
    final.mkdir()
    kept = upper[1].name.lower()  # the lower-case render's name (machine_b)
    (final / kept).write_bytes((original / "machine_b" / kept).read_bytes())
    scan = _scan(tmp_path, original, final)
    settings = section(GroupConfig, pipeline_config().group, "group")
    groups, ungrouped = group_table(scan, settings, "p", case_sensitive)
    if not case_sensitive:  # A.PNG and a.png are one name: a clash, each side grouped
        assert len(groups) == 2 and ungrouped.empty
        sides = [{p.split("/")[0] for p in g} for g in groups["image_paths"]]
        assert sorted(map(sorted, sides)) == [["machine_a"], ["machine_b"]]
        return
    pairs, _ = pair_finals(groups, scan, ungrouped, case_sensitive=case_sensitive)
    by_name = pairs[pairs["pair_method"] == "name"]
    assert len(by_name) == 1
    assert kept in groups.set_index("group_id").loc[by_name["group_id"].iat[0], "image_names"]


@pytest.mark.parametrize("case_sensitive", [True, False])
def test_merge_publish_and_validate_compare_case_as_the_setting_says(tmp_path,
                                                                      case_sensitive):
    from backfill.db.schema import create, insert_rows, read_rows
    from backfill.production.publish import publish_plan
    from backfill.stages.merge import MergeSettings, plan_merge
    from backfill.stages.validate import check_decisions
    from tests.helpers.merge_rows import frame, row

    lower = ["20250708_060000_stage1_generated.png", "20250708_060015_stage2_upscaled.png"]
    upper = [n.upper() for n in lower]
    live = frame(row("live1", upper))
    back = frame(row("g_upper", upper), row("g_lower", lower))
    cfg = pipeline_config()
    settings = MergeSettings.from_config(cfg.merge, cfg.evaluate, case_sensitive=case_sensitive)
    plan = plan_merge(back, live, settings)
    assert "added" not in set(plan.changes["rule"])  # never a second row for one image
    if case_sensitive:
        # The upper-case group is the live row's. The lower-case one is another file
        # here, but one image where case is ignored (the person's Mac): reported.
        assert plan.pairs.values.tolist() == [["g_upper", "live1"]]
        assert plan.issues[["kind", "group_id"]].values.tolist() == [
            ["ambiguous_group", "g_lower"]]
        assert "but for case" in plan.issues["detail"].iat[0]
    else:  # one name to the file system: two groups claim the row, reported, not guessed
        assert plan.pairs.empty
        assert set(plan.issues["kind"]) == {"ambiguous_match", "ambiguous_group"}
    db = tmp_path / "live.db"
    with sqlite3.connect(db) as conn:
        create(conn)
        insert_rows(conn, live)
    conn.close()
    publish_plan(db, plan.changes)
    with sqlite3.connect(db) as conn:
        after, _ = read_rows(conn)
    conn.close()
    assert after["group_id"].tolist() == ["live1"]
    found = check_decisions(live, pd.Series(["backfill"]), set(lower), 0.02, case_sensitive)
    missing = [f for f in found if f.check == "rows naming images the scan did not find"]
    assert len(missing) == int(case_sensitive)


def test_discover_pairs_a_project_folder_whose_name_is_in_the_other_form():
    from pathlib import PurePosixPath

    from backfill.projects.discover import pair_folders

    pairs, unpaired = pair_folders([PurePosixPath(p) for p in (
        "sandbox", nfd("sandbox/Café"), nfc("Café"), nfd("Brühl_raw"), nfc("Brühl_final"))])
    assert {(str(p.original), str(p.final)) for p in pairs} == {
        (nfd("sandbox/Café"), nfc("Café")), (nfd("Brühl_raw"), nfc("Brühl_final"))}
    assert unpaired == []
