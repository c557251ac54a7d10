"""Tables in and out: validated against their contract, written atomically and
byte-for-byte repeatably (files.atomic).

Unchanged input must give an identical file so that DVC skips everything downstream;
so rows come sorted, the index is dropped, and nothing time-dependent is stored.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pandera.errors
import pyarrow.parquet as pq

from backfill.config.errors import UserError
from backfill.files.atomic import write_parquet


class ContractError(Exception):
    """A table broke its pandera contract; the message names table, column and values."""


class MissingTable(UserError, FileNotFoundError):
    """A stage's input table does not exist yet; the message names the stage to run."""


def describe_failures(table: str, err: pandera.errors.SchemaErrors, limit: int = 5) -> str:
    """A readable account of every failed check: column, check, count and sample values."""
    cases = err.failure_cases
    lines = [f"table '{table}' breaks its contract ({len(cases)} failing value(s)):"]
    for (column, check), rows in cases.groupby(["column", "check"], dropna=False, sort=True):
        values = ", ".join(repr(v) for v in rows["failure_case"].head(limit))
        more = f" (+{len(rows) - limit} more)" if len(rows) > limit else ""
        where = f"column '{column}'" if isinstance(column, str) else "table"
        lines.append(f"  - {where}: check {check} failed for {len(rows)}: {values}{more}")
    return "\n".join(lines)


def validate(df: pd.DataFrame, schema: type, table: str) -> pd.DataFrame:
    """Validate lazily; raise ContractError listing every failure."""
    try:
        return schema.validate(df, lazy=True)
    except pandera.errors.SchemaErrors as err:
        raise ContractError(describe_failures(table, err)) from None


def contract_dtypes(schema: type) -> dict[str, str]:
    """Each column of a pandera model and the pandas dtype its contract wants, in order."""
    out = {}
    for name, column in schema.to_schema().columns.items():
        dtype = str(column.dtype)
        out[name] = "str" if dtype.startswith("string") else dtype
    return out


def typed_frame(schema: type, data=None) -> pd.DataFrame:
    """The one way to build a stage's table: exactly ``schema``'s columns, in order, each
    with the contract's dtype, from a frame, a dict of columns or a list of records.

    pandas infers a column's dtype from its values, so an empty input or a column whose
    values are all missing would come out as object (or float) and break the contract;
    missing text stays missing (NaN in a str column), never the string 'None'.
    """
    dtypes = contract_dtypes(schema)
    if data is None:
        data = {}
    if isinstance(data, pd.DataFrame):
        df = data.reset_index(drop=True)
    elif isinstance(data, dict):
        df = pd.DataFrame(data)
    else:
        df = pd.DataFrame.from_records(list(data), columns=list(dtypes))
    df = df.reindex(columns=list(dtypes))
    return df.astype(dtypes)


def write_table(df: pd.DataFrame, path: Path, schema: type, table: str) -> None:
    """Validate ``df`` then write it to ``path`` atomically and deterministically."""
    write_parquet(validate(df, schema, table), path)


def read_table(path: Path, schema: type | None = None, table: str | None = None) -> pd.DataFrame:
    """Read a stage's Parquet output, validating it when a schema is given."""
    if not path.exists():
        stage = STAGE_OF.get(path.stem)
        run = f"`dvc repro {stage}@{path.parent.name}`" if stage else "`dvc repro`"
        raise MissingTable(f"{path} does not exist yet: run {run} first.")
    df = pq.read_table(path).to_pandas()
    return validate(df, schema, table or path.stem) if schema is not None else df


# The stage (dvc.yaml) that writes each table, in pipeline order, for "run this first".
STAGE_OF = {"scan": "scan", "groups": "group", "ungrouped": "group", "truth": "extract",
            "finals": "extract", "embeddings": "embed", "predictions": "predict",
            "merge_plan": "merge", "merge_issues": "merge"}


def read_stage_tables(project, names: list[str]) -> dict[str, pd.DataFrame]:
    """A project's named tables, validated; missing ones name the stage to run (the
    latest of their stages: `dvc repro` runs the ones before it too)."""
    from backfill.contracts.schemas import TABLES

    paths = {t: project.output(t) for t in names}
    missing = [t for t, p in paths.items() if not p.exists()]
    if missing:
        order = list(dict.fromkeys(STAGE_OF.values()))
        stage = max((STAGE_OF[t] for t in missing), key=order.index)
        shown = ", ".join(str(paths[t].relative_to(project.root)) for t in missing)
        raise MissingTable(f"project '{project.name}' has no {shown}: run "
                           f"`dvc repro {stage}@{project.name}` first.")
    return {t: read_table(paths[t], TABLES[t], t) for t in names}
