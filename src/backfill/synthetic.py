"""Synthetic projects with known ground truth, for the demo, the tests and benchmarks.

A project mimics the person's layout: renders named ``YYYYMMDD_HHMMSS_<stage>.png`` in
subfolders of ``original/``, each stage with its own timestamp, companions beside them,
and ``final/`` holding the image kept from each group, whole or cropped. Bad files of
every kind the scan must survive can be mixed in. ``truth.json`` records what is true.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

STAGE_LABELS = {
    1.0: "stage1_generated",
    1.5: "stage1.5_face_swapped",
    2.0: "stage2_upscaled",
    3.0: "stage3_enhanced",
}
# Seconds after stage1 at which each stage is saved, as in the person's renders.
STAGE_DELAY = {1.0: 0, 1.5: 15, 2.0: 105, 3.0: 200}
# Full-size render shapes (width, height), scaled down for speed.
BASE_SHAPES = [(832, 1216), (1216, 832), (1024, 1024)]
# Every group starts at stage1, as renders do; with groups 5 minutes apart, the
# nearest-up rule then finds exactly these groups (the truth the tests check).
STAGE_SETS = [(1.0, 1.5, 2.0, 3.0), (1.0, 1.5, 2.0), (1.0, 2.0), (1.0, 2.0, 3.0), (1.0, 1.5)]


@dataclass
class TrueGroup:
    first_timestamp: str
    rel_paths: list[str]
    stages: list[float]
    kept_index: int | None  # None: the whole group was rejected
    crop: list[float] | None  # normalised [x1, y1, x2, y2] of the kept image; None: whole
    final_rel_path: str | None


@dataclass
class SyntheticProject:
    root: Path
    original_dir: Path
    final_dir: Path
    groups: list[TrueGroup] = field(default_factory=list)
    bad_files: dict[str, str] = field(default_factory=dict)  # rel_path -> kind

    def save_truth(self) -> Path:
        out = self.root / "truth.json"
        data = {"groups": [asdict(g) for g in self.groups], "bad_files": self.bad_files}
        out.write_text(json.dumps(data, indent=1, sort_keys=True))
        return out


def texture(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A smooth, structured random picture: enough texture to locate crops in later."""
    coarse = rng.integers(0, 256, size=(6, 5, 3), dtype=np.uint8)
    img = Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(12):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        x1 = x0 + int(rng.integers(width // 10, width // 3))
        y1 = y0 + int(rng.integers(height // 10, height // 3))
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=fill)
    grain = rng.normal(0, 6, size=(height, width, 3))
    return Image.fromarray(np.clip(np.asarray(img, float) + grain, 0, 255).astype(np.uint8))


def render_stages(rng: np.random.Generator, stages: tuple[float, ...], scale: float
                  ) -> dict[float, Image.Image]:
    """One picture per stage: later stages are edited, upscaled versions of earlier ones."""
    w, h = BASE_SHAPES[int(rng.integers(len(BASE_SHAPES)))]
    w, h = max(16, int(w * scale)), max(16, int(h * scale))
    base = texture(rng, w, h)
    out: dict[float, Image.Image] = {}
    swapped = base.copy()
    ImageDraw.Draw(swapped).ellipse(
        (w // 3, h // 5, w // 3 + w // 4, h // 5 + h // 5),
        fill=tuple(int(v) for v in rng.integers(0, 256, 3)),
    )
    for stage in stages:
        if stage == 1.0:
            out[stage] = base
        elif stage == 1.5:
            out[stage] = swapped
        elif stage == 2.0:
            out[stage] = swapped.resize((w * 2, h * 2), Image.Resampling.LANCZOS)
        else:  # stage3 renders come out square at 3072 (scaled)
            side = int(3072 * scale)
            out[stage] = swapped.resize((side, side), Image.Resampling.LANCZOS)
    return out


def _png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def make_project(
    root: Path,
    n_groups: int = 24,
    seed: int = 0,
    scale: float = 0.25,
    subfolders: int = 3,
    reject_rate: float = 0.25,
    crop_rate: float = 0.6,
    bad_files: bool = True,
    companions: bool = True,
) -> SyntheticProject:
    """Write a project under ``root`` (``original/``, ``final/``, ``truth.json``)."""
    rng = np.random.default_rng(seed)
    project = SyntheticProject(root, root / "original", root / "final")
    start = datetime(2025, 7, 8, 6, 0, 0)
    folders = [f"batch_{k:02d}" for k in range(max(1, subfolders))]
    for g in range(n_groups):
        # Groups 5 minutes apart: each group's stages are all saved before the next starts.
        t0 = start + timedelta(minutes=5 * g)
        stages = STAGE_SETS[int(rng.integers(len(STAGE_SETS)))]
        images = render_stages(rng, stages, scale)
        rel_paths = []
        for stage in stages:
            ts = (t0 + timedelta(seconds=STAGE_DELAY[stage])).strftime("%Y%m%d_%H%M%S")
            name = f"{ts}_{STAGE_LABELS[stage]}.png"
            rel = f"{folders[int(rng.integers(len(folders)))]}/{name}"
            _write(project.original_dir / rel, _png_bytes(images[stage]))
            if companions:
                stem = project.original_dir / rel
                _write(stem.with_suffix(".yaml"), f"stage: {stage}\n".encode())
                _write(stem.with_suffix(".caption"), b"a synthetic render\n")
            rel_paths.append(rel)
        kept, crop, final_rel = None, None, None
        if rng.random() >= reject_rate:
            kept = int(rng.integers(len(stages)))
            img = images[stages[kept]]
            if rng.random() < crop_rate:
                cw, ch = rng.uniform(0.35, 0.9), rng.uniform(0.35, 0.9)
                x1, y1 = rng.uniform(0, 1 - cw), rng.uniform(0, 1 - ch)
                box = (round(x1 * img.width), round(y1 * img.height),
                       round((x1 + cw) * img.width), round((y1 + ch) * img.height))
                img = img.crop(box)
                crop = [box[0] / images[stages[kept]].width, box[1] / images[stages[kept]].height,
                        box[2] / images[stages[kept]].width, box[3] / images[stages[kept]].height]
            final_rel = os.path.basename(rel_paths[kept])
            _write(project.final_dir / final_rel, _png_bytes(img))
        project.groups.append(TrueGroup(
            (t0 + timedelta(seconds=STAGE_DELAY[stages[0]])).strftime("%Y%m%d_%H%M%S"),
            rel_paths, list(stages), kept, crop, final_rel,
        ))
    if bad_files:
        _add_bad_files(project, rng, start + timedelta(minutes=5 * n_groups + 30), scale)
    project.save_truth()
    return project


def _add_bad_files(project: SyntheticProject, rng: np.random.Generator, when: datetime,
                   scale: float) -> None:
    """One file of each kind the scan must record, or skip, without crashing."""
    good = _png_bytes(texture(rng, max(16, int(208 * scale * 4)), max(16, int(304 * scale * 4))))
    jpeg = io.BytesIO()
    texture(rng, 64, 64).save(jpeg, format="JPEG", quality=90)

    def ts(minutes: int) -> str:
        return (when + timedelta(minutes=minutes)).strftime("%Y%m%d_%H%M%S")

    bad = {
        f"broken/{ts(0)}_stage2_upscaled.png": (b"", "empty"),
        f"broken/{ts(10)}_stage2_upscaled.png": (good[: len(good) // 2], "truncated"),
        f"broken/{ts(20)}_stage1_generated.png": (b"this is not an image\n" * 20, "not_image"),
        f"broken/{ts(30)}_stage1_generated.png": (jpeg.getvalue(), "mislabelled"),
        "broken/IMG_0001.png": (good, "no_timestamp"),
        f"broken/{ts(40)}_thumbnail.png": (good, "no_stage"),
    }
    for rel, (data, kind) in bad.items():
        _write(project.original_dir / rel, data)
        project.bad_files[rel] = kind
    # Quietly ignored: folder junk, AppleDouble twins, companions of nothing.
    _write(project.original_dir / ".DS_Store", b"\x00\x00\x00\x01Bud1")
    _write(project.original_dir / "broken" / "Thumbs.db", b"junk")
    _write(project.original_dir / "broken" / f"._{ts(0)}_stage2_upscaled.png", b"\x00\x05\x16\x07")
    _write(project.original_dir / "broken" / "notes.txt", b"todo\n")
    # A symlink loop must not hang the walk.
    loop = project.original_dir / "broken" / "loop"
    if not loop.exists():
        try:
            os.symlink("..", loop)
        except OSError:
            pass
