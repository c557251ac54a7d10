"""Atomic writes: a file is replaced whole or not at all, so a killed run leaves the old
file (or a temporary it owns, cleaned up by the next write), never a half-written one.

Parquet is written byte-for-byte repeatably (no index, nothing time-dependent), so that
unchanged input gives an identical file and DVC skips everything downstream.
"""

from __future__ import annotations

import glob
import json
import os
import re
import socket
import threading
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

HOST = re.sub(r"[^A-Za-z0-9]", "_", socket.gethostname()) or "host"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process: alive
        return True
    return True


def temp_beside(path: Path) -> Path:
    """A private name in ``path``'s folder, so that os.replace onto ``path`` is atomic.

    Temporaries of ``path`` left by a process that no longer runs (killed mid-write)
    are ours, named by us, and removed here."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # The host is in the name: a cache folder on a shared drive may hold another
    # machine's write in progress, whose pid means nothing here.
    mine = f".{path.name}.tmp-{HOST}-"
    for old in path.parent.glob(glob.escape(mine) + "*"):
        pid = old.name[len(mine):].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            old.unlink(missing_ok=True)
    return path.with_name(f"{mine}{os.getpid()}-{threading.get_ident()}")


def write_parquet(df: pd.DataFrame, path: Path) -> None:
    """Write ``df`` (index dropped) to ``path`` atomically: a crash leaves the old file."""
    arrow = pa.Table.from_pandas(df.reset_index(drop=True), preserve_index=False)
    tmp = temp_beside(path)
    pq.write_table(arrow, tmp, compression="zstd", write_statistics=True)
    os.replace(tmp, path)


def write_text(text: str, path: Path) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically, like write_parquet."""
    tmp = temp_beside(path)
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_json(data: dict, path: Path) -> None:
    """Write ``data`` as indented JSON with sorted keys, atomically: metrics files read by
    `dvc metrics` and people, identical when the figures are."""
    write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", path)
