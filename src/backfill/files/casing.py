"""Whether names that differ only in case name one file: what the file system holding a
project's originals does, unless ``names.case_sensitive`` says otherwise. The person's
macOS drive (APFS by default) ignores case and keeps it; Linux tells case apart."""

from __future__ import annotations

import os
from pathlib import Path

CASE_SETTINGS = ["auto", "true", "false"]


def tells_case_apart(folder: Path) -> bool:
    """Whether the file system holding ``folder`` tells ``A.png`` from ``a.png``: one of
    its entries (on its own file system, even when ``folder`` is a drive's mount point)
    or else its own name is looked up with the case swapped, read-only. The same file
    answering means case is ignored (macOS's default APFS); none means it is told apart
    (Linux). Nothing with a letter to look up: told apart, names compared exactly."""
    probe = None
    try:
        with os.scandir(folder) as listing:
            probe = next((Path(e.path) for e in listing if e.name.swapcase() != e.name), None)
    except OSError:
        pass
    if probe is None and folder.name.swapcase() != folder.name:
        probe = folder
    if probe is None:
        return True
    try:
        here = os.stat(probe, follow_symlinks=False)
        there = os.stat(probe.with_name(probe.name.swapcase()), follow_symlinks=False)
    except OSError:
        return True
    return (here.st_dev, here.st_ino) != (there.st_dev, there.st_ino)


def case_sensitive(setting: object, folder: Path) -> bool:
    """The ``names.case_sensitive`` setting (auto, true or false) as a yes/no: auto asks
    the file system of ``folder`` (the project's original_dir)."""
    value = str(setting).lower()
    if value == "auto":
        return tells_case_apart(folder)
    return value == "true"
