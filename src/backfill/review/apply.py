"""Your answers, applied: the truth extract recovered, with every case you settled in
`backfill review` decided as you said.

Pure functions of the tables and the answers (the reviews file, oldest first), run by
the extract stage
after it labels the decisions, so `dvc repro` applies them (reviews/<project>.jsonl is
one of extract's dependencies). An answer is applied only to the very files it was given
for: its case must wait in the queue the files give now (queue.standing). An
answer whose files changed or vanished, or that no longer fits them, is listed with why,
never applied quietly, and the case waits again.

What each answer does:
- approve k / crop k: the group's decision is render k kept whole / cropped to the box
  located in it; reject: nothing of the group was kept (its finals become 'foreign').
  The row's flag is cleared and ``decided_by`` says 'reviewed'.
- assign g (an orphan final): extract's pairing claims the final for group g (method
  'reviewed'), so it is located and labelled like any kept final (assignments()).
- foreign: an orphan final is not from this project (role 'foreign'); a render left out
  of every group by a name clash stays out.
- live (a live-row conflict): the live row is right; the merge leaves it as it is, so
  nothing here changes, and the queue stops showing the case.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from backfill.contracts.schemas import CROP_BOX, FULL_FRAME, UNREADABLE
from backfill.review.queue import Case, build_queue, standing
from backfill.review.store import PICKS, Answer, decision_problem, latest

# The columns of a location in one render: meaningless for another render.
LOCATION = ["scale", "confidence", "support", "match_method"]


@dataclass
class Applied:
    """The truth and finals with your answers in, and what could not be applied."""

    truth: pd.DataFrame
    finals: pd.DataFrame
    applied: int = 0
    not_applied: list[str] = field(default_factory=list)  # one line per answer, with why


def _sizes(group: pd.Series) -> list[tuple[object, object]]:
    return list(zip(group["widths"], group["heights"], strict=True))


def allowed(case: Case) -> tuple[str, ...]:
    """The answers a case takes (store.DECISIONS)."""
    if case.kind == "orphan":  # one that cannot be read cannot be located in a group
        return ("assign", "foreign") if case.hashes[0] else ("foreign",)
    if case.kind == "conflict":
        return ("live",)
    if case.group_id is None:  # a render a name clash left out of every group
        return ("foreign",)
    return ("approve", "crop", "reject")


def answer_problem(case: Case, decision: Mapping, tables: Mapping[str, pd.DataFrame]
                   ) -> str | None:
    """Why ``decision`` is no answer to ``case`` on these tables, in one line (None: it is).
    The app asks this before it keeps an answer."""
    problem = decision_problem(decision)
    if problem:
        return problem
    if decision["action"] not in allowed(case):
        return f"a {case.kind} case takes {' or '.join(allowed(case))}"
    groups = tables["groups"]
    if decision["action"] == "assign" and decision["group_id"] not in set(groups["group_id"]):
        return "an orphan final can be assigned to one of the project's groups only"
    if case.group_id is None:
        return None
    truth = tables["truth"]
    rows = truth[truth["group_id"] == case.group_id]
    group = groups[groups["group_id"] == case.group_id]
    return pick_problem(decision, rows.iloc[0] if len(rows) else None,
                        group.iloc[0] if len(group) else None)


def pick_problem(decision: Mapping, row: pd.Series | None, group: pd.Series | None
                 ) -> str | None:
    """Why ``decision`` cannot be applied to a group's truth ``row`` (None: it can).
    The app asks this before it keeps an answer; the stage again, on today's files."""
    action = decision.get("action")
    if action not in PICKS:
        return None
    if group is None or row is None:
        return f"an {action!r} answer is about a group of renders; this case has none"
    index = decision["index"]
    if index >= len(group["image_paths"]):
        return f"the group has {len(group['image_paths'])} renders, no image {index + 1}"
    if action == "crop":
        kept = row["user_selected_index"]
        if pd.isna(row["crop_x1"]) or pd.isna(kept):
            return "no box was located in its renders to crop to: approve or reject it"
        if int(kept) != index:
            return (f"the box was located in image {int(kept) + 1}, not image {index + 1}: "
                    "crop that one, or approve this one whole")
    return None


def _decided(row: pd.Series, group: pd.Series, decision: Mapping, at: str) -> pd.Series:
    """``row`` (a truth row) as you decided it."""
    row = row.copy()
    action = decision["action"]
    if action == "reject":
        for column in ["user_selected_index", "kept_stage", "original_path", "original_width",
                       "original_height", "final_path", "pair_method", *CROP_BOX, *LOCATION,
                       "final_modified_at", "crop_timestamp"]:
            row[column] = None
        row["final_copies"] = 0
    else:
        index = int(decision["index"])
        if pd.isna(row["user_selected_index"]) or int(row["user_selected_index"]) != index:
            # Not the render the kept final was cut from: no final, no location is its.
            for column in [*LOCATION, "final_path", "pair_method", "final_modified_at"]:
                row[column] = None
            row["final_copies"] = 0
        width, height = _sizes(group)[index]
        row["user_selected_index"] = index
        row["kept_stage"] = float(group["stages"][index])
        row["original_path"] = group["image_paths"][index]
        row["original_width"] = None if width is None or pd.isna(width) else int(width)
        row["original_height"] = None if height is None or pd.isna(height) else int(height)
        if action == "approve":
            row[CROP_BOX] = list(FULL_FRAME)
            row["crop_timestamp"] = None
        else:
            row["crop_timestamp"] = row["final_modified_at"]
    row["user_action"] = action
    row["needs_review"] = False
    row["review_reason"] = None
    row["decided_by"] = "reviewed"
    row["reviewed_at"] = at
    return row


def assignments(answers: Sequence[Answer], finals_scan: pd.DataFrame) -> dict[str, str]:
    """The finals you assigned to a group (rel_path -> group id), for extract's pairing:
    every readable file of the final folder with the content the answer was given for
    (``answers``: the reviews file, oldest first; the latest answer stands)."""
    by_hash: dict[str, list[str]] = {}
    for rel, h in zip(finals_scan["rel_path"], finals_scan["content_hash"], strict=True):
        if isinstance(h, str):
            by_hash.setdefault(h, []).append(rel)
    return {rel: a.decision["group_id"] for a in latest(answers)
            if a.kind == "orphan" and a.decision["action"] == "assign"
            for rel in by_hash.get(a.hashes[0] or "", [])}


def _tie_out(finals: pd.DataFrame, rows: np.ndarray, why: str) -> None:
    finals.loc[rows, ["role", "group_id", "pair_method"]] = ["foreign", None, None]
    finals.loc[rows, "reason"] = why


def _orphan_rows(answer: Answer, finals: pd.DataFrame) -> pd.Series:
    """The finals an orphan's answer is about: those with its content, or for a file that
    cannot be read (no content hash), the one where it was found."""
    if answer.hashes[0]:
        return finals["content_hash"] == answer.hashes[0]
    return finals["rel_path"] == answer.subject


def _orphan_outcome(answer: Answer, finals: pd.DataFrame) -> str | None:
    """Whether an orphan's answer took (None), else why not."""
    mine = finals[_orphan_rows(answer, finals)]
    if mine.empty:
        return "its file is gone from the final folder"
    action = answer.decision["action"]
    if action == "assign":
        group = answer.decision["group_id"]
        if not answer.hashes[0]:
            return f"it cannot be read, so it cannot be located in a render of {group}"
        if (mine["pair_method"] == "reviewed").any():
            return None
        if (mine["role"] == "orphan").all():
            return str(mine["reason"].iloc[0])  # pairing says why it could not claim it
        return f"{_tied(mine)}, so your answer ({group}) is not needed"
    if (mine["role"] == "orphan").any() or (mine["role"] == "foreign").all():
        return None
    return f"it is no longer an orphan: {_tied(mine)}"


def _tied(finals: pd.DataFrame) -> str:
    """What ties ``finals`` (files of one content, none an orphan) to a group now."""
    paired = finals[finals["group_id"].notna()]
    if paired.empty:
        return f"it is tied to no group ({finals['reason'].dropna().iloc[0]})" \
            if finals["reason"].notna().any() else "it is tied to no group"
    return (f"the files now tie it to {paired['group_id'].iloc[0]} by "
            f"{paired['pair_method'].iloc[0]}")


def apply_answers(tables: Mapping[str, pd.DataFrame], answers: Sequence[Answer]
                  ) -> Applied:
    """The truth and finals of ``tables`` (extract's, with scan, groups and ungrouped)
    with every standing answer in ``answers`` (the reviews file, oldest first) that
    still fits its files applied; the others listed with why."""
    truth = tables["truth"].set_index("group_id", drop=False)
    finals = tables["finals"].copy()
    groups = tables["groups"].set_index("group_id", drop=False)
    given = standing(build_queue(tables), answers)
    fitting = {id(a) for a in given.values()}
    out = Applied(truth, finals)
    for case, answer in given.items():
        if case.kind in ("conflict", "orphan"):
            continue  # a live row is the merge's to leave alone; orphans below
        if case.group_id is None:  # a render left out of every group: it stays out
            out.applied += 1
            continue
        row, group = truth.loc[case.group_id], groups.loc[case.group_id]
        problem = pick_problem(answer.decision, row, group)
        if problem:
            out.not_applied.append(f"{case.kind} {case.subject}: {problem}")
            continue
        truth.loc[case.group_id] = _decided(row, group, answer.decision, answer.at)
        action, kept = answer.decision["action"], row["user_selected_index"]
        mine = finals.index[finals["group_id"] == case.group_id]
        if action == "reject":
            _tie_out(finals, mine, f"you answered that {case.group_id} kept nothing "
                                   f"({answer.at})")
        elif pd.notna(kept) and int(kept) != answer.decision["index"]:
            finals.loc[mine, "role"] = "extra"
            finals.loc[mine, "reason"] = (f"you answered that image {answer.decision['index'] + 1}"
                                          f" of {case.group_id} was kept whole ({answer.at})")
        out.applied += 1
    for answer in latest(answers):
        where = f"{answer.kind} {answer.subject}"
        if answer.kind == "orphan":
            why = _orphan_outcome(answer, finals)
            if why is None and answer.decision["action"] == "foreign":
                rows = finals.index[_orphan_rows(answer, finals) & (finals["role"] == "orphan")]
                _tie_out(finals, rows, f"not from this project (you answered so, {answer.at})")
            if why is None and answer.decision["action"] == "assign":  # located as any
                paired = truth["final_path"].isin(
                    finals.loc[_orphan_rows(answer, finals), "rel_path"]) & (
                    truth["pair_method"] == "reviewed")
                truth.loc[paired, ["decided_by", "reviewed_at"]] = ["reviewed", answer.at]
            if why is None:
                out.applied += 1
            else:
                out.not_applied.append(f"{where}: {why}")
        elif answer.kind != "conflict" and id(answer) not in fitting:
            out.not_applied.append(f"{where}: {_why_gone(answer, truth, groups)}")
    out.truth = truth.reset_index(drop=True).astype(tables["truth"].dtypes.to_dict())
    out.finals = finals.astype(tables["finals"].dtypes.to_dict())
    return out


def _why_gone(answer: Answer, truth: pd.DataFrame, groups: pd.DataFrame) -> str:
    """Why an answer about a group (or a render) fits no waiting case."""
    if answer.kind == "name_clash" and answer.subject not in groups.index:
        return ("the render a name clash left out changed, or is in a group now: answer "
                "it again in review if it still waits")
    if answer.subject not in groups.index:
        return "its group is gone (renamed or removed): answer it again in review"
    members = tuple(h if isinstance(h, str) else None
                    for h in groups.loc[answer.subject, "content_hashes"])
    if answer.hashes[:len(members)] != members:
        return "its renders changed since you answered: answer it again in review"
    row = truth.loc[answer.subject]
    if row["user_action"] == UNREADABLE or row["needs_review"]:
        return "its kept final changed since you answered: answer it again in review"
    return "the files settle it now (it needs no review): your answer is not needed"
