"""How fast could inference be on this CPU at all? Multiply-adds per image against the CPU's matmul peak.

    python benchmarks/roofline.py --models basic fast best --keras-images-per-second 15512

Counts the multiply-adds (MACs) of one forward pass of each architecture (every Conv2d and Linear
layer; pooling, batch norm and activations are extra), measures the throughput of a large matrix
product in float32 and bfloat16 with the same threads inference uses (the best case for the CPU's
vector units: no memory traffic to speak of), and divides. The product is PyTorch's: where its
library falls short of the processor (on an AMD EPYC guest with AVX-512, ONNX Runtime computed
``basic`` at 1.8x the float32 figure), the result bounds PyTorch-like runtimes, not the machine.
With ``--keras-images-per-second`` (the reference's ``model.predict`` throughput at batch 1,024, from keras_reference.py) it also prints
what 10x that figure would need. Prints JSON, then a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch import nn

from mnist_cnn import create_model
from mnist_cnn.runtime import configure_threads


def macs_per_image(model: nn.Module) -> int:
    """Multiply-adds of every Conv2d and Linear layer for one 1x28x28 image."""
    total = 0

    def count(module, _inputs, output):
        nonlocal total
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            total += output.numel() * (module.in_channels // module.groups) * kh * kw
        elif isinstance(module, nn.Linear):
            total += output.numel() * module.in_features

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.inference_mode():
        model.eval()(torch.zeros(1, 1, 28, 28))
    for h in hooks:
        h.remove()
    return total


def matmul_gmacs(dtype: torch.dtype, n: int = 2048, repeats: int = 7) -> float:
    """Median multiply-adds per second (in billions) of an n x n x n matrix product."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return n**3 / statistics.median(times) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["basic"], help="architectures (default: basic)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (default: one per core)")
    parser.add_argument(
        "--keras-images-per-second", type=float, default=None, help="Keras model.predict img/s at batch 1,024"
    )
    args = parser.parse_args()
    configure_threads(args.threads)
    peaks = {"float32": matmul_gmacs(torch.float32), "bfloat16": matmul_gmacs(torch.bfloat16)}
    rows = []
    for name in args.models:
        macs = macs_per_image(create_model(name))
        row = {"model": name, "macs_per_image": macs}
        for precision, gmacs in peaks.items():
            row[f"bound_images_per_second_{precision}"] = round(gmacs * 1e9 / macs)
        if args.keras_images_per_second:
            row["ten_x_keras_images_per_second"] = 10 * args.keras_images_per_second
            row["ten_x_keras_needs_gmacs"] = round(10 * args.keras_images_per_second * macs / 1e9, 1)
        rows.append(row)
    summary = {"threads": torch.get_num_threads(), "matmul_gmacs": {k: round(v, 1) for k, v in peaks.items()}}
    print(json.dumps({**summary, "models": rows}))
    print()
    print(f"matmul peak, {summary['threads']} threads: " + ", ".join(f"{k} {v:.1f} GMAC/s" for k, v in peaks.items()))
    print()
    head = "| model | MACs per image | bound float32 img/s | bound bfloat16 img/s |"
    if args.keras_images_per_second:
        head += " 10x Keras img/s | GMAC/s that needs |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for r in rows:
        line = (
            f"| {r['model']} | {r['macs_per_image']:,} | {r['bound_images_per_second_float32']:,} |"
            f" {r['bound_images_per_second_bfloat16']:,} |"
        )
        if args.keras_images_per_second:
            line += f" {r['ten_x_keras_images_per_second']:,.0f} | {r['ten_x_keras_needs_gmacs']} |"
        print(line)


if __name__ == "__main__":
    main()
