"""The Chromium that `make test` installs, for the tests that open a page in it."""

from __future__ import annotations

import shutil

import pytest


def chromium() -> str:
    """Chromium's path; the test is skipped where there is none."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("no chromium on PATH (`make test` installs Debian's package only as root)")
    return path
