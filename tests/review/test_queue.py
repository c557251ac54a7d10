"""The review queue, built from a generated project's own tables (tests/review/conftest.py)."""

from __future__ import annotations

import math

import pandas as pd

from backfill.review.queue import KINDS, build_queue, counts
from backfill.review.store import Answer


def test_every_flag_waits_once_in_kind_order(tables):
    queue = build_queue(tables)
    truth, finals = tables["truth"], tables["finals"]
    flagged = truth[truth["needs_review"]]
    from_truth = [c for c in queue if c.kind in ("needs_review", "unreadable_final")
                  or (c.kind == "name_clash" and c.group_id)]
    assert sorted(c.subject for c in from_truth) == sorted(flagged["group_id"])
    assert {c.subject for c in queue if c.kind == "orphan"} == \
        set(finals.loc[finals["role"] == "orphan", "rel_path"])
    assert [c.kind for c in queue] == sorted((c.kind for c in queue), key=KINDS.index)
    assert len(queue) == len({(c.kind, c.subject) for c in queue})
    n = counts(queue)
    assert list(n) == list(KINDS) and sum(n.values()) == len(queue)
    # The generator's bad files give at least these kinds.
    assert n["needs_review"] and n["orphan"] and n["unreadable_final"]


def test_least_sure_first_unknown_before_any(tables):
    sure = [c.confidence for c in build_queue(tables) if c.kind == "needs_review"]
    unknown = [s for s in sure if s is None]
    assert sure[:len(unknown)] == unknown
    known = sure[len(unknown):]
    assert known == sorted(known) and not any(math.isnan(s) for s in known)


def test_a_case_names_its_images_by_content(tables):
    queue = build_queue(tables)
    groups = tables["groups"].set_index("group_id")
    case = next(c for c in queue if c.kind == "needs_review")
    members = tuple(groups.loc[case.group_id, "content_hashes"])
    assert case.hashes[:len(members)] == members
    unreadable = next(c for c in queue if c.kind == "unreadable_final")
    assert unreadable.hashes[-1] is None  # the final cannot be read, so it has no hash
    orphan = next(c for c in queue if c.kind == "orphan")
    assert len(orphan.hashes) == 1


def test_live_row_conflicts_are_one_case_per_row(tables):
    conflicts = [c for c in build_queue(tables) if c.kind == "conflict"]
    g1, g2 = tables["groups"]["group_id"].iloc[:2]
    assert [c.subject for c in conflicts] == sorted([g1, g2])
    first = next(c for c in conflicts if c.subject == g1)
    assert first.reason == "live row says reject; live row kept stage 1"
    without_merge = {k: v for k, v in tables.items() if k != "merge_issues"}
    assert counts(build_queue(without_merge))["conflict"] == 0


def test_a_clash_in_the_tables_is_a_name_clash_case(tables):
    ungrouped = pd.concat([tables["ungrouped"], pd.DataFrame({
        "rel_path": ["b/20240101_120000_base.png"], "name": ["20240101_120000_base.png"],
        "timestamp": ["20240101_120000"], "stage": [1.0],
        "reason": ["20240101_120000_base.png is a name clash (a/, b/)"]})])
    clashes = [c for c in build_queue({**tables, "ungrouped": ungrouped})
               if c.kind == "name_clash" and c.group_id is None]
    assert [c.subject for c in clashes] == ["b/20240101_120000_base.png"]


def test_an_answered_case_waits_no_more_until_its_files_change(tables):
    queue = build_queue(tables)
    case = queue[0]
    approve = {"action": "approve", "index": 0}
    given = Answer(case.kind, case.subject, case.hashes, case.reason, approve)
    after = build_queue(tables, [given])
    assert case not in after and len(after) == len(queue) - 1
    stale = Answer(case.kind, case.subject, ("f" * 64,), case.reason, approve)
    assert case in build_queue(tables, [stale])


def test_least_sure_first_among_many(tables):
    truth = tables["truth"].copy()
    kept = truth.index[truth["user_action"].isin(["approve", "crop"])
                       & ~truth["needs_review"]][:3]
    truth.loc[kept, "needs_review"] = True
    truth.loc[kept, "review_reason"] = "confidence is below min_confidence"
    truth.loc[kept, "confidence"] = [0.9, float("nan"), 0.2]
    picked = [c for c in build_queue({**tables, "truth": truth})
              if c.kind == "needs_review" and c.subject in set(truth.loc[kept, "group_id"])]
    assert [c.confidence for c in picked] == [None, 0.2, 0.9]


def test_an_orphan_is_offered_the_group_its_content_best_matches_first(tables):
    from backfill.review.queue import suggested_groups

    orphans = [c for c in build_queue(tables) if c.kind == "orphan"]
    groups = tables["groups"]
    matched = 0
    for case in orphans:
        offered = suggested_groups(tables, case)
        assert 1 <= len(offered) <= 4 and len(set(offered)) == len(offered)
        assert set(offered) <= set(groups["group_id"])
        best = [g for g, names in zip(groups["group_id"], groups["image_names"], strict=True)
                if any(name in case.reason for name in names)]
        if best:
            assert offered[0] == best[0]
            matched += 1
    assert matched  # the generated project has an orphan whose content matches a render


def test_answering_one_unreadable_orphan_leaves_another(tables):
    finals = pd.concat([tables["finals"], pd.DataFrame({
        "rel_path": ["misc/a.png", "misc/b.png"], "name": ["a.png", "b.png"],
        "role": ["orphan", "orphan"], "group_id": [None, None], "pair_method": [None, None],
        "content_hash": [None, None], "reason": ["unreadable: corrupt", "unreadable: corrupt"]})])
    both = {**tables, "finals": finals}
    a = next(c for c in build_queue(both) if c.subject == "misc/a.png")
    given = Answer(a.kind, a.subject, a.hashes, a.reason, {"action": "foreign"})
    left = {c.subject for c in build_queue(both, [given])}
    assert "misc/b.png" in left and "misc/a.png" not in left


def test_an_answer_follows_its_images_through_a_rename(tables):
    case = next(c for c in build_queue(tables) if c.kind == "orphan" and c.hashes[0])
    moved = Answer(case.kind, "elsewhere/" + case.subject, case.hashes, case.reason,
                   {"action": "foreign"})
    assert case not in build_queue(tables, [moved])


def test_two_cases_of_the_same_images_are_told_apart_by_place(tables):
    finals = tables["finals"]
    orphan = finals[(finals["role"] == "orphan") & finals["content_hash"].notna()].iloc[0]
    twin = orphan.copy()
    twin["rel_path"] = "copies/" + orphan["rel_path"]
    both = {**tables, "finals": pd.concat([finals, twin.to_frame().T], ignore_index=True)
            .astype(finals.dtypes.to_dict())}
    one, other = [c for c in build_queue(both) if c.hashes == (orphan["content_hash"],)]
    left = build_queue(both, [Answer(one.kind, one.subject, one.hashes, one.reason,
                                     {"action": "foreign"})])
    assert one not in left and other in left


def test_a_case_still_in_tables_built_after_its_answer_waits_again(tables):
    from backfill.review.queue import waiting

    cases = build_queue(tables)
    case = next(c for c in cases if c.kind == "needs_review")
    conflict = next(c for c in cases if c.kind == "conflict")
    given = [Answer(c.kind, c.subject, c.hashes, c.reason, decision, at="2026-12-04T10:00:00Z")
             for c, decision in ((case, {"action": "reject"}), (conflict, {"action": "live"}))]
    assert case not in waiting(cases, given)  # not applied yet: settled for now
    assert case not in waiting(cases, given, built_at="2026-12-04T09:00:00Z")
    again = waiting(cases, given, built_at="2026-12-04T11:00:00Z")  # repro could not apply it
    assert case in again and conflict not in again  # a live row you said is right stays so
