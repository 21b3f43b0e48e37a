"""How well a model reads "real" handwriting: MNIST digits rendered as photos of ink on paper.

Single digits: accuracy on the clean MNIST images, then on the same digits photographed
(``mnist_cnn.synthetic``) and passed through the simple pipeline (greyscale, resize the whole
image, invert) and through the full MNIST procedure (``mnist_cnn.preprocess``).
Not digits: parts of digits and pairs of touching digits (``digit_parts``), what a wrong cut
hands the model: how surely it reads them (lower is better).
Strings: 3-8 digits on a line, read with ``mnist_cnn.reading.read_digits``; a string counts as
right only if every digit is. Each wrong string is classed as wrong digit count, mis-segmented
or misread, and the same strings are also read with perfect (true) segmentation.

Two sets, never mixed up:

- development (tune segmentation on this): digits from the model's *validation split* (training
  images the model never trained on), seed 1:
  ``python benchmarks/handwriting.py runs/deep --digits-from validation --seed 1 --digits 0 --strings 500 --lengths 5``
- report (measure once, after tuning): MNIST *test* digits, seed 0:
  ``MNIST_CNN_DATA=../shared/data/mnist python benchmarks/handwriting.py runs/deep --digits 2000 --strings 500``

Prints one JSON object, then a table. Everything is seeded (``--seed``), so a run repeats exactly.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage
from scipy.stats import binomtest

import mnist_cnn
from mnist_cnn.calibrate import validation_split
from mnist_cnn.config import DEFAULT_MIN_CONFIDENCE
from mnist_cnn.preprocess import (
    ImageError,
    NoDigitError,
    decode_image,
    ink_map,
    preprocess_image,
    simple_preprocess,
    to_frame,
)
from mnist_cnn.reading import read_digits
from mnist_cnn.synthetic import digit_parts, render_digit, render_string


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


def not_digits(clf, images, n: int, seed: int) -> dict:
    """How surely the model reads what a wrong cut hands it: parts of digits and touching pairs (``digit_parts``)."""
    rng = np.random.default_rng(seed + 2)
    parts = digit_parts(images[rng.permutation(len(images))[:n]], rng)
    top = clf.predict_proba(parts).max(1)
    return {
        "images": len(parts),
        "mean_top_probability": float(top.mean()),
        "share_above_0.9": float((top > 0.9).mean()),
    }


def _assigned(digits, owner: np.ndarray) -> list[int]:
    """For each digit read, the true digit (1-based, 0: none) owning most of the ink inside its box."""
    out = []
    for d in digits:
        x0, y0, x1, y1 = d.box
        counts = np.bincount(owner[y0:y1, x0:x1].ravel(), minlength=256)[1:]
        out.append(int(counts.argmax()) + 1 if counts.max() > 0 else 0)
    return out


def _oracle(clf, photo, owner: np.ndarray, length: int) -> list[int]:
    """Labels of the digits cut out with the true owner map: what the model reads when segmentation is perfect."""
    grey, record = decode_image(photo)
    try:
        ink = ink_map(grey, record)
    except NoDigitError:  # read_digits finds nothing in it either: no digit read, the string is wrong
        return []
    if owner.shape != ink.shape:
        owner = np.asarray(Image.fromarray(owner).resize(ink.shape[::-1], Image.Resampling.NEAREST))
    frames = []
    for j in range(1, length + 1):
        mask = ndimage.binary_dilation(owner == j, iterations=2) & ((owner == 0) | (owner == j))
        try:
            frames.append(to_frame(np.where(mask, ink, 0).astype(np.float32)))
        except NoDigitError:
            frames.append(np.zeros((28, 28), np.uint8))
    return clf.predict(np.stack(frames)).tolist()


def strings(clf, images, labels, per_length: int, lengths, seed: int, failures: str | None = None) -> dict:
    """Read rendered strings; each wrong one is put in one class: wrong count, mis-segmented, or misread.

    wrong count: not as many digits as written; mis-segmented: the right count, but some digit read
    is mostly another digit's ink (a bad cut); misread: every cut right, some digit classified wrong.
    ``oracle``: the same strings cut with the renderer's true owner map (the segmentation ceiling).
    """
    rng = np.random.default_rng(seed + 1)
    out = {}
    for length in lengths:
        right = right_with_threshold = flagged = wrong_count = mis_segmented = misread = oracle = 0
        digits_right = 0
        start = time.perf_counter()
        for n in range(per_length):
            idx = rng.integers(0, len(images), length)
            truth = "".join(str(int(v)) for v in labels[idx])
            photo, owner = render_string(images[idx], rng, truth=True)
            reading = read_digits(clf, photo, min_confidence=0.0)
            text = "".join(str(d.label) for d in reading.digits)
            right += text == truth
            oracle += "".join(map(str, _oracle(clf, photo, owner, length))) == truth
            shown = "".join(d.char if d.confidence >= DEFAULT_MIN_CONFIDENCE else "?" for d in reading.digits)
            flagged += "?" in shown
            right_with_threshold += shown == truth
            if len(reading.digits) != length:
                wrong_count += 1
                kind = "count"
            elif _assigned(reading.digits, owner) != list(range(1, length + 1)):
                mis_segmented += 1
                kind = "segment"
            else:
                digits_right += sum(a == b for a, b in zip(text, truth, strict=True))
                misread += text != truth
                kind = "misread"
            if failures and text != truth:
                Path(failures).mkdir(parents=True, exist_ok=True)
                photo.save(Path(failures) / f"{length}-{n:04d}-{kind}-{truth}-{text or 'none'}.png")
        out[str(length)] = {
            "strings": per_length,
            "accuracy": right / per_length,
            "accuracy_95ci": [round(float(v), 4) for v in binomtest(right, per_length).proportion_ci(method="wilson")],
            "wrong_digit_count": wrong_count / per_length,
            "mis_segmented": mis_segmented / per_length,
            "misread": misread / per_length,
            "oracle_segmentation_accuracy": oracle / per_length,
            f"flagged_at_{DEFAULT_MIN_CONFIDENCE}": flagged / per_length,
            f"accuracy_at_{DEFAULT_MIN_CONFIDENCE}": right_with_threshold / per_length,
            "seconds_per_string": round((time.perf_counter() - start) / per_length, 3),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="model folder")
    parser.add_argument("--digits", type=int, default=2000, help="single digits to render, 0 to skip (default: 2000)")
    parser.add_argument("--strings", type=int, default=200, help="strings per length, 0 to skip (default: 200)")
    parser.add_argument(
        "--lengths", type=int, nargs="+", default=[3, 4, 5, 6, 7, 8], help="string lengths (default: 3-8)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the rendered set (default: 0)")
    parser.add_argument(
        "--digits-from", choices=["test", "validation"], default="test",
        help="MNIST test digits (report), or the run's validation split (development, for tuning) (default: test)",
    )  # fmt: skip
    parser.add_argument("--failures", default=None, help="save each wrongly read string's photo in this folder")
    parser.add_argument("--data-dir", default=None, help="MNIST folder (default: $MNIST_CNN_DATA, else the cache)")
    args = parser.parse_args()

    clf = mnist_cnn.load_model(args.run)
    data = mnist_cnn.load_mnist(args.data_dir, download=False)
    if args.digits_from == "test":
        images, labels = data.test_images.numpy(), data.test_labels.numpy()
    else:  # the images the run held out for validation (and calibration), recreated as calibrate does
        images, labels = validation_split(clf.config, data)
    from recipes import cpu_name  # the same machine description as the other benchmarks

    result = {
        "model": args.run,
        "architecture": clf.config.get("architecture"),
        "recipe": clf.config.get("recipe"),
        "temperature": clf.temperature,
        "model_test_accuracy": (clf.config.get("metrics") or {}).get("test_accuracy"),
        "digits_from": args.digits_from,
        "seed": args.seed,
        "machine": f"{cpu_name()}, {len(os.sched_getaffinity(0))} cores",
        "single": single_digits(clf, images, labels, args.digits, args.seed) if args.digits else None,
        "not_digits": not_digits(clf, images, args.digits, args.seed) if args.digits else None,
        "strings": strings(clf, images, labels, args.strings, args.lengths, args.seed, args.failures)
        if args.strings
        else {},
    }
    print(json.dumps(result, indent=2))
    print(f"\nmodel {args.run} ({result['architecture']}), {args.digits_from} digits, seed {args.seed}")
    if s := result["single"]:
        print(f"{s['digits']} single digits\n| input | accuracy |\n|---|---|")
        print(f"| clean MNIST digits | {s['clean_accuracy']:.2%} |")
        print(f"| photographed, simple pipeline (resize + invert) | {s['simple_pipeline_accuracy']:.2%} |")
        print(f"| photographed, MNIST procedure (`preprocess_image`) | {s['mnist_procedure_accuracy']:.2%} |")
        parts = result["not_digits"]
        print(
            f"\n{parts['images']} parts of digits and touching pairs: mean top probability "
            f"{parts['mean_top_probability']:.3f}, {parts['share_above_0.9']:.1%} read with probability > 0.9"
        )
    t = DEFAULT_MIN_CONFIDENCE
    if not result["strings"]:
        return
    print(
        "\n| digits | strings | exact (95% interval) | wrong count | mis-segmented | misread | true segmentation "
        f"| shown with '?' at {t} | exact at {t} |\n|---|---|---|---|---|---|---|---|---|"
    )
    for length, r in result["strings"].items():
        lo, hi = r["accuracy_95ci"]
        print(f"| {length} | {r['strings']} | {r['accuracy']:.1%} ({lo:.1%}-{hi:.1%}) | {r['wrong_digit_count']:.1%} | "
              f"{r['mis_segmented']:.1%} | {r['misread']:.1%} | {r['oracle_segmentation_accuracy']:.1%} | "
              f"{r[f'flagged_at_{t}']:.1%} | {r[f'accuracy_at_{t}']:.1%} |")  # fmt: skip


if __name__ == "__main__":
    main()
