"""Synthetic projects with known ground truth, for the demo, the tests and benchmarks.

A project mimics the person's layout: renders named ``YYYYMMDD_HHMMSS_<stage>.png`` in
subfolders of ``original/``, each stage with its own timestamp, companions beside them,
and ``final/`` holding the image kept from each group, whole or cropped. Bad files of
every kind the scan must survive can be mixed in, and kept finals can be named as Finder
and editors name them (``odd_names``). ``truth.json`` records what is true.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import cv2
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


# How a kept image can come out of the crop tool: the box cut from the original...
CROP_KINDS = ["whole", "near_full", "margin4", "tiny", "edge", "free", "free"]
# ...and how the file was saved (resized: by a factor from 0.5 to 1.6).
ENCODINGS = ["png", "png", "jpeg", "resized", "resized_jpeg", "gray", "rgba", "png16"]
# How make_project's ``odd_names`` names kept finals, in turn. Finder duplicates and
# editor exports keep the render's timestamp and stage ("<stem> copy.png", "<stem> 2.png",
# "<stem>_edit.png", "<stem> copy.jpg": paired by identity); other tools' exports keep
# nothing ("IMG_0412.jpg", "export-3.png": paired by content). "exact_plus_copy" keeps
# the exact name and adds a Finder copy with the same bytes; "edited_copy" adds a later
# "<stem> 2.png" whose pixels differ (the decision: the latest file); "exact" changes
# nothing. The *_jpg kinds re-save the final as JPEG.
ODD_NAMES = ["copy", "nameless_jpg", "number", "nameless_png", "edit", "nameless_jpg",
             "copy_jpg", "nameless_png", "exact_plus_copy", "edited_copy", "exact"]


@dataclass
class TrueGroup:
    first_timestamp: str
    rel_paths: list[str]
    stages: list[float]
    kept_index: int | None  # None: the whole group was rejected
    crop: list[float] | None  # normalised [x1, y1, x2, y2] of the kept image; None: whole
    final_rel_path: str | None
    action: str = "reject"  # what the person did: approve, crop or reject
    crop_kind: str | None = None  # CROP_KINDS
    encoding: str | None = None  # ENCODINGS
    resize: float = 1.0  # final pixels per original pixel
    low_texture: bool = False


@dataclass
class SyntheticProject:
    root: Path
    original_dir: Path
    final_dir: Path
    groups: list[TrueGroup] = field(default_factory=list)
    bad_files: dict[str, str] = field(default_factory=dict)  # rel_path -> kind
    # Finals that are not a group's decision: rel_path -> copy, extra, orphan, unreadable.
    other_finals: dict[str, str] = field(default_factory=dict)
    # With ``odd_names``: each kept final's rel_path -> its ODD_NAMES kind.
    final_names: dict[str, str] = field(default_factory=dict)
    # add_decoys: each decoy final's rel_path -> the first timestamp of the group whose
    # picture it shows (it is no decision of that group, nor of any).
    decoys: dict[str, str] = field(default_factory=dict)
    # From make_two_machine_project: (index in ``groups`` of the first machine's group,
    # of the second machine's) for each pair of groups written under the same names.
    clash_pairs: list[tuple[int, int]] = field(default_factory=list)

    def save_truth(self) -> Path:
        out = self.root / "truth.json"
        data = {"groups": [asdict(g) for g in self.groups], "bad_files": self.bad_files,
                "other_finals": self.other_finals}
        if self.final_names:  # only then: older projects' truth stays byte for byte
            data["final_names"] = self.final_names
        if self.decoys:
            data["decoys"] = self.decoys
        if self.clash_pairs:
            data["clash_pairs"] = self.clash_pairs
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


def low_texture(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A sky-like picture: a gradient, faint clouds and sensor grain, no edges at all.

    (A pure linear ramp would be degenerate: every window of it looks alike at any
    scale once contrast is normalised, so no matcher could place a crop in it.)
    """
    ramp = np.linspace(0, 1, width)[None, :] * 30 + np.linspace(0, 1, height)[:, None] * 12
    clouds = Image.fromarray(rng.integers(0, 256, size=(5, 5), dtype=np.uint8)).resize(
        (width, height), Image.Resampling.BICUBIC)
    shade = (np.asarray(clouds, float) - 128) / 128 * 8  # +-8 grey levels
    tint = rng.uniform(90, 170, size=3)
    img = tint + (ramp + shade)[..., None] + rng.normal(0, 3, size=(height, width, 3))
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def render_stages(rng: np.random.Generator, stages: tuple[float, ...], scale: float,
                  flat: bool = False) -> dict[float, Image.Image]:
    """One picture per stage: later stages are edited, upscaled versions of earlier ones."""
    w, h = BASE_SHAPES[int(rng.integers(len(BASE_SHAPES)))]
    w, h = max(16, int(w * scale)), max(16, int(h * scale))
    base = (low_texture if flat else texture)(rng, w, h)
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


def crop_box(rng: np.random.Generator, kind: str, width: int, height: int
             ) -> tuple[int, int, int, int]:
    """A crop of ``kind`` (CROP_KINDS) in pixels of a ``width`` x ``height`` image."""
    if kind == "whole":
        return 0, 0, width, height
    if kind in ("near_full", "margin4"):  # trim up to 1% (approve) or 4% (crop) a side
        m = 0.01 if kind == "near_full" else 0.04
        return (round(m * width), round(m * height) if kind == "margin4" else 0,
                width - round(m * width), height - round(m * height))
    if kind == "tiny":  # 5% of the area
        cw, ch = round(width * 0.2236), round(height * 0.2236)
    else:
        cw, ch = round(width * rng.uniform(0.35, 0.9)), round(height * rng.uniform(0.35, 0.9))
    if kind == "edge":  # touching the right and bottom edges
        return width - cw, height - ch, width, height
    x1, y1 = int(rng.integers(0, width - cw + 1)), int(rng.integers(0, height - ch + 1))
    return x1, y1, x1 + cw, y1 + ch


def encode_final(rng: np.random.Generator, img: Image.Image, encoding: str
                 ) -> tuple[bytes, str, float]:
    """The final's bytes, extension and resize factor for an encoding of ENCODINGS."""
    factor = 1.0
    if encoding.startswith("resized"):
        factor = float(rng.choice([0.5, 0.75, 1.25, 1.6]))
        img = img.resize((max(1, round(img.width * factor)), max(1, round(img.height * factor))),
                         Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    if encoding.endswith("jpeg"):
        img.convert("RGB").save(buf, format="JPEG", quality=int(rng.integers(70, 92)))
        return buf.getvalue(), ".jpg", factor
    if encoding == "png16":  # 16 bits per channel, as photo editors export
        wide = np.asarray(img.convert("RGB"), dtype=np.uint16)[..., ::-1] * 257
        return cv2.imencode(".png", wide)[1].tobytes(), ".png", factor
    mode = {"gray": "L", "rgba": "RGBA"}.get(encoding, "RGB")
    img.convert(mode).save(buf, format="PNG", compress_level=1)
    return buf.getvalue(), ".png", factor


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
    variants: bool = True,
    odd_names: bool = False,
) -> SyntheticProject:
    """Write a project under ``root`` (``original/``, ``final/``, ``truth.json``).

    With ``variants``, kept finals come in every shape the crop tool and later exports
    give them (CROP_KINDS x ENCODINGS, some low-texture pictures), and the final folder
    also holds a copy, a second kept image of one group, orphans and an unreadable
    final. Without it, finals are PNG crops (``crop_rate``) or whole copies.

    With ``odd_names``, kept finals are renamed in turn as ODD_NAMES says (recorded in
    ``final_names``), and the final folder also holds true orphans with no source. It
    draws from its own random stream: every other file is as without it.
    """
    rng = np.random.default_rng(seed)
    project = SyntheticProject(root, root / "original", root / "final")
    start = datetime(2025, 7, 8, 6, 0, 0)
    folders = [f"batch_{k:02d}" for k in range(max(1, subfolders))]
    for g in range(n_groups):
        # Groups 5 minutes apart: each group's stages are all saved before the next starts.
        t0 = start + timedelta(minutes=5 * g)
        stages = STAGE_SETS[int(rng.integers(len(STAGE_SETS)))]
        flat = variants and rng.random() < 0.1
        images = render_stages(rng, stages, scale, flat)
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
        truth = TrueGroup(
            (t0 + timedelta(seconds=STAGE_DELAY[stages[0]])).strftime("%Y%m%d_%H%M%S"),
            rel_paths, list(stages), None, None, None, low_texture=flat,
        )
        if rng.random() >= reject_rate:
            kept = int(rng.integers(len(stages)))
            img = images[stages[kept]]
            kind = str(rng.choice(CROP_KINDS)) if variants else (
                "free" if rng.random() < crop_rate else "whole")
            encoding = str(rng.choice(ENCODINGS)) if variants else "png"
            box = crop_box(rng, kind, img.width, img.height)
            data, ext, factor = encode_final(rng, img.crop(box), encoding)
            if kind == "whole" and encoding == "png":  # approved: the render moved as is
                data = (project.original_dir / rel_paths[kept]).read_bytes()
            final_rel = os.path.splitext(os.path.basename(rel_paths[kept]))[0] + ext
            _write(project.final_dir / final_rel, data)
            norm = [box[0] / img.width, box[1] / img.height, box[2] / img.width,
                    box[3] / img.height]
            truth.kept_index, truth.final_rel_path = kept, final_rel
            truth.crop = None if kind == "whole" else norm
            truth.action = "approve" if kind in ("whole", "near_full") else "crop"
            truth.crop_kind, truth.encoding, truth.resize = kind, encoding, factor
        project.groups.append(truth)
    if variants:
        _add_other_finals(project, rng)
    if bad_files:
        _add_bad_files(project, rng, start + timedelta(minutes=5 * n_groups + 30), scale)
    if odd_names:
        _rename_finals(project, np.random.default_rng([seed, 1013]), scale)
    project.save_truth()
    return project


def _add_other_finals(project: SyntheticProject, rng: np.random.Generator) -> None:
    """Finals that are not one group's single decision, as real final folders hold."""
    kept = [g for g in project.groups if g.final_rel_path]
    if len(kept) < 2:
        return
    final = project.final_dir
    copy = f"exports/{kept[0].final_rel_path}"  # the same file in a second subfolder
    _write(final / copy, (final / kept[0].final_rel_path).read_bytes())
    project.other_finals[copy] = "copy"
    # A lower-stage image of a group kept besides its decision (which is the highest
    # kept stage); this generator keeps one image per group, so take one below it.
    for g in kept[1:]:
        if g.kept_index and g.kept_index > 0:
            name = os.path.basename(g.rel_paths[g.kept_index - 1])
            _write(final / name, (project.original_dir / g.rel_paths[g.kept_index - 1])
                   .read_bytes())
            project.other_finals[name] = "extra"
            break
    _write(final / "20240101_000000_stage2_upscaled.png", _png_bytes(texture(rng, 40, 40)))
    project.other_finals["20240101_000000_stage2_upscaled.png"] = "orphan"
    _write(final / "misc" / "wallpaper.png", _png_bytes(texture(rng, 40, 40)))
    project.other_finals["misc/wallpaper.png"] = "orphan"
    _write(final / "misc" / "20240101_000100_stage3_enhanced.png", b"\x89PNG\r\n\x1a\n")
    project.other_finals["misc/20240101_000100_stage3_enhanced.png"] = "unreadable"


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


def resave(data: bytes, ext: str, quality: int = 90) -> bytes:
    """An image file's pixels saved again as ``ext`` (.jpg or .png), 8-bit, as an
    editor's export writes them."""
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    if img.ndim == 3 and img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if ext == ".jpg" else []
    return cv2.imencode(ext, img, params)[1].tobytes()


def odd_name(kind: str, render: str, ext: str, number: int) -> str:
    """The file name of ODD_NAMES' ``kind`` for a final of the render named ``render``
    (no extension) saved as ``ext``; ``number`` numbers nameless exports."""
    if kind == "nameless_jpg":
        return f"IMG_{number:04d}.jpg"
    if kind == "nameless_png":
        return f"export-{number}.png"
    suffix = {"copy": " copy", "number": " 2", "edit": "_edit", "copy_jpg": " copy"}[kind]
    return f"{render}{suffix}{'.jpg' if kind == 'copy_jpg' else ext}"


def _rename_finals(project: SyntheticProject, rng: np.random.Generator, scale: float
                   ) -> None:
    """Kept finals named as Finder and editors name them (ODD_NAMES, in turn), and
    finals with no source at all. Groups whose final other_finals refers to keep it."""
    final = project.final_dir
    busy = {os.path.basename(r) for r in project.other_finals}
    kept = [g for g in project.groups if g.final_rel_path and g.final_rel_path not in busy
            and not any(os.path.basename(p) in busy for p in g.rel_paths)]
    nameless = iter(range(400, 10_000))
    for g, kind in zip(kept, ODD_NAMES * len(kept), strict=False):
        old = final / g.final_rel_path
        data, ext = old.read_bytes(), old.suffix
        render = os.path.splitext(os.path.basename(g.rel_paths[g.kept_index]))[0]
        if kind == "exact":
            project.final_names[g.final_rel_path] = kind
            continue
        if kind == "exact_plus_copy":
            project.final_names[g.final_rel_path] = "exact"
            copy = f"{render} copy{ext}"
            _write(final / copy, data)
            project.other_finals[copy] = "copy"
            continue
        if kind == "edited_copy":  # a later edit of the crop: other pixels, a newer file
            project.other_finals[g.final_rel_path] = "copy"
            img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
            top = np.iinfo(img.dtype).max
            new = f"{render} 2.png"
            _write(final / new, cv2.imencode(".png", np.clip(img.astype(np.int64) + 3, 0, top)
                                             .astype(img.dtype))[1].tobytes())
            when = old.stat().st_mtime_ns + 10**9
            os.utime(final / new, ns=(when, when))
        else:
            new = odd_name(kind, render, ext, next(nameless))
            if kind.endswith("_jpg"):
                data = resave(data, ".jpg", int(rng.integers(80, 95)))
            elif kind == "nameless_png" and ext != ".png":
                data = resave(data, ".png")
            old.unlink()
            _write(final / new, data)
        project.final_names[new] = kind
        g.final_rel_path = new
    # Finals with no source: other pictures, by name without identity, and one whose
    # identity matches no render.
    side = max(48, int(600 * scale))
    for name in ("IMG_0999.jpg", "exports/export-99.png",
                 "20240101_000200_stage2_upscaled copy.png"):
        buf = io.BytesIO()
        img = texture(rng, side, side * 4 // 3)
        img.save(buf, format="JPEG" if name.endswith(".jpg") else "PNG")
        _write(final / name, buf.getvalue())
        project.other_finals[name] = "orphan"


def rerender(rng: np.random.Generator, img: Image.Image, details: int = 0) -> Image.Image:
    """The same picture rendered again: its structure kept, its grain its own (the
    render's grain smoothed away, new grain added), and ``details`` small shapes of its
    own (another seed of the same prompt changes details, not the composition)."""
    pixels = cv2.GaussianBlur(np.asarray(img.convert("RGB"), float), (0, 0), 1.5)
    out = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(out)
    for _ in range(details):
        x0, y0 = int(rng.integers(0, out.width)), int(rng.integers(0, out.height))
        x1, y1 = x0 + out.width // 12, y0 + out.height // 12
        draw.ellipse((x0, y0, x1, y1), fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    grain = rng.normal(0, 6, size=(out.height, out.width, 3))
    return Image.fromarray(np.clip(np.asarray(out, float) + grain, 0, 255).astype(np.uint8))


def add_decoys(project: SyntheticProject, seed: int, per_group: int = 2,
               groups: int = 8) -> None:
    """Finals that show a group's picture but are no decision of any group: the same
    picture rendered again (``rerender``: another seed of the same prompt, or the same
    scene with its own noise), cut at another framing and saved at another scale, as
    real final folders hold when a person kept a variant whose render is gone.

    Up to ``groups`` groups get ``per_group`` decoys each, rejected groups first (a decoy
    of a rejected group is what content pairing can wrongly take). Decoys are named in
    turn with a render identity (a timestamp and stage of no existing render, as the
    variant's own render was named) or with none (``IMG_7xxx.jpg``, ``export-7xx.png``).
    Recorded in ``decoys``; truth.json is saved again."""
    rng = np.random.default_rng([seed, 7919])
    rejected = [g for g in project.groups if g.kept_index is None]
    kept = [g for g in project.groups if g.kept_index is not None]
    number = iter(range(700, 10_000))
    when = datetime(2023, 3, 15, 10, 15, 0)  # before every render: an identity of none
    chosen = (rejected + kept)[:groups]
    for k, g in enumerate(chosen):
        for d in range(per_group):
            index = int(rng.integers(len(g.rel_paths)))
            with Image.open(project.original_dir / g.rel_paths[index]) as img:
                variant = rerender(rng, img, details=int(rng.integers(0, 4)))
            box = crop_box(rng, "free", variant.width, variant.height)
            data, ext, _ = encode_final(rng, variant.crop(box), str(rng.choice(
                ["png", "jpeg", "resized", "resized_jpeg"])))
            if (k + d) % 2 == 0:
                ts = (when + timedelta(minutes=5 * (k * per_group + d))).strftime(
                    "%Y%m%d_%H%M%S")
                name = f"variants/{ts}_{STAGE_LABELS[g.stages[index]]}{ext}"
            else:
                n = next(number)
                name = f"IMG_{n:04d}.jpg" if ext == ".jpg" else f"export-{n}{ext}"
            _write(project.final_dir / name, data)
            project.decoys[name] = g.first_timestamp
    project.save_truth()


SECOND_MACHINE = "laptop"  # the folder the second machine's renders were copied into


def make_two_machine_project(root: Path, n_groups: int = 30, clashing: int = 4,
                             own_groups: int = 2, seed: int = 0, scale: float = 0.05,
                             clash: bool = True) -> SyntheticProject:
    """A project whose renders came from two machines that both wrote some of the same
    file names (same timestamps and stages) with other pixels: a **name clash**.

    The first machine's renders are make_project's (groups spread over ``batch_*``
    subfolders, no bad files, PNG finals, whole or cropped). The second machine's sit
    under ``laptop/batch_*``: ``clashing`` groups named exactly like groups of the first
    (``clash_pairs``), each with a cropped final (in ``final/laptop/`` when the first
    machine's final already has its name), and ``own_groups`` groups at other times.
    One more final, ``final/misc/<a clashing name>``, shows neither machine's pixels:
    its name fits both groups and its pixels neither (a true orphan).

    ``clash=False`` writes the same project without the clashing groups, their finals
    and that orphan: what every other group must look like either way.
    """
    project = make_project(root, n_groups=n_groups, seed=seed, scale=scale,
                           bad_files=False, companions=False, variants=False)
    rng = np.random.default_rng([seed, 2])
    kept = [k for k, g in enumerate(project.groups) if g.kept_index is not None]
    step = max(1, len(kept) // max(1, clashing))
    firsts = kept[::step][:clashing]
    folders = [f"{SECOND_MACHINE}/batch_{k:02d}" for k in range(2)]
    end = datetime(2025, 7, 8, 6, 0, 0) + timedelta(minutes=5 * n_groups + 10)
    written: list[tuple[TrueGroup, list[Path], bool]] = []
    for k, first in enumerate([*firsts, *[None] * own_groups]):
        if first is not None:
            stages = tuple(project.groups[first].stages)
            names = [os.path.basename(p) for p in project.groups[first].rel_paths]
        else:
            stages = STAGE_SETS[int(rng.integers(len(STAGE_SETS)))]
            t0 = end + timedelta(minutes=5 * k)
            names = [f"{(t0 + timedelta(seconds=STAGE_DELAY[s])).strftime('%Y%m%d_%H%M%S')}"
                     f"_{STAGE_LABELS[s]}.png" for s in stages]
        images = render_stages(rng, stages, scale)
        rel_paths = [f"{folders[int(rng.integers(len(folders)))]}/{n}" for n in names]
        for rel, stage in zip(rel_paths, stages, strict=True):
            _write(project.original_dir / rel, _png_bytes(images[stage]))
        index = int(rng.integers(len(stages)))
        img = images[stages[index]]
        box = crop_box(rng, "free", img.width, img.height)
        data, ext, _ = encode_final(rng, img.crop(box), "png")
        final_rel = os.path.splitext(names[index])[0] + ext
        if (project.final_dir / final_rel).exists():
            final_rel = f"{SECOND_MACHINE}/{final_rel}"
        _write(project.final_dir / final_rel, data)
        truth = TrueGroup(names[0].rpartition("_stage")[0], rel_paths, list(stages), index,
                          [box[0] / img.width, box[1] / img.height, box[2] / img.width,
                           box[3] / img.height], final_rel, action="crop", crop_kind="free",
                          encoding="png")
        if first is not None:
            project.clash_pairs.append((first, len(project.groups)))
        project.groups.append(truth)
        written.append((truth, [project.final_dir / final_rel,
                                *(project.original_dir / r for r in rel_paths)],
                        first is not None))
    stranger = os.path.basename(project.groups[firsts[0]].rel_paths[0]) if firsts else None
    if stranger:
        _write(project.final_dir / "misc" / stranger, _png_bytes(texture(rng, 40, 48)))
        project.other_finals[f"misc/{stranger}"] = "orphan"
    if not clash:  # the same files, less what clashes
        for truth, paths, clashes in written:
            if clashes:
                for path in paths:
                    path.unlink()
                project.groups.remove(truth)
        if stranger:
            (project.final_dir / "misc" / stranger).unlink()
            del project.other_finals[f"misc/{stranger}"]
        project.clash_pairs = []
    project.save_truth()
    return project
