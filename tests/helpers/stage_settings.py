"""Stage settings as the pipeline's defaults give them, for tests that call a stage's
functions directly."""

from __future__ import annotations

from omegaconf import OmegaConf

from backfill.config.settings import GroupConfig
from backfill.stages.extract.stage import ExtractSettings
from tests.conftest import REPO

# The reference's defaults (as in conf/pipeline/default.yaml).
DEFAULTS = dict(lookahead=50, time_gap_minutes=None, min_group_size=2, max_group_size=4)


def settings(**kw) -> GroupConfig:
    base = dict(method="nearest_up", id_format="{project}_group_{timestamp}", **DEFAULTS)
    return GroupConfig(**{**base, **kw})


PIPELINE = OmegaConf.load(REPO / "conf" / "pipeline" / "default.yaml")


SETTINGS = ExtractSettings.from_config(PIPELINE.extract, PIPELINE.scan.max_pixels)
