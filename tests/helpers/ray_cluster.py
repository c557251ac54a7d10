"""Settings for a local Ray cluster in tests."""

from __future__ import annotations

from backfill.config.settings import RayConfig, section
from tests.conftest import REPO


def ray_config(**changes) -> RayConfig:
    """conf/config.yaml's ray section, with ``changes``."""
    from omegaconf import OmegaConf

    base = OmegaConf.load(REPO / "conf" / "config.yaml").ray
    return section(RayConfig, OmegaConf.merge(base, changes), "ray")
