"""Facts about one image file, read from its header and its bytes, never its pixels;
and ``decode``, the one bounded way every stage turns a file into pixels.

Width, height and mode come from the header (PIL opens lazily and stops before the
pixel data); the content hash and the truncation check come from one pass over the
bytes (blake3, memory-mapped). PIL's own decompression-bomb guard stays on; the
configured ``max_pixels`` (scan.max_pixels) is checked from the header before any
decode, so a 100 KB file claiming 30000x30000 pixels is refused, never decoded.
"""

from __future__ import annotations

import io
import mmap
import warnings
from pathlib import Path
from typing import NamedTuple

import blake3
import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

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


class Unreadable(ValueError):
    """A file that cannot, or must not, be decoded; the message says why."""


def pixel_problem(width: int, height: int, max_pixels: int) -> str | None:
    """Why an image of this size is not decoded, or None when it is within the limit."""
    if width * height <= max_pixels:
        return None
    return (f"too large to decode: {width}x{height} is {width * height / 1e6:,.0f} "
            f"megapixels, over scan.max_pixels ({max_pixels / 1e6:,.0f} megapixels); raise "
            "the limit if the image is real")


def header_size(data: bytes | np.ndarray) -> tuple[int, int]:
    """(width, height) from the header in ``data``; Unreadable when there is none, or when
    PIL's own guard calls it a decompression bomb."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(memoryview(data))) as im:
                return im.size
    except Image.DecompressionBombError as exc:
        raise Unreadable(f"decompression bomb: {exc}") from None
    except UnidentifiedImageError:
        raise Unreadable("not an image: its bytes are not PNG or JPEG") from None
    except Exception as exc:  # PIL raises assorted errors on corrupt headers
        raise Unreadable(f"corrupt header: {exc}") from None


def decode(path: Path | str, flags: int, max_pixels: int) -> np.ndarray:
    """The pixels of ``path`` as cv2 decodes them with ``flags``, after its header was
    checked against ``max_pixels``. Any file name works (unlike cv2.imread).

    Raises Unreadable, with the reason, for an empty, unreadable, over-limit or
    undecodable file."""
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError as exc:
        raise Unreadable(f"unreadable: {exc.strerror or exc}") from None
    if not data.size:
        raise Unreadable("empty file (0 bytes)")
    width, height = header_size(data)
    problem = pixel_problem(width, height, max_pixels)
    if problem:
        raise Unreadable(problem)
    # Pixels as stored, as the header's size says: an EXIF orientation tag would turn
    # them, and the box located in them would no longer match the recorded size.
    pixels = cv2.imdecode(data, flags | cv2.IMREAD_IGNORE_ORIENTATION)
    if pixels is None:
        raise Unreadable("cannot decode its pixels (truncated or corrupt)")
    return pixels
