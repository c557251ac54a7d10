"""db.schema: the v3 plan's ai_decisions table as created here."""

from __future__ import annotations

import sqlite3

import pytest

from backfill.db.schema import COLUMNS, INDEXES, VIEWS, create


def test_the_schema_has_seed_003s_columns_checks_indexes_and_views(tmp_path):
    conn = sqlite3.connect(tmp_path / "d.db")
    create(conn)
    assert [r[1] for r in conn.execute("PRAGMA table_info(ai_decisions)")] == COLUMNS
    names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    assert set(INDEXES) | set(VIEWS) <= names
    with pytest.raises(sqlite3.IntegrityError):  # the old scripts' 'skip' is refused
        conn.execute("INSERT INTO ai_decisions (group_id, timestamp, project_id, images, "
                     "user_selected_index, user_action, image_width, image_height) VALUES "
                     "('g', 't', 'p', '[]', 0, 'skip', 1, 1)")
