"""Which trained runs to average, chosen on validation: every subset of the runs given is scored on their shared
validation images, and the most accurate one is kept.

    python benchmarks/ensemble.py runs/speed-best/best-seed0 runs/speed-best/best-seed1 runs/deep-seed0 \\
        --out runs/best-ensemble

Every run must hold out the same validation split (train them with one ``--split-seed``): a subset is judged by
how many of those images its averaged probabilities label right. Ties go to fewer members, then to less training
time. The test set decides nothing: it is measured for each run, for the subset kept and for all the runs
together (the two ensembles worth stating before looking), and printed beside them. ``--out`` writes the kept
subset as an ensemble folder (``mnist-cnn ensemble``). Training time is the sum of the members' own
(``training.train_seconds`` in each run's config.json). Calibrate every run first (``mnist-cnn calibrate RUN``;
``mnist-cnn train`` does it, ``train_speed.py`` does not): each member's probabilities are averaged after its own
temperature, and an uncalibrated member's are softer, so it would weigh less.

The JSON goes to standard output, a table to standard error.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
from pathlib import Path

import numpy as np

from mnist_cnn import load_mnist, load_model
from mnist_cnn.config import validation_of
from mnist_cnn.data import split_validation
from mnist_cnn.ensemble import make_ensemble


def shared_validation(models: list) -> tuple[int | float, int]:
    """The validation split every run was selected on; SystemExit when they differ or one does not say."""
    splits = {validation_of(m.config) for m in models}
    if len(splits) != 1 or None in splits:
        raise SystemExit("error: the runs must share one validation split (train them with one --split-seed)")
    return splits.pop()


def train_seconds(model) -> float | None:
    """The run's training time as it recorded it (None for a folder that does not say)."""
    return (model.config.get("training") or {}).get("train_seconds")


def temperature(model) -> float | None:
    """The calibration temperature its probabilities are divided by (None: not calibrated, so 1)."""
    return (model.config.get("calibration") or {}).get("temperature")


def member_row(run: Path, model, val: tuple, test: tuple) -> dict:
    (vp, vy), (tp, ty) = val, test
    return {
        "run": str(run),
        "architecture": model.config.get("architecture"),
        "recipe": model.config.get("recipe"),
        "train_seconds": train_seconds(model),
        "temperature": temperature(model),
        "val_accuracy": float((vp.argmax(1) == vy).mean()),
        "test_accuracy": float((tp.argmax(1) == ty).mean()),
    }


def subsets(n: int):
    for k in range(2, n + 1):
        yield from itertools.combinations(range(n), k)


def choose(val_probs: list[np.ndarray], labels: np.ndarray, seconds: list[float]) -> tuple[tuple[int, ...], float]:
    """The subset whose averaged probabilities label the most validation images right (ties: fewer members, then
    less training time), and its validation accuracy."""

    def score(subset):
        right = int((sum(val_probs[i] for i in subset).argmax(1) == labels).sum())
        return right, -len(subset), -sum(seconds[i] for i in subset)

    best = max(subsets(len(val_probs)), key=score)
    return best, score(best)[0] / len(labels)


def ensemble_row(subset, runs, val_probs, test_probs, vy, ty, seconds) -> dict:
    return {
        "members": [str(runs[i]) for i in subset],
        "val_accuracy": float((sum(val_probs[i] for i in subset).argmax(1) == vy).mean()),
        "test_accuracy": float((sum(test_probs[i] for i in subset).argmax(1) == ty).mean()),
        "train_seconds": round(sum(seconds[i] for i in subset), 1),
    }


def main(argv=None) -> int:
    from recipes import cpu_name  # the same machine description as the other benchmarks

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path, help="two or more trained run folders with one validation split")
    p.add_argument("--out", type=Path, default=None, help="write the chosen ensemble to this folder")
    p.add_argument("--data-dir", default=None, help="the MNIST folder (default: $MNIST_CNN_DATA, else the cache)")
    args = p.parse_args(argv)
    if len(args.runs) < 2:
        p.error("give at least two runs")

    models = [load_model(run) for run in args.runs]
    if len({temperature(m) is None for m in models}) > 1:  # a calibrated member's probabilities are sharper
        print("warning: some runs are calibrated and some not, so they weigh unequally; run mnist-cnn calibrate on the others", file=sys.stderr)  # fmt: skip
    data = load_mnist(args.data_dir, download=False)
    _, val_idx = split_validation(len(data.train_images), *shared_validation(models))
    vx, vy = data.train_images[val_idx].numpy(), data.train_labels[val_idx].numpy()
    tx, ty = data.test_images.numpy(), data.test_labels.numpy()
    val_probs = [m.predict_proba(vx) for m in models]
    test_probs = [m.predict_proba(tx) for m in models]
    seconds = [train_seconds(m) or 0.0 for m in models]

    chosen, _ = choose(val_probs, vy, seconds)
    everyone = tuple(range(len(models)))
    result = {
        "machine": {"cpu": cpu_name(), "cores": len(os.sched_getaffinity(0))},
        "validation_images": len(vy),
        "members": [
            member_row(r, m, (vp, vy), (tp, ty))
            for r, m, vp, tp in zip(args.runs, models, val_probs, test_probs, strict=True)
        ],  # fmt: skip
        "chosen": ensemble_row(chosen, args.runs, val_probs, test_probs, vy, ty, seconds),
        "all": ensemble_row(everyone, args.runs, val_probs, test_probs, vy, ty, seconds),
    }
    if args.out is not None:
        make_ensemble([args.runs[i] for i in chosen], args.out, overwrite=True)
        result["chosen"]["folder"] = str(args.out)
    print(json.dumps(result, indent=1))
    print(table(result), file=sys.stderr)
    return 0


def table(result: dict) -> str:
    lines = ["| model | validation | test | training time |", "|---|---|---|---|"]
    for m in result["members"]:
        lines.append(f"| {m['run']} ({m['architecture']}) | {m['val_accuracy']:.2%} | {m['test_accuracy']:.2%} | {m['train_seconds'] or 0:.0f} s |")  # fmt: skip
    for name in ("chosen", "all"):
        e = result[name]
        label = f"ensemble, {name} ({len(e['members'])} members)"
        lines.append(f"| {label} | {e['val_accuracy']:.2%} | {e['test_accuracy']:.2%} | {e['train_seconds']:.0f} s |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
