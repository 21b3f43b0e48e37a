"""Robustness suite: how models read digits as people really hand them over, and refuse what is no digit.

Every set is made from the same MNIST digits (``mnist_cnn.robustness``): the clean digit as a
28x28 PNG, each digit corruption (tight crops in both polarities, big pages, tiny and huge digits,
thin pen, thick marker, pencil, slant, rotation, low resolution, blur, JPEG, noise, uneven light,
shadow, coloured paper, ruled and graph paper, a form box) and each kind of not-digit (blank, dot,
dash, cross, scribble, letter, smudge, two digits). Each image goes through what ``mnist-cnn
predict`` does (``preprocess_image``, then the model); "no digit found" counts as wrong on a digit
and as refused on a not-digit, and so does a top probability below ``--min-confidence`` ("not sure").

Two sources of digits, never mixed up:

- development (choose models and variants on this): the runs' *validation split*:
  ``python benchmarks/robustness.py runs/a runs/b --digits-from validation --seed 1``
- report (measure once): MNIST *test* digits:
  ``MNIST_CNN_DATA=../shared/data/mnist python benchmarks/robustness.py runs/best --digits-from test``

Prints one JSON object, then a table per model; ``--json-out FILE`` writes the JSON there too.
Everything is seeded (``--seed``); the images are made and preprocessed once for all models.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

import mnist_cnn
from mnist_cnn.calibrate import CalibrationError, validation_split
from mnist_cnn.config import DEFAULT_MIN_CONFIDENCE, validation_of
from mnist_cnn.robustness import prepare_suite, score_suite, suite_names

sys.path.insert(0, str(Path(__file__).parent))
from recipes import cpu_name  # noqa: E402  (the same machine description as the other benchmarks)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", metavar="RUN", help="model folder(s) to score")
    p.add_argument(
        "--digits-from", choices=["test", "validation"], default="test",
        help="MNIST test digits (report), or the runs' validation split (development, for choosing) (default: test)",
    )  # fmt: skip
    p.add_argument("--per-corruption", type=int, default=300, help="images per set (default: 300)")
    p.add_argument("--seed", type=int, default=0, help="seed of the digits drawn and of every set (default: 0)")
    p.add_argument("--min-confidence", type=float, default=DEFAULT_MIN_CONFIDENCE,
                   help=f"below this top probability an answer is 'not sure' (default: {DEFAULT_MIN_CONFIDENCE})")  # fmt: skip
    p.add_argument("--sets", nargs="+", choices=suite_names(), default=None, metavar="SET",
                   help=f"only these sets (default: all): {', '.join(suite_names())}")  # fmt: skip
    p.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)),
                   help="processes that make and preprocess the images (default: one per core)")  # fmt: skip
    p.add_argument(
        "--tta",
        action="store_true",
        help="also score each model with test-time augmentation (5 views, torch runtime), as `predict --tta`",
    )
    p.add_argument("--json-out", type=Path, default=None, help="also write the JSON result to this file")
    p.add_argument("--data-dir", default=None, help="MNIST folder (default: $MNIST_CNN_DATA, else the cache)")
    args = p.parse_args(argv)
    if args.per_corruption < 1:
        p.error(f"--per-corruption must be at least 1, got {args.per_corruption}")
    if not 0 <= args.min_confidence <= 1:
        p.error(f"--min-confidence must be between 0 and 1, got {args.min_confidence}")
    if args.workers < 1:
        p.error(f"--workers must be at least 1, got {args.workers}")
    if args.json_out and not args.json_out.parent.is_dir():
        p.error(f"--json-out: folder {args.json_out.parent} does not exist")
    return args


def source_digits(classifiers: dict, data, digits_from: str) -> tuple[np.ndarray, np.ndarray]:
    """The digits the suite is made from: MNIST test digits, or the validation split all the runs share."""
    if digits_from == "test":
        return data.test_images.numpy(), data.test_labels.numpy()
    configs = [clf.config for clf in classifiers.values()]
    if len({json.dumps(validation_of(c)) for c in configs}) > 1:
        raise CalibrationError(
            "--digits-from validation needs runs that share one validation split (the same val_split and seed); "
            "score them separately"
        )
    try:
        return validation_split(configs[0], data)
    except CalibrationError as exc:  # its message speaks of calibration; say what it means here
        raise CalibrationError(f"--digits-from validation: {exc}") from None


def model_result(run: str, clf, sets, min_confidence: float) -> dict:
    return {
        "model": run,
        "architecture": clf.config.get("architecture"),
        "recipe": clf.config.get("recipe"),
        "temperature": clf.temperature,
        "model_test_accuracy": (clf.config.get("metrics") or {}).get("test_accuracy"),
        **score_suite(clf, sets, min_confidence),
    }


def _ci(pair) -> str:
    return f"{pair[0]:.1%}-{pair[1]:.1%}"


def _rows(model: dict, digits: bool) -> None:
    key = "accuracy" if digits else "rejected"
    for name, r in model["sets"].items():
        if ("accuracy" in r) == digits:
            print(f"| {name} | {r[key]:.1%} ({_ci(r[key + '_95ci'])}) | {r['no_digit']:.1%} | {r['not_sure']:.1%} |")


def print_table(result: dict, model: dict) -> None:
    s, t = model["summary"], result["min_confidence"]
    print(f"\nmodel {model['model']} ({model['architecture']}), {result['digits_from']} digits, "
          f"{result['per_corruption']} images per set, seed {result['seed']}, not sure below p={t}")  # fmt: skip
    print("\n| digits | accuracy (95% interval) | no digit | not sure |\n|---|---|---|---|")
    _rows(model, digits=True)
    print("\n| not a digit | refused (95% interval) | no digit | not sure |\n|---|---|---|---|")
    _rows(model, digits=False)
    print()
    if "mean_digit_accuracy" in s:
        crops = ", ".join(f"{k} {v:.1%}" for k, v in s["tight_crops"].items())
        print(f"mean over the digit corruptions {s['mean_digit_accuracy']:.2%}; worst: {s['worst']['corruption']} "
              f"{s['worst']['accuracy']:.1%}; tight crops: {crops or 'not run'}")  # fmt: skip
    if "not_digits_rejected" in s:
        print(f"not-digits refused: {s['not_digits_rejected']:.1%} ({_ci(s['not_digits_rejected_95ci'])})")
    if "clean_rejected" in s:
        print(f"clean digits: accuracy {s['clean_accuracy']:.2%}, refused {s['clean_rejected']:.2%}")


def _cpu_seconds() -> float:
    """CPU time of this process and its finished workers: on a busy machine, a fairer measure than wall time."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def run(args) -> dict:
    classifiers = {r: mnist_cnn.load_model(r) for r in args.runs}
    if args.tta:
        classifiers |= {f"{r} --tta": mnist_cnn.load_model(r, tta=True) for r in args.runs}
    data = mnist_cnn.load_mnist(args.data_dir, download=False)
    images, labels = source_digits(classifiers, data, args.digits_from)
    idx = np.random.default_rng(args.seed).permutation(len(images))[: args.per_corruption]
    start, cpu = time.perf_counter(), _cpu_seconds()
    sets = prepare_suite(images[idx], labels[idx], args.seed, names=args.sets, workers=args.workers)
    seconds, cpu = time.perf_counter() - start, _cpu_seconds() - cpu
    return {
        "benchmark": "robustness",
        "digits_from": args.digits_from,
        "seed": args.seed,
        "per_corruption": len(idx),
        "min_confidence": args.min_confidence,
        "machine": f"{cpu_name()}, {len(os.sched_getaffinity(0))} cores",
        "prepare_seconds": round(seconds, 1),
        "prepare_cpu_seconds": round(cpu, 1),  # what the wall time would be on one free core
        "models": [model_result(r, clf, sets, args.min_confidence) for r, clf in classifiers.items()],
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        result = run(args)
    except mnist_cnn.MnistCnnError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    text = json.dumps(result, indent=2)
    print(text)
    if args.json_out:
        args.json_out.write_text(text + "\n")
    for model in result["models"]:
        print_table(result, model)
    return 0


if __name__ == "__main__":
    sys.exit(main())
