"""scan: every image found, every bad file recorded with a reason, nothing re-read twice."""

import io
import os
import shutil
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from backfill.contracts.schemas import ScanTable
from backfill.contracts.tables import ContractError, write_table
from backfill.demo.synthetic import make_project
from backfill.stages.scan import ScanSettings, scan_project
from tests.conftest import add_renders

SETTINGS = ScanSettings(
    frozenset({".png", ".jpg", ".jpeg"}), (".DS_Store", "Thumbs.db", "._*"), True, 4, 10**8
)


def scan(project_or_roots, cache):
    roots = project_or_roots if isinstance(project_or_roots, dict) else {
        "original": project_or_roots.original_dir, "final": project_or_roots.final_dir}
    return scan_project(roots, SETTINGS, cache)


def test_every_render_and_final_is_found_with_its_size(small_project, tmp_path):
    table = scan(small_project, tmp_path / "cache").table
    originals = table[table.source == "original"]
    expected = {p for g in small_project.groups for p in g.rel_paths} | set(small_project.bad_files)
    assert set(originals.rel_path) == expected
    finals = table[table.source == "final"]
    kept = {g.final_rel_path for g in small_project.groups if g.final_rel_path}
    assert set(finals.rel_path) == kept | set(small_project.other_finals)
    for row in table[table.status != "error"].head(8).itertuples():
        root = small_project.original_dir if row.source == "original" else small_project.final_dir
        with Image.open(root / row.rel_path) as im:
            assert (row.width, row.height) == im.size


def test_bad_files_are_recorded_with_reasons(small_project, tmp_path):
    table = scan(small_project, tmp_path / "cache").table.set_index("rel_path")
    expected = {
        "empty": ("error", "empty file"),
        "truncated": ("error", "truncated"),
        "not_image": ("error", "not an image"),
        "mislabelled": ("warning", "mislabelled"),
        "no_timestamp": ("warning", "no timestamp"),
        "no_stage": ("warning", "no stage label"),
    }
    for rel, kind in small_project.bad_files.items():
        status, reason = expected[kind]
        assert table.at[rel, "status"] == status, rel
        assert reason in table.at[rel, "reason"], rel
    unreadable = [r for r, kind in small_project.other_finals.items() if kind == "unreadable"]
    assert (table.loc[unreadable, "status"] == "error").all()
    assert table.at["misc/wallpaper.png", "status"] == "warning"  # no timestamp in its name
    others = ~table.index.isin([*small_project.bad_files, *small_project.other_finals])
    assert (table.loc[others, "status"] == "ok").all()


def test_junk_companions_and_symlink_loops_are_skipped_quietly(small_project, tmp_path):
    table = scan(small_project, tmp_path / "cache").table
    names = set(table.name)
    assert not {".DS_Store", "Thumbs.db", "notes.txt"} & names
    assert not any(n.startswith("._") or n.endswith((".yaml", ".caption")) for n in names)
    assert not any("/loop/" in p for p in table.rel_path)


def _png(mode: str, size=(40, 30)) -> bytes:
    if mode == "I;16":
        img = Image.fromarray(np.full(size[::-1], 40000, dtype=np.uint16))
    else:
        img = Image.new(mode, size)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_any_case_of_extension_and_every_pixel_format(tmp_path):
    orig, final = tmp_path / "o", tmp_path / "f"
    (orig / "deep" / "er").mkdir(parents=True)
    final.mkdir()
    files = {
        "deep/er/20250101_000000_stage1_generated.PNG": _png("RGB"),
        "deep/20250101_000015_stage1.5_face_swapped.png": _png("RGBA"),
        "20250101_000100_stage2_upscaled.Png": _png("L"),
        "20250101_000200_stage3_enhanced.png": _png("I;16"),
    }
    jpeg = io.BytesIO()
    Image.new("RGB", (20, 10)).save(jpeg, format="JPEG")
    files["20250101_000300_stage2.JPEG"] = jpeg.getvalue()
    files["20250101_000400_stage2.jpg"] = jpeg.getvalue()
    for rel, data in files.items():
        (orig / rel).write_bytes(data)
    table = scan({"original": orig, "final": final}, tmp_path / "cache").table
    assert set(table.rel_path) == set(files)
    assert (table.status == "ok").all()
    modes = dict(zip(table.name, table["mode"], strict=True))
    assert modes["20250101_000200_stage3_enhanced.png"] == "I;16"
    assert modes["20250101_000015_stage1.5_face_swapped.png"] == "RGBA"
    assert set(table.ext) == {".png", ".jpeg", ".jpg"}


def test_broken_links_and_missing_targets_are_errors_not_crashes(tmp_path):
    orig, final = tmp_path / "o", tmp_path / "f"
    orig.mkdir()
    final.mkdir()
    os.symlink(tmp_path / "gone.png", orig / "20250101_000000_stage1.png")
    table = scan({"original": orig, "final": final}, tmp_path / "cache").table
    assert table.status.tolist() == ["error"]
    assert table.reason[0].startswith("broken symlink: its target ")
    assert "gone.png" in table.reason[0]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any folder")
def test_unlistable_folder_is_recorded(tmp_path):
    orig, final = tmp_path / "o", tmp_path / "f"
    (orig / "locked").mkdir(parents=True)
    final.mkdir()
    os.chmod(orig / "locked", 0)
    try:
        table = scan({"original": orig, "final": final}, tmp_path / "cache").table
    finally:
        os.chmod(orig / "locked", 0o755)
    assert "cannot list folder" in table.reason.iloc[0]


def test_warm_scan_reads_nothing_and_changed_files_are_read_again(small_project, tmp_path):
    project = tmp_path / "p"
    shutil.copytree(small_project.root, project, symlinks=True)
    roots = {"original": project / "original", "final": project / "final"}
    cache = tmp_path / "cache"
    cold = scan(roots, cache)
    assert cold.cached == 0 and cold.probed == len(cold.table)
    warm = scan(roots, cache)
    # Only the files in error are read again (a read error may pass); nothing else.
    errors = int((cold.table.status == "error").sum())
    assert errors == 4 and warm.probed == errors  # 3 bad renders, 1 bad final
    pd.testing.assert_frame_equal(cold.table, warm.table)
    # Rewrite one final with other pixels: only it is read, and its hash changes.
    target = roots["final"] / cold.table[cold.table.source == "final"].rel_path.iloc[0]
    target.write_bytes(_png("RGB", size=(33, 21)))
    again = scan(roots, cache)
    assert again.probed == errors + 1
    before = cold.table.set_index(["source", "rel_path"]).content_hash
    after = again.table.set_index(["source", "rel_path"]).content_hash
    assert (before.fillna("") != after.fillna("")).sum() == 1


def test_new_renders_among_cached_files_are_read_alone(tmp_path):
    # New renders among files the cache answers, with files in error read again beside
    # them: this once crashed on the cache's nullable integer columns.
    project = make_project(tmp_path / "p", n_groups=8, seed=1, scale=0.1)
    roots = {"original": project.original_dir, "final": project.final_dir}
    cold = scan(roots, tmp_path / "cache")
    added = add_renders(project.original_dir / "new", "20991231_2359")
    warm = scan(roots, tmp_path / "cache")
    errors = int((cold.table.status == "error").sum())
    assert warm.probed == len(added) + errors and len(warm.table) == len(cold.table) + 3
    new = warm.table[warm.table.rel_path.str.startswith("new/")]
    assert new.width.notna().all() and new.content_hash.notna().all()


def test_scan_table_is_written_byte_for_byte_repeatably(small_project, tmp_path):
    cache = tmp_path / "cache"
    write_table(scan(small_project, cache).table, tmp_path / "a.parquet", ScanTable, "scan")
    write_table(scan(small_project, cache).table, tmp_path / "b.parquet", ScanTable, "scan")
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()


def test_a_broken_value_is_named_by_the_contract(small_project, tmp_path):
    table = scan(small_project, tmp_path / "cache").table
    table.loc[3, "status"] = "fine"
    table.loc[5, "content_hash"] = "xyz"
    with pytest.raises(ContractError) as err:
        write_table(table, tmp_path / "t.parquet", ScanTable, "scan")
    message = str(err.value)
    assert "table 'scan'" in message
    assert "column 'status'" in message and "'fine'" in message
    assert "column 'content_hash'" in message and "'xyz'" in message


def test_empty_folders_give_an_empty_valid_table(tmp_path):
    from backfill.contracts.schemas import GroupsTable, UngroupedTable
    from backfill.stages.group import group_table
    from tests.helpers.stage_settings import settings

    (tmp_path / "o").mkdir()
    (tmp_path / "f").mkdir()
    table = scan({"original": tmp_path / "o", "final": tmp_path / "f"}, tmp_path / "c").table
    write_table(table, tmp_path / "scan.parquet", ScanTable, "scan")
    groups, ungrouped = group_table(table, settings(), "p")
    write_table(groups, tmp_path / "groups.parquet", GroupsTable, "groups")
    write_table(ungrouped, tmp_path / "ungrouped.parquet", UngroupedTable, "ungrouped")
    assert len(table) == len(groups) == len(ungrouped) == 0


def test_a_name_that_is_not_utf8_is_an_error_row(tmp_path):
    orig, final = tmp_path / "o", tmp_path / "f"
    orig.mkdir()
    final.mkdir()
    (orig / os.fsdecode(b"20250101_000000_stage1_\xff.png")).write_bytes(_png("RGB"))
    table = scan({"original": orig, "final": final}, tmp_path / "c").table
    write_table(table, tmp_path / "scan.parquet", ScanTable, "scan")
    assert table.status.tolist() == ["error"]
    assert "not valid UTF-8" in table.reason[0]


def test_read_errors_are_not_cached(tmp_path, monkeypatch):
    import backfill.stages.scan as scan_module
    from backfill.files.imageinfo import ImageFacts

    orig, final = tmp_path / "o", tmp_path / "f"
    orig.mkdir()
    final.mkdir()
    (orig / "20250101_000000_stage1.png").write_bytes(_png("RGB"))
    flaky = ImageFacts(None, None, None, None, None, "error", "unreadable: Input/output error")
    monkeypatch.setattr(scan_module, "probe", lambda *a: flaky)
    assert scan({"original": orig, "final": final}, tmp_path / "c").table.status[0] == "error"
    monkeypatch.undo()
    again = scan({"original": orig, "final": final}, tmp_path / "c")
    assert again.probed == 1 and again.table.status[0] == "ok"


def _mixed_folder(tmp_path):
    orig, final = tmp_path / "o", tmp_path / "f"
    orig.mkdir()
    final.mkdir()
    for k in range(3):
        (orig / f"20250101_00000{k}_stage{k + 1}.png").write_bytes(_png("RGB"))
    jpeg = io.BytesIO()
    Image.new("RGB", (20, 10)).save(jpeg, format="JPEG")
    (orig / "20250101_000100_stage1.jpg").write_bytes(jpeg.getvalue())
    return {"original": orig, "final": final}


@pytest.mark.parametrize("others", [frozenset({".jpg"}), frozenset(".png"), frozenset()])
def test_a_scan_with_other_extensions_keeps_what_the_cache_knows(tmp_path, others):
    # frozenset(".png") is what `scan.extensions=.png` (a string) once gave: 0 files.
    roots, cache = _mixed_folder(tmp_path), tmp_path / "cache"
    first = scan(roots, cache)
    assert first.probed == 4
    narrow = scan_project(roots, replace(SETTINGS, extensions=others), cache)
    assert set(narrow.table.ext) <= others
    again = scan(roots, cache)
    assert again.probed == 0 and again.cached == 4  # nothing was forgotten
    pd.testing.assert_frame_equal(again.table, first.table)


def test_files_gone_from_the_selection_are_forgotten(tmp_path):
    roots, cache = _mixed_folder(tmp_path), tmp_path / "cache"
    scan(roots, cache)
    gone = roots["original"] / "20250101_000000_stage1.png"
    gone.unlink()
    scan(roots, cache)
    (known,) = cache.glob("*.parquet")
    assert str(gone) not in set(pd.read_parquet(known).path)
    assert len(pd.read_parquet(known)) == 3


def test_the_pixel_limit_applies_to_cached_rows_and_is_never_cached(tmp_path):
    roots, cache = _mixed_folder(tmp_path), tmp_path / "cache"
    before = scan(roots, cache).table
    limited = scan_project(roots, replace(SETTINGS, max_pixels=40 * 30 - 1), cache)
    assert limited.probed == 0  # the limit is checked from the cached width and height
    write_table(limited.table, tmp_path / "scan.parquet", ScanTable, "scan")
    rows = limited.table.set_index("ext")
    pngs = rows.loc[[".png"]]
    assert (pngs.status == "error").all() and pngs.width.isna().all()
    assert pngs.reason.str.fullmatch(
        r"too large to decode: 40x30 is 1,200 pixels, over scan.max_pixels \(1,199 pixels\); "
        r"raise the limit if the image is real").all()
    assert pngs.content_hash.notna().all()  # the bytes' facts stay
    assert rows.at[".jpg", "status"] == "ok"  # 20x10: within the limit
    # Under the usual limit again, from the cache: the rows as they were.
    after = scan(roots, cache)
    assert after.probed == 0
    pd.testing.assert_frame_equal(after.table, before)


def test_cold_and_warm_scans_of_an_unchanged_tree_write_the_same_bytes(small_project, tmp_path):
    tables = [scan(small_project, tmp_path / "a").table, scan(small_project, tmp_path / "a").table,
              scan(small_project, tmp_path / "b").table]
    for k, table in enumerate(tables):
        write_table(table, tmp_path / f"{k}.parquet", ScanTable, "scan")
    assert len({(tmp_path / f"{k}.parquet").read_bytes() for k in range(3)}) == 1
