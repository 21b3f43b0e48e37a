"""Inference speed of every registered architecture on PyTorch and on ONNX Runtime.

Measures images per second and latency per call at batch sizes 1, 64 and 1,024 through the
public API (``Classifier.predict_proba`` / ``OnnxClassifier.predict_proba`` on uint8 images, so
input checks and normalisation are included), for several settings of each runtime:

- ``torch``: the library's Classifier as shipped (inference_mode, channels-last, chunks of 256);
- ``torch NCHW, chunks of 1000``: the Classifier as it was before these measurements;
- ``torch no_grad``: ``torch.no_grad`` instead of ``inference_mode``, to show what that buys;
- ``onnxruntime``: the exported model.onnx;

each with 1 and 2 threads.

Weights are untrained (random initialisation): speed does not depend on their values.

    python benchmarks/inference.py                       # all models, JSON then a table
    python benchmarks/inference.py --models basic --repeats 7 --out runs/bench/inference.json

Run it on a quiet machine (``flock /tmp/mnist-cnn-bench.lock python benchmarks/inference.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mnist_cnn import create_model, list_models, load_model
from mnist_cnn.export import export_onnx
from mnist_cnn.inference import save_model, to_model_input

BATCHES = (1, 64, 1024)


def cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def time_call(fn, batch: np.ndarray, min_seconds: float, repeats: int) -> list[float]:
    """Seconds per call: ``repeats`` measurements, each the mean over enough calls to last ``min_seconds``."""
    for _ in range(3):
        fn(batch)  # warm-up: allocation, kernel choice
    t0 = time.perf_counter()
    fn(batch)
    once = max(time.perf_counter() - t0, 1e-6)
    calls = max(1, int(min_seconds / once))
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn(batch)
        out.append((time.perf_counter() - t0) / calls)
    return out


def variants(folder: Path):
    """(name, threads, predict function) for each runtime setting measured."""
    from mnist_cnn.export import OnnxClassifier

    for threads in (1, 2):
        yield "torch", threads, load_model(folder).predict_proba  # as shipped: channels-last, chunks of 256

        before = load_model(folder)  # the library before this measurement: NCHW, chunks of 1,000
        before.channels_last = False
        before.model.to(memory_format=torch.contiguous_format)
        yield "torch NCHW, chunks of 1000", threads, lambda images, clf=before: clf.predict_proba(images, 1000)

        no_grad = load_model(folder)

        def without_inference_mode(images, clf=no_grad):
            x = to_model_input(images).contiguous(memory_format=torch.channels_last)
            with torch.no_grad():
                return torch.softmax(torch.cat([clf.model(x[i : i + 256]) for i in range(0, len(x), 256)]), 1).numpy()

        yield "torch no_grad", threads, without_inference_mode
        yield "onnxruntime", threads, OnnxClassifier(folder, threads=threads).predict_proba


def _random_digits(rng: np.random.Generator, count: int) -> np.ndarray:
    """Random pixels in the middle 20x20 of a black 28x28 frame, as MNIST's digits sit: a light border
    would send an image through preprocess_image first (mnist_cnn.inputs), which is not what is timed."""
    images = np.zeros((count, 28, 28), np.uint8)
    images[:, 4:24, 4:24] = rng.integers(0, 256, (count, 20, 20), dtype=np.uint8)
    return images


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list_models(), choices=list_models(), help="architectures (default: all)")  # fmt: skip
    p.add_argument("--batches", nargs="+", type=int, default=list(BATCHES), help="batch sizes (default: 1 64 1024)")
    p.add_argument("--repeats", type=int, default=5, help="measurements per setting; the median is reported (default: 5)")  # fmt: skip
    p.add_argument("--min-seconds", type=float, default=0.2, help="each measurement lasts at least this long (default: 0.2)")  # fmt: skip
    p.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = p.parse_args(argv)

    rng = np.random.default_rng(0)
    images = {b: _random_digits(rng, b) for b in args.batches}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            torch.manual_seed(0)
            folder = save_model(Path(tmp) / name, create_model(name), {"architecture": name})
            export_onnx(folder)
            for runtime, threads, fn in variants(folder):
                torch.set_num_threads(threads)
                for b in args.batches:
                    seconds = statistics.median(time_call(fn, images[b], args.min_seconds, args.repeats))
                    rows.append({
                        "model": name, "runtime": runtime, "threads": threads, "batch": b,
                        "ms_per_call": seconds * 1e3, "us_per_image": seconds * 1e6 / b, "images_per_s": b / seconds,
                    })  # fmt: skip
                    print(f"{name:>10} {runtime:>24} {threads}t batch {b:>5}: {b / seconds:>10,.0f} img/s "
                          f"{seconds * 1e3:8.3f} ms/call", file=sys.stderr, flush=True)  # fmt: skip
    result = {
        "machine": {
            "cpu": cpu_name(),
            "cores": len(os.sched_getaffinity(0)),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "onnxruntime": __import__("onnxruntime").__version__,
        },  # fmt: skip
        "weights": "untrained (random initialisation, seed 0)",
        "repeats": args.repeats,
        "rows": rows,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(table(rows), file=sys.stderr)
    return 0


def table(rows: list[dict]) -> str:
    """Images per second (and ms per call at batch 1) per model, runtime and threads: one line each."""
    batches = sorted({r["batch"] for r in rows})
    head = "| model | runtime | threads | " + " | ".join(f"batch {b:,} img/s" for b in batches) + " | batch 1 latency |"
    lines = [head, "|" + "---|" * (4 + len(batches))]
    keys = dict.fromkeys((r["model"], r["runtime"], r["threads"]) for r in rows)
    for model, runtime, threads in keys:
        cells = {r["batch"]: r for r in rows if (r["model"], r["runtime"], r["threads"]) == (model, runtime, threads)}
        nums = " | ".join(f"{cells[b]['images_per_s']:,.0f}" if b in cells else "-" for b in batches)
        lat = f"{cells[1]['ms_per_call']:.3f} ms" if 1 in cells else "-"
        lines.append(f"| {model} | {runtime} | {threads} | {nums} | {lat} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
