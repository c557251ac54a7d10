"""Properties of merge + publish over random production DBs and backfills (hypothesis):
no row lost, no timestamp changed, every live AI value kept, the backup identical to the
DB before, and the DB after equal to the plan's merged rows."""

from __future__ import annotations

import json
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backfill.db.cells import name_keys
from backfill.db.schema import COLUMNS, create, insert_rows, read_rows
from backfill.demo.production import decision_tables
from backfill.files.atomic import write_parquet
from backfill.production.publish import REWRITTEN_HEADER, publish_plan
from backfill.stages.merge import MergeSettings, plan_merge
from tests.helpers.merge_rows import decision

SETTINGS = MergeSettings(coord_tolerance=0.01, crop_tolerance=0.05)
AI = ["ai_selected_index", "ai_crop_coords", "ai_confidence"]


pytestmark = pytest.mark.slow  # property runs over thousands of rows, kill tests






# How older tools wrote a row's images (issue 12): each must match like the JSON form.
FORMS = {
    "json": json.dumps,
    "repr": repr,
    "prefixed": lambda names: json.dumps([f"batch_00/{n}" for n in names]),
    "upper": lambda names: json.dumps([n.upper() for n in names]),
    "jpg": lambda names: json.dumps([n.replace(".png", ".jpg") for n in names]),
}


@st.composite
def tables(draw) -> tuple[pd.DataFrame, pd.DataFrame]:
    n_prod, n_back = draw(st.integers(0, 7)), draw(st.integers(0, 7))
    prod = [draw(decision(f"live_{i}")) for i in range(n_prod)]
    for r in prod:
        r["images"] = FORMS[draw(st.sampled_from(sorted(FORMS)))](json.loads(r["images"]))
    # Backfilled ids sometimes equal a live id: a key collision must never overwrite.
    back = [draw(decision(draw(st.sampled_from([f"p_group_{i}", f"live_{i}"]))))
            for i in range(n_back)]
    back = list({r["group_id"]: r for r in back}.values())
    return (pd.DataFrame(prod, columns=COLUMNS, dtype=object),
            pd.DataFrame(back, columns=COLUMNS, dtype=object))


def write_db(path: Path, rows: pd.DataFrame) -> None:
    with sqlite3.connect(path) as conn:
        create(conn)
        insert_rows(conn, rows)
    conn.close()


def as_stored(rows: pd.DataFrame) -> list[tuple]:
    """Rows as SQLite gives them back: booleans as 0/1, sorted by group_id."""
    def value(v):
        return int(v) if isinstance(v, bool) else v
    return sorted(tuple(value(v) for v in r) for r in rows[COLUMNS].itertuples(index=False))


def masked(data: bytes) -> bytes:
    out = bytearray(data)
    for start, end in REWRITTEN_HEADER:
        out[start:end] = bytes(end - start)
    return bytes(out)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tables())
def test_publish_loses_nothing_live_and_applies_exactly_the_plan(data):
    production, backfill = data
    plan = plan_merge(backfill, production, SETTINGS)
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "live.db"
        write_db(db, production)
        before = db.read_bytes()
        done = publish_plan(db, plan.changes)
        with sqlite3.connect(db) as conn:
            after, _ = read_rows(conn)
        conn.close()
        if done.backup is not None:
            assert masked(done.backup.read_bytes()) == masked(before)
        else:
            assert plan.changes.empty and db.read_bytes() == before
    after = after.set_index("group_id")
    live = production.set_index("group_id")
    assert set(live.index) <= set(after.index)  # no row lost
    for gid, row in live.iterrows():
        assert after.at[gid, "timestamp"] == row["timestamp"]
        for col in ["crop_timestamp", *AI]:
            if row[col] is not None:  # never overwritten
                assert after.at[gid, col] == row[col], (gid, col)
        for col in ["user_action", "user_selected_index", "images"]:
            assert after.at[gid, col] == row[col]
    assert as_stored(after.reset_index()) == as_stored(plan.merged)


@settings(max_examples=40, deadline=None)
@given(tables())
def test_every_backfilled_group_is_matched_added_or_reported(data):
    production, backfill = data
    plan = plan_merge(backfill, production, SETTINGS)
    added = set(plan.changes.loc[plan.changes["rule"] == "added", "group_id"])
    endings = plan.endings(backfill["group_id"])
    assert (endings.sum(axis=1) == 1).all(), endings  # one ending each, none missing
    live_names = {n for s in production["images"] for n in name_keys(s)}
    for _, r in backfill.iterrows():
        gid, names = r["group_id"], name_keys(r["images"])
        assert not (gid in added and names & live_names)  # a live image never twice
    assert len(plan.merged) == len(production) + len(added)
    assert plan.merged["group_id"].is_unique


CHILD = """
import sys, time
from pathlib import Path
import pandas as pd
from backfill.production.publish import publish_plan
changes = pd.read_parquet(sys.argv[2])
print("ready", flush=True)
start = float(sys.argv[3])
while time.time() < start:
    time.sleep(0.001)
try:
    publish_plan(Path(sys.argv[1]), changes, lock_timeout=20)
except Exception as exc:
    print(f"refused: {exc.__class__.__name__}: {exc}", flush=True)
    sys.exit(3)
print("done", flush=True)
"""


def publisher(db: Path, plan: Path, start: float = 0.0) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(db), str(plan), str(start)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def content(db: Path) -> list[tuple]:
    with sqlite3.connect(db) as conn:  # opening rolls back a killed transaction's journal
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        schema = conn.execute("SELECT sql FROM sqlite_master ORDER BY name").fetchall()
        rows = conn.execute("SELECT * FROM ai_decisions ORDER BY group_id").fetchall()
    conn.close()
    return schema + rows


@pytest.fixture(scope="module")
def big_plan(tmp_path_factory):
    """A 3,000-row live DB and a plan of ~9,000 changes; the DB before and after."""
    tmp = tmp_path_factory.mktemp("kill")
    production, backfill = decision_tables(3000, 3000, 2, SETTINGS.crop_tolerance)
    plan = plan_merge(backfill, production, SETTINGS)
    write_db(tmp / "before.db", production)
    plan_path = tmp / "plan.parquet"
    write_parquet(plan.changes, plan_path)
    shutil.copy(tmp / "before.db", tmp / "after.db")
    proc = publisher(tmp / "after.db", plan_path)
    started = time.perf_counter()  # from "ready" to "done": the publish itself
    assert proc.stdout.readline().strip() == "done"
    took = time.perf_counter() - started
    assert proc.wait() == 0
    return SimpleNamespace(tmp=tmp, plan=plan_path, before=content(tmp / "before.db"),
                           after=content(tmp / "after.db"), seconds=took)


def writing(db: Path) -> Path:
    """The rollback journal: SQLite creates it at the transaction's first page write and
    deletes it as the commit, so a killed publish leaves it exactly when it was killed
    mid-write."""
    return db.with_name(db.name + "-journal")


def test_a_publish_killed_at_any_moment_leaves_the_db_before_or_after(big_plan):
    rng = random.Random(11)
    outcomes, mid_write = [], 0
    for i in range(10):
        db = big_plan.tmp / f"kill{i}.db"
        shutil.copy(big_plan.tmp / "before.db", db)
        proc = publisher(db, big_plan.plan)
        if i % 2:  # at a random moment of the publish, backup and all
            time.sleep(rng.uniform(0, big_plan.seconds * 1.2))
        else:  # from the writes' own progress: once the first page is written
            while not writing(db).exists() and proc.poll() is None:
                time.sleep(0.0005)
            time.sleep(rng.uniform(0, big_plan.seconds * 0.1))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        killed_writing = writing(db).exists()  # before content() opens it and rolls back
        now = content(db)
        assert now in (big_plan.before, big_plan.after), f"kill {i}: DB in between"
        if killed_writing:
            mid_write += 1
            assert now == big_plan.before, f"kill {i}: a half-written publish was not undone"
        outcomes.append("after" if now == big_plan.after else "before")
    print(f"killed publishes: {outcomes.count('before')} left as before ({mid_write} of them "
          f"killed mid-write), {outcomes.count('after')} fully applied")
    # Kills that all landed before the first write would prove nothing about atomicity.
    assert mid_write >= 1, "no kill landed while the publish was writing"


def test_two_publishes_at_once_cannot_both_apply(big_plan):
    db = big_plan.tmp / "twice.db"
    shutil.copy(big_plan.tmp / "before.db", db)
    start = time.time() + 1.0
    procs = [publisher(db, big_plan.plan, start) for _ in range(2)]
    results = sorted((p.wait(), p.stdout.read()) for p in procs)
    assert [code for code, _ in results] == [0, 3]
    assert "changed since the merge was planned" in results[1][1]
    assert content(db) == big_plan.after
