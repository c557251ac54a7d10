"""Image formats: what is read, what is named and refused, and what is no image at all."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from backfill.files import imageinfo
from backfill.files.imageinfo import Unreadable, decode, no_signature, probe
from backfill.stages.scan import ScanSettings, scan_project

PIXELS = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
HEIC = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64
READ = {".webp": "WEBP", ".tif": "TIFF", ".bmp": "BMP", ".gif": "GIF", ".avif": "AVIF",
        ".jp2": "JPEG2000", ".png": "PNG"}
LOSSLESS = {".tif", ".bmp", ".png"}


def saved(fmt: str, **options) -> bytes:
    out = io.BytesIO()
    Image.fromarray(PIXELS).save(out, format=fmt, **options)
    return out.getvalue()


@pytest.mark.parametrize("ext", list(READ))
def test_every_format_pil_and_opencv_read_is_scanned_and_decoded(tmp_path, ext):
    path = tmp_path / f"a{ext}"
    path.write_bytes(saved(READ[ext], **({"lossless": True} if ext == ".webp" else {})))
    facts = probe(str(path), ext, path.stat().st_size)
    assert (facts.status, facts.format, facts.width, facts.height) == ("ok", READ[ext], 40, 30)
    colour = decode(path, cv2.IMREAD_COLOR, 10**6)
    grey = decode(path, cv2.IMREAD_GRAYSCALE, 10**6)
    assert colour.shape == (30, 40, 3) and grey.shape == (30, 40)
    if ext in LOSSLESS | {".webp"}:
        assert np.array_equal(colour[..., ::-1], PIXELS)


def test_pil_decodes_what_this_opencv_cannot(tmp_path, monkeypatch):
    path = tmp_path / "a.tif"
    path.write_bytes(saved("TIFF"))
    monkeypatch.setattr(imageinfo.cv2, "imdecode", lambda *a: None)
    assert np.array_equal(decode(path, cv2.IMREAD_COLOR, 10**6)[..., ::-1], PIXELS)
    assert np.array_equal(decode(path, cv2.IMREAD_GRAYSCALE, 10**6),
                          np.asarray(Image.fromarray(PIXELS).convert("L")))
    path.write_bytes(saved("TIFF")[:200])  # truncated: neither decodes it
    with pytest.raises(Unreadable, match="cannot decode its pixels"):
        decode(path, cv2.IMREAD_COLOR, 10**6)


@pytest.mark.parametrize(("data", "fmt", "says", "image"), [
    (HEIC, "HEIF", "cannot read HEIF data: convert it to PNG or JPEG", True),
    (b"8BPS" + b"\x00" * 60, "PSD", "cannot read PSD data", True),
    (b"\x89PNG\r\n\x1a\n broken", "PNG", "corrupt header: it begins as PNG", True),
    (b"notes, not pixels\n" * 5, None, "not an image", False),
    (b"", None, "empty file", False),
    (saved("PNG")[:300], "PNG", "truncated", True),
])
def test_bytes_that_are_not_read_are_named_from_their_signature(tmp_path, data, fmt, says,
                                                                  image):
    path = tmp_path / "20250101_000000_stage1_generated.png"
    path.write_bytes(data)
    facts = probe(str(path), ".png", len(data))
    assert (facts.status, facts.format) == ("error", fmt)
    assert facts.reason.startswith(says)
    assert no_signature(facts.reason) is not image
    with pytest.raises(Unreadable):
        decode(path, cv2.IMREAD_COLOR, 10**6)


def test_image_files_of_formats_not_read_are_listed_with_the_reason(tmp_path):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "a.heic").write_bytes(HEIC)
    (tmp_path / "o" / "b.PSD").write_bytes(b"8BPS")
    (tmp_path / "o" / "c.webp").write_bytes(saved("WEBP"))
    (tmp_path / "o" / "notes.txt").write_text("not an image file\n")
    settings = ScanSettings(frozenset({".png", ".webp"}), (), True, 1, 10**8,
                            frozenset({".heic", ".psd"}))
    table = scan_project({"original": tmp_path / "o"}, settings, tmp_path / "c").table
    rows = table.set_index("rel_path")
    assert list(rows.index) == ["a.heic", "b.PSD", "c.webp"]
    assert rows.loc["a.heic", "reason"] == "cannot read .heic files: convert it to PNG or JPEG"
    assert rows.loc["b.PSD", "status"] == "error" and rows.loc["b.PSD", "size_bytes"] == 4
    assert rows.loc["c.webp", "status"] != "error" and rows.loc["c.webp", "width"] == 40


def test_an_image_extension_left_out_of_the_settings_is_listed_not_hidden(tmp_path):
    from tests.conftest import pipeline_config

    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "a.webp").write_bytes(saved("WEBP"))
    (tmp_path / "o" / "b.png").write_bytes(saved("PNG"))
    settings = ScanSettings.from_config(pipeline_config("scan.extensions=[.png]").scan)
    rows = scan_project({"original": tmp_path / "o"}, settings, tmp_path / "c").table
    reason = rows.set_index("rel_path").loc["a.webp", "reason"]
    assert reason == "not scanned: .webp is not in scan.extensions; add it to use the file"


def _damaged(data: bytes, chunk: bytes) -> bytes:
    """``data`` with one byte inside ``chunk``'s data flipped (its checksum now fails)."""
    at = data.index(chunk) + 4 + 2
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1:]


def test_a_damaged_or_cut_png_gets_a_reason_and_nothing_reaches_stderr(tmp_path, capfd):
    good = saved("PNG")
    cases = {"damaged.png": (_damaged(good, b"IDAT"), "IDAT chunk fails its checksum"),
             "cut.png": (good[:len(good) // 2], "truncated: the PNG ends inside its IDAT")}
    for name, (data, reason) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(Unreadable, match=reason):
            decode(tmp_path / name, cv2.IMREAD_COLOR, 10**8)
    # libpng would have printed 'libpng error: ...' on the process's stderr for each.
    assert capfd.readouterr().err == ""


def test_a_png_libpng_would_warn_about_decodes_to_the_same_pixels_silently(tmp_path, capfd):
    out = io.BytesIO()
    Image.fromarray(PIXELS).save(out, format="PNG", icc_profile=b"not a profile" * 4)
    (tmp_path / "odd.png").write_bytes(out.getvalue())
    pixels = decode(tmp_path / "odd.png", cv2.IMREAD_COLOR, 10**8)
    assert np.array_equal(pixels, PIXELS[..., ::-1])
    assert capfd.readouterr().err == ""  # libpng says 'iCCP: too short' when given it


def test_a_palette_png_with_transparency_decodes_as_opencv_decodes_it(tmp_path):
    image = Image.fromarray(PIXELS).convert("P")
    out = io.BytesIO()
    image.save(out, format="PNG", transparency=3)
    (tmp_path / "p.png").write_bytes(out.getvalue())
    raw = np.frombuffer(out.getvalue(), np.uint8)
    for flags in (cv2.IMREAD_COLOR, cv2.IMREAD_GRAYSCALE):
        assert np.array_equal(decode(tmp_path / "p.png", flags, 10**8),
                              cv2.imdecode(raw, flags | cv2.IMREAD_IGNORE_ORIENTATION))
