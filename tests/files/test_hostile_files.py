"""The hostile-input suite, files: every odd entry a real drive holds, among normal
renders. Each is one row of the scan table with its status and reason; it never stops
the scan, never changes another file's row or the groups, and nothing hangs on it."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal

import cv2
import pandas as pd
import pytest
from PIL import Image

from backfill.config.settings import GroupConfig
from backfill.contracts.schemas import GroupsTable, ScanTable, UngroupedTable
from backfill.contracts.tables import write_table
from backfill.demo.synthetic import make_project
from backfill.files import imageinfo
from backfill.stages.group import group_table
from backfill.stages.scan import ScanSettings, scan_project
from tests.helpers.odd_files import (
    EXPECTED,
    add_odd,
    encoded,
    odd_name,
    picture,
    readable_as_root,
)


@pytest.fixture(scope="module")
def bomb() -> bytes:
    """A decompression bomb: 30000x30000 1-bit PNG, ~109 KB, 900 megapixels."""
    return encoded(Image.new("1", (30000, 30000)), "PNG")


# imageinfo silences PIL's warning for the process; pytest resets filters per test.
pytestmark = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")

MAX_PIXELS = 100_000_000  # the default scan.max_pixels
SETTINGS = ScanSettings(frozenset({".png", ".jpg", ".jpeg"}), (".DS_Store", "._*"), True, 2,
                        MAX_PIXELS)
GROUPING = GroupConfig("nearest_up", 50, None, 2, 4, "{project}_group_{timestamp}")


class Hung(Exception):  # not an OSError: no code under test may take it for a read error
    pass


@contextlib.contextmanager
def fails_if_it_hangs(fifos: list, seconds: int = 60):
    """Raise Hung in the test when the block takes longer than ``seconds`` (an
    open() of a FIFO blocks forever); then unblock any reader left on ``fifos`` so that
    no thread stays stuck."""
    def timed_out(signum, frame):
        raise Hung(f"still running after {seconds}s: something opened a FIFO?")

    previous = signal.signal(signal.SIGALRM, timed_out)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        for fifo in fifos:  # a writer that opens and closes gives a stuck reader EOF
            with contextlib.suppress(OSError):
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))


















def _fifos(root) -> list[str]:
    out = []
    for dirpath, _, files in os.walk(root):
        out += [os.path.join(dirpath, f) for f in files
                if os.path.exists(os.path.join(dirpath, f))
                and not os.path.isfile(os.path.join(dirpath, f))]
    return out


def scan_root(root, cache, settings=SETTINGS):
    roots = {"original": root / "original", "final": root / "final"}
    with fails_if_it_hangs(_fifos(root)):
        return scan_project(roots, settings, cache)


def _unlock(root) -> None:
    for dirpath, dirs, _ in os.walk(root):
        for d in dirs:
            with contextlib.suppress(OSError):
                os.chmod(os.path.join(dirpath, d), 0o755)


@pytest.mark.parametrize("kind", list(EXPECTED))
def test_one_odd_entry_among_renders_is_one_row_and_the_others_stay_ok(kind, tmp_path, bomb):
    orig, final = tmp_path / "original", tmp_path / "final"
    final.mkdir(parents=True)
    (orig / "renders").mkdir(parents=True)
    normal = {f"renders/{odd_name(k, stage)}" for k, stage in
              ((1, "stage1_generated"), (2, "stage2_upscaled"), (3, "stage3_enhanced"))}
    for rel in normal:
        (orig / rel).write_bytes(encoded(picture(), "PNG"))
    try:
        odd = add_odd(kind, orig, 50, bomb)
        table = scan_root(tmp_path, tmp_path / "cache").table
    finally:
        _unlock(tmp_path)
    write_table(table, tmp_path / "scan.parquet", ScanTable, "scan")  # the contract holds
    rows = table.set_index("rel_path")
    assert (rows.loc[sorted(normal), "status"] == "ok").all()
    assert rows.loc[sorted(normal), "reason"].isna().all()
    status, reason = EXPECTED[kind]
    others = set(rows.index) - normal
    if odd is None or (kind == "unlistable folder" and readable_as_root(orig / odd)):
        assert all(rows.loc[sorted(others), "status"] == "ok")  # nothing odd to record
        return
    twins = 2 if kind == "symlink loop" else 1
    assert len(others) == twins and odd in others
    for rel in others:
        assert rows.at[rel, "status"] == status, rel
        if reason is None:
            assert pd.isna(rows.at[rel, "reason"])
        else:
            assert rows.at[rel, "reason"].startswith(reason), rows.at[rel, "reason"]


def test_an_unlistable_folder_is_one_row_even_as_root(tmp_path, monkeypatch):
    # Root lists any folder, so the permission error is made where scan meets it.
    import backfill.stages.scan as scan_module

    orig = tmp_path / "original"
    (orig / "locked").mkdir(parents=True)
    (tmp_path / "final").mkdir()
    (orig / "locked" / odd_name(1)).write_bytes(encoded(picture(), "PNG"))
    (orig / odd_name(2)).write_bytes(encoded(picture(), "PNG"))
    real = os.scandir

    def scandir(path):
        if str(path).endswith("/locked"):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(scan_module.os, "scandir", scandir)
    table = scan_root(tmp_path, tmp_path / "cache").table
    write_table(table, tmp_path / "scan.parquet", ScanTable, "scan")
    assert table.rel_path.tolist() == [odd_name(2), "locked"]
    assert table.status.tolist() == ["ok", "error"]
    assert table.reason[1] == "cannot list folder: Permission denied"


@pytest.fixture(scope="module")
def hostile(tmp_path_factory, bomb):
    """A generated project scanned and grouped as it is, then again with every odd entry
    kind added among its renders and finals."""
    root = tmp_path_factory.mktemp("hostile")
    gen = make_project(root, n_groups=6, seed=7, scale=0.05, bad_files=False, variants=False)
    clean = scan_root(root, root / "cache_clean").table
    clean_groups, clean_ungrouped = group_table(clean, GROUPING, "h")
    odd, locked, listed = {}, [], set()
    orig = gen.original_dir / "batch_00"
    for i, kind in enumerate(EXPECTED):
        rel = add_odd(kind, orig, i, bomb)
        if rel is None:
            continue
        if kind == "unlistable folder":
            locked.append(orig / rel)
            if readable_as_root(orig / rel):  # listed like any folder: its file is normal
                listed |= {f"batch_00/{rel}/{f}" for f in os.listdir(orig / rel)}
                continue
        odd[f"batch_00/{rel}"] = kind
        if kind == "symlink loop":
            odd[f"batch_00/{odd_name(i + 100)}"] = kind
    # Finals too: a FIFO and a broken link named like kept images.
    os.mkfifo(gen.final_dir / odd_name(90))
    os.symlink(root / "gone.png", gen.final_dir / odd_name(91))
    odd_finals = {odd_name(90): "fifo", odd_name(91): "broken link"}
    try:
        cold = scan_root(root, root / "cache")
        warm = scan_root(root, root / "cache")
    finally:
        for folder in locked:
            os.chmod(folder, 0o755)
    yield dict(gen=gen, root=root, clean=clean, clean_groups=clean_groups,
               clean_ungrouped=clean_ungrouped, cold=cold, warm=warm, odd=odd,
               odd_finals=odd_finals, listed=listed)
    shutil.rmtree(root, ignore_errors=True)


def test_every_odd_entry_is_recorded_with_its_reason(hostile):
    table = hostile["cold"].table
    write_table(table, hostile["root"] / "scan.parquet", ScanTable, "scan")
    rows = table[table.source == "original"].set_index("rel_path")
    for rel, kind in hostile["odd"].items():
        status, reason = EXPECTED[kind]
        assert rows.at[rel, "status"] == status, (kind, rel)
        if reason:
            assert rows.at[rel, "reason"].startswith(reason), (kind, rows.at[rel, "reason"])
    finals = table[table.source == "final"].set_index("rel_path")
    for rel, kind in hostile["odd_finals"].items():
        assert finals.at[rel, "status"] == "error"
        assert finals.at[rel, "reason"].startswith(EXPECTED[kind][1])
    # The good files among the odd kinds keep their facts: the size as stored.
    rotated = rows.loc[rows.index.str.endswith(".jpg") & (rows["status"] == "ok")]
    assert {(r.width, r.height, r.mode) for r in rotated.itertuples()} == {(40, 20, "RGB"),
                                                                           (40, 20, "CMYK")}
    assert (rows.loc[rows["mode"] == "I;16", ["width", "height"]].to_numpy() == [[40, 20]]).all()
    # A folder named like an image is walked, not recorded.
    assert not (table.rel_path == f"batch_00/{odd_name(15)}").any()


def test_no_normal_file_is_affected_and_nothing_is_lost(hostile):
    clean, table = hostile["clean"], hostile["cold"].table
    odd = set(hostile["odd"]) | set(hostile["odd_finals"])
    expected = set(clean.rel_path) | odd | hostile["listed"]
    assert set(table.rel_path) == expected  # nothing lost, nothing extra
    same = table[table.rel_path.isin(set(clean.rel_path))].reset_index(drop=True)
    pd.testing.assert_frame_equal(same, clean)
    assert (clean.status == "ok").all()


def test_groups_are_those_of_the_project_without_the_odd_entries(hostile):
    groups, ungrouped = group_table(hostile["cold"].table, GROUPING, "h")
    write_table(groups, hostile["root"] / "groups.parquet", GroupsTable, "groups")
    write_table(ungrouped, hostile["root"] / "ungrouped.parquet", UngroupedTable, "ungrouped")
    pd.testing.assert_frame_equal(groups, hostile["clean_groups"])
    truth = {tuple(g.rel_paths) for g in hostile["gen"].groups}
    assert {tuple(p) for p in groups.image_paths} == truth
    # Every odd original is ungrouped, and says why.
    why = ungrouped.set_index("rel_path")["reason"]
    scan = hostile["cold"].table.set_index("rel_path")
    for rel in hostile["odd"]:
        if scan.at[rel, "ext"] == "":
            continue  # a folder that could not be listed: scan's row says it all
        if scan.at[rel, "status"] == "error":
            assert why[rel].endswith(scan.at[rel, "reason"]), why[rel]
        else:
            assert rel in why.index
    before = hostile["clean_ungrouped"].set_index("rel_path")["reason"]
    assert why.loc[before.index].equals(before)


def test_a_second_scan_reads_only_the_files_in_error_and_gives_the_same_bytes(hostile):
    cold, warm, root = hostile["cold"], hostile["warm"], hostile["root"]
    files = cold.table[cold.table.ext != ""]
    # Rows in error are read again (a read error may pass); entries never opened are not.
    # An image over max_pixels is an error only after the cache: it is not read again.
    opened = files[(files.status == "error")
                   & ~files.reason.str.startswith(("not a regular", "symlink loop", "broken",
                                                   "file name is not", "too large"))]
    assert warm.probed == len(opened)
    write_table(cold.table, root / "a.parquet", ScanTable, "scan")
    write_table(warm.table, root / "b.parquet", ScanTable, "scan")
    assert (root / "a.parquet").read_bytes() == (root / "b.parquet").read_bytes()


def test_decode_refuses_each_odd_file_with_its_reason_and_never_blocks(hostile):
    orig = hostile["gen"].original_dir / "batch_00"
    kinds = {kind: rel.split("/", 1)[1] for rel, kind in hostile["odd"].items()}
    fifo = str(orig / kinds["fifo"])
    with fails_if_it_hangs([fifo]):
        with pytest.raises(imageinfo.Unreadable, match="not a regular file"):
            imageinfo.decode(fifo, cv2.IMREAD_COLOR, MAX_PIXELS)
    for kind, message in (("bomb", "decompression bomb"), ("over max_pixels", "too large"),
                          ("empty", "empty file"),
                          ("truncated png", "truncated: the PNG ends inside")):
        with pytest.raises(imageinfo.Unreadable, match=message):
            imageinfo.decode(orig / kinds[kind], cv2.IMREAD_COLOR, MAX_PIXELS)
    # Files that are fine decode to the size their header says, the EXIF tag ignored.
    for kind in ("16-bit", "cmyk", "exif-rotated", "mislabelled"):
        pixels = imageinfo.decode(orig / kinds[kind], cv2.IMREAD_COLOR, MAX_PIXELS)
        assert pixels.shape == (20, 40, 3), kind
