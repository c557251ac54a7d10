"""Atomic writes on a full disk: one line naming the file being written, the old file
intact and no temporary left beside it."""

from __future__ import annotations

import errno
import types

import pandas as pd
import pytest

from backfill import cli
from backfill.files import atomic
from backfill.files.atomic import write_json, write_parquet, write_text


def full_disk(*args, **kwargs):
    """A write that runs out of room half-way: a few bytes land, then ENOSPC."""
    target = args[1] if len(args) > 1 else kwargs.get("where")
    with open(target, "wb") as f:
        f.write(b"half")
    raise OSError(errno.ENOSPC, "Error writing bytes to file. Detail: [errno 28] "
                                "No space left on device")


@pytest.fixture
def no_room(monkeypatch):
    monkeypatch.setattr(atomic.pq, "write_table", full_disk)
    monkeypatch.setattr(atomic.Path, "write_text",
                        lambda self, *a, **k: full_disk(None, self))


@pytest.mark.parametrize("write", ["parquet", "text", "json"])
def test_a_full_disk_names_the_file_and_leaves_the_old_one(tmp_path, no_room, write):
    path = tmp_path / "data" / "p" / f"out.{write}"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"the old file")
    with pytest.raises(atomic.DiskFull) as err:
        {"parquet": lambda: write_parquet(pd.DataFrame({"a": [1]}), path),
         "text": lambda: write_text("new", path),
         "json": lambda: write_json({"a": 1}, path)}[write]()
    message = str(err.value)
    assert str(path) in message and "disk is full" in message and "\n" not in message
    assert err.value.errno == errno.ENOSPC
    assert path.read_bytes() == b"the old file"
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left


def test_a_stage_that_fills_the_disk_is_one_line_exit_2(tmp_path, no_room, monkeypatch,
                                                        capsys):
    out = tmp_path / "data" / "p" / "groups.parquet"
    stage = types.SimpleNamespace(run=lambda project: write_parquet(pd.DataFrame({"a": [1]}),
                                                                    out))
    monkeypatch.setitem(cli.BY_NAME, "group", stage)
    monkeypatch.setattr(cli, "load_project", lambda name: None)
    assert cli.main(["group", "p"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(out) in err[0] and "disk is full" in err[0]
    assert list(out.parent.iterdir()) == []
