"""Content pairing among decoys: finals that show a group's picture but are no decision
of it (the same picture rendered again, at another framing and scale). A final whose name
states a render identity is never paired by content; a content pairing is always
flagged for review unless the bytes are identical."""

import pandas as pd
import pytest

from backfill.config.settings import GroupConfig, section
from backfill.demo.synthetic import add_decoys, make_project
from backfill.files.filenames import parse_name
from backfill.stages.extract.pairing import Claim, ContentOutcome, pair_finals, stated_render
from backfill.stages.extract.stage import extract_project
from backfill.stages.group import group_table
from backfill.stages.scan import ScanSettings, scan_project
from tests.helpers.extract_rows import NO_UNGROUPED, file_row, group
from tests.helpers.stage_settings import PIPELINE, SETTINGS


def claimed(rel: str) -> tuple[str, float] | None:
    """The render identity (timestamp, stage) a final's name states, if any."""
    parsed = parse_name(rel.rsplit("/", 1)[-1])
    return stated_render(parsed.timestamp, parsed.stage)


@pytest.fixture(scope="module")
def decoyed(tmp_path_factory):
    """30 groups (10 rejected), kept finals named every odd way (7 of them with no name
    at all), and 16 decoys, one from a rerender of each rejected group's picture and of
    6 kept groups', half named with the identity of a render that does not exist;
    through scan, group and extract."""
    root = tmp_path_factory.mktemp("decoys")
    project = make_project(root, n_groups=30, seed=5, scale=0.1, odd_names=True,
                           reject_rate=0.4)
    add_decoys(project, seed=5, per_group=1, groups=16)
    scan = scan_project({"original": project.original_dir, "final": project.final_dir},
                        ScanSettings.from_config(PIPELINE.scan), root / "cache" / "fp").table
    groups, ungrouped = group_table(scan, section(GroupConfig, PIPELINE.group, "group"), "o")
    result = extract_project(groups, scan, ungrouped, SETTINGS, project.original_dir,
                             project.final_dir, root / "cache")
    return project, scan, result


def test_a_decoy_named_like_a_render_is_never_paired_by_content(decoyed):
    project, _, result = decoyed
    finals = result.finals.set_index("rel_path")
    decoys = [rel for rel in project.decoys if claimed(rel)]
    assert len(decoys) == 8
    paired = [rel for rel in decoys if finals.loc[rel, "role"] != "orphan"]
    assert paired == [], f"{len(paired)} of {len(decoys)} named decoys paired: {paired}"
    for rel in decoys:
        reason = finals.loc[rel, "reason"]
        ts, stage = claimed(rel)
        assert f"its name claims render {ts} stage {stage:g}" in reason, reason
        assert "never paired by content" in reason
        assert "content" in reason.split("never paired by content", 1)[1], reason


def test_every_content_pairing_is_flagged_unless_the_bytes_are_identical(decoyed):
    _, scan, result = decoyed
    hashes = scan.set_index(scan["source"] + ":" + scan["rel_path"])["content_hash"]
    truth = result.truth[result.truth["pair_method"] == "content"]
    identical = (truth["final_path"].map(lambda p: hashes["final:" + p]).to_numpy()
                 == truth["original_path"].map(lambda p: hashes["original:" + p]).to_numpy())
    by_pixels = truth[~identical]
    assert len(by_pixels) >= 7
    assert by_pixels["needs_review"].all()
    assert by_pixels["review_reason"].str.contains("paired by its content alone").all()
    assert not truth[identical]["review_reason"].fillna("").str.contains(
        "paired by its content").any()


def test_no_wrong_decision_is_left_unflagged(decoyed):
    """A decoy of a rejected group may still be paired by content when its name says
    nothing (it shows the group's picture, as a true crop does): then the group's row
    is flagged. No group's decision is wrong without a flag."""
    project, _, result = decoyed
    truth = result.truth.set_index("group_id")
    wrong = [g.first_timestamp for g in project.groups
             if (row := truth.loc[f"o_group_{g.first_timestamp}"]).user_action != g.action
             or (g.final_rel_path is not None and row.final_path != g.final_rel_path)]
    unflagged = [t for t in wrong if not truth.loc[f"o_group_{t}", "needs_review"]]
    assert unflagged == [], f"{len(unflagged)} of 30 groups wrong and unflagged"
    finals = result.finals.set_index("rel_path")
    nameless = [rel for rel in project.decoys if not claimed(rel)]
    taken = [rel for rel in nameless if finals.loc[rel, "role"] != "orphan"]
    print(f"nameless decoys paired (flagged): {len(taken)} of {len(nameless)}; "
          f"wrong decisions, all flagged: {len(wrong)} of 30")


def test_true_unnamed_finals_are_still_recovered(decoyed):
    project, _, result = decoyed
    truth = result.truth.set_index("group_id")
    nameless = [g for g in project.groups
                if project.final_names.get(g.final_rel_path, "").startswith("nameless")]
    found = [g for g in nameless
             if truth.loc[f"o_group_{g.first_timestamp}", "final_path"] == g.final_rel_path]
    print(f"true unnamed finals recovered: {len(found)} of {len(nameless)}")
    # Measured: 6 of 7. The 7th is displaced by a nameless decoy of its own group (both
    # paired by content; the later file is taken, and the group is flagged).
    assert len(nameless) == 7 and len(found) >= 6
    assert all(truth.loc[f"o_group_{g.first_timestamp}", "needs_review"] for g in found)


def test_content_pairing_reports_what_it_left_to_the_names(decoyed):
    result = decoyed[2]
    # the 8 named decoys, and 2 orphans the generator names after renders that are gone
    assert result.content.named == 10 and result.content.finals == 18
    assert result.content.paired <= result.content.finals


# --- the rules, with a content pairer that would take every final it is given ----------

R1, R2 = "20250706_121137_stage1_generated.png", "20250706_121252_stage2_upscaled.png"


def greedy(finals, renders, named):
    """A pairer that claims the first render for every final it is handed (none named)
    and says what the named ones matched."""
    target = renders.iloc[-1]
    return ContentOutcome(
        [Claim(rel, target["group_id"], int(target["index"]), "content")
         for rel in finals["rel_path"] if rel not in named],
        {rel: f"its content best matches {target['name']}" for rel in named}, {})


@pytest.mark.parametrize("name, paired", [
    ("IMG_0412.jpg", True), ("export-3.png", True), ("sub/20240315_101500.png", True),
    ("20240315_101500_stage2_upscaled.png", False),
    ("variants/20240315_101500_stage1.5_face_swapped copy.jpg", False)])
def test_only_a_final_with_no_identity_is_paired_by_content_and_always_flagged(name, paired):
    g = group("g", [R1, R2])
    scan = pd.DataFrame([file_row("original", p) for p in g["image_paths"]]
                        + [file_row("final", name, "b" * 64)])
    seen = []
    pairs, finals = pair_finals(pd.DataFrame([g]), scan, NO_UNGROUPED,
                                lambda f, r, n: seen.append(n) or greedy(f, r, n))
    row, pair = finals.set_index("rel_path").loc[name], pairs.set_index("group_id").loc["g"]
    assert seen == [frozenset() if paired else frozenset([name])]
    if paired:
        assert row["role"] == "kept" and pair["pair_method"] == "content"
        assert pair["review"] == (f"{name} was paired by its content alone (no name or "
                                  "identical bytes tie it to a render; the same picture "
                                  "may have been rendered again): check it is this "
                                  "group's image")
    else:
        assert row["role"] == "orphan" and pd.isna(pair["user_selected_index"])
        assert pd.isna(pair["review"])  # the group the picture resembles is not flagged
        assert "its name claims render 20240315_101500 stage " in row["reason"]
        assert row["reason"].endswith(f"its content best matches {R2}")


def test_the_bytes_of_a_render_pair_without_a_flag():
    g = group("g", [R1, R2])
    originals = [file_row("original", p) for p in g["image_paths"]]
    scan = pd.DataFrame(originals + [file_row("final", "IMG_0001.png",
                                              originals[1]["content_hash"])])
    pairs, finals = pair_finals(pd.DataFrame([g]), scan, NO_UNGROUPED, greedy)
    assert finals.set_index("rel_path").loc["IMG_0001.png", "pair_method"] == "content"
    assert pd.isna(pairs.set_index("group_id").loc["g", "review"])
