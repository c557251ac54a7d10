"""The reviews store: answers appended whole, undone last first, the latest per case."""

from __future__ import annotations

import os

import pytest

from backfill.config.errors import UserError
from backfill.config.project import reviews_file
from backfill.review import store
from backfill.review.store import Answer

H1, H2, H3 = "a" * 64, "b" * 64, "c" * 64


def answer(action: str = "approve", hashes=(H1, H2), at: str = "2026-01-02T03:04:05Z",
           **details) -> Answer:
    if action in store.PICKS:
        details.setdefault("index", 0)
    return Answer(kind="needs_review", subject="p_group_20240101_120000", hashes=hashes,
                  settles="confidence 0.41 is below min_confidence",
                  decision={"action": action, **details}, at=at)


def test_append_then_read_gives_the_answers_back_in_order(tmp_path):
    path = reviews_file(tmp_path, "p")
    assert store.read(path) == []
    first, second = answer(), answer("crop", hashes=(H3,), index=2)
    store.append(path, first)
    store.append(path, second)
    assert path == tmp_path / "reviews" / "p.jsonl"
    assert store.read(path) == [first, second]
    assert path.read_text().count("\n") == 2


def test_latest_keeps_the_last_answer_per_case_where_it_was_found():
    first = answer("approve")
    changed_mind = answer("reject", at="2026-01-02T03:05:00Z")
    other_files = answer("crop", hashes=(H1, H3))  # same group id, other content
    assert store.latest([first, changed_mind, other_files]) == [changed_mind, other_files]
    assert store.latest([]) == []


def test_undo_drops_the_last_answer_and_says_which(tmp_path):
    path = reviews_file(tmp_path, "p")
    assert store.undo(path) is None
    first, second = answer(), answer("reject")
    store.append(path, first)
    store.append(path, second)
    assert store.undo(path) == second
    assert store.read(path) == [first]
    assert store.undo(path) == first
    assert store.undo(path) is None
    assert path.read_text() == ""


def test_lines_already_there_are_kept_byte_for_byte(tmp_path):
    path = reviews_file(tmp_path, "p")
    path.parent.mkdir()
    hand = ('{"at": "2026-01-01T00:00:00Z", "decision": {"action": "reject"},   '
            '"hashes": [null], "kind": "orphan", "settles": "x", "subject": "f.png"}')
    path.write_text(hand + "\n")
    store.append(path, answer())
    assert path.read_text().splitlines()[0] == hand
    assert store.read(path)[0].hashes == (None,)


def test_a_failed_write_leaves_the_file_as_it_was(tmp_path, monkeypatch):
    path = reviews_file(tmp_path, "p")
    store.append(path, answer())
    before = path.read_bytes()

    def crash(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        store.append(path, answer("reject"))
    with pytest.raises(OSError):
        store.undo(path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    left = sorted(p.name for p in path.parent.iterdir())
    assert left == ["p.jsonl", "p.jsonl.lock"]  # no temporary left; the lock is git-ignored


def test_a_line_that_is_no_answer_is_named_not_skipped(tmp_path):
    path = reviews_file(tmp_path, "p")
    store.append(path, answer())
    with path.open("a") as f:
        f.write('{"kind": "orphan"}\n')
    with pytest.raises(UserError, match="p.jsonl line 2"):
        store.read(path)


@pytest.mark.parametrize("decision", [{"action": "maybe"}, {"action": "approve"},
                                      {"action": "crop", "index": -1},
                                      {"action": "approve", "index": True},
                                      {"action": "assign"}, {}])
def test_a_decision_that_says_nothing_is_refused(decision):
    with pytest.raises(ValueError):
        Answer(kind="orphan", subject="f.png", hashes=(H1,), settles="x", decision=decision)


def test_an_answer_is_timed_as_the_tables_time_things():
    import re

    from backfill.contracts.schemas import ISO_UTC_PATTERN

    assert re.fullmatch(ISO_UTC_PATTERN, Answer("orphan", "f.png", (H1,), "x",
                                                {"action": "foreign"}).at)


def test_two_processes_answering_at_once_lose_no_answer(tmp_path):
    import multiprocessing

    path = reviews_file(tmp_path, "p")
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(2)  # both answer at the same moment, as two windows could
    procs = [ctx.Process(target=_answer_many, args=(path, n, start)) for n in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    assert len(store.read(path)) == 2 * 100


def _answer_many(path, n: int, start) -> None:
    start.wait()
    for i in range(100):
        store.append(path, answer(hashes=(f"{n}{i:03d}".ljust(64, "a"),)))
