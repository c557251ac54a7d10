"""Model versions: the ranker and the crop proposer, loaded exactly as they were trained.

A version (``conf/model/<name>.yaml``) names, for each model, its architecture, its
checkpoint, and how its inputs were prepared when it was trained: the CLIP model of its
embeddings, their normalisation (``raw`` or ``l2``) and, for the crop proposer, the
divisor of the image size. Inputs are prepared here from those settings, never guessed
by a caller (the original backfill L2-normalised what the ranker had learnt raw, and
divided sizes by 10000 where training used 2048).

Checkpoints are the person's format: a plain ``state_dict`` of an ``nn.Sequential``
named ``net`` (``net.0.weight`` ...), or a dict holding it as ``model_state_dict``;
tensors saved on any device (their models were saved on Apple "mps").
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from backfill.config.errors import UserError

RANKERS = {"mlp", "highest_stage"}
CROPPERS = {"mlp", "full_frame"}
NORMALISATIONS = {"raw", "l2"}


def model_versions(root: Path) -> list[str]:
    """The model versions a project may name: conf/model/<name>.yaml."""
    return sorted(p.stem for p in (root / "conf" / "model").glob("*.yaml"))


def check_version_name(root: Path, name: str) -> None:
    """Raise UserError unless conf/model/ has a version ``name``."""
    if name not in model_versions(root):
        raise UserError(f"no model version '{name}' in conf/model/ (known: "
                          f"{', '.join(model_versions(root))}).")


@dataclass(frozen=True)
class ModelSpec:
    """One model of a version."""

    architecture: str
    checkpoint: Path | None = None
    hidden: tuple[int, ...] = ()
    dropout: float = 0.0
    normalization: str = "raw"
    size_divisor: float = 2048.0  # crop proposer: the size input is (width, height) / this

    @property
    def learned(self) -> bool:
        return self.architecture == "mlp"


@dataclass(frozen=True)
class ModelVersion:
    name: str
    embedding_model: str | None  # the CLIP model id its embeddings must come from
    ranker: ModelSpec
    crop: ModelSpec

    @classmethod
    def from_config(cls, cfg, root: Path) -> ModelVersion:
        name = str(cfg.get("name") or "")
        where = f"model version '{name}' (conf/model/{name}.yaml)"

        def spec(key: str, allowed: set[str]) -> ModelSpec:
            part = cfg.get(key)
            if part is None or part.get("architecture") not in allowed:
                raise UserError(f"{where}: {key}.architecture must be one of "
                                  f"{', '.join(sorted(allowed))}.")
            checkpoint = part.get("checkpoint")
            if part.architecture == "mlp" and not checkpoint:
                raise UserError(f"{where}: {key} is an mlp but names no checkpoint.")
            norm = str(part.get("normalization", "raw"))
            if norm not in NORMALISATIONS:
                raise UserError(f"{where}: {key}.normalization is {norm!r}: use raw or l2.")
            path = None
            if checkpoint:
                path = Path(str(checkpoint)).expanduser()
                path = path if path.is_absolute() else root / path
            return ModelSpec(str(part.architecture), path, tuple(part.get("hidden") or ()),
                             float(part.get("dropout", 0.0)), norm,
                             float(part.get("size_divisor", 2048)))

        ranker, crop = spec("ranker", RANKERS), spec("crop", CROPPERS)
        embedding = cfg.get("embedding_model")
        if (ranker.learned or crop.learned) and not embedding:
            raise UserError(f"{where}: name the embedding_model its models were trained on, "
                              "e.g. ViT-B-32/openai.")
        return cls(name, str(embedding) if embedding else None, ranker, crop)

    @property
    def needs_embeddings(self) -> bool:
        return self.ranker.learned or self.crop.learned


def mlp(n_in: int, hidden: tuple[int, ...], n_out: int, dropout: float, sigmoid: bool):
    """The person's layout: Linear, ReLU and Dropout per hidden layer (none after the
    last), then the output Linear (and a Sigmoid for boxes). Ranker v3: ``net.0``, ``net.3``,
    ``net.5``; crop proposer v2: ``net.0``, ``net.3``, ``net.6``, ``net.8``."""
    from torch import nn

    layers: list = []
    sizes = (n_in, *hidden)
    for k, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers += [nn.Linear(a, b), nn.ReLU()]
        if k < len(hidden) - 1:
            layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(sizes[-1], n_out))
    if sigmoid:
        layers.append(nn.Sigmoid())

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(*layers)

        def forward(self, x):
            return self.net(x)

    return Net()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_state_dict(path: Path) -> dict:
    """The tensors of a checkpoint in either of the person's formats, on the CPU."""
    import torch

    if not path.is_file():
        raise UserError(f"checkpoint {path} is missing: copy the model file there, or point "
                          "the model version's checkpoint at it.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and device errors all mean "not loadable"
        raise UserError(f"cannot read checkpoint {path}: {exc}") from exc
    if isinstance(state, dict) and "model_state_dict" in state:
        state = state["model_state_dict"]
    if not isinstance(state, dict) or not state:
        raise UserError(f"checkpoint {path} holds no state_dict.")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _shapes(state: dict) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}


def build(spec: ModelSpec, n_in: int, n_out: int, sigmoid: bool):
    """The network of ``spec`` with its checkpoint's weights, in eval mode on the CPU."""
    net = mlp(n_in, spec.hidden, n_out, spec.dropout, sigmoid)
    state = read_state_dict(spec.checkpoint)
    want, got = _shapes(net.state_dict()), _shapes(state)
    if want != got:
        diff = [f"{k}: checkpoint {got.get(k, 'missing')}, expected {want.get(k, 'none')}"
                for k in sorted(set(want) | set(got)) if want.get(k) != got.get(k)]
        raise UserError(
            f"checkpoint {spec.checkpoint} does not fit the version's architecture "
            f"(input {n_in}, hidden {list(spec.hidden)}):\n  " + "\n  ".join(diff[:6])
            + "\nFix the version's hidden sizes, or its embedding_model if the input differs."
        )
    net.load_state_dict(state)
    return net.eval()


def normalise(x: np.ndarray, how: str) -> np.ndarray:
    """Embeddings as the model was trained on them: ``raw`` as CLIP gives them, or ``l2``."""
    x = np.asarray(x, dtype=np.float32)
    if how == "l2":
        return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
    return x


def crop_inputs(embeddings: np.ndarray, widths: np.ndarray, heights: np.ndarray,
                spec: ModelSpec) -> np.ndarray:
    """The crop proposer's input: the embedding, then width and height / size_divisor."""
    size = np.stack([widths, heights], axis=1).astype(np.float32) / spec.size_divisor
    return np.concatenate([normalise(embeddings, spec.normalization), size], axis=1)


def save_checkpoint(net, path: Path) -> None:
    """A plain state_dict, as the person's models are saved (loadable by their tools)."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save({k: v.detach().cpu() for k, v in net.state_dict().items()}, tmp)
    tmp.replace(path)


def model_label(spec: ModelSpec) -> str:
    """How a model is named in outputs: its architecture and the checkpoint's hash."""
    if spec.checkpoint is None:
        return spec.architecture
    return f"{spec.architecture}:{spec.checkpoint.name}@sha256:{file_sha256(spec.checkpoint)[:16]}"
