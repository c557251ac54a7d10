"""Whether names that differ only in case name one file: what the file system holding a
project's originals does, unless ``names.case_sensitive`` says otherwise. The person's
macOS drive (APFS by default) ignores case and keeps it; Linux tells case apart."""

from __future__ import annotations

import os
from pathlib import Path

CASE_SETTINGS = ["auto", "true", "false"]


def tells_case_apart(folder: Path) -> bool:
    """Whether the file system holding ``folder`` tells ``A.png`` from ``a.png``: its own
    name (or, when that has no letter, one of its entries) is looked up with the case
    swapped, read-only; the same file answering means case is ignored (macOS's default
    APFS), none means it is told apart (Linux). Nothing to probe: told apart, as names
    are compared exactly then."""
    candidates = [folder]
    if folder.name.swapcase() == folder.name:
        try:
            with os.scandir(folder) as listing:
                candidates = [Path(e.path) for e in listing if e.name.swapcase() != e.name][:1]
        except OSError:
            return True
    for path in candidates:
        try:
            here = os.stat(path, follow_symlinks=False)
            there = os.stat(path.with_name(path.name.swapcase()), follow_symlinks=False)
        except OSError:
            return True
        return (here.st_dev, here.st_ino) != (there.st_dev, there.st_ino)
    return True


def case_sensitive(setting: object, folder: Path) -> bool:
    """The ``names.case_sensitive`` setting (auto, true or false) as a yes/no: auto asks
    the file system of ``folder`` (the project's original_dir)."""
    value = str(setting).lower()
    if value == "auto":
        return tells_case_apart(folder)
    return value == "true"
