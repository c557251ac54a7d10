"""The person's answers: ``reviews/<project>.jsonl`` beside conf/, one JSON object a line.

Human answers are inputs, not outputs: they live in git (a reviewer's afternoon must
survive a `dvc gc` or a fresh clone), and the file is a dependency of extract, the stage
that builds the truth. An answer names the kind of case, the content hashes of the
images it is about and where it was found; queue.standing matches it to a case by its
images first, so it survives a rename, and an answer given for some files is never
applied to other files that took their names: when the files change, it fits no case
and is reported.

Each change rewrites the whole file atomically (read, add or drop a line, replace), so a
crash or a full disk leaves the previous answers, never half a line. Lines already in the
file are kept byte for byte: a hand edit or a merge in git is not reformatted away.
Undo drops the last line: git keeps the history, the file keeps what stands.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from filelock import FileLock

from backfill.config.errors import UserError
from backfill.db.cells import format_time
from backfill.files.atomic import write_text

# What you can decide. approve: you kept render ``index`` whole; crop: you kept render
# ``index`` cropped, as the box was located in it; reject: you kept nothing of the group;
# assign: a final with no group belongs to ``group_id``; foreign: a final with no group
# is not from this project, or a render left out of every group stays out; live: the
# live database row is right where the files disagree (it is left as it is). A skip is
# no answer: nothing is written.
DECISIONS = ("approve", "crop", "reject", "assign", "foreign", "live")
PICKS = ("approve", "crop")  # the decisions that name the kept render



@contextlib.contextmanager
def _held(path: Path) -> Iterator[None]:
    """``path`` to read and rewrite alone: two quick key presses, or two `backfill review`
    windows on one project, never read the same old file and lose an answer. The lock
    file lies beside it (``<project>.jsonl.lock``, ignored by git)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with _THREADS, FileLock(path.with_name(path.name + ".lock"), timeout=30):
        yield


_THREADS = threading.Lock()  # filelock's lock is per thread; the app answers on several


Place = tuple[str, tuple[str | None, ...], str]  # kind, hashes, subject: one case's answers


def now() -> str:
    """The time of an answer, as the truth table writes times (ISO, UTC, seconds)."""
    return format_time(datetime.now(UTC))


@dataclass(frozen=True)
class Answer:
    """One decision of the person about one case of the queue."""

    kind: str  # the queue's kind of case (backfill.review.queue.KINDS)
    subject: str  # where the case was found: a group id, or a file's path under its folder
    hashes: tuple[str | None, ...]  # content hashes of its images; None: unreadable
    settles: str  # the flag it settles, as the tables said it (a review reason, a detail)
    decision: dict[str, Any]  # {"action": one of DECISIONS, ...its details}
    at: str = field(default_factory=now)

    def __post_init__(self) -> None:
        object.__setattr__(self, "hashes", tuple(self.hashes))
        problem = decision_problem(self.decision)
        if problem:
            raise ValueError(problem)

    @property
    def place(self) -> Place:
        """The case it answers, where it was found: a later answer here replaces it."""
        return self.kind, self.hashes, self.subject

    def line(self) -> str:
        return json.dumps({"kind": self.kind, "subject": self.subject,
                           "hashes": list(self.hashes), "settles": self.settles,
                           "decision": self.decision, "at": self.at},
                          sort_keys=True, ensure_ascii=False)


def decision_problem(decision: dict[str, Any]) -> str | None:
    """Why ``decision`` is no answer, in one line, or None."""
    action = decision.get("action") if isinstance(decision, dict) else None
    if action not in DECISIONS:
        return f"decision action {action!r} is not one of {', '.join(DECISIONS)}"
    if action in PICKS:
        index = decision.get("index")
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            return f"an {action!r} decision names the kept render's index (0 or more)"
    if action == "assign" and not (isinstance(decision.get("group_id"), str)
                                   and decision["group_id"]):
        return "an 'assign' decision names the group the final belongs to"
    return None


def _parse(text: str, where: str) -> Answer:
    try:
        data = json.loads(text)
        return Answer(kind=data["kind"], subject=data["subject"], hashes=data["hashes"],
                      settles=data["settles"], decision=data["decision"], at=data["at"])
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{where} is not an answer ({exc}): fix or remove that line "
                        "(git holds the file's history).") from None


def read(path: Path) -> list[Answer]:
    """Every answer in ``path``, oldest first ([] when there is none yet); a line that is
    not an answer stops here, named, rather than being skipped quietly."""
    if not path.exists():
        return []
    out = []
    for number, text in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if text.strip():
            out.append(_parse(text, f"{path.name} line {number}"))
    return out


def _lines(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    return [t for t in text.splitlines() if t.strip()]


def append(path: Path, answer: Answer) -> None:
    """Add ``answer`` to ``path``, atomically: it is there whole, or the file is unchanged."""
    with _held(path):
        lines = [*_lines(path), answer.line()]
        write_text("\n".join(lines) + "\n", path)


def undo(path: Path) -> Answer | None:
    """Drop the last answer in ``path`` (atomically) and return it; None when none is left."""
    with _held(path):
        lines = _lines(path)
        if not lines:
            return None
        last = _parse(lines[-1], f"{path.name} line {len(lines)}")
        write_text("".join(f"{t}\n" for t in lines[:-1]), path)
        return last


def latest(answers: Iterable[Answer]) -> list[Answer]:
    """The answers that stand: the last given for each case where it was found (a later
    line replaces an earlier one, as you changed your mind), in the order given."""
    out: dict[Place, Answer] = {}
    for answer in answers:
        out.pop(answer.place, None)
        out[answer.place] = answer
    return list(out.values())
