"""A project as a Mac copies it: names decomposed (NFD) on disk."""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path

from backfill.demo.production import make_production_db
from backfill.demo.synthetic import make_project


def nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text)


def nfd(text: str) -> str:
    return unicodedata.normalize("NFD", text)


def accented(rel: str) -> str:
    """``batch_00/<ts>_stage2_upscaled.png`` -> ``Brühl_00/<ts>_stage2_upscaled_café.png``."""
    folder, name = rel.rsplit("/", 1) if "/" in rel else ("", rel)
    stem, ext = os.path.splitext(name)
    folder = folder.replace("batch", "Brühl")
    return nfc(f"{folder}/{stem}_café{ext}" if folder else f"{stem}_café{ext}")


def _decompose_on_disk(root: Path) -> None:
    """Every file and folder name under ``root`` rewritten in NFD, deepest first."""
    for folder, dirs, files in os.walk(root, topdown=False):
        for name in [*files, *dirs]:
            if nfd(name) != name:
                os.rename(os.path.join(folder, name), os.path.join(folder, nfd(name)))


def mac_copied_project(root: Path):
    """A generated project whose names carry accents (in folder names and in the
    renders' suffixes), a live DB that logs its groups with NFC names, and then every
    name on disk decomposed, as a copy from a Mac leaves it."""
    gen = make_project(root / "p", n_groups=10, seed=11, scale=0.05, variants=False,
                       bad_files=False, companions=False, reject_rate=0.2)
    for g in gen.groups:
        new = [accented(r) for r in g.rel_paths]
        for old, rel in zip(g.rel_paths, new, strict=True):
            (gen.original_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            os.rename(gen.original_dir / old, gen.original_dir / rel)
        g.rel_paths = new
        if g.final_rel_path:
            rel = accented(g.final_rel_path)
            os.rename(gen.final_dir / g.final_rel_path, gen.final_dir / rel)
            g.final_rel_path = rel
    live = make_production_db(gen, root / "real.db", share=0.6, seed=2)
    _decompose_on_disk(gen.original_dir)
    _decompose_on_disk(gen.final_dir)
    return gen, live
