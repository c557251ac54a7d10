"""embed: each image embedded once across runs, new renders only, bad files reported,
weights that cannot be had reported at once."""

from __future__ import annotations

import dataclasses
import pickle
import time
import types

import huggingface_hub.constants
import numpy as np
import pytest

from backfill.config.errors import UserError
from backfill.config.settings import GroupConfig, section
from backfill.demo.synthetic import make_project
from backfill.models.clip import ClipSettings, check_weights_reachable, load_clip, model_id
from backfill.stages.embed import embed_images, members
from backfill.stages.group import group_table
from backfill.stages.scan import ScanSettings, scan_project
from tests.conftest import REPO, add_renders, pipeline_config

PIPELINE = pipeline_config()
SETTINGS = dataclasses.replace(ClipSettings.from_config(PIPELINE.embed, REPO,
                                                       PIPELINE.scan.max_pixels),
                               pretrained=None, batch_size=4, workers=2)


def grouped_images(project, cache_dir):
    scan = scan_project({"original": project.original_dir}, ScanSettings.from_config(
        PIPELINE.scan), cache_dir).table
    groups, _ = group_table(scan, section(GroupConfig, PIPELINE.group, "group"), "p")
    return groups, members(groups)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return make_project(tmp_path_factory.mktemp("embed"), n_groups=5, seed=21, scale=0.05,
                        bad_files=False)


@pytest.mark.slow  # embeds a project twice
def test_a_second_run_embeds_nothing_and_new_renders_are_the_only_ones_embedded(
        project, tmp_path):
    cache = tmp_path / "cache"
    groups, images = grouped_images(project, cache)
    first = embed_images(images, project.original_dir, SETTINGS, cache)
    assert first.embedded == len(images) > 10 and first.cached == 0 and not first.failed
    assert first.model_id == "ViT-B-32/random-seed0" and first.device == "cpu"
    vectors = np.stack(first.table["embedding"])
    assert vectors.shape == (len(images), 512) and np.isfinite(vectors).all()

    again = embed_images(images, project.original_dir, SETTINGS, cache)
    assert (again.embedded, again.cached, again.device) == (0, len(images), None)  # no model
    assert np.array_equal(np.stack(again.table["embedding"]), vectors)

    add_renders(project.original_dir / "new", "20991231_2359")
    _, more = grouped_images(project, cache)
    third = embed_images(more, project.original_dir, SETTINGS, cache)
    assert (third.embedded, third.cached) == (3, len(images))


@pytest.mark.slow  # loads CLIP three times
def test_random_weights_are_the_same_everywhere_and_another_model_is_cached_apart(
        project, tmp_path):
    _, images = grouped_images(project, tmp_path / "a")
    images = images.head(3)
    a = embed_images(images, project.original_dir, SETTINGS, tmp_path / "a")
    b = embed_images(images, project.original_dir, SETTINGS, tmp_path / "b")
    assert np.allclose(np.stack(a.table["embedding"]), np.stack(b.table["embedding"]), atol=1e-5)
    other = dataclasses.replace(SETTINGS, seed=1)
    c = embed_images(images, project.original_dir, other, tmp_path / "a")
    assert c.embedded == 3 and c.model_id == "ViT-B-32/random-seed1"
    assert not np.allclose(np.stack(c.table["embedding"]), np.stack(a.table["embedding"]))


@pytest.mark.slow  # loads CLIP and embeds a project
def test_an_undecodable_render_is_reported_not_cached_and_the_rest_embedded(
        project, tmp_path):
    _, images = grouped_images(project, tmp_path)
    images = images.head(4).copy()
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)  # damaged after it was scanned
    images.loc[images.index[1], "image_path"] = str(broken)
    result = embed_images(images, project.original_dir, SETTINGS, tmp_path)
    assert result.embedded == 3 and list(result.failed) == [str(broken)]
    assert result.failed[str(broken)].startswith(("corrupt header", "not an image"))
    retry = embed_images(images, project.original_dir, SETTINGS, tmp_path)
    assert retry.cached == 3 and list(retry.failed) == [str(broken)]  # tried again


def test_weights_neither_cached_nor_reachable_fail_at_once_naming_the_fix(
        tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import open_clip  # noqa: F401  loaded before the clock starts: only the check is timed

    started = time.monotonic()
    with pytest.raises(UserError, match=r"not in the local cache.*embed.pretrained=null"):
        check_weights_reachable("ViT-B-32", "openai")
    assert time.monotonic() - started < 5  # open_clip alone retries for about a minute
    # Once cached (as `huggingface_hub` lays files out), the same check passes offline.
    repo = tmp_path / "models--timm--vit_base_patch32_clip_224.openai"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc")
    (repo / "snapshots" / "abc").mkdir(parents=True)
    (repo / "snapshots" / "abc" / "open_clip_pytorch_model.bin").write_bytes(b"weights")
    check_weights_reachable("ViT-B-32", "openai")


def test_unknown_tags_and_missing_files_are_config_errors(tmp_path):
    with pytest.raises(UserError, match="no weights 'opneai' for ViT-B-32"):
        check_weights_reachable("ViT-B-32", "opneai")
    missing = dataclasses.replace(SETTINGS, pretrained=str(tmp_path / "clip.pt"))
    with pytest.raises(UserError, match="is not a file"):
        model_id(missing)


def test_model_ids_name_weights_by_content_and_reduced_precision(tmp_path):
    weights = tmp_path / "my clip.pt"
    weights.write_bytes(b"PK\x03\x04 a torch checkpoint's zip archive")
    local = model_id(dataclasses.replace(SETTINGS, pretrained=str(weights)))
    weights.rename(tmp_path / "moved.pt")
    assert local == model_id(dataclasses.replace(SETTINGS, pretrained=str(tmp_path / "moved.pt")))
    assert local.startswith("ViT-B-32/file-")
    assert model_id(dataclasses.replace(SETTINGS, pretrained="openai", precision="bf16")) == \
        "ViT-B-32/openai+bf16"


def not_checkpoints(folder):
    """What a failed download or a wrong file leaves under a checkpoint's name."""
    folder.mkdir(exist_ok=True)
    files = {"random bytes": bytes(np.random.default_rng(3).integers(0, 256, 4096,
                                                                     dtype=np.uint8)),
             "a pickle": pickle.dumps({"model": "ViT-B-32", "epoch": 3}),
             "an error page": b"<!DOCTYPE html><html><body>404 Not Found</body></html>",
             "an empty file": b""}
    out = {}
    for what, data in files.items():
        out[what] = folder / f"{what.replace(' ', '_')}.pt"
        out[what].write_bytes(data)
    return out


@pytest.mark.parametrize("what", ["random bytes", "a pickle", "an error page", "an empty file"])
def test_a_file_that_is_not_a_checkpoint_is_one_line_naming_the_setting(tmp_path, what):
    path = not_checkpoints(tmp_path)[what]
    settings = dataclasses.replace(SETTINGS, pretrained=str(path))
    for fails in (lambda: model_id(settings), lambda: load_clip(settings, "cpu")):
        with pytest.raises(UserError) as err:
            fails()
        message = str(err.value)
        assert "\n" not in message
        assert message.startswith(f"embed.pretrained {path} is not an open_clip checkpoint")
        assert "download it again" in message


def test_the_command_says_it_in_one_line_exit_2(tmp_path, monkeypatch, capsys):
    from backfill import cli

    path = not_checkpoints(tmp_path)["an error page"]
    settings = dataclasses.replace(SETTINGS, pretrained=str(path))
    stage = types.SimpleNamespace(run=lambda project: load_clip(settings, "cpu"))
    monkeypatch.setitem(cli.BY_NAME, "embed", stage)
    monkeypatch.setattr(cli, "load_project", lambda name: None)
    assert cli.main(["embed", "p"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "embed.pretrained" in err[0] and str(path) in err[0]


def test_checkpoint_formats_pass_and_another_models_weights_are_one_line(tmp_path):
    import safetensors.torch
    import torch

    weights = {"proj": torch.zeros(2, 2)}
    zipped, legacy, safe = tmp_path / "a.pt", tmp_path / "b.pth", tmp_path / "c.safetensors"
    torch.save(weights, zipped)
    torch.save(weights, legacy, _use_new_zipfile_serialization=False)
    safetensors.torch.save_file(weights, safe)
    for path in (zipped, legacy, safe):  # named by content: nothing refused
        assert model_id(dataclasses.replace(SETTINGS, pretrained=str(path))).startswith(
            "ViT-B-32/file-")
    # A real checkpoint of something else: torch's many-line key list becomes one line.
    with pytest.raises(UserError, match=r"^embed.pretrained .*a.pt is not an open_clip "
                                          r"checkpoint of ViT-B-32 \(") as err:
        load_clip(dataclasses.replace(SETTINGS, pretrained=str(zipped)), "cpu")
    assert "\n" not in str(err.value)
