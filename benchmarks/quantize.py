"""int8 against float32 on ONNX Runtime: test accuracy on all 10,000 test images, and images per second.

For each model folder (default: the model that ships with the package), a copy is exported to
``model.onnx`` and quantised to ``model.int8.onnx`` as ``mnist-cnn export RUN --quantize int8`` does
(calibrated on 500 images of the run's training split); the folder itself is left as it is. Then:

- accuracy of both files on the full test set, and how many test images they label differently;
- speed through the public API (``load_model(..., runtime=...).predict_proba`` on uint8 test images,
  input checks and normalisation included) at each batch size and thread count. The two runtimes
  are measured interleaved (fp32, int8, fp32, int8, ...): each figure is the median of the rounds, and
  the ratio is the median of each round's int8 / fp32, so a machine shared with other jobs slows both
  alike and their ratio stays meaningful. With one thread the CPU time of the calling thread is
  measured too (ONNX Runtime computes in it), which other processes hardly disturb: images per CPU-second.

    python benchmarks/quantize.py                               # the shipped model (best)
    python benchmarks/quantize.py runs/basic --rounds 9 --out runs/bench/quantize.json

The JSON goes to standard output, progress and a table to standard error.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from mnist_cnn import default_model_dir, load_mnist, load_model
from mnist_cnn.export import export_onnx
from mnist_cnn.folder import read_config
from mnist_cnn.quantize import calibration_images, quantize_onnx

RUNTIMES = ("onnxruntime", "onnxruntime-int8")
ISA = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8")  # what int8 kernels can use


def cpu() -> dict:
    """The CPU's name and which of the instruction sets int8 and bf16 kernels use it offers."""
    name, flags = platform.processor() or "unknown", set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    return {"cpu": name, "cores": len(os.sched_getaffinity(0)), "isa": [f for f in ISA if f in flags]}


def accuracy(folder: Path, images: np.ndarray, labels: np.ndarray) -> dict:
    predicted = {rt: load_model(folder, runtime=rt).predict(images) for rt in RUNTIMES}
    fp32, int8 = (predicted[rt] for rt in RUNTIMES)
    return {
        "fp32_accuracy": float((fp32 == labels).mean()),
        "int8_accuracy": float((int8 == labels).mean()),
        "labels_differ": int((fp32 != int8).sum()),
        "test_images": len(labels),
    }


def _rate(fn, batch: np.ndarray, min_seconds: float) -> tuple[float, float]:
    """(images per wall second, images per CPU-second of this thread) over calls lasting ``min_seconds``."""
    calls, t0, c0 = 0, time.perf_counter(), time.thread_time()
    while time.perf_counter() - t0 < min_seconds:
        fn(batch)
        calls += 1
    wall, cpu_s = time.perf_counter() - t0, time.thread_time() - c0
    return len(batch) * calls / wall, len(batch) * calls / max(cpu_s, 1e-9)


def speed(folder: Path, images: np.ndarray, batch: int, threads: int, rounds: int, min_seconds: float) -> dict:
    """Median images/s of each runtime, measured interleaved; per CPU-second too with one thread."""
    x = images[:batch]
    fns = {rt: load_model(folder, runtime=rt, threads=threads).predict_proba for rt in RUNTIMES}
    for fn in fns.values():
        for _ in range(3):
            fn(x)  # warm-up: allocation, kernel choice
    seen = {rt: [] for rt in RUNTIMES}
    for _ in range(rounds):
        for rt, fn in fns.items():
            seen[rt].append(_rate(fn, x, min_seconds))
    out = {"batch": batch, "threads": threads}
    for rt in RUNTIMES:
        out[rt] = {"images_per_s": statistics.median(w for w, _ in seen[rt]),
                   "rounds": [round(w) for w, _ in seen[rt]]}  # fmt: skip
        if threads == 1:
            out[rt]["images_per_cpu_s"] = statistics.median(c for _, c in seen[rt])
    # The ratio of each round's pair (measured seconds apart, under the same load), then the median.
    pairs = list(zip(*(seen[rt] for rt in RUNTIMES), strict=True))
    out["int8_over_fp32"] = statistics.median(int8[0] / fp32[0] for fp32, int8 in pairs)
    if threads == 1:
        out["int8_over_fp32_cpu"] = statistics.median(int8[1] / fp32[1] for fp32, int8 in pairs)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="*", type=Path, help="model folders (default: the model that ships with mnist-cnn)")
    p.add_argument("--data-dir", type=Path, default=None, help="the four MNIST files (default: $MNIST_CNN_DATA)")
    p.add_argument("--batches", nargs="+", type=int, default=[1024], help="batch sizes (default: 1024)")
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2], help="ONNX Runtime threads (default: 1 2)")
    p.add_argument("--rounds", type=int, default=7, help="interleaved measurements per setting; the median is reported (default: 7)")  # fmt: skip
    p.add_argument("--min-seconds", type=float, default=0.5, help="each measurement lasts at least this long (default: 0.5)")  # fmt: skip
    p.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = p.parse_args(argv)

    data = load_mnist(args.data_dir)
    images, labels = data.test_images.numpy(), data.test_labels.numpy()
    load_before, models = os.getloadavg()[0], []
    with tempfile.TemporaryDirectory() as tmp:
        for run in args.runs or [default_model_dir()]:
            name = str(run) if args.runs else "the shipped default model"  # no machine path in the JSON
            folder = Path(tmp) / f"{len(models)}"
            shutil.copytree(run, folder, ignore=shutil.ignore_patterns("checkpoints", "*.onnx"))
            export_onnx(folder)
            quantize_onnx(folder, calibration_images(read_config(folder), data))
            config = read_config(folder)
            entry = {"run": name, "architecture": config["architecture"], "recipe": config.get("recipe"),
                     "bytes": {rt: (folder / name).stat().st_size for rt, name in zip(RUNTIMES, ("model.onnx", "model.int8.onnx"), strict=True)},
                     **accuracy(folder, images, labels), "speed": []}  # fmt: skip
            print(f"{entry['architecture']}: test accuracy {entry['fp32_accuracy']:.2%} -> {entry['int8_accuracy']:.2%}, "
                  f"{entry['labels_differ']} labels differ", file=sys.stderr, flush=True)  # fmt: skip
            for threads in args.threads:
                for batch in args.batches:
                    row = speed(folder, images, batch, threads, args.rounds, args.min_seconds)
                    entry["speed"].append(row)
                    print(f"  batch {batch}, {threads} thread(s): int8 / fp32 = {row['int8_over_fp32']:.2f}",
                          file=sys.stderr, flush=True)  # fmt: skip
            models.append(entry)
    import onnxruntime

    result = {
        "machine": {
            **cpu(),
            "python": platform.python_version(),
            "onnxruntime": onnxruntime.__version__,
            "load_average": [load_before, os.getloadavg()[0]],
        },  # fmt: skip
        "protocol": f"interleaved fp32/int8, median of {args.rounds} rounds of >= {args.min_seconds} s",
        "models": models,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(table(models), file=sys.stderr)
    return 0


def table(models: list[dict]) -> str:
    """One line per model, batch size and thread count: accuracy, img/s of each runtime and their ratio."""
    lines = ["| model | test accuracy fp32 -> int8 | labels differ | batch | threads | img/s fp32 -> int8 | int8 / fp32 "
             "| img per CPU-s fp32 -> int8 | int8 / fp32 |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for m in models:
        for s in m["speed"]:
            fp32, int8 = (s[rt] for rt in RUNTIMES)
            cpu_cells = "- | -"
            if "int8_over_fp32_cpu" in s:
                cpu_cells = f"{fp32['images_per_cpu_s']:,.0f} -> {int8['images_per_cpu_s']:,.0f} | {s['int8_over_fp32_cpu']:.2f}x"  # fmt: skip
            lines.append(f"| {m['architecture']} | {m['fp32_accuracy']:.2%} -> {m['int8_accuracy']:.2%} | {m['labels_differ']} "
                         f"| {s['batch']:,} | {s['threads']} | {fp32['images_per_s']:,.0f} -> {int8['images_per_s']:,.0f} "
                         f"| {s['int8_over_fp32']:.2f}x | {cpu_cells} |")  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
