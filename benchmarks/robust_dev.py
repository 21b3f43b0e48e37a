"""A development set for choosing robust-training settings without ever looking at test digits.

For each model folder: accuracy on its own validation split, clean and corrupted the ways other
pens, scanners and crops change a digit (the ``mnist_cnn.augment`` corruptions at fixed strengths,
and photographed through ``mnist_cnn.synthetic``); the share of generated not-digits it is unsure
of (seeded apart from training's); and accuracy on scikit-learn's 8x8 digits (43 writers who are
not MNIST's, upscaled and put through ``preprocess_image``), which may compare variants but is
never trained on. Test digits are not read at all.

    python benchmarks/robust_dev.py runs/robust-a runs/robust-b --digits 2000 --not-digits 700

Prints one JSON object per model. ``rejected`` is the share whose top probability is below
``--min-confidence`` (the default of ``read`` and ``predict``) or that the model's digit gate refuses.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from PIL import Image
from sklearn.datasets import load_digits

from mnist_cnn.augment import Augmentation, augment, cut_edge, gaussian_blur, low_resolution, pencil, stroke_width
from mnist_cnn.calibrate import validation_split
from mnist_cnn.config import DEFAULT_MIN_CONFIDENCE, validation_of
from mnist_cnn.data import load_mnist
from mnist_cnn.inference import load_model
from mnist_cnn.inputs import as_mnist_images
from mnist_cnn.preprocess import NoDigitError, preprocess_image
from mnist_cnn.synthetic import not_digits, photographed

SEED = 7  # not-digits of training use seed + 3 of the run's seed (0-2 in practice): kept apart


def _same(n: int, value: float) -> torch.Tensor:
    return torch.full((n,), value, dtype=torch.float64)


def corruptions(images: np.ndarray) -> dict[str, np.ndarray]:
    """Named corrupted copies of ``images`` (N, 28, 28) uint8, each at one fixed, clearly visible strength."""
    ink = torch.tensor(images, dtype=torch.float32).unsqueeze(1) / 255
    n, gen = len(ink), torch.Generator().manual_seed(SEED)
    sets = {
        "thick pen": stroke_width(ink, _same(n, 1.0)),
        "thin pen": stroke_width(ink, _same(n, -0.7)),
        "pencil": pencil(ink, _same(n, 0.6), gen),
        "blur": gaussian_blur(ink, _same(n, 1.2)),
        "low resolution (10 px)": low_resolution(ink, torch.full((n,), 10)),
        "cut edge (12%)": cut_edge(ink, _same(n, 0.12), torch.randint(4, (n,), generator=gen)),
        "rotation (to 25 deg)": augment(ink, Augmentation(rotate=25), gen),
        "slant (to 25 deg)": augment(ink, Augmentation(shear=25), gen),
    }
    return {k: (v[:, 0].clamp(0, 1) * 255).round().to(torch.uint8).numpy() for k, v in sets.items()}


def other_writers(count: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``count`` of scikit-learn's digits (8x8, 16 grey levels), upscaled to 64 px, put on a
    page and preprocessed; unreadable ones get a blank frame (and count as wrong)."""
    digits = load_digits()
    frames = []
    for img in digits.images[:count]:
        big = Image.fromarray((img * 255 / 16).astype(np.uint8)).resize((64, 64), Image.Resampling.BICUBIC)
        page = np.zeros((128, 128), np.uint8)  # a margin of paper: these digits fill their 8x8 frame
        page[32:96, 32:96] = np.asarray(big)
        try:
            frames.append(preprocess_image(page).array)
        except NoDigitError:
            frames.append(np.zeros((28, 28), np.uint8))
    return np.stack(frames), digits.target[:count]


def measure(clf, sets: dict, junk: np.ndarray, min_confidence: float) -> dict:
    out = {}
    for name, (x, y) in sets.items():
        p, refused = answers(clf, x, min_confidence)
        out[name] = {
            "accuracy": round(float((p.argmax(1) == y).mean()), 4),
            "rejected": round(float(refused.mean()), 4),
        }
    corrupted = [v["accuracy"] for k, v in out.items() if k not in ("validation", "other writers")]
    out["corrupted mean"] = round(float(np.mean(corrupted)), 4)
    out["not-digits rejected"] = round(float(answers(clf, junk, min_confidence)[1].mean()), 4)
    return out


def answers(clf, images: np.ndarray, min_confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities, and which images are refused: unsure, or not a digit by the model's digit gate."""
    probs, passes = clf.frame_answers(as_mnist_images(images))
    return probs, (probs.max(1) < min_confidence) | ~passes


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", help="model folders; all must share one validation split")
    p.add_argument("--digits", type=int, default=2000, help="validation digits per corruption (default 2000)")
    p.add_argument("--photos", type=int, default=1000, help="validation digits photographed (default 1000)")
    p.add_argument("--not-digits", type=int, default=700, help="generated not-digits (default 700)")
    p.add_argument("--writers", type=int, default=1797, help="scikit-learn digits (default: all 1797)")
    p.add_argument("--min-confidence", type=float, default=DEFAULT_MIN_CONFIDENCE)
    p.add_argument("--data-dir", default=None)
    args = p.parse_args()
    data = load_mnist(args.data_dir)
    models = {run: load_model(run) for run in args.runs}
    val_x, val_y = validation_split(next(iter(models.values())).config, data)
    val_x, val_y = np.asarray(val_x), np.asarray(val_y)
    x, y = val_x[: args.digits], val_y[: args.digits]
    sets = {"validation": (val_x, val_y), **{k: (v, y) for k, v in corruptions(x).items()}}
    sets["photographed"] = (photographed(val_x[: args.photos], SEED), val_y[: args.photos])
    sets["other writers"] = other_writers(args.writers)
    junk = not_digits(args.not_digits, SEED)
    for run, clf in models.items():
        if validation_of(clf.config) != validation_of(next(iter(models.values())).config):
            raise SystemExit(f"{run} was validated on another split than {args.runs[0]}")
        print(json.dumps({"run": run, **measure(clf, sets, junk, args.min_confidence)}), flush=True)


if __name__ == "__main__":
    main()
