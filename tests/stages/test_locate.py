"""locate: finals found in their originals, on generated pictures with known boxes."""

import io

import cv2
import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from backfill.config.settings import MatchConfig
from backfill.demo.synthetic import low_texture, texture
from backfill.files.imageinfo import Unreadable
from backfill.stages.extract.locate import LocateError, locate, read_gray
from tests.conftest import REPO

SETTINGS = MatchConfig(**OmegaConf.to_container(
    OmegaConf.load(REPO / "conf" / "pipeline" / "default.yaml").extract.match))


@pytest.fixture(scope="module")
def picture() -> Image.Image:
    return texture(np.random.default_rng(11), 1024, 1536)


def gray(img: Image.Image, fmt: str = "PNG", **save) -> np.ndarray:
    """``img`` saved as ``fmt`` and decoded the way the stage decodes files."""
    buf = io.BytesIO()
    img.save(buf, format=fmt, **save)
    return cv2.imdecode(np.frombuffer(buf.getvalue(), np.uint8), cv2.IMREAD_GRAYSCALE)


def check(orig: Image.Image, final: np.ndarray, box: tuple, tolerance: float = 0.01,
          scale: float = 1.0):
    loc = locate(gray(orig), final, SETTINGS)
    truth = np.array(box) / [orig.width, orig.height, orig.width, orig.height]
    got = np.array(loc.normalised(orig.width, orig.height))
    assert np.abs(got - truth).max() <= tolerance, (got, truth, loc)
    assert loc.scale == pytest.approx(scale, rel=0.02)
    assert loc.confidence >= 0.8
    return loc


@pytest.mark.parametrize("box", [
    (100, 150, 700, 900),  # an ordinary crop
    (0, 0, 600, 500),  # touching the top-left edges
    (424, 736, 1024, 1536),  # touching the bottom-right edges
    (0, 300, 1024, 1200),  # full width
    (400, 600, 629, 943),  # tiny: 5% of the area
    (10, 15, 1014, 1521),  # near-full (an approve)
    (41, 61, 983, 1475),  # a 4% margin (a crop)
    (0, 0, 1024, 1536),  # the whole picture
], ids=["crop", "edge-top-left", "edge-bottom-right", "full-width", "tiny", "near-full",
        "margin-4pct", "whole"])
def test_crops_at_the_originals_scale_are_exact(picture, box):
    loc = check(picture, gray(picture.crop(box)), box, tolerance=0.002)
    assert loc.method == "1:1"


@pytest.mark.parametrize("quality", [60, 85])
def test_jpeg_re_encoded_finals(picture, quality):
    box = (120, 200, 820, 1100)
    check(picture, gray(picture.crop(box), "JPEG", quality=quality), box)


@pytest.mark.parametrize("factor", [0.5, 0.75, 1.25, 1.6])
def test_resized_finals_are_found_with_their_scale(picture, factor):
    box = (150, 260, 750, 1060)
    crop = picture.crop(box)
    final = crop.resize((round(crop.width * factor), round(crop.height * factor)),
                        Image.Resampling.LANCZOS)
    loc = check(picture, gray(final, "JPEG", quality=85), box, tolerance=0.02, scale=factor)
    assert loc.method == "multi-scale"


def test_a_final_larger_than_its_original(picture):
    """The whole picture exported at 1.5x: an approve, at scale 1.5."""
    box = (0, 0, picture.width, picture.height)
    big = picture.resize((1536, 2304), Image.Resampling.LANCZOS)
    check(picture, gray(big), box, tolerance=0.005, scale=1.5)


def test_low_texture_regions():
    sky = low_texture(np.random.default_rng(4), 1024, 1024)
    box = (200, 150, 700, 600)
    check(sky, gray(sky.crop(box)), box)
    check(sky, gray(sky.crop(box), "JPEG", quality=90), box)


def test_grayscale_rgba_and_16_bit_files_decode_alike(picture, tmp_path):
    box = (100, 100, 600, 700)
    crop = picture.crop(box)
    crop.convert("L").save(tmp_path / "gray.png")
    crop.convert("RGBA").save(tmp_path / "rgba.png")
    wide = np.asarray(crop, dtype=np.uint16)[..., ::-1] * 257
    cv2.imwrite(str(tmp_path / "deep.png"), wide)
    assert Image.open(tmp_path / "deep.png").mode.startswith(("I", "RGB"))
    for name in ("gray.png", "rgba.png", "deep.png"):
        final = read_gray(tmp_path / name, 10**8)
        assert final.dtype == np.uint8 and final.ndim == 2
        check(picture, final, box, tolerance=0.002)


def test_a_different_picture_has_low_confidence(picture):
    other = texture(np.random.default_rng(99), 1024, 1536).crop((100, 100, 700, 900))
    assert locate(gray(picture), gray(other), SETTINGS).confidence < 0.8


def test_a_flat_final_cannot_be_trusted(picture):
    flat = np.full((200, 300), 128, np.uint8)
    assert locate(gray(picture), flat, SETTINGS).confidence == 0.0


def test_an_impossible_scale_and_an_undecodable_file_raise(picture, tmp_path):
    huge = np.zeros((4 * 1536, 4 * 1024), np.uint8)  # beyond max_scale 3
    with pytest.raises(LocateError, match="max_scale"):
        locate(gray(picture), huge, SETTINGS)
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(Unreadable, match="corrupt header|not an image"):
        read_gray(tmp_path / "bad.png", 10**8)


def test_an_image_over_max_pixels_is_refused_from_its_header(tmp_path):
    Image.new("L", (400, 300), 128).save(tmp_path / "big.png")
    with pytest.raises(Unreadable, match="too large to decode: 400x300"):
        read_gray(tmp_path / "big.png", 400 * 300 - 1)
    assert read_gray(tmp_path / "big.png", 400 * 300).shape == (300, 400)


def test_settings_key_changes_with_any_setting():
    other = MatchConfig(**{**SETTINGS.__dict__, "patch_size": SETTINGS.patch_size + 1})
    assert other.key() != SETTINGS.key() and SETTINGS.key() == SETTINGS.key()
