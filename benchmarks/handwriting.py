"""How well a model reads "real" handwriting: MNIST test digits rendered as photos of ink on paper.

Single digits: accuracy on the clean MNIST images, then on the same digits photographed
(``mnist_cnn.synthetic``) and passed through the simple pipeline (greyscale, resize the whole
image, invert) and through the full MNIST procedure (``mnist_cnn.preprocess``).
Strings: 3-8 digits on a line, read with ``mnist_cnn.reading.read_digits``; a string counts as
right only if every digit is. Only test digits are used, never training digits.

    MNIST_CNN_DATA=../shared/data/mnist python benchmarks/handwriting.py runs/basic --digits 2000 --strings 200

Prints one JSON object, then a table. Everything is seeded (``--seed``), so a run repeats exactly.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np

import mnist_cnn
from mnist_cnn.preprocess import ImageError, preprocess_image, simple_preprocess
from mnist_cnn.reading import read_digits
from mnist_cnn.synthetic import render_digit, render_string


def single_digits(clf, images, labels, n: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(images))[:n]
    x, y = images[idx], labels[idx]
    photos = [render_digit(d, rng) for d in x]
    start = time.perf_counter()
    new, failed = [], 0
    for photo in photos:
        try:
            new.append(preprocess_image(photo).array)
        except ImageError:  # "no digit found" counts as a wrong answer
            failed += 1
            new.append(np.zeros((28, 28), np.uint8))
    seconds = time.perf_counter() - start
    simple = np.stack([simple_preprocess(photo) for photo in photos])
    acc = lambda arr: float((clf.predict(np.stack(arr) if isinstance(arr, list) else arr) == y).mean())  # noqa: E731
    return {
        "digits": n,
        "clean_accuracy": acc(x),
        "simple_pipeline_accuracy": acc(simple),
        "mnist_procedure_accuracy": acc(new),
        "no_digit_found": failed,
        "preprocess_ms_per_image": round(1000 * seconds / n, 2),
    }


def strings(clf, images, labels, per_length: int, lengths, seed: int) -> dict:
    rng = np.random.default_rng(seed + 1)
    out = {}
    for length in lengths:
        right = right_with_threshold = flagged = wrong_count = 0
        start = time.perf_counter()
        for _ in range(per_length):
            idx = rng.integers(0, len(images), length)
            truth = "".join(str(int(v)) for v in labels[idx])
            reading = read_digits(clf, render_string(images[idx], rng), min_confidence=0.0)
            text = "".join(str(d.label) for d in reading.digits)
            right += text == truth
            wrong_count += len(reading.digits) != length
            shown = "".join(d.char if d.confidence >= 0.5 else "?" for d in reading.digits)
            flagged += "?" in shown
            right_with_threshold += shown == truth
        out[str(length)] = {
            "strings": per_length,
            "accuracy": right / per_length,
            "wrong_digit_count": wrong_count / per_length,
            "flagged_at_0.5": flagged / per_length,
            "accuracy_at_0.5": right_with_threshold / per_length,
            "seconds_per_string": round((time.perf_counter() - start) / per_length, 3),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="model folder")
    parser.add_argument("--digits", type=int, default=2000, help="single test digits to render (default: 2000)")
    parser.add_argument("--strings", type=int, default=200, help="strings per length (default: 200)")
    parser.add_argument(
        "--lengths", type=int, nargs="+", default=[3, 4, 5, 6, 7, 8], help="string lengths (default: 3-8)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the rendered set (default: 0)")
    parser.add_argument("--data-dir", default=None, help="MNIST folder (default: $MNIST_CNN_DATA, else the cache)")
    args = parser.parse_args()

    clf = mnist_cnn.load_model(args.run)
    data = mnist_cnn.load_mnist(args.data_dir, download=False)
    images, labels = data.test_images.numpy(), data.test_labels.numpy()
    result = {
        "model": args.run,
        "architecture": clf.config.get("architecture"),
        "recipe": clf.config.get("recipe"),
        "temperature": clf.temperature,
        "model_test_accuracy": (clf.config.get("metrics") or {}).get("test_accuracy"),
        "seed": args.seed,
        "machine": f"{platform.processor() or platform.machine()}, {len(__import__('os').sched_getaffinity(0))} cores",
        "single": single_digits(clf, images, labels, args.digits, args.seed),
        "strings": strings(clf, images, labels, args.strings, args.lengths, args.seed),
    }
    print(json.dumps(result, indent=2))
    s = result["single"]
    print(f"\nmodel {args.run} ({result['architecture']}), {s['digits']} single digits, seed {args.seed}")
    print("| input | accuracy |\n|---|---|")
    print(f"| clean MNIST test digits | {s['clean_accuracy']:.2%} |")
    print(f"| photographed, simple pipeline (resize + invert) | {s['simple_pipeline_accuracy']:.2%} |")
    print(f"| photographed, MNIST procedure (`preprocess_image`) | {s['mnist_procedure_accuracy']:.2%} |")
    print(
        "\n| digits | strings | exact | wrong digit count | shown with '?' at 0.5 | exact at 0.5 |\n|---|---|---|---|---|---|"
    )
    for length, r in result["strings"].items():
        print(f"| {length} | {r['strings']} | {r['accuracy']:.1%} | {r['wrong_digit_count']:.1%} | "
              f"{r['flagged_at_0.5']:.1%} | {r['accuracy_at_0.5']:.1%} |")  # fmt: skip


if __name__ == "__main__":
    main()
