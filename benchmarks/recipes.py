"""Train each recipe once on the full data and report its accuracy and training time.

    python benchmarks/recipes.py --recipes basic dropout three-conv deep --out runs/bench

Prints one JSON object (with the machine it ran on) and a Markdown table for the README.
Checkpoints are chosen on the validation split; the test set is only measured, afterwards.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from mnist_cnn import RECIPES, load_mnist
from mnist_cnn.evaluate import evaluate_run
from mnist_cnn.train import configure_threads, train_run


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), help="recipes to train (default: all)")
    parser.add_argument(
        "--out", type=Path, default=Path("runs/bench"), help="parent of the run folders (default: runs/bench)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of every run (default: 0)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (default: one per core)")
    args = parser.parse_args()

    threads = configure_threads(args.threads)
    data = load_mnist()
    rows = []
    for name in args.recipes:
        config = RECIPES[name].config.replace(seed=args.seed)
        start = time.perf_counter()
        run = train_run(config, data, args.out / f"{name}-seed{args.seed}", recipe=name, device="cpu", progress=False)
        metrics = evaluate_run(run.run_dir, data)
        rows.append({
            "recipe": name,
            "epochs": config.epochs,
            "batch_size": config.batch_size,
            "best_epoch": run.fit.best_epoch,
            "val_accuracy": metrics["val_accuracy"],
            "test_accuracy": metrics["test_accuracy"],
            "train_seconds": round(run.fit.train_seconds, 1),
            "seconds_per_epoch": round(run.fit.train_seconds / max(1, len(run.fit.history)), 1),
            "total_seconds": round(time.perf_counter() - start, 1),
        })  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    machine = {"cpu": cpu_name(), "cores": threads, "torch": torch.__version__, "python": platform.python_version()}
    print(json.dumps({"machine": machine, "results": rows}, indent=2))
    print(f"\n{machine['cpu']}, {threads} threads, torch {machine['torch']}\n")
    print("| recipe | epochs | batch | kept epoch | val accuracy | test accuracy | training time |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['recipe']} | {r['epochs']} | {r['batch_size']} | {r['best_epoch']} | {r['val_accuracy']:.4f} | "
              f"{r['test_accuracy']:.4f} | {r['train_seconds']:.0f} s ({r['seconds_per_epoch']:.1f} s/epoch) |")  # fmt: skip


if __name__ == "__main__":
    main()
