"""query: DuckDB SQL over a project's tables and the decision DB its merge stage wrote.

Each ``data/<p>/<table>.parquet`` is a view named after the table (read lazily, as the
query needs it, through Arrow). ``ai_decisions.db`` is read with sqlite3: DuckDB's SQLite
extension would need a download, and these machines are offline. Its rows become
``decisions`` (ai_decisions, its BOOLEAN columns as booleans) and ``provenance``
(backfill_provenance), and its own views (ai_performance, ai_mistakes, incomplete_crops)
keep their names.

A query only reads: statements other than reads are refused before they run, and once
the views exist the connection opens no file at all (``COPY ... TO`` the production DB
or a project's table, ``ATTACH``, ``read_csv``) and its settings are locked.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import sqlite3

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads

from backfill.config.errors import UserError
from backfill.config.project import Project

DB_TABLES = {"decisions": "ai_decisions", "provenance": "backfill_provenance"}
# SQLite's declared column types, as pandas' nullable types (a NULL stays NULL).
DTYPES = {"BOOLEAN": "boolean", "INTEGER": "Int64", "REAL": "Float64", "TEXT": "string"}
DEFAULT_LIMIT = 50
# Statements that only read. MULTI is PIVOT without an IN list, which first makes an
# in-memory type of the pivoted values; with file access off it can write nothing.
READ_STATEMENTS = {"SELECT", "EXPLAIN", "MULTI"}


def _column(values: list, declared: str) -> pd.Series:
    dtype = DTYPES.get(declared.upper())
    if dtype:
        try:
            return pd.Series(pd.array(values, dtype=dtype))
        except (TypeError, ValueError):
            pass  # an older DB storing other values: typed by its values below
    present = {type(v) for v in values if v is not None}
    if present <= {int}:
        return pd.Series(pd.array(values, dtype="Int64"))
    if present <= {int, float}:  # REAL with whole values stays REAL
        return pd.Series(pd.array(values, dtype="Float64"))
    # text, or mixed types (an older DB's odd rows): as text
    return pd.Series(pd.array([None if v is None else str(v) for v in values], dtype="string"))


def read_sqlite(conn: sqlite3.Connection, name: str) -> pd.DataFrame:
    """A table or view of an SQLite DB, typed by its declared column types."""
    declared = {row[1]: row[2] or "" for row in conn.execute(f'PRAGMA table_info("{name}")')}
    cursor = conn.execute(f'SELECT * FROM "{name}"')
    columns = [d[0] for d in cursor.description]
    data = cursor.fetchall()
    return pd.DataFrame({c: _column([r[i] for r in data], declared.get(c, ""))
                         for i, c in enumerate(columns)})


def connect(project: Project) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with one view per table of the project, that can
    open no file and change no setting once the views exist."""
    con = duckdb.connect()
    for path in sorted(project.out_dir.glob("*.parquet")):
        # Arrow reads the file, not DuckDB, so DuckDB's file access can be off.
        try:
            con.register(path.stem, pads.dataset(path, format="parquet"))
        except (pa.ArrowException, OSError) as exc:
            raise UserError(f"{path} cannot be read ({str(exc).splitlines()[0]}): build "
                              f"it again (`dvc repro`).") from None
    db = project.merged_db
    if db.is_file():
        sqlite = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)
        try:
            present = dict(sqlite.execute("SELECT name, type FROM sqlite_master "
                                          "WHERE type IN ('table', 'view')").fetchall())
            names = {view: table for view, table in DB_TABLES.items() if table in present}
            names.update({v: v for v, kind in present.items() if kind == "view"})
            for view, table in names.items():
                # register keeps the frame alive as long as the connection
                con.register(view, read_sqlite(sqlite, table))
        except sqlite3.DatabaseError as exc:
            raise UserError(f"{db} cannot be read ({exc}): run `backfill merge "
                              f"{project.name}` to write it again.") from None
        finally:
            sqlite.close()
    if not views(con):
        raise UserError(f"no tables in {project.out_dir}: build the project first "
                          f"(`dvc repro` or `dvc repro merge@{project.name}`).")
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return con


def views(con: duckdb.DuckDBPyConnection) -> list[str]:
    return sorted(r[0] for r in con.execute(
        "SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall())


def run_query(con: duckdb.DuckDBPyConnection, sql: str) -> pa.Table:
    """The query's result; a failing query raises UserError naming the views."""
    if not sql.strip():
        raise UserError(f"no SQL given: e.g. \"SELECT * FROM truth LIMIT 5\"; views: "
                          f"{', '.join(views(con))}")
    try:
        writes = sorted({st.type.name for st in duckdb.extract_statements(sql)}
                        - READ_STATEMENTS)
        if writes:
            raise UserError(
                f"backfill query only reads: {', '.join(writes)} statements are not run, "
                "and no file is written (give one SELECT, e.g. \"SELECT * FROM truth LIMIT "
                "5\"; to save its result, add --csv or --json and redirect: > out.csv).")
        relation = con.sql(sql)
        return relation.to_arrow_table() if relation is not None else pa.table({})
    except duckdb.Error as exc:
        raise UserError(
            f"query failed: {exc}\nviews: {', '.join(views(con))} "
            "(a view's columns: \"DESCRIBE <view>\")") from None


def render_table(con: duckdb.DuckDBPyConnection, table: pa.Table, width: int = 120) -> str:
    """DuckDB's box rendering of every row given, fitted to ``width`` characters."""
    if table.num_columns == 0:
        return "(no result)"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        con.from_arrow(table).show(max_rows=max(table.num_rows, 1), max_width=width)
    return out.getvalue().rstrip("\n")


def _plain(value):
    """A JSON-able value: NaN and infinities become null, other types their text."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)  # dates, decimals, bytes


def to_json(table: pa.Table) -> str:
    """A JSON array of objects, one row a line."""
    rows = [json.dumps(_plain(row), ensure_ascii=False) for row in table.to_pylist()]
    return "[\n" + ",\n".join(rows) + "\n]" if rows else "[]"


def _csv_cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, dict)):
        return json.dumps(_plain(value), ensure_ascii=False)
    plain = _plain(value)
    return "" if plain is None else str(plain)


def to_csv(table: pa.Table) -> str:
    """CSV with a header; lists and structs are written as JSON, NULL as empty."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(table.column_names)
    for row in table.to_pylist():
        writer.writerow([_csv_cell(v) for v in row.values()])
    return out.getvalue()


def query(project: Project, sql: str, fmt: str = "table", limit: int | None = None,
          width: int = 120) -> tuple[str, str | None]:
    """(the output, a note on rows left out): ``limit`` None shows DEFAULT_LIMIT rows as a
    table and every row as CSV or JSON; 0 shows every row."""
    if limit is not None and limit < 0:
        raise UserError(f"--limit {limit}: give a number of rows, or 0 for all of them.")
    con = connect(project)
    table = run_query(con, sql)
    if limit is None:
        limit = DEFAULT_LIMIT if fmt == "table" else 0
    shown = table.slice(0, limit) if limit and table.num_rows > limit else table
    note = (f"({table.num_rows - shown.num_rows:,} more rows of {table.num_rows:,} not shown; "
            "--limit 0 shows all)" if shown.num_rows < table.num_rows else None)
    if fmt == "csv":
        return to_csv(shown).rstrip("\n"), note
    if fmt == "json":
        return to_json(shown), note
    return render_table(con, shown, width), note

