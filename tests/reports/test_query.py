"""`backfill query`: DuckDB SQL over a project's Parquet tables and its decision DB."""

import json
import sqlite3

import duckdb
import pandas as pd
import pytest
from omegaconf import OmegaConf

from backfill import cli
from backfill.config.errors import UserError
from backfill.config.project import Project
from backfill.db.schema import create, insert_rows
from backfill.files.atomic import write_parquet
from backfill.reports.query import connect, query, run_query, views

# Four groups: (stages, kept index, AI's pick, action). The AI picks the highest stage.
GROUPS = [((1.0, 2.0), 1, 1, "approve"),
          ((1.0, 1.5, 2.0), 0, 2, "crop"),
          ((1.0, 2.0, 3.0), 1, 2, "crop"),
          ((1.0, 1.5), 0, 1, "reject")]


@pytest.fixture
def project(tmp_path) -> Project:
    p = Project("p", tmp_path, OmegaConf.create({}), tmp_path / "cache")
    ids = [f"p_group_{i}" for i in range(len(GROUPS))]
    write_parquet(pd.DataFrame({"group_id": ids, "stages": [list(g[0]) for g in GROUPS]}),
                  p.output("groups"))
    write_parquet(pd.DataFrame({"group_id": ids, "needs_review": [False, True, False, True],
                                "confidence": [0.99, 0.42, 0.97, None]}), p.output("truth"))
    rows = pd.DataFrame({
        "group_id": ids, "timestamp": "2025-07-08T06:07:11Z", "project_id": "p",
        "images": "[]", "image_width": 64, "image_height": 64,
        "user_selected_index": [g[1] for g in GROUPS], "ai_selected_index": [g[2] for g in GROUPS],
        "user_action": [g[3] for g in GROUPS],
        "selection_match": [g[1] == g[2] if g[3] != "reject" else None for g in GROUPS],
        "ai_confidence": [0.5, 1.0, 0.25, None],
    })
    with sqlite3.connect(p.out_dir / "ai_decisions.db") as conn:
        create(conn)
        insert_rows(conn, rows)
        conn.executemany("INSERT INTO backfill_provenance (group_id, source, backfill_group_id) "
                         "VALUES (?, 'backfill', ?)", [(i, i) for i in ids])
    return p


def test_views_join_tables_and_the_decision_db(project):
    con = connect(project)
    assert {"groups", "truth", "decisions", "provenance", "ai_mistakes",
            "ai_performance"} <= set(views(con))
    # AI mistakes by the stage the person kept; selection_match reads as a boolean.
    rows = con.sql("""
        SELECT g.stages[d.user_selected_index + 1] AS kept_stage, count(*) AS n,
               count(*) FILTER (WHERE NOT d.selection_match) AS wrong
        FROM decisions d JOIN provenance p USING (group_id)
        JOIN groups g ON g.group_id = p.backfill_group_id
        WHERE d.user_action <> 'reject' GROUP BY ALL ORDER BY 1""").fetchall()
    assert rows == [(1.0, 1, 1), (2.0, 2, 1)]
    assert con.sql("SELECT count(*) FROM ai_mistakes").fetchall() == [(2,)]
    assert con.sql("SELECT sum(ai_confidence) FROM decisions").fetchall() == [(1.75,)]
    review = con.sql("SELECT group_id FROM truth WHERE needs_review ORDER BY 1").fetchall()
    assert review == [("p_group_1",), ("p_group_3",)]


def test_output_formats_and_limit(project):
    sql = "SELECT group_id, stages, confidence FROM groups JOIN truth USING (group_id) ORDER BY 1"
    text, note = query(project, sql, limit=2)
    assert "p_group_0" in text and "p_group_1" in text and "p_group_2" not in text
    assert note == "(2 more rows of 4 not shown; --limit 0 shows all)"
    csv, note = query(project, sql, "csv")
    assert note is None
    assert csv.splitlines()[0] == "group_id,stages,confidence"
    assert csv.splitlines()[4] == 'p_group_3,"[1.0, 1.5]",'
    rows = json.loads(query(project, sql, "json", limit=0)[0])
    assert rows[1] == {"group_id": "p_group_1", "stages": [1.0, 1.5, 2.0], "confidence": 0.42}


def test_bad_sql_names_the_views(project):
    with pytest.raises(UserError) as err:
        query(project, "SELECT nope FROM truth")
    assert "query failed" in str(err.value) and "nope" in str(err.value)
    assert "views: ai_mistakes, ai_performance, decisions, groups" in str(err.value)
    empty = Project("q", project.root, project.cfg, project.cache_dir)
    with pytest.raises(UserError, match="no tables in"):
        query(empty, "SELECT 1")


def test_the_command(project, monkeypatch, capsys):
    monkeypatch.setattr(cli, "load_project", lambda name, alone=False: project)
    assert cli.main(["query", "p", "SELECT user_action, count(*) AS n FROM decisions "
                                   "GROUP BY 1 ORDER BY 1", "--csv"]) == 0
    assert capsys.readouterr().out == "user_action,n\napprove,1\ncrop,2\nreject,1\n"
    assert cli.main(["query", "p", "SELECT * FROM ai_decisions"]) == 2
    err = capsys.readouterr().err
    assert 'Did you mean "decisions"' in err and "views:" in err


@pytest.fixture
def production_db(project):
    """The project's production DB: a query must never write it."""
    db = project.root / "real.db"
    with sqlite3.connect(db) as conn:
        create(conn)
    return db


@pytest.mark.parametrize("target", ["production", "table"])
def test_a_query_writes_no_file(project, production_db, monkeypatch, capsys, target):
    # COPY ... TO a file overwrote the production DB with CSV text, or replaced a
    # project's table, and exited 0.
    path = production_db if target == "production" else project.output("truth")
    before = {p: p.read_bytes() for p in (production_db, project.output("truth"),
                                          project.out_dir / "ai_decisions.db")}
    monkeypatch.setattr(cli, "load_project", lambda name, alone=False: project)
    code = cli.main(["query", "p", f"COPY (SELECT * FROM decisions) TO '{path}' (FORMAT csv)"])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "only reads" in err
    assert {p: p.read_bytes() for p in before} == before
    assert sorted(project.out_dir.iterdir()) == sorted(
        [project.output("groups"), project.output("truth"), project.out_dir / "ai_decisions.db"])


@pytest.mark.parametrize("sql", [
    "CREATE TABLE x AS SELECT 1", "ATTACH 'x.db' AS x", "INSTALL sqlite",
    "SET enable_external_access = true", "SELECT 1; DROP VIEW truth",
    "EXPORT DATABASE 'out'"])
def test_only_read_statements_are_run(project, tmp_path, monkeypatch, sql):
    cwd = tmp_path / "cwd"  # where a relative path would land
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    with pytest.raises(UserError, match="only reads"):
        query(project, sql)
    assert "truth" in views(connect(project))
    assert list(cwd.iterdir()) == []


def test_file_access_is_off_once_the_views_exist(project, tmp_path):
    # A second line of defence, should a statement that writes pass as a read: the
    # connection itself opens no file, and its settings are locked.
    other = tmp_path / "other.csv"
    other.write_text("a\n1\n")
    con = connect(project)
    with pytest.raises(duckdb.Error, match="disabled by configuration"):
        con.sql(f"COPY (SELECT 1) TO '{other}'")
    with pytest.raises(duckdb.Error, match="disabled by configuration"):
        con.sql(f"SELECT * FROM read_csv('{other}')")
    with pytest.raises(duckdb.Error, match="locked"):
        con.sql("SET threads = 1")
    assert other.read_text() == "a\n1\n"
    # ...while the tables still read, lazily, and reads of every kind still work.
    assert run_query(con, "SELECT count(*) AS n FROM truth WHERE needs_review"
                     ).to_pylist() == [{"n": 2}]
    assert run_query(con, "DESCRIBE groups").num_rows == 2
    assert query(project, "PIVOT (SELECT needs_review FROM truth) ON needs_review "
                 "USING count(*)", "csv")[0] \
        == "false,true\n2,2"


def test_a_broken_table_is_one_line(project):
    project.output("truth").write_bytes(b"")
    with pytest.raises(UserError, match="truth.parquet cannot be read") as err:
        query(project, "SELECT 1")
    assert "\n" not in str(err.value)
