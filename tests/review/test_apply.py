"""Your answers applied to the truth: each as said, only to the files it was given for;
one that no longer fits is listed with why, never applied quietly."""

from __future__ import annotations

import pandas as pd
import pytest

from backfill.contracts.schemas import FinalsTable, TruthTable
from backfill.contracts.tables import validate
from backfill.review.apply import answer_problem, apply_answers
from backfill.review.queue import Case, build_queue
from backfill.review.store import Answer

AT = "2026-12-04T10:00:00Z"


def said(case: Case, **decision) -> Answer:
    return Answer(case.kind, case.subject, case.hashes, case.reason, decision, at=AT)


def group_cases(tables) -> list[Case]:
    return [c for c in build_queue(tables) if c.group_id is not None and c.kind != "conflict"]


def applied(tables, *answers: Answer):
    out = apply_answers(tables, list(answers))
    validate(out.truth, TruthTable, "truth")
    validate(out.finals, FinalsTable, "finals")
    return out, out.truth.set_index("group_id")


def test_no_answers_change_nothing(tables):
    out, _ = applied(tables)
    pd.testing.assert_frame_equal(out.truth, tables["truth"])
    pd.testing.assert_frame_equal(out.finals, tables["finals"])
    assert (out.applied, out.not_applied) == (0, [])


def test_approve_keeps_the_chosen_render_whole_and_clears_the_flag(tables):
    case = group_cases(tables)[0]
    group = tables["groups"].set_index("group_id").loc[case.group_id]
    last = len(group["image_paths"]) - 1
    out, truth = applied(tables, said(case, action="approve", index=last))
    row = truth.loc[case.group_id]
    assert (row["user_action"], row["user_selected_index"], row["original_path"]) == \
        ("approve", last, group["image_paths"][last])
    assert [row[c] for c in ("crop_x1", "crop_y1", "crop_x2", "crop_y2")] == [0, 0, 1, 1]
    assert (row["needs_review"], row["decided_by"], row["reviewed_at"]) == \
        (False, "reviewed", AT)
    assert pd.isna(row["review_reason"]) and out.applied == 1
    others = tables["truth"].set_index("group_id").drop(index=case.group_id)
    pd.testing.assert_frame_equal(truth.drop(index=case.group_id), others)


def test_crop_keeps_the_located_box_and_only_in_its_render(tables):
    truth = tables["truth"].set_index("group_id")
    case = next(c for c in group_cases(tables)
                if pd.notna(truth.loc[c.group_id, "crop_x1"]))
    row = truth.loc[case.group_id]
    kept = int(row["user_selected_index"])
    elsewhere = said(case, action="crop", index=(kept + 1) % 2)
    assert "was located in image" in answer_problem(case, elsewhere.decision, tables)
    out, after = applied(tables, said(case, action="crop", index=kept))
    new = after.loc[case.group_id]
    assert new["user_action"] == "crop" and new["crop_x1"] == row["crop_x1"]
    assert new["crop_timestamp"] == row["final_modified_at"] or pd.isna(row["final_modified_at"])


def test_reject_keeps_nothing_and_its_finals_are_tied_to_no_group(tables):
    truth = tables["truth"].set_index("group_id")
    case = next(c for c in group_cases(tables)
                if isinstance(truth.loc[c.group_id, "final_path"], str))
    out, after = applied(tables, said(case, action="reject"))
    row = after.loc[case.group_id]
    assert row["user_action"] == "reject" and pd.isna(row["user_selected_index"])
    assert pd.isna(row["final_path"]) and row["decided_by"] == "reviewed"
    final = out.finals.set_index("rel_path").loc[truth.loc[case.group_id, "final_path"]]
    assert final["role"] == "foreign" and case.group_id in final["reason"]
    assert not (out.finals["group_id"] == case.group_id).any()


def test_an_answer_for_other_files_is_listed_not_applied(tables):
    case = group_cases(tables)[0]
    changed = Answer(case.kind, case.subject, ("f" * 64, *case.hashes[1:]), case.reason,
                     {"action": "reject"}, at=AT)
    gone = Answer(case.kind, "p_group_19990101_000000", case.hashes[:1], case.reason,
                  {"action": "reject"}, at=AT)
    out, truth = applied(tables, changed, gone)
    assert out.applied == 0 and len(out.not_applied) == 2
    assert "renders changed" in out.not_applied[0] or "final changed" in out.not_applied[0]
    assert "group is gone" in out.not_applied[1]
    assert truth.loc[case.group_id, "decided_by"] == "files"


def test_an_orphan_said_foreign_is_tied_to_no_group_and_waits_no_more(tables):
    case = next(c for c in build_queue(tables) if c.kind == "orphan" and c.hashes[0])
    out, _ = applied(tables, said(case, action="foreign"))
    row = out.finals.set_index("rel_path").loc[case.subject]
    assert row["role"] == "foreign" and "not from this project" in row["reason"]
    assert case.subject not in {c.subject for c in build_queue({**tables, "finals": out.finals})}


@pytest.mark.parametrize("decision,wrong", [
    ({"action": "assign", "group_id": "x"}, "takes approve or crop or reject"),
    ({"action": "approve", "index": 9}, "no image 10"),
    ({"action": "live"}, "takes approve"),
])
def test_an_answer_the_case_cannot_take_is_refused(tables, decision, wrong):
    case = group_cases(tables)[0]
    assert wrong in answer_problem(case, decision, tables)


def test_an_unreadable_orphan_is_told_by_where_it_was_found(tables):
    finals = tables["finals"].copy()
    orphans = finals.index[finals["role"] == "orphan"][:2]
    finals.loc[orphans, "content_hash"] = None  # two orphans that cannot be read
    tabs = {**tables, "finals": finals}
    first, second = [c for c in build_queue(tabs) if c.kind == "orphan" and not c.hashes[0]]
    out, _ = applied(tabs, said(first, action="foreign"),
                     said(second, action="assign", group_id=tables["groups"]["group_id"][0]))
    roles = out.finals.set_index("rel_path")["role"]
    assert (roles[first.subject], roles[second.subject]) == ("foreign", "orphan")
    assert out.applied == 1 and "cannot be read" in out.not_applied[0]


def test_an_orphan_answer_about_a_final_a_reject_tied_out_does_not_stop_extract(tables):
    truth = tables["truth"].set_index("group_id")
    case = next(c for c in group_cases(tables)
                if isinstance(truth.loc[c.group_id, "final_path"], str))
    final = tables["finals"].set_index("rel_path").loc[truth.loc[case.group_id, "final_path"]]
    about_it = Answer("orphan", "misc/" + final.name, (final["content_hash"],), "was an orphan",
                      {"action": "foreign"}, at=AT)
    out, _ = applied(tables, said(case, action="reject"), about_it)
    assert out.applied == 2 and out.not_applied == []  # tied to no group either way


def test_approving_another_render_than_the_kept_final_shows_keeps_no_final(tables):
    truth = tables["truth"].set_index("group_id")
    case = next(c for c in group_cases(tables)
                if isinstance(truth.loc[c.group_id, "final_path"], str)
                and truth.loc[c.group_id, "user_selected_index"] > 0)
    final = truth.loc[case.group_id, "final_path"]
    out, after = applied(tables, said(case, action="approve", index=0))
    row = after.loc[case.group_id]
    assert (row["user_selected_index"], row["final_copies"]) == (0, 0)
    assert pd.isna(row["final_path"]) and pd.isna(row["pair_method"])
    kept = out.finals.set_index("rel_path").loc[final]
    assert kept["role"] == "extra" and "image 1" in kept["reason"]


def test_an_orphan_that_cannot_be_read_can_only_be_left_out(tables):
    finals = tables["finals"].copy()
    finals.loc[finals.index[finals["role"] == "orphan"][0], "content_hash"] = None
    tabs = {**tables, "finals": finals}
    case = next(c for c in build_queue(tabs) if c.kind == "orphan" and not c.hashes[0])
    group = tables["groups"]["group_id"][0]
    assert "takes foreign" in answer_problem(case, {"action": "assign", "group_id": group}, tabs)
    assert answer_problem(case, {"action": "foreign"}, tabs) is None
