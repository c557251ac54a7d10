"""Finals not named exactly like their render: paired by identity, by bytes or by content,
never by a guess (issue 13, part 1)."""

import dataclasses
import shutil
import sqlite3
from datetime import datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from backfill.config.settings import GroupConfig, section
from backfill.contracts.schemas import CROP_BOX, FinalsTable, TruthTable
from backfill.contracts.tables import validate
from backfill.db.schema import PROVENANCE_ADDED, PROVENANCE_COLUMNS, create, table_columns
from backfill.demo.synthetic import STAGE_DELAY, STAGE_LABELS, make_project, texture
from backfill.stages.extract.content_pairing import normalised, scores, shortlist, signature
from backfill.stages.extract.stage import extract_project
from backfill.stages.group import group_table
from backfill.stages.merge import MergeSettings, backfill_rows
from backfill.stages.scan import ScanSettings, scan_project
from tests.helpers.extract_rows import file_row, group, pair
from tests.helpers.stage_settings import PIPELINE, SETTINGS

# How each kind of name (synthetic.ODD_NAMES) is paired.
METHOD = {"exact": "name", "copy": "identity", "number": "identity", "edit": "identity",
          "copy_jpg": "identity", "edited_copy": "identity", "nameless_jpg": "content",
          "nameless_png": "content"}
TIE = "export-tie.png"


def duplicate_group(project, when: datetime) -> tuple[str, str]:
    """The renders of a rejected group saved again under later timestamps (the person
    rendered the same picture twice), and a crop of them, named like nothing, in the
    final folder: it fits both groups equally. Returns both groups' first timestamps."""
    g = next(g for g in project.groups if g.kept_index is None and len(g.stages) >= 2)
    for rel, stage in zip(g.rel_paths, g.stages, strict=True):
        ts = (when + timedelta(seconds=STAGE_DELAY[stage])).strftime("%Y%m%d_%H%M%S")
        shutil.copy(project.original_dir / rel,
                    project.original_dir / "again" / f"{ts}_{STAGE_LABELS[stage]}.png")
    with Image.open(project.original_dir / g.rel_paths[-1]) as img:
        w, h = img.size
        img.crop((w // 5, h // 4, w * 4 // 5, h * 3 // 4)).save(project.final_dir / TIE)
    return g.first_timestamp, when.strftime("%Y%m%d_%H%M%S")


@pytest.fixture(scope="module")
def odd(tmp_path_factory):
    """30 groups, kept finals named every odd way, true orphans, and one final that fits
    two groups; through scan, group and extract."""
    root = tmp_path_factory.mktemp("odd")
    project = make_project(root, n_groups=30, seed=5, scale=0.1, odd_names=True)
    (project.original_dir / "again").mkdir()
    twins = duplicate_group(project, datetime(2025, 7, 8, 6, 0) + timedelta(minutes=400))
    scan = scan_project({"original": project.original_dir, "final": project.final_dir},
                        ScanSettings.from_config(PIPELINE.scan), root / "cache" / "fp").table
    groups, ungrouped = group_table(scan, section(GroupConfig, PIPELINE.group, "group"), "o")
    result = extract_project(groups, scan, ungrouped, SETTINGS, project.original_dir,
                             project.final_dir, root / "cache")
    return project, twins, scan, groups, ungrouped, result, root


def test_every_oddly_named_final_is_paired_with_the_right_decision(odd):
    project, *_, result, _ = odd
    truth = validate(result.truth, TruthTable, "truth").set_index("group_id")
    kinds = set(project.final_names.values())
    assert kinds >= set(METHOD), kinds  # every kind of name is in the project
    by_method: dict[str, int] = {}
    for g in project.groups:
        row = truth.loc[f"o_group_{g.first_timestamp}"]
        assert row.user_action == g.action, g
        if g.kept_index is None:
            continue
        assert row.user_selected_index == g.kept_index, g
        assert row.final_path == g.final_rel_path
        box = np.array([0, 0, 1, 1] if g.action == "approve" else g.crop)  # approve: exact
        assert np.abs(row[CROP_BOX].to_numpy(float) - box).max() <= (
            0.01 if g.resize == 1 else 0.02), g
        kind = project.final_names.get(g.final_rel_path, "exact")
        assert row.pair_method == METHOD[kind], (kind, g)
        by_method[row.pair_method] = by_method.get(row.pair_method, 0) + 1
    assert by_method["content"] >= 6 and by_method["identity"] >= 8, by_method


def test_true_orphans_stay_orphans_with_the_reason(odd):
    project, *_, result, _ = odd
    finals = validate(result.finals, FinalsTable, "finals").set_index("rel_path")
    orphans = [rel for rel, kind in project.other_finals.items() if kind == "orphan"]
    assert {"IMG_0999.jpg", "exports/export-99.png"} <= set(orphans)
    for rel in orphans:
        assert finals.loc[rel, "role"] == "orphan" and pd.isna(finals.loc[rel, "pair_method"])
        assert "no render matches its content (best: " in finals.loc[rel, "reason"]
    assert finals.loc["20240101_000200_stage2_upscaled copy.png", "reason"].startswith(
        "no original render has this name, timestamp and stage; its name claims render "
        "20240101_000200 stage 2, so it is never paired by content")
    for rel, kind in project.other_finals.items():
        assert finals.loc[rel, "role"] == ("orphan" if kind == "unreadable" else kind), rel
    kept = finals[finals["role"] == "kept"]
    assert set(kept["pair_method"]) == {"name", "identity", "content"}


def test_a_group_claimed_twice_takes_the_latest_and_is_flagged(odd):
    project, *_, result, _ = odd
    truth = result.truth.set_index("group_id")
    finals = result.finals.set_index("rel_path")
    edited = [g for g in project.groups
              if project.final_names.get(g.final_rel_path) == "edited_copy"]
    assert edited
    for g in edited:
        row = truth.loc[f"o_group_{g.first_timestamp}"]
        assert row.final_path == g.final_rel_path and row.needs_review
        assert "differ in content, the latest" in row.review_reason
    copies = [rel for rel, kind in project.other_finals.items() if kind == "copy"]
    same = [rel for rel in copies if rel.endswith(" copy.png") or rel.endswith(" copy.jpg")]
    assert same and all(finals.loc[rel, "pair_method"] == "identity" and
                        finals.loc[rel, "reason"].startswith("same content as") for rel in same)


def test_a_final_that_fits_two_groups_is_not_guessed(odd):
    _, twins, *_, result, _ = odd
    truth = result.truth.set_index("group_id")
    finals = result.finals.set_index("rel_path")
    ids = [f"o_group_{t}" for t in twins]
    assert finals.loc[TIE, "role"] == "orphan"
    reason = finals.loc[TIE, "reason"]
    assert "fits renders of 2 groups about equally" in reason
    assert all(i in reason for i in ids)
    for i in ids:
        assert truth.loc[i, "user_action"] == "reject" and truth.loc[i, "needs_review"]
        assert f"{TIE} fits this group and" in truth.loc[i, "review_reason"]


def test_content_pairing_is_cached_and_can_be_turned_off(odd):
    project, _, scan, groups, ungrouped, first, root = odd
    again = extract_project(groups, scan, ungrouped, SETTINGS, project.original_dir,
                            project.final_dir, root / "cache")
    assert first.content.signatures > 0 and first.content.locates > 0
    assert again.content.signatures == 0  # every signature came from the cache
    pd.testing.assert_frame_equal(first.truth, again.truth)
    off = extract_project(groups, scan, ungrouped,
                          dataclasses.replace(SETTINGS, content_candidates=0),
                          project.original_dir, project.final_dir, root / "cache")
    assert off.content.finals == 0 and "content" not in set(off.truth["pair_method"])
    orphan = off.finals.set_index("rel_path").loc["IMG_0999.jpg", "reason"]
    assert orphan.endswith("not compared by content (extract.content_candidates: 0)")


def test_provenance_says_how_each_final_was_paired(odd):
    project, _, scan, groups, _, result, _ = odd
    _, prov = backfill_rows("o", groups, result.truth, scan, None, MergeSettings(0.01, 0.05))
    methods = prov.set_index("group_id")["pair_method"]
    expected = result.truth.set_index("group_id")["pair_method"]
    assert (methods.fillna("-") == expected.reindex(methods.index).fillna("-")).all()
    assert set(methods.dropna()) == {"name", "identity", "content"}


def test_an_older_provenance_table_gets_the_new_columns(tmp_path):
    """A production DB (or an older merged one) whose side table predates pair_method,
    decided_by and reviewed_at: the merged DB's create() adds them, so the provenance
    insert works."""
    conn = sqlite3.connect(tmp_path / "old.db")
    old = [c for c in PROVENANCE_COLUMNS if c not in PROVENANCE_ADDED]
    conn.execute(f"CREATE TABLE backfill_provenance ({', '.join(old)})")
    create(conn)
    assert table_columns(conn, "backfill_provenance")[len(old):] == list(PROVENANCE_ADDED)
    conn.execute(f"INSERT INTO backfill_provenance ({', '.join(PROVENANCE_COLUMNS)}) "
                 f"VALUES ({', '.join('?' * len(PROVENANCE_COLUMNS))})",
                 ["g", "backfill", "g", "f.png", "identity",
                  *[None] * (len(PROVENANCE_COLUMNS) - 7), "reviewed", "2026-12-04T10:00:00Z"])
    assert conn.execute("SELECT pair_method, decided_by FROM backfill_provenance"
                        ).fetchone() == ("identity", "reviewed")
    create(conn)  # idempotent
    conn.close()


# --- the identity pass ---------------------------------------------------------------

R1, R2 = "20250706_121137_stage1_generated.png", "20250706_121252_stage2_upscaled.png"


@pytest.mark.parametrize("name", [
    "20250706_121252_stage2_upscaled copy.png", "20250706_121252_stage2_upscaled 2.png",
    "20250706_121252_stage2_upscaled_edit.png", "20250706_121252_stage2_upscaled copy.jpg",
    "sub/20250706_121252_stage2_final.jpeg"])
def test_a_suffix_or_another_extension_keeps_the_identity(name):
    pairs, finals = pair([group("g", [R1, R2])], [file_row("final", name, "b" * 64)])
    assert pairs.loc["g", "user_selected_index"] == 1
    assert pairs.loc["g", "pair_method"] == "identity" and pd.isna(pairs.loc["g", "review"])
    assert finals.loc[name, "role"] == "kept" and finals.loc[name, "pair_method"] == "identity"


def test_the_exact_name_comes_first_and_an_identity_copy_is_a_copy():
    same = pair([group("g", [R1, R2])], [file_row("final", R2, "b" * 64),
                                        file_row("final", "x/" + R2[:-4] + " copy.png",
                                                 "b" * 64)])
    assert same[0].loc["g", "pair_method"] == "name" and pd.isna(same[0].loc["g", "review"])
    assert same[1].loc["x/" + R2[:-4] + " copy.png", "role"] == "copy"
    differ = pair([group("g", [R1, R2])], [file_row("final", R2, "b" * 64, mtime=1),
                                          file_row("final", R2[:-4] + "_edit.png", "c" * 64,
                                                   mtime=2)])
    assert differ[0].loc["g", "final_path"] == R2[:-4] + "_edit.png"
    assert "differ in content" in differ[0].loc["g", "review"]


def test_an_identity_in_two_groups_pairs_neither_and_flags_both():
    other = "20250706_121252_stage2_upscaled_v2.png"  # the same identity, another render
    pairs, finals = pair([group("g1", [R1, R2]), group("g2", ["20250706_121000_stage1_x.png",
                                                              other])],
                         [file_row("final", "20250706_121252_stage2_upscaled copy.png", "b" * 64)])
    row = finals.loc["20250706_121252_stage2_upscaled copy.png"]
    assert row["role"] == "orphan" and "g1, g2" in row["reason"]
    assert pairs["user_selected_index"].isna().all()
    assert all("fits this group and" in pairs.loc[g, "review"] for g in ("g1", "g2"))


def test_the_bytes_of_a_render_or_a_kept_final_pair_a_nameless_file():
    g = group("g", [R1, R2])
    render_hash = file_row("original", g["image_paths"][0])["content_hash"]
    pairs, finals = pair([g], [file_row("final", "IMG_0001.png", render_hash),
                               file_row("final", R2, "b" * 64),
                               file_row("final", "export-2.png", "b" * 64)])
    assert finals.loc["export-2.png", "role"] == "copy"  # the kept final's bytes
    assert finals.loc["IMG_0001.png", "role"] == "extra"  # the stage-1 render's bytes
    assert set(finals["pair_method"]) == {"name", "content"}
    assert pairs.loc["g", "user_selected_index"] == 1


@pytest.mark.parametrize("rows", [0, 1])
def test_pairing_takes_empty_and_one_row_input(rows):
    groups = [group("g", [R1, R2])][:rows]
    files = [file_row("final", "IMG_0001.png", "b" * 64)][:rows]
    pairs, finals = pair(groups, files) if rows else pair_empty()
    validate(finals.reset_index(), FinalsTable, "finals")
    assert len(pairs) == len(finals) == rows
    assert list(finals["role"]) == ["orphan"] * rows


def pair_empty():
    from backfill.stages.extract.pairing import pair_finals
    from tests.helpers.extract_rows import NO_UNGROUPED
    scan = pd.DataFrame([file_row("final", "x.png")]).head(0)
    groups = pd.DataFrame(columns=["group_id", "image_names", "image_paths", "stages",
                                   "unreadable"])
    pairs, finals = pair_finals(groups, scan, NO_UNGROUPED)
    return pairs.set_index("group_id"), finals.set_index("rel_path")


# --- the shortlist -------------------------------------------------------------------

def bgr(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("RGB"))[..., ::-1].copy()


@pytest.mark.parametrize("seed", range(4))
def test_a_crop_resized_or_grey_scores_highest_against_its_own_render(seed):
    """Among 20 renders: a tiny colour crop (13% of the area, in a corner), the same
    resized, and a grey export of a larger crop. (A tiny grey crop has only 32 grey
    levels to go by: it may rank lower; README says so.)"""
    rng = np.random.default_rng(seed)
    renders = [texture(rng, 120, 90) for _ in range(20)]
    cells = np.stack([signature(bgr(r))[0] for r in renders])
    tiny = renders[3].crop((70, 50, 110, 85))
    for final in (tiny, tiny.resize((60, 52)), renders[3].crop((40, 20, 110, 80)).convert("L")):
        counts, grey = signature(bgr(final))
        assert grey == (final.mode == "L")
        table = scores(counts.sum(axis=0)[None], np.array([grey]), cells)
        assert table.shape == (1, 20) and int(table[0].argmax()) == 3
        assert 0 <= table.min() and table.max() <= 1 + 1e-6


def test_shortlist_on_empty_and_one_row():
    empty = pd.DataFrame({"group_id": pd.Series(dtype=str), "index": pd.Series(dtype=int)})
    assert shortlist(np.zeros(0), empty, 5).empty
    assert scores(np.zeros((1, normalised(np.zeros((1, 248))).shape[1])), np.array([False]),
                  np.zeros((0, 9, 248))).shape == (1, 0)
    one = pd.DataFrame({"group_id": ["g"], "index": [2]})
    assert shortlist(np.array([0.3]), one, 5)[["group_id", "index"]].values.tolist() == [["g", 2]]
    many = pd.DataFrame({"group_id": ["a", "a", "b", "c"], "index": [0, 1, 0, 0]})
    top = shortlist(np.array([0.5, 0.9, 0.9, 0.1]), many, 2)
    assert top[["group_id", "index"]].values.tolist() == [["a", 1], ["b", 0]]


# --- content pairing's rules ---------------------------------------------------------

def located_at(index: int, confidence: float, scale: float = 1.0, support: float = 1.0,
               runner_up: float = 0.0):
    from backfill.stages.extract.content_pairing import _Target
    from backfill.stages.extract.locate import Location, PairLocation
    target = _Target("f.png", "f" * 64, "g", index, f"{index:064x}", f"r{index}.png")
    return target, PairLocation(target.original_hash, target.final_hash, Location(
        0.0, 0.0, 1.0, 1.0, scale, confidence, runner_up, "1:1", support))


def test_the_stage_rule_takes_the_better_match_then_scale_one_then_the_highest_stage():
    from backfill.stages.extract.content_pairing import _stage
    s = SETTINGS.content()

    def pick(*options):
        found = {(t.original_hash, t.final_hash): row for t, row in options}
        target, note = _stage([t for t, _ in options], found, s)
        return target.index, note

    assert pick(located_at(0, 0.99), located_at(1, 0.90)) == (0, None)  # no tie
    index, note = pick(located_at(0, 0.999), located_at(1, 0.990))  # other pixels show
    assert index == 0 and "about equally" in note
    assert pick(located_at(1, 0.998), located_at(2, 0.998, scale=0.5))[0] == 1  # an upscale
    assert pick(located_at(0, 0.997), located_at(1, 0.997))[0] == 1  # the same pixels


def test_a_nameless_final_needs_a_match_beyond_doubt():
    from backfill.stages.extract.content_pairing import _doubt
    s = SETTINGS.content()
    assert _doubt(located_at(0, 0.99)[1], s) is None
    assert "confirmed at full resolution" in _doubt(located_at(0, 0.9, support=0.5)[1], s)
    assert "almost as well" in _doubt(located_at(0, 0.9, runner_up=0.89)[1], s)
    from backfill.stages.extract.locate import PairLocation
    assert _doubt(PairLocation("o", "f", error="no scale fits"), s).startswith("not located")
