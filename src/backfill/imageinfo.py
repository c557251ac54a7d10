"""Facts about one image file, read from its header and its bytes, never its pixels.

Width, height and mode come from the header (PIL opens lazily and stops before the
pixel data); the content hash and the truncation check come from one pass over the
bytes (blake3, memory-mapped).
"""

from __future__ import annotations

import mmap
from typing import NamedTuple

import blake3
from PIL import Image, UnidentifiedImageError

# We read headers only, so PIL's guard against decoding huge images does not apply.
Image.MAX_IMAGE_PIXELS = None

_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"
_JPEG_END = b"\xff\xd9"
_FORMAT_EXTS = {"PNG": {".png"}, "JPEG": {".jpg", ".jpeg"}}


class ImageFacts(NamedTuple):  # a tuple: tens of thousands are built per scan
    format: str | None
    width: int | None
    height: int | None
    mode: str | None
    content_hash: str | None
    status: str  # ok | warning | error
    reason: str | None


def _error(reason: str, content_hash: str | None = None) -> ImageFacts:
    return ImageFacts(None, None, None, None, content_hash, "error", reason)


def _truncation(fmt: str, tail: bytes) -> str | None:
    """Why the file looks cut short, judged by how a complete file of its format ends."""
    if fmt == "PNG" and not tail.endswith(_PNG_END):
        return "truncated: the PNG has no IEND chunk at its end"
    # Some writers pad JPEGs after the end marker; only padding is allowed there.
    if fmt == "JPEG" and not tail.rstrip(b"\x00").endswith(_JPEG_END):
        return "truncated: the JPEG has no end-of-image marker"
    return None


def probe(path: str, ext: str, size: int) -> ImageFacts:
    """Read what can be known of ``path`` without decoding its pixels.

    One open: PIL reads the header from the file, then the same descriptor is
    memory-mapped for the hash and the end-of-file check.
    """
    if size == 0:
        return _error("empty file (0 bytes)")
    try:
        with open(path, "rb") as fh:
            try:
                with Image.open(fh) as im:
                    fmt, (width, height), mode = im.format, im.size, im.mode
            except UnidentifiedImageError:
                return _error("not an image: its bytes are not PNG or JPEG")
            except OSError as exc:  # a header cut short
                return _error(f"unreadable: {exc.strerror or exc}")
            except Exception as exc:  # PIL raises assorted errors on corrupt headers
                return _error(f"corrupt header: {exc}")
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
                content_hash = blake3.blake3(data).hexdigest()
                tail = data[-1024:]
    except OSError as exc:
        return _error(f"unreadable: {exc.strerror or exc}")
    if width <= 0 or height <= 0:
        return _error(f"invalid size {width}x{height} in the header", content_hash)
    truncated = _truncation(fmt, tail)
    if truncated:
        return ImageFacts(fmt, width, height, mode, content_hash, "error", truncated)
    if ext not in _FORMAT_EXTS.get(fmt, set()):
        reason = f"mislabelled: a {ext} file that holds {fmt} data (still used)"
        return ImageFacts(fmt, width, height, mode, content_hash, "warning", reason)
    return ImageFacts(fmt, width, height, mode, content_hash, "ok", None)
