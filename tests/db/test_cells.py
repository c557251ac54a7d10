"""db.cells: reading a row's ``images`` cell in every form the tools ever wrote."""

from __future__ import annotations

import pytest

from backfill.db.cells import image_names


@pytest.mark.parametrize(("cell", "names"), [
    (None, []), (float("nan"), []), ("", []),  # no value at all
    ("not a list", []), ("{'a': 1}", []),  # text, or a dict: no list
    ("[1, 2]", []),  # a list, but of no names: numbers are never file names
    (b"\xff\xfe", []),  # bytes that are no UTF-8 text
    ("['a.png'", []),  # a list cut short: damaged, so not guessed at
    (b'["a.png"]', ["a.png"]),  # a BLOB cell holding a JSON list: read as its text
    (b'["x/a.png"]', ["a.png"]),  # ...and a folder prefix dropped, as for text
])
def test_unreadable_images_cells_match_nothing_and_never_crash(cell, names):
    """A cell that is no list of names names nothing (so it matches no group); a list
    in any form the tools wrote, bytes included, is read."""
    assert image_names(cell) == names
