"""The odd files of a hostile archive (links, fifos, bombs, empty and cut files, a kept
final broken on disk), and what scan says of each."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image


def encoded(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def picture(size=(40, 20)) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def _exif_rotated() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 on display
    return encoded(picture((40, 20)), "JPEG", exif=exif.tobytes())


def odd_name(i: int, stage: str = "stage1_generated", ext: str = ".png") -> str:
    """A render name of its own, a day after any generated render: each odd render is
    alone at its time, so it cannot change the normal renders' groups."""
    return f"20300101_{i // 60:02d}{i % 60:02d}00_{stage}{ext}"


# kind -> (status, start of the reason). The files each kind makes are in add_odd.
EXPECTED = {
    "empty": ("error", "empty file (0 bytes)"),
    "truncated png": ("error", "truncated: the PNG has no IEND chunk"),
    "truncated jpeg": ("error", "truncated: the JPEG has no end-of-image marker"),
    "mislabelled": ("warning", "mislabelled: a .png file that holds JPEG data"),
    "bomb": ("error", "decompression bomb: Image size (900000000 pixels) exceeds limit"),
    "over max_pixels": ("error", "too large to decode: 12000x12000 is 144 megapixels, "
                                 "over scan.max_pixels (100 megapixels)"),
    "16-bit": ("ok", None),
    "cmyk": ("ok", None),
    "exif-rotated": ("ok", None),
    "fifo": ("error", "not a regular file (a FIFO): skipped without reading it"),
    "symlink loop": ("error", "symlink loop"),
    "self link": ("error", "symlink loop"),
    "broken link": ("error", "broken symlink: its target "),
    "non-utf8 name": ("error", "file name is not valid UTF-8: rename it"),
    "unlistable folder": ("error", "cannot list folder: Permission denied"),
    "folder named like an image": (None, None),  # no row of its own: its files are scanned
}


def add_odd(kind: str, folder, i: int, bomb: bytes) -> str | None:
    """Make one odd entry of ``kind`` in ``folder``; its rel_path under ``folder`` as the
    scan shows it (None for a folder named like an image: it gets no row)."""
    name = odd_name(i)
    path = folder / name
    normal = encoded(picture(), "PNG")
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated png":  # cut in its pixel data
        path.write_bytes(normal[: len(normal) // 2])
    elif kind == "truncated jpeg":
        name = odd_name(i, ext=".jpg")
        data = encoded(picture((160, 80)), "JPEG")
        (folder / name).write_bytes(data[: len(data) // 2])
    elif kind == "mislabelled":
        path.write_bytes(encoded(picture(), "JPEG"))
    elif kind == "bomb":
        path.write_bytes(bomb)
    elif kind == "over max_pixels":  # under PIL's own limit (2 x 89 megapixels)
        path.write_bytes(encoded(Image.new("1", (12000, 12000)), "PNG"))
    elif kind == "16-bit":
        path.write_bytes(encoded(Image.fromarray(np.full((20, 40), 40000, np.uint16)), "PNG"))
    elif kind == "cmyk":
        name = odd_name(i, ext=".jpg")
        (folder / name).write_bytes(encoded(picture().convert("CMYK"), "JPEG"))
    elif kind == "exif-rotated":
        name = odd_name(i, ext=".jpg")
        (folder / name).write_bytes(_exif_rotated())
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "symlink loop":
        other = odd_name(i + 100)
        os.symlink(other, path)
        os.symlink(name, folder / other)
        return name  # and its twin, checked by the caller
    elif kind == "self link":
        os.symlink(name, path)
    elif kind == "broken link":
        os.symlink(folder / "gone" / name, path)
    elif kind == "non-utf8 name":
        with open(os.path.join(os.fsencode(folder), b"bad\xff" + name.encode()), "wb") as f:
            f.write(normal)
        name = "bad\\xff" + name
    elif kind == "unlistable folder":
        locked = folder / f"locked{i}"
        locked.mkdir()
        (locked / name).write_bytes(normal)
        os.chmod(locked, 0)
        return locked.name
    elif kind == "folder named like an image":
        inside = folder / name / "inside"
        inside.mkdir(parents=True)
        return None
    else:
        raise ValueError(kind)
    return name


def readable_as_root(folder) -> bool:
    """chmod 000 does not stop root: the folder is then listed like any other."""
    return os.access(folder, os.R_OK | os.X_OK)


def break_a_kept_final(project) -> str:
    """Overwrite a kept final (one with no readable copy to stand in) with bytes that are
    no image: its group's decision then waits as an unreadable final. Its path."""
    copied = {Path(p).name for p in project.other_finals}
    kept = next(g.final_rel_path for g in reversed(project.groups)
                if g.final_rel_path and Path(g.final_rel_path).name not in copied)
    (project.final_dir / kept).write_bytes(b"not an image")
    return kept
