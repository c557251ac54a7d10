"""Names with accents, as a copy between macOS and other systems leaves them: decomposed
(NFD) on disk, composed (NFC) in the live DB. One name is one name in either form."""

from __future__ import annotations

import os
import sqlite3
import unicodedata
from pathlib import Path

import pandas as pd
import pytest

from backfill.db.cells import image_names
from backfill.demo.production import make_production_db
from backfill.demo.synthetic import make_project
from tests.conftest import pipeline_config


def nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text)


def nfd(text: str) -> str:
    return unicodedata.normalize("NFD", text)


def _accented(rel: str) -> str:
    """``batch_00/<ts>_stage2_upscaled.png`` -> ``Brühl_00/<ts>_stage2_upscaled_café.png``."""
    folder, name = rel.rsplit("/", 1) if "/" in rel else ("", rel)
    stem, ext = os.path.splitext(name)
    folder = folder.replace("batch", "Brühl")
    return nfc(f"{folder}/{stem}_café{ext}" if folder else f"{stem}_café{ext}")


def _decompose_on_disk(root: Path) -> None:
    """Every file and folder name under ``root`` rewritten in NFD, deepest first."""
    for folder, dirs, files in os.walk(root, topdown=False):
        for name in [*files, *dirs]:
            if nfd(name) != name:
                os.rename(os.path.join(folder, name), os.path.join(folder, nfd(name)))


def mac_copied_project(root: Path):
    """A generated project whose names carry accents (in folder names and in the
    renders' suffixes), a live DB that logs its groups with NFC names, and then every
    name on disk decomposed, as a copy from a Mac leaves it."""
    gen = make_project(root / "p", n_groups=10, seed=11, scale=0.05, variants=False,
                       bad_files=False, companions=False, reject_rate=0.2)
    for g in gen.groups:
        new = [_accented(r) for r in g.rel_paths]
        for old, rel in zip(g.rel_paths, new, strict=True):
            (gen.original_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            os.rename(gen.original_dir / old, gen.original_dir / rel)
        g.rel_paths = new
        if g.final_rel_path:
            rel = _accented(g.final_rel_path)
            os.rename(gen.final_dir / g.final_rel_path, gen.final_dir / rel)
            g.final_rel_path = rel
    live = make_production_db(gen, root / "real.db", share=0.6, seed=2)
    _decompose_on_disk(gen.original_dir)
    _decompose_on_disk(gen.final_dir)
    return gen, live


@pytest.fixture(scope="module")
def merged(tmp_path_factory):
    from backfill.db.schema import read_rows
    from backfill.production.publish import publish_plan
    from backfill.stages.extract.stage import ExtractSettings, extract_project
    from backfill.stages.group import GroupSettings, group_table
    from backfill.stages.merge import MergeSettings, backfill_rows, plan_merge
    from backfill.stages.scan import ScanSettings, scan_project

    root = tmp_path_factory.mktemp("nfd")
    gen, live = mac_copied_project(root)
    cfg = pipeline_config()
    scan = scan_project({"original": gen.original_dir, "final": gen.final_dir},
                        ScanSettings.from_config(cfg.scan), root / "cache").table
    groups, ungrouped = group_table(scan, GroupSettings.from_config(cfg.group), "p")
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
    findings = check_decisions(after, pd.Series(["backfill"] * len(after)), originals, 0.02,
                               merged["groups"], after["group_id"], set())
    missing = [f for f in findings if f.check == "rows naming images the scan did not find"]
    assert missing == []
