"""CLIP's image tower on other CPU runtimes: is one fast enough, and close enough, to use?

The issue's rule: keep a runtime only if it is at least 1.5x torch's speed on the model
alone (fp32, batch 32, the embed stage's threads) and its embeddings stay within 1e-4
(max abs, raw embeddings as the person's checkpoints read them) of torch's. This script
exports ``encode_image`` of the configured CLIP model to ONNX (torch's exporter), runs it
on ONNX Runtime and on OpenVINO when they are installed, and prints images per second
for each against torch measured in the same run, interleaved (best of --repeat), with
the largest difference from torch's embeddings. Random weights (the same compute as
trained ones, no download); the inputs are random tensors shaped as preprocess makes.

The runtimes are not dependencies of backfill: install them beside it to run the trial,
    pip install onnxruntime openvino onnx
A runtime that is not installed is reported as skipped.

    python benchmarks/bench_runtime.py [--batch 32] [--threads 2] [--batches 4] [--repeat 3]
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from timing import timed

from backfill.models.clip import ClipSettings, load_clip

SPEEDUP = 1.5  # the bar for adopting a runtime
MAX_DIFF = 1e-4


def export(model, batch: int, folder: Path) -> Path:
    import torch

    class Tower(torch.nn.Module):
        def __init__(self, clip):
            super().__init__()
            self.clip = clip

        def forward(self, x):
            return self.clip.encode_image(x)

    path = folder / "clip_image.onnx"
    x = torch.randn(batch, 3, 224, 224)
    torch.onnx.export(Tower(model).eval(), (x,), str(path), input_names=["x"],
                      output_names=["embedding"], dynamic_axes={"x": {0: "n"}},
                      opset_version=17, dynamo=False)
    return path


def onnxruntime_runner(path: Path, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {"x": x})[0]


def openvino_runner(path: Path, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(str(path), "CPU", {
        "INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32",
        "PERFORMANCE_HINT": "LATENCY"})
    return lambda x: compiled(x)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batches", type=int, default=4, help="batches per timing")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--model", default="ViT-B-32")
    args = parser.parse_args()
    makers = {"onnxruntime": onnxruntime_runner, "openvino": openvino_runner}
    present = {name: make for name, make in makers.items() if importlib.util.find_spec(name)}
    skipped = [f"{name}: not installed (pip install {name})" for name in makers
               if name not in present]
    if not present:  # nothing to compare: no model load, no export
        print("CPU runtime trial skipped: " + "; ".join(skipped))
        return

    import torch

    torch.set_num_threads(args.threads)
    settings = ClipSettings(args.model, None, 0, "cpu", args.batch, args.threads, "fp32",
                            10**8)
    model, _ = load_clip(settings, "cpu")
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal((args.batch, 3, 224, 224), dtype=np.float32)
              for _ in range(args.batches)]
    n = args.batch * args.batches

    def torch_run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model.encode_image(torch.from_numpy(x)).float().numpy()

    runners: dict[str, Callable[[np.ndarray], np.ndarray]] = {"torch": torch_run}
    versions = {"torch": torch.__version__}
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = export(model, args.batch, Path(tmp))
        for name, make in present.items():
            runners[name] = make(onnx_path, args.threads)
            versions[name] = str(getattr(importlib.import_module(name), "__version__", "?")
                                 ).split("-")[0]
        reference = [torch_run(x) for x in inputs]
        diffs = {name: max(float(np.abs(run(x) - ref).max())
                           for x, ref in zip(inputs, reference, strict=True))
                 for name, run in runners.items()}
        best = {name: float("inf") for name in runners}
        for _ in range(args.repeat):  # interleaved: each runtime sees the same machine
            for name, run in runners.items():
                seconds, _ = timed(lambda run=run: [run(x) for x in inputs])
                best[name] = min(best[name], seconds)

    print(f"{args.model}, random weights, fp32, batch {args.batch}, {args.threads} threads, "
          f"{n} images per timing, best of {args.repeat}")
    print(f"  {'runtime':<22} {'images/s':>9} {'x torch':>8} {'max |diff|':>11}  verdict")
    for name in runners:
        rate = n / best[name]
        speedup = best["torch"] / best[name]
        ok = name == "torch" or (speedup >= SPEEDUP and diffs[name] <= MAX_DIFF)
        verdict = "reference" if name == "torch" else (
            "ADOPT" if ok else f"keep torch (needs >= {SPEEDUP}x and <= {MAX_DIFF:g})")
        label = f"{name} {versions[name]}"
        print(f"  {label:<22} {rate:9.1f} {speedup:8.2f} {diffs[name]:11.2e}  {verdict}")
    for line in skipped:
        print(f"  skipped {line}")


if __name__ == "__main__":
    main()
