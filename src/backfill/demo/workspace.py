"""A scratch repository for tests and benchmarks: this repository's pipeline (conf/,
src/, dvc.yaml, DVC's config) copied into a folder of its own, with its own git and no
project registered, so runs there never touch the real data/ or conf/."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

PIPELINE = ["conf", "src", "dvc.yaml", ".dvcignore"]


def scratch_repo(source: Path, dst: Path) -> Path:
    """Copy ``source``'s pipeline into ``dst`` (made empty first) and return ``dst``."""
    shutil.rmtree(dst, ignore_errors=True)
    dst.mkdir(parents=True)
    for item in PIPELINE:
        src = source / item
        if src.is_dir():
            shutil.copytree(src, dst / item, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dst / item)
    # The model versions' folders, as git holds them: each predict stage depends on its
    # version's folder, and the baseline's holds only a README.
    for readme in (source / "data" / "models").rglob("README.md"):
        (dst / readme.relative_to(source)).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(readme, dst / readme.relative_to(source))
    (dst / ".dvc").mkdir()
    for name in ("config", ".gitignore"):
        shutil.copy2(source / ".dvc" / name, dst / ".dvc" / name)
    # No project registered: the caller adds its own.
    cfg = dst / "conf" / "config.yaml"
    cfg.write_text("".join(line for line in cfg.read_text().splitlines(keepends=True)
                           if "project@projects." not in line))
    for conf in (dst / "conf" / "project").glob("*.yaml"):
        conf.unlink()
    for cmd in (["git", "init", "-q"], ["git", "config", "user.email", "scratch@backfill"],
                ["git", "config", "user.name", "scratch"]):
        subprocess.run(cmd, cwd=dst, check=True, capture_output=True)
    return dst
