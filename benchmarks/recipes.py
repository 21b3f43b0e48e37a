"""Train recipes on the full data, one run per seed, and report accuracy and training time.

    python benchmarks/recipes.py --recipes basic dropout three-conv deep --seeds 0 1 2 --out runs/bench

Prints one JSON line per run, then a JSON summary (with the machine it ran on) and a Markdown
table: test accuracy as mean and spread (min-max) over the seeds, training time as the median.
Checkpoints are chosen on the validation split; the test set is only measured, afterwards.
``--reuse`` reads runs already in ``--out`` instead of training them again.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from mnist_cnn import RECIPES, load_mnist
from mnist_cnn.evaluate import evaluate_run, save_metrics
from mnist_cnn.inference import read_config
from mnist_cnn.runtime import configure_threads
from mnist_cnn.train import train_run


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_once(name: str, seed: int, out: Path, data, reuse: bool) -> dict:
    run_dir = out / f"{name}-seed{seed}"
    if not (reuse and (run_dir / "metrics.json").is_file()):
        config = RECIPES[name].config.replace(seed=seed)
        train_run(config, data, run_dir, recipe=name, device="cpu", progress=False)
        save_metrics(evaluate_run(run_dir, data))
    saved = read_config(run_dir)
    training, metrics = saved["training"], saved["metrics"]
    return {
        "recipe": name,
        "seed": seed,
        "epochs": saved["train_config"]["epochs"],
        "batch_size": saved["train_config"]["batch_size"],
        "best_epoch": training["best_epoch"],
        "val_accuracy": metrics["val_accuracy"],
        "test_accuracy": metrics["test_accuracy"],
        "train_seconds": training["train_seconds"],
        "seconds_per_epoch": round(training["train_seconds"] / max(1, training["epochs_completed"]), 2),
        "threads": training["threads"],
    }


def summarise(rows: list[dict]) -> dict:
    acc = [r["test_accuracy"] for r in rows]
    return {
        "recipe": rows[0]["recipe"],
        "seeds": [r["seed"] for r in rows],
        "epochs": rows[0]["epochs"],
        "batch_size": rows[0]["batch_size"],
        "best_epochs": [r["best_epoch"] for r in rows],
        "val_accuracy_mean": statistics.fmean(r["val_accuracy"] for r in rows),
        "test_accuracy_mean": statistics.fmean(acc),
        "test_accuracy_min": min(acc),
        "test_accuracy_max": max(acc),
        "train_seconds_median": statistics.median(r["train_seconds"] for r in rows),
        "seconds_per_epoch_median": statistics.median(r["seconds_per_epoch"] for r in rows),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), help="recipes to train (default: all)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="one run per seed (default: 0)")
    parser.add_argument(
        "--out", type=Path, default=Path("runs/bench"), help="parent of the run folders (default: runs/bench)"
    )
    parser.add_argument(
        "--reuse", action="store_true", help="read finished runs in --out instead of retraining (default: off)"
    )
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (default: one per core)")
    args = parser.parse_args()

    threads = configure_threads(args.threads)
    data = load_mnist()
    summaries = []
    for name in args.recipes:
        rows = []
        for seed in args.seeds:
            rows.append(run_once(name, seed, args.out, data, args.reuse))
            print(json.dumps(rows[-1]), flush=True)
        summaries.append(summarise(rows))
    machine = {"cpu": cpu_name(), "threads": threads, "torch": torch.__version__, "python": platform.python_version()}
    print(json.dumps({"machine": machine, "date": time.strftime("%Y-%m-%d"), "summary": summaries}, indent=2))
    print(f"\n{machine['cpu']}, {threads} threads, torch {machine['torch']}, seeds {args.seeds}\n")
    print(
        "| recipe | epochs | batch | kept epochs | val accuracy (mean) | test accuracy: mean (min-max) | training time (median) |"
    )
    print("|---|---|---|---|---|---|---|")
    for s in summaries:
        print(
            f"| {s['recipe']} | {s['epochs']} | {s['batch_size']} | {', '.join(map(str, s['best_epochs']))} "
            f"| {s['val_accuracy_mean']:.2%} | {s['test_accuracy_mean']:.2%} ({s['test_accuracy_min']:.2%}-{s['test_accuracy_max']:.2%}) "
            f"| {s['train_seconds_median']:.0f} s ({s['seconds_per_epoch_median']:.1f} s/epoch) |"
        )


if __name__ == "__main__":
    main()
