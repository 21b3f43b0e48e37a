"""Time to accuracy: how long a recipe trains before it reaches 98.5 / 99.0 / 99.5 / 99.7% test accuracy.

    python benchmarks/train_speed.py --recipe fast --seeds 0 1 2 --eval-every 43
    python benchmarks/train_speed.py --recipe best --seeds 0 1 2 --out runs/speed

Each seed trains in its own process (so its peak memory is its own) on the full training set
minus the validation split. The test set is measured during training only to *report* when each
threshold was crossed — every ``--eval-every`` steps, or after every epoch by default — and those
measurements are excluded from the clock and never feed back into training: the checkpoint kept
is still the best on validation, and its test accuracy is the "final" figure. Training time
includes the recipe's own validation passes. Prints one JSON line per run, a JSON summary and a
Markdown table (mean and min-max over seeds; times as medians, "-" where a seed never got there).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
from pathlib import Path

THRESHOLDS = (0.985, 0.99, 0.995, 0.997)


def worker(recipe: str, seed: int, eval_every: int, out: Path, threads: int, split_seed: int | None = None) -> dict:
    import torch

    from mnist_cnn import RECIPES, load_mnist
    from mnist_cnn.callbacks import EveryNSteps
    from mnist_cnn.evaluate import evaluate_run
    from mnist_cnn.inference import batched_logits, to_model_input
    from mnist_cnn.runtime import configure_threads
    from mnist_cnn.train import train_run

    configure_threads(threads)
    data = load_mnist()
    config = RECIPES[recipe].config.replace(seed=seed, split_seed=split_seed)
    steps_per_epoch = -(-(len(data.train_images) - len(_val(config, data))) // config.batch_size)
    every = eval_every or steps_per_epoch
    x_test = to_model_input(data.test_images).contiguous(memory_format=torch.channels_last)
    trace = []

    def on_step(step: int, model, seconds: float) -> None:
        acc = (batched_logits(model, x_test).argmax(1) == data.test_labels).float().mean().item()
        trace.append(
            {
                "step": step,
                "epoch": round(step / steps_per_epoch, 3),
                "seconds": round(seconds, 3),
                "test_accuracy": acc,
            }
        )

    run_dir = out / f"{recipe}-seed{seed}"
    result = train_run(
        config, data, run_dir, recipe=recipe, device="cpu", progress=False, callbacks=[EveryNSteps(every, on_step)]
    )
    metrics = evaluate_run(run_dir, data).metrics
    return {
        "recipe": recipe,
        "seed": seed,
        "train_seconds": round(result.fit.train_seconds, 2),
        "epochs": config.epochs,
        "best_epoch": result.fit.best_epoch,
        "val_accuracy": metrics["val_accuracy"],
        "final_test_accuracy": metrics["test_accuracy"],
        "seconds_to": seconds_to(trace),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "threads": torch.get_num_threads(),
        "trace": trace,
        "run_dir": str(run_dir),
    }


def seconds_to(trace: list[dict]) -> dict:
    """Training seconds at the first measurement reaching each threshold (None: never reached)."""
    reached = {}
    for t in THRESHOLDS:
        hit = next((p for p in trace if p["test_accuracy"] >= t), None)
        reached[f"{t * 100:g}"] = hit["seconds"] if hit else None
    return reached


def threshold_summary(rows: list[dict]) -> dict:
    """Median seconds to each threshold over the runs (None unless every run got there), and how many did."""
    out = {}
    for key in rows[0]["seconds_to"]:
        times = [r["seconds_to"][key] for r in rows]
        out[f"seconds_to_{key}_median"] = statistics.median(times) if all(t is not None for t in times) else None
        out[f"seeds_reaching_{key}"] = sum(t is not None for t in times)
    return out


def _val(config, data):
    from mnist_cnn.data import split_validation

    return split_validation(len(data.train_images), config.val_split, config.validation_seed)[1]


def summarise(rows: list[dict]) -> dict:
    final = [r["final_test_accuracy"] for r in rows]
    out = {
        "recipe": rows[0]["recipe"],
        "seeds": [r["seed"] for r in rows],
        "final_test_accuracy_mean": statistics.fmean(final),
        "final_test_accuracy_min": min(final),
        "final_test_accuracy_max": max(final),
        "val_accuracy_mean": statistics.fmean(r["val_accuracy"] for r in rows),
        "train_seconds_median": statistics.median(r["train_seconds"] for r in rows),
        "train_seconds_max": max(r["train_seconds"] for r in rows),
        "peak_rss_mib_max": max(r["peak_rss_mib"] for r in rows),
    }
    return {**out, **threshold_summary(rows)}


def table(summary: dict, rows: list[dict]) -> str:
    keys = list(rows[0]["seconds_to"])
    head = (
        "| recipe | seeds | "
        + " | ".join(f"s to {k}%" for k in keys)
        + " | final test acc (min-max) | train s | peak RSS |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    cells = []
    for k in keys:
        t, n = summary[f"seconds_to_{k}_median"], summary[f"seeds_reaching_{k}"]
        cells.append(f"{t:.1f}" if t is not None else f"- ({n}/{len(rows)})")
    lines.append(
        f"| {summary['recipe']} | {len(rows)} | " + " | ".join(cells)
        + f" | {summary['final_test_accuracy_mean'] * 100:.2f}% ({summary['final_test_accuracy_min'] * 100:.2f}-"
        f"{summary['final_test_accuracy_max'] * 100:.2f}) | {summary['train_seconds_median']:.1f} | {summary['peak_rss_mib_max']:.0f} MiB |"
    )  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="fast", help="recipe to time (default: fast)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="one run per seed (default: 0 1 2)")
    parser.add_argument(
        "--eval-every", type=int, default=0, help="measure test accuracy every K steps (default: each epoch)"
    )
    parser.add_argument("--out", type=Path, default=Path("runs/speed"), help="run folders (default: runs/speed)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (default: one per core)")
    parser.add_argument(
        "--split-seed", type=int, default=None, help="one validation split for every seed (default: each its own)"
    )
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        print(json.dumps(worker(args.recipe, args.worker, args.eval_every, args.out, args.threads, args.split_seed)))
        return
    rows = []
    for seed in args.seeds:
        cmd = [sys.executable, __file__, "--recipe", args.recipe, "--worker", str(seed), "--eval-every",
               str(args.eval_every), "--out", str(args.out), "--threads", str(args.threads)]  # fmt: skip
        if args.split_seed is not None:
            cmd += ["--split-seed", str(args.split_seed)]
        done = subprocess.run(cmd, capture_output=True, text=True, env=os.environ)
        if done.returncode != 0:
            sys.exit(f"seed {seed} failed:\n{done.stderr[-3000:]}")
        row = json.loads(done.stdout.strip().splitlines()[-1])
        print(json.dumps({k: v for k, v in row.items() if k != "trace"}), flush=True)
        rows.append(row)
    from recipes import cpu_name  # the same machine description as the other benchmarks

    summary = {**summarise(rows), "cpu": cpu_name(), "cores": os.cpu_count(), "threads": rows[0]["threads"]}
    print(json.dumps(summary))
    print()
    print(table(summary, rows))


if __name__ == "__main__":
    main()
