"""Atomic writes: a file is replaced whole or not at all, so a killed run leaves the old
file (or a temporary it owns, cleaned up by the next write), never a half-written one.

Parquet is written byte-for-byte repeatably (no index, nothing time-dependent), so that
unchanged input gives an identical file and DVC skips everything downstream.
"""

from __future__ import annotations

import errno
import glob
import json
import os
import re
import shutil
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
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


# A write the file system refused for want of room: the disk, or the user's quota.
NO_ROOM = (errno.ENOSPC, errno.EDQUOT)


class DiskFull(OSError):
    """A write that did not fit on the disk; its message names the file, and says that
    nothing was replaced."""


def size_text(n: int) -> str:
    """``n`` bytes for a person: 512 bytes, 1.5 MB, 2.3 GB."""
    if n < 1000:
        return f"{n} bytes"
    for unit in ("kB", "MB", "GB", "TB"):
        n /= 1000
        if n < 1000 or unit == "TB":
            return f"{n:.1f} {unit}"
    raise AssertionError("unreachable")


def free_text(folder: Path) -> str:
    """How much room the disk holding ``folder`` has left, in words ('' if unknown)."""
    try:
        return f"{size_text(shutil.disk_usage(folder).free)} free"
    except OSError:
        return ""


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in NO_ROOM


def disk_full(path: Path) -> DiskFull:
    free = free_text(path.parent)
    return DiskFull(errno.ENOSPC,
                    f"the disk is full: {path} could not be written"
                    f"{f' ({free} on its disk)' if free else ''}; the old file, if any, is "
                    "unchanged and no partial file is left. Free some room, then run it again.")


@contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """A private temporary beside ``path`` to write, moved onto ``path`` once written;
    removed if the writing fails, and a full disk said as DiskFull naming ``path``."""
    tmp = temp_beside(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if is_disk_full(exc) and not isinstance(exc, DiskFull):
            raise disk_full(path) from None
        raise


def write_parquet(df: pd.DataFrame, path: Path) -> None:
    """Write ``df`` (index dropped) to ``path`` atomically: a crash leaves the old file."""
    arrow = pa.Table.from_pandas(df.reset_index(drop=True), preserve_index=False)
    with replacing(path) as tmp:
        pq.write_table(arrow, tmp, compression="zstd", write_statistics=True)


def write_text(text: str, path: Path) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically, like write_parquet."""
    with replacing(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(data: dict, path: Path) -> None:
    """Write ``data`` as indented JSON with sorted keys, atomically: metrics files read by
    `dvc metrics` and people, identical when the figures are."""
    write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", path)
