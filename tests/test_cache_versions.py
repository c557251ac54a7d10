"""Caches are keyed by version constants, never by the code's text.

A cached result is reused for as long as its version constant stays the same, so code
that changes the result must bump it. The pins below hold, per constant, the result of
a fixed input: changing the result without a bump fails here, saying which constant to
bump. And since the keys hold no code, an edited comment in any cached module must
re-compute nothing: a run of the edited package (a copy) on warm caches proves it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np

from backfill.files.fingerprints import FINGERPRINT_VERSION, KNOWN, FingerprintCache
from backfill.stages.extract.content_pairing import SIGNATURE_VERSION, signature
from backfill.stages.extract.locate import LOCATE_VERSION, locate_pair
from backfill.stages.extract.stage import ExtractSettings
from backfill.stages.scan import ScanSettings, scan_project
from tests.conftest import pipeline_config

PIPELINE = pipeline_config()
PACKAGE = Path(__file__).resolve().parents[1] / "src" / "backfill"

# A 6x4 RGB PNG, byte for byte (an encoder of another version could write other bytes).
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAYAAAAECAIAAAAiZtkUAAAANUlEQVQIHRXBMRHDQBAAMT2MY7D11WbwhAwsADOW"
    "jk9ERMdjNBqNRsdrtVqtVsfP1dXV1dUf2SwHe8uoSCsAAAAASUVORK5CYII=")


def same(got: object, pin: object) -> bool:
    """Equal, floats within 0.001: far above the last bits a CPU's float maths may move
    (matchTemplate's SIMD), far below what a change of the matcher moves."""
    if isinstance(got, float) and isinstance(pin, float):
        return abs(got - pin) <= 1e-3
    if isinstance(got, (tuple, list)) and isinstance(pin, (tuple, list)):
        return len(got) == len(pin) and all(map(same, got, pin))
    return got == pin


def pinned(name: str, version: int, got: object, pins: dict[int, object]) -> None:
    """``got`` must be what ``pins`` holds for ``version``: else the cached result of a
    fixed input changed, and old cache rows would be reused as if it had not."""
    assert version in pins, (f"{name} is {version}, which has no pinned result: pin "
                             f"{got!r} for it")
    assert same(got, pins[version]), (
        f"the result {name} versions changed (now {got!r}, pinned {pins[version]!r}): "
        f"bump {name} so that no cached result of version {version} is reused, and pin "
        f"the new result for the new version")


def textured(height: int, width: int) -> np.ndarray:
    """A BGR picture from integer arithmetic and a bit-exact 8-bit blur: the same pixels
    on every machine (no random stream, no float maths)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.int64)
    noise = (x * 2654435761 ^ y * 40503 ^ (x * y * 97)) & 0xFF
    pic = np.stack([noise, (noise * 7 + x) & 0xFF, (noise * 13 + y) & 0xFF], axis=-1)
    return cv2.GaussianBlur(pic.astype(np.uint8), (5, 5), 0)


def fingerprint_row(folder: Path, cache_dir: Path) -> dict:
    """What the fingerprint cache remembers of the fixed PNG, after a scan."""
    (folder / "20250708_060711_stage2_upscaled.png").write_bytes(PNG)
    scan_project({"original": folder}, ScanSettings.from_config(PIPELINE.scan), cache_dir)
    known = FingerprintCache(cache_dir, folder).known
    assert len(known) == 1
    row = known.iloc[0][KNOWN].astype(object)
    return {c: None if v is None or v != v else v.item() if isinstance(v, np.generic) else v
            for c, v in row.items()}  # NaN and NA as None, numbers as Python's


def located(scaled: bool) -> tuple:
    """The Location of a fixed crop (1:1, or shrunk to half) in its fixed original."""
    original = cv2.cvtColor(textured(160, 240), cv2.COLOR_BGR2GRAY)
    final = original[40:136, 60:204]
    if scaled:  # an exact 2x2 average: bit-exact
        final = cv2.resize(final, (72, 48), interpolation=cv2.INTER_AREA)
    match = ExtractSettings.from_config(PIPELINE.extract, PIPELINE.scan.max_pixels).match
    p = locate_pair("o", "f", original, final, match, PIPELINE.scan.max_pixels)
    assert p.location is not None, p.failure
    return tuple(round(v, 4) if isinstance(v, float) else v for v in p.location)


def signed() -> tuple[str, bool]:
    """The signature of a fixed picture (256x192: shrunk by exactly half), as a digest."""
    cells, grey = signature(textured(192, 256))
    return hashlib.sha256(cells.astype(np.float32).tobytes()).hexdigest()[:16], grey


def test_the_fingerprint_of_a_fixed_file_is_pinned_to_fingerprint_version(tmp_path):
    (tmp_path / "in").mkdir()
    pinned("FINGERPRINT_VERSION", FINGERPRINT_VERSION,
           fingerprint_row(tmp_path / "in", tmp_path / "cache"), {
               1: {"format": "PNG", "width": 6, "height": 4, "mode": "RGB",
                   "content_hash": "5218867796cac7e0ab0ef1a99b5afd55"
                                   "de91eea85b61ff28b66ec2f89250ccdf",
                   "timestamp": "20250708_060711", "stage": 2.0,
                   "stage_label": "stage2_upscaled", "status": "ok", "reason": None}})


def test_the_location_of_a_fixed_pair_is_pinned_to_locate_version():
    pinned("LOCATE_VERSION", LOCATE_VERSION, [located(False), located(True)], {
        1: [(59.9973, 40.0004, 204.0017, 135.9978, 1.0, 1.0, 0.0, "1:1", 1.0),
            (59.9783, 40.0047, 204.0101, 135.986, 0.4999, 1.0, 0.0, "multi-scale", 1.0)]})


def test_the_signature_of_a_fixed_picture_is_pinned_to_signature_version():
    pinned("SIGNATURE_VERSION", SIGNATURE_VERSION, signed(),
           {1: ("8176bd2fd410dd6f", False)})


# One run of every cached stage on a project, printing what it computed rather than took
# from a cache. Run in a subprocess, so that the package it imports is the one on
# PYTHONPATH: this checkout's, or a copy with edited comments.
CACHED_RUN = """
import json, sys
from pathlib import Path
import numpy as np
from omegaconf import OmegaConf
import backfill
from backfill.models.clip import ClipSettings
from backfill.reports.report import Thumbnails
from backfill.stages.embed import embed_images, members
from backfill.stages.extract.stage import ExtractSettings, extract_project
from backfill.stages.group import group_table
from backfill.stages.scan import ScanSettings, scan_project
from backfill.config.settings import GroupConfig, section

project, cache, cfg = Path(sys.argv[1]), Path(sys.argv[2]), OmegaConf.load(sys.argv[3])
original, final = project / "original", project / "final"
scan = scan_project({"original": original, "final": final},
                    ScanSettings.from_config(cfg.scan), cache / "fingerprints")
groups, ungrouped = group_table(scan.table, section(GroupConfig, cfg.group, "group"), "p")
x = extract_project(groups, scan.table, ungrouped,
                    ExtractSettings.from_config(cfg.extract, cfg.scan.max_pixels),
                    original, final, cache)
loads = []

def stand_in(settings):  # an embedder of the mean pixel: no model to download
    loads.append(1)
    from PIL import Image
    def embed(paths):
        for i, p in enumerate(paths):
            yield i, np.full(4, np.asarray(Image.open(p)).mean(), np.float32), None
    return embed, "stand-in"

clip = ClipSettings.from_config(cfg.embed, project, cfg.scan.max_pixels)
e = embed_images(members(groups), original, clip, cache, stand_in)
rows = scan.table[scan.table["content_hash"].notna()]
thumbs = Thumbnails(cache, cfg.scan.max_pixels, {project / s / r: h for s, r, h in zip(
    rows["source"], rows["rel_path"], rows["content_hash"])})
for path in thumbs.hashes:
    thumbs.want(path, 64)
thumbs.draw()
thumbs.save()
print(json.dumps({"package": backfill.__file__, "scanned": scan.probed,
                  "located": x.matched, "signatures": x.content.signatures,
                  "content_locates": x.content.locates, "embedded": e.embedded,
                  "models_loaded": len(loads), "thumbnails": thumbs.drawn}))
"""


def cached_run(src: Path, project: Path, cache: Path, cfg: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src)}
    done = subprocess.run([sys.executable, "-c", CACHED_RUN, str(project), str(cache),
                           str(cfg)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def stored(cache: Path) -> dict[str, str]:
    return {str(p.relative_to(cache)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(cache.rglob("*")) if p.is_file()}


# Not marked slow (three small runs in subprocesses, ~20 s): the keys' independence of
# the code's text is worth checking on every run of the suite.
def test_an_edited_comment_in_any_module_recomputes_nothing(tmp_path):
    from omegaconf import OmegaConf

    from backfill.demo.synthetic import make_project

    gen = make_project(tmp_path / "p", n_groups=8, seed=7, scale=0.05, bad_files=False,
                       odd_names=True)
    roots = {"original": gen.original_dir, "final": gen.final_dir}
    scan = scan_project(roots, ScanSettings.from_config(PIPELINE.scan), tmp_path / "x").table
    for source, rel in zip(*scan.loc[scan["status"] == "error", ["source", "rel_path"]].T.values,
                           strict=True):
        (roots[source] / rel).unlink()  # a file in error is never cached: read every run
    cfg = tmp_path / "cfg.yaml"
    OmegaConf.save(PIPELINE, cfg)
    cache = tmp_path / "cache"
    cold = cached_run(PACKAGE.parent, tmp_path / "p", cache, cfg)
    for what in ("scanned", "located", "signatures", "content_locates", "embedded",
                 "thumbnails"):
        assert cold[what] > 0, (what, cold)  # every cache is filled by the cold run
    warm = cached_run(PACKAGE.parent, tmp_path / "p", cache, cfg)
    nothing = {k: 0 for k in cold if k != "package"}
    assert {k: v for k, v in warm.items() if k != "package"} == nothing
    before = stored(cache)

    # The same package with a comment added to every module, cached or not.
    edited = tmp_path / "edited" / "backfill"
    shutil.copytree(PACKAGE, edited, ignore=shutil.ignore_patterns("__pycache__"))
    modules = sorted(edited.rglob("*.py"))
    for module in modules:
        with module.open("a", encoding="utf-8") as f:
            f.write("\n# An edited comment: no cached result may depend on it.\n")
    names = {str(m.relative_to(edited)) for m in modules}
    assert {"files/imageinfo.py", "files/filenames.py", "files/fingerprints.py",
            "stages/scan.py", "stages/extract/locate.py", "stages/extract/content_pairing.py",
            "stages/extract/stage.py", "stages/embed.py", "reports/report.py"} <= names

    again = cached_run(edited.parent, tmp_path / "p", cache, cfg)
    assert Path(again["package"]).is_relative_to(edited)  # the edited copy ran
    assert {k: v for k, v in again.items() if k != "package"} == nothing
    assert stored(cache) == before  # not a byte of any cache was rewritten
