"""Merge speed: planning and publishing N backfilled groups into an N-row production DB.

Builds, in memory and without images, a production decision DB of N rows (seed 003's v3
schema, written to a temporary folder) and N backfilled rows as the merge stage forms
them. About 70% of the backfilled groups share their image file names with one
production row (they match); the rest are new groups. Among the matched rows, some
production cells are NULL (directory, the AI's prediction, final_crop_coords and
crop_timestamp: filled), some final crops are off by 0.1 (corrected) or by 0.004
(within the tolerance: kept), and every timestamp differs (preserved). Times, best of R,
each step on the same inputs in the same run:
- read: ``open_production`` and ``read_rows`` (the production DB as the stage reads it);
- plan: ``plan_merge`` (matching by image names and the plan, cell by cell);
- provenance: ``merge.provenance`` (the side-table rows of the merged DB);
- merged DB: ``write_merged_db`` (backup-API copy, plan re-checked and applied, side table);
- publish: ``publish_plan`` on a fresh copy of the production DB each run (the copy is
  made outside the timing): a verified backup, then one IMMEDIATE transaction that
  re-checks every planned value and applies the plan;
- baseline: the bare cost of the same writes: a copy with SQLite's backup API to a new
  file, then one transaction applying the same inserts and cell updates by plain
  executemany, with no re-checks (the parameters decoded from the plan beforehand).
The published DB and the baseline's are compared row for row once.

    python benchmarks/bench_merge.py [--rows 20000] [--backfill N] [--repeat 3] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import tempfile
from pathlib import Path

import pandas as pd
from timing import peak_rss_mib, timed

from backfill.db.schema import (
    COLUMNS,
    PROVENANCE_COLUMNS,
    create,
    insert_rows,
    open_production,
    read_rows,
)
from backfill.demo.production import MATCHED, decision_tables
from backfill.production.apply import NEW_ROWS
from backfill.production.publish import publish_plan
from backfill.production.sources import write_merged_db
from backfill.stages.merge import MergeSettings, plan_merge, provenance

SETTINGS = MergeSettings(0.01, 0.05)  # the pipeline's coord_tolerance and crop_tolerance


def write_production(path: Path, rows: pd.DataFrame) -> None:
    conn = sqlite3.connect(path)
    create(conn)
    insert_rows(conn, rows)
    conn.commit()
    conn.close()


def provenance_frame(backfill: pd.DataFrame) -> pd.DataFrame:
    """The backfilled rows' provenance, as backfill_rows gives it (located-by fields
    left NULL)."""
    frame = pd.DataFrame({c: None for c in PROVENANCE_COLUMNS}, index=backfill.index)
    frame["group_id"] = backfill["group_id"]
    frame["source"] = "backfill"
    frame["backfill_group_id"] = backfill["group_id"]
    return frame[PROVENANCE_COLUMNS]


def bare_writes(changes: pd.DataFrame) -> tuple[list[tuple], dict[str, list[tuple]]]:
    """The plan's inserts (whole rows) and cell updates by column, as plain parameters."""
    rows = changes[changes["rule"].isin(NEW_ROWS)]  # "seen" rows are premises, not writes
    inserts = [tuple(json.loads(r)[c] for c in COLUMNS) for r in rows["new"]]
    cells = changes[(changes["column"] != "*") & (changes["rule"] != "migrated")]
    updates = {column: [(json.loads(v), g) for v, g in zip(part["new"], part["group_id"],
                                                           strict=True)]
               for column, part in cells.groupby("column", sort=True)}
    return inserts, updates


def baseline(db: Path, backup: Path, inserts: list[tuple],
             updates: dict[str, list[tuple]]) -> None:
    """A backup-API copy, then the same writes in one transaction, nothing re-checked."""
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        copy = sqlite3.connect(backup)
        conn.backup(copy)
        copy.close()
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(f"INSERT INTO ai_decisions ({', '.join(COLUMNS)}) VALUES "
                         f"({', '.join('?' * len(COLUMNS))})", inserts)
        for column, params in updates.items():
            conn.executemany(f"UPDATE ai_decisions SET {column} = ? WHERE group_id = ?", params)
        conn.execute("COMMIT")
    finally:
        conn.close()


def table_rows(db: Path) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute(f"SELECT {', '.join(COLUMNS)} FROM ai_decisions "
                            "ORDER BY group_id").fetchall()
    conn.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000, help="production DB rows")
    parser.add_argument("--backfill", type=int, default=None,
                        help="backfilled groups (default: as many as --rows)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each; the best is kept")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    n_backfill = args.rows if args.backfill is None else args.backfill

    with tempfile.TemporaryDirectory(prefix="bench_merge_") as tmp:
        work = Path(tmp)
        prod_db = work / "production.db"
        gen_s, (backfill, production) = timed(
            lambda: decision_tables(args.rows, n_backfill, args.seed, SETTINGS.crop_tolerance))
        production, backfill = backfill, production  # decision_tables: (production, backfill)
        write_s, _ = timed(lambda: write_production(prod_db, production))
        prov_frame = provenance_frame(backfill)
        print(f"machine: {os.cpu_count()} CPUs; SQLite {sqlite3.sqlite_version}; "
              f"pandas {pd.__version__}")
        print(f"inputs: production DB {args.rows:,} rows ({prod_db.stat().st_size / 1e6:.1f} MB, "
              f"written in {write_s:.2f}s), {len(backfill):,} backfilled groups "
              f"(~{MATCHED:.0%} sharing image names with a production row); "
              f"made in {gen_s:.2f}s")

        best: dict[str, float] = {}
        plan = published = None
        same = False
        writes: tuple[list[tuple], dict[str, list[tuple]]] | None = None

        def keep(step: str, secs: float) -> None:
            best[step] = min(best.get(step, float("inf")), secs)

        def read() -> tuple[pd.DataFrame, list[str]]:
            conn = open_production(prod_db)
            try:
                return read_rows(conn)
            finally:
                conn.close()

        merged_db = work / "merged" / "ai_decisions.db"
        for r in range(args.repeat):  # repeats outermost: a slow spell hits every step alike
            secs, (rows, missing) = timed(read)
            keep("read production", secs)
            secs, plan = timed(lambda rows=rows, missing=missing: plan_merge(
                backfill, rows, SETTINGS, missing))
            keep("plan_merge", secs)
            secs, prov = timed(lambda plan=plan: provenance(plan, prov_frame, set()))
            keep("provenance", secs)
            secs, _ = timed(lambda plan=plan, prov=prov: write_merged_db(
                merged_db, prod_db, plan, prov))
            keep("write_merged_db", secs)

            target = work / f"publish_{r}" / "production.db"  # a fresh copy, untimed
            target.parent.mkdir()
            shutil.copyfile(prod_db, target)
            secs, published = timed(lambda t=target, plan=plan: publish_plan(t, plan.changes))
            keep("publish_plan", secs)

            if writes is None:
                writes = bare_writes(plan.changes)
            bare = work / f"baseline_{r}" / "production.db"
            bare.parent.mkdir()
            shutil.copyfile(prod_db, bare)
            secs, _ = timed(lambda b=bare, w=writes: baseline(b, b.with_name("copy.db"), *w))
            keep("baseline (copy + writes)", secs)
            if r == 0:
                same = table_rows(target) == table_rows(bare) == table_rows(merged_db)
            shutil.rmtree(target.parent)
            shutil.rmtree(bare.parent)

        assert plan is not None and published is not None and writes is not None
        inserts, updates = writes
        print(f"\nplan: {plan.summary()}")
        print(f"plan rows: {len(plan.changes):,} ({len(inserts):,} new rows, "
              f"{sum(map(len, updates.values())):,} cell updates in {len(updates)} columns); "
              f"merged rows: {len(plan.merged):,}")
        applied = ", ".join(f"{n:,} {rule}" for rule, n in sorted(published.applied.items()))
        print(f"publish: applied {applied}; the DB holds {published.rows_after:,} rows; "
              f"published, baseline and merged DB identical: {'yes' if same else 'NO'}")

        print(f"\nseconds, best of {args.repeat}:")
        width = max(len(s) for s in best)
        for step, secs in best.items():
            print(f"  {step:<{width}}  {secs:8.3f}")
        base = best["baseline (copy + writes)"]
        print(f"  publish_plan / baseline:    {best['publish_plan'] / base:6.2f}x")
        print(f"  write_merged_db / baseline: {best['write_merged_db'] / base:6.2f}x")
        total = best["read production"] + best["plan_merge"] + best["publish_plan"]
        print(f"  read + plan + publish: {total:.2f}s for {len(backfill):,} groups into "
              f"{args.rows:,} rows")
        print(f"\npeak RSS (ru_maxrss): {peak_rss_mib():,.0f} MiB")


if __name__ == "__main__":
    main()
