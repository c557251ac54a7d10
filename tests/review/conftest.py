"""A generated project's tables, as the review app reads them."""

from __future__ import annotations

from types import SimpleNamespace

import pandas as pd
import pytest

from backfill.demo.synthetic import make_project
from tests.helpers.odd_files import break_a_kept_final
from tests.helpers.recover import recover


@pytest.fixture(scope="session")
def review_project(tmp_path_factory) -> SimpleNamespace:
    """A small generated project (every bad-file kind) through scan, group and extract,
    and a merge's issues naming two of its groups as conflicts."""
    root = tmp_path_factory.mktemp("queue")
    gen = make_project(root / "p", n_groups=12, seed=3, scale=0.05)
    break_a_kept_final(gen)  # its decision waits as an unreadable final
    done = recover(gen, root / "cache")
    groups = done.groups
    g1, g2 = groups["group_id"].iloc[:2]
    issues = pd.DataFrame({"kind": ["action_conflict", "pick_differs", "pick_differs",
                                    "legacy_invalid"],
                           "group_id": [g1, g1, g2, ""],
                           "detail": ["live row says reject", "live row kept stage 1",
                                      "live row kept stage 2", "not a conflict"]})
    tables = {"truth": done.truth, "finals": done.finals, "groups": groups,
              "ungrouped": done.ungrouped, "scan": done.scan, "merge_issues": issues}
    return SimpleNamespace(gen=gen, tables=tables, cache=root / "cache", cfg=done.cfg)


@pytest.fixture
def tables(review_project) -> dict[str, pd.DataFrame]:
    return review_project.tables
