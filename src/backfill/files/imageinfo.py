"""Facts about one image file, read from its header and its bytes, never its pixels;
and ``decode``, the one bounded way every stage turns a file into pixels.

PNG, JPEG, WebP, TIFF, BMP, GIF (its first frame), AVIF and JPEG 2000 are read
(READ_FORMATS: what both PIL and OpenCV decode); a file of another format is named from
its first bytes (``sniff``) and refused with the reason, and a file with no image
signature at all (``no_signature``) is no image. Width, height and mode come from the
header (PIL opens lazily and stops before the pixel data); the content hash and the
truncation check come from one pass over the bytes (blake3, memory-mapped). PIL's own
decompression-bomb guard stays on; the configured ``max_pixels`` (scan.max_pixels) is
checked from the header before any decode, so a 100 KB file claiming 30000x30000
pixels is refused, never decoded.
"""

from __future__ import annotations

import io
import mmap
import os
import stat
import warnings
import zlib
from pathlib import Path
from typing import BinaryIO, NamedTuple

import blake3
import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

# Our own limit (max_pixels) is the one that speaks; PIL's warning below its hard limit
# would only add noise. Set once for the process: warning filters are not thread-safe.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
# Likewise OpenCV's log lines (a broken TIFF): a file that cannot be decoded gets its
# reason in its own record, and raw lines on stderr would break the progress bars.
cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"
# The PNG chunks that make its pixels as OpenCV decodes them (it applies no gamma and
# no colour profile); tRNS kept as the one ancillary chunk that decoding reads.
_PNG_PIXEL_CHUNKS = frozenset({b"IHDR", b"PLTE", b"IDAT", b"IEND", b"tRNS"})
_JPEG_END = b"\xff\xd9"
# The formats the pipeline reads (PIL's names: both PIL and OpenCV decode them), and the
# extensions each is saved under; a file of another is refused, never half-read by one
# of PIL's many other plugins. MPO: the JPEG that cameras and phones write.
_FORMAT_EXTS = {"PNG": {".png"}, "JPEG": {".jpg", ".jpeg"}, "MPO": {".jpg", ".jpeg"},
                "WEBP": {".webp"}, "TIFF": {".tif", ".tiff"}, "BMP": {".bmp"},
                "GIF": {".gif"}, "AVIF": {".avif"}, "JPEG2000": {".jp2", ".j2k"}}
# Those PIL has a plugin for (MPO comes from its JPEG plugin): naming one it lacks would
# make every open fail.
Image.init()
READ_FORMATS = tuple(f for f in _FORMAT_EXTS if f in Image.OPEN)
READ_EXTENSIONS = frozenset().union(*(_FORMAT_EXTS[f] for f in READ_FORMATS))
# How each format's bytes begin, for naming what a file holds when PIL cannot read it:
# (offset, bytes) pairs that must all match.
_SIGNATURES = [
    ("PNG", ((0, b"\x89PNG\r\n\x1a\n"),)), ("JPEG", ((0, b"\xff\xd8\xff"),)),
    ("GIF", ((0, b"GIF8"),)), ("TIFF", ((0, b"II*\x00"),)), ("TIFF", ((0, b"MM\x00*"),)),
    ("WEBP", ((0, b"RIFF"), (8, b"WEBP"))), ("BMP", ((0, b"BM"),)),
    ("JPEG2000", ((0, b"\x00\x00\x00\x0cjP  "),)), ("JPEG XL", ((0, b"\xff\x0a"),)),
    ("JPEG XL", ((0, b"\x00\x00\x00\x0cJXL "),)), ("PSD", ((0, b"8BPS"),)),
    *((("AVIF" if brand.startswith(b"avi") else "HEIF"), ((4, b"ftyp" + brand),))
      for brand in (b"avif", b"avis", b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis",
                    b"mif1", b"msf1")),
]
EMPTY = "empty file (0 bytes)"
NOT_AN_IMAGE = "not an image: its bytes have no image signature"


class ImageFacts(NamedTuple):  # a tuple: tens of thousands are built per scan
    format: str | None
    width: int | None
    height: int | None
    mode: str | None
    content_hash: str | None
    status: str  # ok | warning | error
    reason: str | None


class Unreadable(ValueError):
    """A file that cannot, or must not, be decoded; the message says why."""


class Shipped(NamedTuple):
    """A file's bytes read where the file is (the driver) for a worker elsewhere
    (executor ray, ``ray.ship_bytes``); ``decode`` takes it in place of a path."""

    name: str
    data: bytes | None
    error: str | None  # why the driver could not read it

    @classmethod
    def read(cls, path: Path | str) -> Shipped:
        try:
            with open_regular(path) as fh:
                return cls(str(path), fh.read(), None)
        except Unreadable as exc:
            return cls(str(path), None, str(exc))
        except OSError as exc:
            return cls(str(path), None, f"unreadable: {exc.strerror or exc}")


def entry_kind(mode: int) -> str:
    """What a non-regular directory entry is, in words, from its stat mode."""
    kinds = [(stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")]
    return next((word for test, word in kinds if test(mode)), "not a file")


def not_regular(mode: int) -> str:
    """The reason recorded for an entry that is not a regular file."""
    return f"not a regular file ({entry_kind(mode)}): skipped without reading it"


def open_regular(path: Path | str) -> BinaryIO:
    """``path`` opened for binary reading, or Unreadable when it is not a regular file.

    Opened non-blocking and checked on the open descriptor: a FIFO named like an image
    would block a plain open() forever, and a file swapped for one after a stat would
    slip past a check made before opening.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise Unreadable(f"unreadable: {exc.strerror or exc}") from None
    try:
        mode = os.fstat(fd).st_mode
    except OSError as exc:
        os.close(fd)
        raise Unreadable(f"unreadable: {exc.strerror or exc}") from None
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise Unreadable(not_regular(mode))
    return os.fdopen(fd, "rb")


def _error(reason: str, fmt: str | None = None, content_hash: str | None = None
           ) -> ImageFacts:
    return ImageFacts(fmt, None, None, None, content_hash, "error", reason)


def sniff(head: bytes) -> str | None:
    """The image format ``head`` (a file's first bytes) begins like, or None when it
    has no image signature: a text file named like a render, an empty file."""
    return next((fmt for fmt, marks in _SIGNATURES
                 if all(head[at:at + len(m)] == m for at, m in marks)), None)


def no_signature(reason: object) -> bool:
    """Whether a scan row's reason says its bytes are not an image at all (empty, or no
    image signature): such a file is no render, unlike a truncated image."""
    return isinstance(reason, str) and reason.startswith((EMPTY, NOT_AN_IMAGE))


def not_read(what: str) -> str:
    """Why a file of a format (or extension) the pipeline does not read is not used."""
    return f"cannot read {what}: convert it to PNG or JPEG"


def _unidentified(head: bytes) -> tuple[str | None, str]:
    """(format, reason) of a file PIL cannot open as one of READ_FORMATS."""
    fmt = sniff(head)
    if fmt is None:
        return None, NOT_AN_IMAGE
    if fmt in _FORMAT_EXTS:  # a format read, but not this file
        return fmt, f"corrupt header: it begins as {fmt} but its header cannot be read"
    return fmt, not_read(f"{fmt} data")


def _truncation(fmt: str, tail: bytes) -> str | None:
    """Why the file looks cut short, judged by how a complete file of its format ends."""
    if fmt == "PNG" and not tail.endswith(_PNG_END):
        return "truncated: the PNG has no IEND chunk at its end"
    # Some writers pad JPEGs after the end marker; only padding is allowed there.
    if fmt in ("JPEG", "MPO") and not tail.rstrip(b"\x00").endswith(_JPEG_END):
        return "truncated: the JPEG has no end-of-image marker"
    if fmt == "GIF" and not tail.rstrip(b"\x00").endswith(b";"):
        return "truncated: the GIF has no trailer"
    return None


def probe(path: str, ext: str, size: int) -> ImageFacts:
    """Read what can be known of ``path`` without decoding its pixels.

    One open: PIL reads the header from the file, then the same descriptor is
    memory-mapped for the hash and the end-of-file check.
    """
    if size == 0:
        return _error(EMPTY)
    try:
        fh = open_regular(path)
    except Unreadable as exc:
        return _error(str(exc))
    try:
        with fh:
            head = fh.read(32)
            fh.seek(0)
            try:
                with Image.open(fh, formats=READ_FORMATS) as im:
                    fmt, (width, height), mode = im.format, im.size, im.mode
            except Image.DecompressionBombError as exc:  # PIL's own guard, from the header
                return _error(f"decompression bomb: {exc}")
            except UnidentifiedImageError:
                fmt, reason = _unidentified(head)
                return _error(reason, fmt)
            except OSError as exc:  # a header cut short, or a read error
                if "truncated" in str(exc).lower():
                    return _error(f"truncated: the file ends inside its header ({exc})",
                                  fmt=sniff(head))
                return _error(f"unreadable: {exc.strerror or exc}")
            except Exception as exc:  # PIL raises assorted errors on corrupt headers
                return _error(f"corrupt header: {exc}", fmt=sniff(head))
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
                content_hash = blake3.blake3(data).hexdigest()
                tail = data[-1024:]
    except OSError as exc:
        return _error(f"unreadable: {exc.strerror or exc}")
    except ValueError:  # mmap of a file emptied since it was listed
        return _error(EMPTY)
    if width <= 0 or height <= 0:
        return _error(f"invalid size {width}x{height} in the header", fmt, content_hash)
    truncated = _truncation(fmt, tail)
    if truncated:
        return ImageFacts(fmt, width, height, mode, content_hash, "error", truncated)
    if ext not in _FORMAT_EXTS.get(fmt, set()):
        reason = f"mislabelled: a {ext} file that holds {fmt} data (still used)"
        return ImageFacts(fmt, width, height, mode, content_hash, "warning", reason)
    return ImageFacts(fmt, width, height, mode, content_hash, "ok", None)


def pixel_problem(width: int, height: int, max_pixels: int) -> str | None:
    """Why an image of this size is not decoded, or None when it is within the limit."""
    if width * height <= max_pixels:
        return None
    return (f"too large to decode: {width}x{height} is {_pixels(width * height)}, over "
            f"scan.max_pixels ({_pixels(max_pixels)}); raise the limit if the image is real")


def _pixels(n: int) -> str:
    """A pixel count as people read it: megapixels when large, else the count."""
    if n < 1_000_000:
        return f"{n:,} pixels"
    return f"{n / 1e6:,.1f}".removesuffix(".0") + " megapixels"


def header_size(data: bytes | np.ndarray) -> tuple[int, int]:
    """(width, height) from the header in ``data``; Unreadable when there is none, or when
    PIL's own guard calls it a decompression bomb."""
    try:
        with Image.open(io.BytesIO(memoryview(data)), formats=READ_FORMATS) as im:
            return im.size  # PIL's bomb warning is silenced above
    except Image.DecompressionBombError as exc:
        raise Unreadable(f"decompression bomb: {exc}") from None
    except UnidentifiedImageError:
        raise Unreadable(_unidentified(bytes(data[:32]))[1]) from None
    except Exception as exc:  # PIL raises assorted errors on corrupt headers
        raise Unreadable(f"corrupt header: {exc}") from None


def decode(path: Path | str | Shipped, flags: int, max_pixels: int) -> np.ndarray:
    """The pixels of ``path`` (or of the bytes shipped from it) as cv2 decodes them with
    ``flags``, after its header was checked against ``max_pixels``. Any file name works
    (unlike cv2.imread).

    Raises Unreadable, with the reason, for an empty, unreadable, over-limit or
    undecodable file."""
    if isinstance(path, Shipped):
        if path.error is not None:
            raise Unreadable(path.error)
        data = np.frombuffer(path.data, dtype=np.uint8)
    else:
        try:
            with open_regular(path) as fh:
                data = np.fromfile(fh, dtype=np.uint8)
        except OSError as exc:
            raise Unreadable(f"unreadable: {exc.strerror or exc}") from None
    if not data.size:
        raise Unreadable(EMPTY)
    width, height = header_size(data)
    problem = pixel_problem(width, height, max_pixels)
    if problem:
        raise Unreadable(problem)
    if data[:8].tobytes() == _PNG_SIGNATURE:
        data = png_pixel_chunks(data)
    # Pixels as stored, as the header's size says: an EXIF orientation tag would turn
    # them, and the box located in them would no longer match the recorded size.
    pixels = cv2.imdecode(data, flags | cv2.IMREAD_IGNORE_ORIENTATION)
    if pixels is None:  # a format this OpenCV build lacks, or a broken file
        pixels = _pil_pixels(data, flags)
    if pixels is None:
        raise Unreadable("cannot decode its pixels (truncated or corrupt)")
    return pixels


def png_pixel_chunks(data: np.ndarray) -> np.ndarray:
    """The PNG ``data`` with only the chunks its pixels come from, each checked against
    its checksum. libpng prints its complaints (a damaged chunk, a colour profile it
    dislikes) straight to the process's stderr, where no reason can be attributed and
    the progress bars break: so a damaged file is refused here, with the reason in the
    file's record, and the chunks libpng would only warn about never reach it.

    Raises Unreadable naming the chunk for a cut-short or damaged PNG."""
    raw = memoryview(data)
    kept, at, end, dropped = [raw[:8]], 8, len(raw), False
    while True:
        if at + 12 > end:
            raise Unreadable("truncated: the PNG ends inside a chunk")
        length = int.from_bytes(raw[at:at + 4], "big")
        kind = raw[at + 4:at + 8].tobytes()
        stop = at + 12 + length
        if stop > end:
            raise Unreadable(f"truncated: the PNG ends inside its {_chunk(kind)} chunk")
        crc = int.from_bytes(raw[stop - 4:stop], "big")
        if kind in _PNG_PIXEL_CHUNKS:
            if zlib.crc32(raw[at + 4:stop - 4]) != crc:
                raise Unreadable(f"damaged: the PNG's {_chunk(kind)} chunk fails its "
                                 "checksum (a bad copy or a failing disk)")
            kept.append(raw[at:stop])
        else:
            dropped = True
        at = stop
        if kind == b"IEND":
            break
    return np.frombuffer(b"".join(kept), dtype=np.uint8) if dropped else data


def _chunk(kind: bytes) -> str:
    return kind.decode("ascii", "replace") if kind.isalpha() else repr(kind)


def _pil_pixels(data: np.ndarray, flags: int) -> np.ndarray | None:
    """The first frame of ``data`` decoded by PIL, as cv2 would give it with ``flags``
    (grey, or BGR), or None when PIL cannot decode it either."""
    try:
        with Image.open(io.BytesIO(memoryview(data)), formats=READ_FORMATS) as im:
            im.seek(0)
            if flags & ~cv2.IMREAD_IGNORE_ORIENTATION == cv2.IMREAD_GRAYSCALE:
                return np.asarray(im.convert("L"))
            return np.ascontiguousarray(np.asarray(im.convert("RGB"))[..., ::-1])
    except Exception:  # PIL raises assorted errors on broken files
        return None
