"""A generated project taken through scan, group and extract, as the pipeline runs them."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from tests.conftest import pipeline_config


def recover(gen, cache: Path, cfg=None) -> SimpleNamespace:
    """``gen`` (a generated project) scanned, grouped and extracted with ``cfg`` (the
    pipeline's defaults when None), caches under ``cache``: its scan, groups, ungrouped,
    truth and finals tables, with the settings used."""
    from backfill.config.settings import GroupConfig, section
    from backfill.stages.extract.stage import ExtractSettings, extract_project
    from backfill.stages.group import group_table
    from backfill.stages.scan import ScanSettings, scan_project

    cfg = cfg or pipeline_config()
    scan = scan_project({"original": gen.original_dir, "final": gen.final_dir},
                        ScanSettings.from_config(cfg.scan), cache).table
    groups, ungrouped = group_table(scan, section(GroupConfig, cfg.group, "group"), "p")
    result = extract_project(groups, scan, ungrouped,
                             ExtractSettings.from_config(cfg.extract, cfg.scan.max_pixels),
                             gen.original_dir, gen.final_dir, cache)
    return SimpleNamespace(gen=gen, cfg=cfg, scan=scan, groups=groups, ungrouped=ungrouped,
                           truth=result.truth, finals=result.finals)
