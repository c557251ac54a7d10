"""A generated project's tables, as the review app reads them."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from tests.conftest import pipeline_config


@pytest.fixture(scope="session")
def review_project(tmp_path_factory) -> SimpleNamespace:
    """A small generated project (every bad-file kind) through scan, group and extract,
    and a merge's issues naming two of its groups as conflicts."""
    from backfill.config.settings import GroupConfig, section
    from backfill.demo.synthetic import make_project
    from backfill.stages.extract.stage import ExtractSettings, extract_project
    from backfill.stages.group import group_table
    from backfill.stages.scan import ScanSettings, scan_project

    root = tmp_path_factory.mktemp("queue")
    cfg = pipeline_config()
    gen = make_project(root / "p", n_groups=12, seed=3, scale=0.05)
    # One kept final broken on disk: its decision waits as an unreadable final.
    copied = {Path(p).name for p in gen.other_finals}  # a readable copy would stand in
    kept = next(g.final_rel_path for g in reversed(gen.groups)
                if g.final_rel_path and Path(g.final_rel_path).name not in copied)
    (gen.final_dir / kept).write_bytes(b"not an image")
    scan = scan_project({"original": gen.original_dir, "final": gen.final_dir},
                        ScanSettings.from_config(cfg.scan), root / "cache").table
    groups, ungrouped = group_table(scan, section(GroupConfig, cfg.group, "group"), "p")
    result = extract_project(groups, scan, ungrouped,
                             ExtractSettings.from_config(cfg.extract, cfg.scan.max_pixels),
                             gen.original_dir, gen.final_dir, root / "cache")
    g1, g2 = groups["group_id"].iloc[:2]
    issues = pd.DataFrame({"kind": ["action_conflict", "pick_differs", "pick_differs",
                                    "legacy_invalid"],
                           "group_id": [g1, g1, g2, ""],
                           "detail": ["live row says reject", "live row kept stage 1",
                                      "live row kept stage 2", "not a conflict"]})
    tables = {"truth": result.truth, "finals": result.finals, "groups": groups,
              "ungrouped": ungrouped, "scan": scan, "merge_issues": issues}
    return SimpleNamespace(gen=gen, tables=tables, cache=root / "cache", cfg=cfg)


@pytest.fixture
def tables(review_project) -> dict[str, pd.DataFrame]:
    return review_project.tables
