"""What waits for the person: every doubtful case of a project, read from its tables.

A pure function of the tables (and of the answers already given), so the page, a count
on the command line and the tests all see the same queue. Each case names the images it
is about by content hash: that is what an answer is matched by (standing).

Kinds, in the order the queue shows them:
- needs_review: a recovered decision the files cannot prove (extract's flag), least sure
  first (confidence ascending, unknown first: those are where nothing could be located);
- orphan: a final paired with no group; the person names its group, or says it is not
  from this project;
- unreadable_final: a kept final that cannot be read, so its decision is in no DB row;
- name_clash: a decision or a render that a name shared by two different pictures
  leaves in doubt;
- conflict: a row of the live DB that the merge would change against what it holds
  (another action, another kept image), left alone until the person says which is right.
Each flagged decision is one case of one kind, so the counts add up to what waits.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pandas as pd

from backfill.config.errors import UserError
from backfill.contracts.schemas import UNREADABLE
from backfill.review.store import Answer, latest

KINDS = ("needs_review", "orphan", "unreadable_final", "name_clash", "conflict")
# How the page names each kind to the person.
LABELS = {
    "needs_review": "decisions to check",
    "orphan": "finals with no group",
    "unreadable_final": "kept finals that cannot be read",
    "name_clash": "name clashes",
    "conflict": "live database rows that differ from your reviewer's picks",
}
# The merge's issues that are a live row disagreeing with the files (the rest are about
# the DB's own rows, or repeat a flag the truth already carries).
CONFLICT_ISSUES = ("action_conflict", "pick_differs")
CLASH = "name clash"  # the wording group and extract use for one


@dataclass(frozen=True)
class Case:
    """One thing the person settles."""

    kind: str  # one of KINDS
    subject: str  # a group id; for an orphan or a render, its path under its folder
    hashes: tuple[str | None, ...]  # the images it is about; None: unreadable, no hash
    reason: str  # why it waits, as the tables say it
    group_id: str | None = None
    confidence: float | None = None  # how sure the located box is (needs_review)

    @property
    def settled_by_answer(self) -> bool:
        """Whether an answer settles it without changing a table (a live row you say is
        right; a render a name clash left out, that you leave out): it never comes back
        after a repro, as a case whose answer could not be applied does."""
        return self.kind == "conflict" or (self.kind == "name_clash" and self.group_id is None)


def _hash(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _confidence(value: object) -> float | None:
    return None if value is None or pd.isna(value) else float(value)


def _group_hashes(groups: pd.DataFrame) -> dict[str, tuple[str | None, ...]]:
    return {g: tuple(_hash(h) for h in hashes)
            for g, hashes in zip(groups["group_id"], groups["content_hashes"], strict=True)}


def _truth_cases(truth: pd.DataFrame, groups: pd.DataFrame,
                 finals: pd.DataFrame) -> list[Case]:
    members = _group_hashes(groups)
    final_hash = dict(zip(finals["rel_path"], finals["content_hash"], strict=True))
    out = []
    for r in truth[truth["needs_review"]].itertuples():
        reason = str(r.review_reason)
        kind = ("unreadable_final" if r.user_action == UNREADABLE
                else "name_clash" if CLASH in reason else "needs_review")
        # The renders, then the kept final: an answer is about what the person saw.
        hashes = members.get(r.group_id, ())
        if isinstance(r.final_path, str):
            hashes = (*hashes, _hash(final_hash.get(r.final_path)))
        out.append(Case(kind, r.group_id, hashes, reason, r.group_id,
                        _confidence(r.confidence)))
    return out


def _orphans(finals: pd.DataFrame) -> list[Case]:
    rows = finals[finals["role"] == "orphan"]
    return [Case("orphan", rel, (_hash(h),), str(why))
            for rel, h, why in zip(rows["rel_path"], rows["content_hash"], rows["reason"],
                                   strict=True)]


def _clashing_renders(ungrouped: pd.DataFrame, scan: pd.DataFrame) -> list[Case]:
    rows = ungrouped[ungrouped["reason"].str.contains(CLASH, regex=False)]
    originals = scan[scan["source"] == "original"]
    hashes = dict(zip(originals["rel_path"], originals["content_hash"], strict=True))
    return [Case("name_clash", rel, (_hash(hashes.get(rel)),), why)
            for rel, why in zip(rows["rel_path"], rows["reason"], strict=True)]


def _conflicts(issues: pd.DataFrame, groups: pd.DataFrame) -> list[Case]:
    members = _group_hashes(groups)
    rows = issues[issues["kind"].isin(CONFLICT_ISSUES)]
    seen: dict[str, Case] = {}
    for group, detail in zip(rows["group_id"], rows["detail"], strict=True):
        if group in seen:  # one case per row, whatever the merge found wrong with it
            old = seen[group]
            seen[group] = Case("conflict", group, old.hashes, f"{old.reason}; {detail}", group)
        else:
            seen[group] = Case("conflict", group, members.get(group, ()), detail, group)
    return list(seen.values())


def _order(case: Case) -> tuple:
    sure = case.confidence
    # Least sure first; unknown before any number (nothing could be located).
    return (KINDS.index(case.kind), sure is not None, sure or 0.0, case.subject)


def build_queue(tables: Mapping[str, pd.DataFrame], answers: Sequence[Answer] = (),
                built_at: str | None = None) -> list[Case]:
    """Every case that waits for you, in the order to show them: ``tables`` holds the
    project's truth, groups, finals, ungrouped and scan tables, and merge_issues when
    the merge ran (absent: no conflicts yet). ``answers`` (the reviews file, oldest
    first) and ``built_at``: see waiting()."""
    cases = [*_truth_cases(tables["truth"], tables["groups"], tables["finals"]),
             *_orphans(tables["finals"]),
             *_clashing_renders(tables["ungrouped"], tables["scan"])]
    if tables.get("merge_issues") is not None:
        cases += _conflicts(tables["merge_issues"], tables["groups"])
    return waiting(sorted(cases, key=_order), answers, built_at)


def standing(cases: Sequence[Case], answers: Sequence[Answer]) -> dict[Case, Answer]:
    """The answer that stands for each answered case of ``cases``: the last given for its
    images (kind and content hashes), wherever they were found, so an answer survives
    renames. Where images cannot tell cases apart (two cases of the same images, or an
    image that cannot be read, with no hash), only an answer given at the case's own
    place (subject) counts."""
    by_images: dict[tuple, list[Case]] = {}
    for case in cases:
        by_images.setdefault((case.kind, case.hashes), []).append(case)
    out: dict[Case, Answer] = {}
    for answer in latest(answers):
        mine = by_images.get((answer.kind, answer.hashes), [])
        alone = len(mine) == 1 and None not in answer.hashes
        for case in mine:
            if alone or case.subject == answer.subject:
                out[case] = answer
    return out


def waiting(cases: Sequence[Case], answers: Sequence[Answer], built_at: str | None = None
            ) -> list[Case]:
    """``cases`` (in their order) less those your ``answers`` settle. An answer that the
    next repro applies settles its case until the tables are rebuilt (``built_at``: when,
    as an ISO time; None: not known): a case still in tables built after its answer is
    one the answer could not be applied to, and it waits again."""
    given = standing(cases, answers)
    return [c for c in cases if c not in given or (
        built_at is not None and not c.settled_by_answer and given[c].at < built_at)]


def counts(cases: list[Case]) -> dict[str, int]:
    """How many cases of each kind wait, every kind named (0 when none)."""
    out = dict.fromkeys(KINDS, 0)
    for case in cases:
        out[case.kind] += 1
    return out


TABLES = ("truth", "groups", "finals", "ungrouped", "scan", "merge_issues")


def read_tables(output: Callable[[str], Path], project: str) -> dict[str, pd.DataFrame]:
    """The tables the queue reads, from ``output`` (Project.output: a table's path);
    merge_issues left out when the merge has not run."""
    out = {}
    for name in TABLES:
        path = output(name)
        if path.exists():
            out[name] = pd.read_parquet(path)
        elif name != "merge_issues":
            raise UserError(f"project {project} has no {name} table yet: run "
                            f"`dvc repro extract@{project}` first.")
    return out


def _seconds(timestamp: object) -> float | None:
    """A YYYYMMDD_HHMMSS timestamp as seconds, to compare distances (None: none)."""
    try:
        return datetime.strptime(str(timestamp), "%Y%m%d_%H%M%S").timestamp()
    except ValueError:
        return None


def suggested_groups(tables: Mapping[str, pd.DataFrame], case: Case, n: int = 4) -> list[str]:
    """Up to ``n`` groups an orphan final may belong to, likeliest first: those holding a
    render its reason names (extract's best content match), then those nearest in time
    to the timestamp in its name. The person confirms one, or says it is not from this
    project: a suggestion is never taken as an answer."""
    groups = tables["groups"]
    named = [g for g, names in zip(groups["group_id"], groups["image_names"], strict=True)
             if any(str(name) in case.reason for name in names)]
    scan = tables["scan"]
    final = scan[(scan["source"] == "final") & (scan["rel_path"] == case.subject)]
    when = _seconds(final["timestamp"].iloc[0]) if len(final) else None
    ids = list(groups["group_id"])
    if when is not None:
        starts = [_seconds(t) for t in groups["first_timestamp"]]
        ids = [g for _, g in sorted(zip((abs((s or 0) - when) for s in starts), ids,
                                        strict=True))]
    return list(dict.fromkeys([*named, *ids]))[:n]
