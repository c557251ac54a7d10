"""The CLIP image encoder: open_clip, its weights found without hanging, on the best device.

A model id names exactly what produced an embedding: the open_clip model, its weights
(``openai``, ``random-seed0``, ``file-<hash>`` for a local checkpoint, or an ``hf-hub:``
repo) and any reduced precision. Embeddings are cached and checked against it, so a
ranker is never fed embeddings of another model.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import blake3

from backfill.config.errors import UserError
from backfill.config.settings import EmbedConfig, section, threads
from backfill.files.network import unreachable

HUB_HOST = ("huggingface.co", 443)  # where open_clip fetches weights from
WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
# How the files open_clip loads begin: torch.save's zip archive (also TorchScript and
# .npz), torch.save's older format (a pickle of its magic number), a .npy array. A
# safetensors file begins with its header's length, then the JSON header itself.
CHECKPOINT_STARTS = (b"PK\x03\x04", b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19.", b"\x93NUMPY")


@dataclass(frozen=True)
class ClipSettings:
    model: str
    pretrained: str | None
    seed: int
    device: str
    batch_size: int
    workers: int
    precision: str
    max_pixels: int  # scan.max_pixels: larger images are never decoded (not in the model id)

    @classmethod
    def from_config(cls, cfg, root: Path, max_pixels: int) -> ClipSettings:
        """From the project's embed section, and its scan.max_pixels."""
        c = section(EmbedConfig, cfg, "embed")  # types and ranges, checked once
        pretrained = c.pretrained
        if pretrained and _looks_like_path(pretrained):
            path = Path(pretrained).expanduser()
            pretrained = str(path if path.is_absolute() else root / path)
        return cls(c.model, pretrained, c.seed, c.device, c.batch_size, threads(c.workers),
                   c.precision, int(max_pixels))


def _looks_like_path(pretrained: str) -> bool:
    """A local checkpoint rather than a tag (openai) or a hub id (hf-hub:org/repo)."""
    if pretrained.startswith("hf-hub:"):
        return False
    return "/" in pretrained or pretrained.endswith((".pt", ".pth", ".bin", ".safetensors"))


def checkpoint_problem(path: Path) -> str | None:
    """Why ``path`` cannot be a checkpoint open_clip loads, from its first bytes (None: it
    may be one). A failed download is often an error page, or nothing, saved as .pt."""
    with path.open("rb") as f:
        head = f.read(64)
        size = os.fstat(f.fileno()).st_size
    if not head:
        return "the file is empty"
    if head.startswith(CHECKPOINT_STARTS):
        return None
    n = int.from_bytes(head[:8], "little")
    if len(head) > 8 and 8 + n <= size and head[8:9] == b"{":
        return None  # safetensors
    if head.lstrip().startswith(b"<"):
        return "it is an HTML or XML page, not weights"
    if head.startswith(b"\x80"):
        return "it is a plain Python pickle, not a torch checkpoint"
    return "it is not a torch, TorchScript or safetensors file"


def not_a_checkpoint(path: str, model: str, why: str) -> UserError:
    return UserError(
        f"embed.pretrained {path} is not an open_clip checkpoint of {model} ({why}): download "
        "it again, or point embed.pretrained at an open_clip checkpoint file (.pt, .pth, "
        ".bin or .safetensors), a tag such as openai, or null.")


def check_checkpoint(pretrained: str, model: str) -> Path:
    """The local checkpoint file ``pretrained``, refused in one line when it is missing or
    plainly not a checkpoint."""
    path = Path(pretrained)
    if not path.is_file():
        raise UserError(f"embed.pretrained {pretrained} is not a file: give the path of "
                          "an open_clip checkpoint, a tag such as openai, or null.")
    why = checkpoint_problem(path)
    if why:
        raise not_a_checkpoint(pretrained, model, why)
    return path


def weights_tag(pretrained: str | None, seed: int, model: str) -> str:
    """The weights part of a model id; a local file is named by its content, not its path."""
    if pretrained is None:
        return f"random-seed{seed}"
    if _looks_like_path(pretrained):
        path = check_checkpoint(pretrained, model)
        with path.open("rb") as f:
            return "file-" + blake3.blake3(f.read()).hexdigest()[:12]
    return pretrained


def model_id(settings: ClipSettings) -> str:
    """What produced an embedding, e.g. ``ViT-B-32/openai`` or ``ViT-B-32/random-seed0``."""
    if settings.pretrained and settings.pretrained.startswith("hf-hub:"):
        base = settings.pretrained
    else:
        base = (f"{settings.model}/"
                f"{weights_tag(settings.pretrained, settings.seed, settings.model)}")
    return base if settings.precision == "fp32" else f"{base}+{settings.precision}"


def resolve_device(name: str) -> str:
    """``auto``: CUDA, then Apple MPS, then CPU; anything else as torch spells it."""
    import torch

    if name != "auto":
        if name.startswith("cuda") and not torch.cuda.is_available():
            raise UserError(f"embed.device is {name} but torch sees no CUDA GPU: use auto "
                              "or cpu.")
        if name == "mps" and not torch.backends.mps.is_available():
            raise UserError("embed.device is mps but this machine has no Apple GPU: use "
                              "auto or cpu.")
        return name
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def _hub_repo(model: str, pretrained: str) -> str | None:
    """The hub repo open_clip would download ``pretrained`` weights from, if any."""
    if pretrained.startswith("hf-hub:"):
        return pretrained.removeprefix("hf-hub:")
    import open_clip

    cfg = open_clip.get_pretrained_cfg(model, pretrained)
    if not cfg:
        known = ", ".join(open_clip.list_pretrained_tags_by_model(model)) or "none"
        raise UserError(f"open_clip has no weights '{pretrained}' for {model} (known: "
                          f"{known}); or give a local checkpoint file, or null.")
    return (cfg.get("hf_hub") or "").strip("/") or None


def _cached(repo: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return any(isinstance(try_to_load_from_cache(repo, f), str) for f in WEIGHT_FILES)


def _online(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False"):
        return False
    return unreachable(*HUB_HOST, timeout) is None


def check_weights_reachable(model: str, pretrained: str | None) -> None:
    """Fail at once, saying what to do, when weights are neither cached nor downloadable.

    open_clip would otherwise retry the download for about a minute and then fail with a
    message about the network."""
    if pretrained is None or _looks_like_path(pretrained):
        return
    repo = _hub_repo(model, pretrained)
    if repo is None or _cached(repo) or _online():
        return
    raise UserError(
        f"the {model} '{pretrained}' weights are not in the local cache and the hub is out "
        "of reach. Fix: run once on a machine online (they are cached in ~/.cache/"
        "huggingface, or $HF_HOME, which you can copy here); or set embed.pretrained to a "
        "local checkpoint file; or embed.pretrained=null for random weights (demo, tests)."
    )


def _first_line(exc: BaseException, limit: int = 160) -> str:
    line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return line if len(line) <= limit else line[:limit - 3] + "..."


def load_clip(settings: ClipSettings, device: str):
    """(model in eval mode on ``device``, its preprocessing transform)."""
    import open_clip
    import torch

    check_weights_reachable(settings.model, settings.pretrained)
    name, pretrained = settings.model, settings.pretrained
    if pretrained and pretrained.startswith("hf-hub:"):
        name, pretrained = pretrained, None
    if pretrained is None:
        torch.manual_seed(settings.seed)  # random weights, the same on every machine
    local = pretrained is not None and _looks_like_path(pretrained)
    if local:
        check_checkpoint(pretrained, name)
    # open_clip warns on the root logger about random weights; the model id says so.
    quiet = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR if pretrained is None else quiet)
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            name, pretrained=pretrained, device="cpu")
    except Exception as exc:
        if local:  # damaged, or another model's weights (torch lists every key, a line each)
            raise not_a_checkpoint(pretrained, name, _first_line(exc)) from None
        if isinstance(exc, RuntimeError):
            raise UserError(f"could not load {name} weights {pretrained}: {exc}") from exc
        raise
    finally:
        logging.getLogger().setLevel(quiet)
    return model.to(device).eval(), preprocess
