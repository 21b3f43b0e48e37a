"""The robustness suite: how a model reads digits as people really hand them over, and refuses what is no digit.

The suite is a set of named image sets, each made from the same MNIST digits:

- ``clean``: the digit itself, saved as a 28x28 PNG (the reference, and the clean-digit reject rate);
- the digit corruptions of :mod:`mnist_cnn.corruptions` (tight crops in both polarities, sizes,
  pens, geometry, image quality, paper and light);
- the not-digits of :mod:`mnist_cnn.not_digits` (blank, dot, dash, cross, scribble, letter,
  smudge, two digits), which a model should refuse.

Every image goes through exactly what ``mnist-cnn predict`` does: :func:`preprocess_image` on the
image (a PIL image or encoded bytes), then the model's classifier. "No digit found" counts as a
wrong answer on a digit, and as a refusal on a not-digit; so does a top probability below the
threshold ("not sure").

>>> from mnist_cnn.robustness import prepare_suite, score_suite   # doctest: +SKIP
>>> sets = prepare_suite(test_images[:300], test_labels[:300], seed=0)   # doctest: +SKIP
>>> score_suite(load_model("runs/best"), sets)["mean_digit_accuracy"]   # doctest: +SKIP

Build it only from digits the model never trained on: MNIST *test* digits to report, the run's
validation split to choose models or variants. Each set is drawn from a generator seeded by
``(seed, name)``, so it repeats exactly, whatever the other sets or the number of processes.
"""

from __future__ import annotations

import io
import multiprocessing
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from itertools import repeat

import numpy as np
from PIL import Image
from scipy.stats import binomtest

from .config import DEFAULT_MIN_CONFIDENCE
from .corruptions import DIGIT_CORRUPTIONS, Source
from .not_digits import NOT_DIGITS
from .preprocess import NoDigitError, preprocess_image

CLEAN = "clean"
TIGHT_CROPS = {  # the tight crops, pooled by polarity
    polarity: [name for name in DIGIT_CORRUPTIONS if name.startswith("crop-") and name.endswith(polarity)]
    for polarity in ("white-on-black", "black-on-white")
}


def suite_names() -> list[str]:
    """Every set in the suite, in report order: clean, the digit corruptions, the not-digits."""
    return [CLEAN, *DIGIT_CORRUPTIONS, *NOT_DIGITS]


def is_digit_set(name: str) -> bool:
    """True for sets of digits (clean and the corruptions), False for the not-digits."""
    if name not in (CLEAN, *DIGIT_CORRUPTIONS, *NOT_DIGITS):
        raise ValueError(f"unknown set {name!r}; choose from: {', '.join(suite_names())}")
    return name not in NOT_DIGITS


def _clean_png(digit28: np.ndarray, rng: np.random.Generator) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.asarray(digit28, np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def generate(name: str, digits28: np.ndarray, seed: int) -> list[Source]:
    """The images of set ``name``, one per digit of ``digits28`` (N, 28, 28) uint8, white on black.

    A not-digit set ignores the digits except ``two-digits``, which pairs each digit with the next.
    """
    digits28 = np.asarray(digits28, np.uint8)
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    if not is_digit_set(name):
        make = NOT_DIGITS[name]
        return [make(np.stack([d, digits28[(i + 1) % len(digits28)]]), rng) for i, d in enumerate(digits28)]
    make = _clean_png if name == CLEAN else DIGIT_CORRUPTIONS[name]
    return [make(d, rng) for d in digits28]


@dataclass
class SuiteSet:
    """One named set, as the model sees it after preprocessing."""

    name: str
    frames: np.ndarray  # (N, 28, 28) uint8: what preprocess_image made of each image (zeros where none)
    found: np.ndarray  # (N,) bool: False where preprocess_image said "no digit found"
    labels: np.ndarray | None  # (N,) the true digits; None for a not-digit set

    @property
    def is_digits(self) -> bool:
        return self.labels is not None


def prepare(name: str, digits28: np.ndarray, labels: np.ndarray, seed: int) -> SuiteSet:
    """Generate set ``name`` from the digits and put each image through :func:`preprocess_image`."""
    frames = np.zeros((len(digits28), 28, 28), np.uint8)
    found = np.ones(len(digits28), bool)
    for i, source in enumerate(generate(name, digits28, seed)):
        try:
            frames[i] = preprocess_image(source).array
        except NoDigitError:
            found[i] = False
    return SuiteSet(name, frames, found, np.asarray(labels) if is_digit_set(name) else None)


def _prepare_quietly(name: str, digits28: np.ndarray, labels: np.ndarray, seed: int) -> SuiteSet:
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):  # one thread per process: the image libraries' own threads only fight here
        return prepare(name, digits28, labels, seed)


def prepare_suite(
    digits28: np.ndarray, labels: np.ndarray, seed: int, *, names: list[str] | None = None, workers: int = 1
) -> list[SuiteSet]:
    """Every set (or those in ``names``) made from the same digits, preprocessed once for any number of models.

    ``workers`` > 1 spreads the sets over that many processes; the result is the same.
    """
    names = suite_names() if names is None else list(names)
    for name in names:
        is_digit_set(name)  # unknown names fail before any work
    if len(digits28) == 0 or len(digits28) != len(labels):
        raise ValueError(f"need digits and as many labels, got {len(digits28)} digits and {len(labels)} labels")
    if workers <= 1:
        return [prepare(name, digits28, labels, seed) for name in names]
    # spawn: a forked copy of a process that has run torch's thread pool can hang
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(_prepare_quietly, names, repeat(digits28), repeat(labels), repeat(seed)))


def _rate(hits: np.ndarray) -> tuple[float, list[float]]:
    """Share of True values and its 95% Wilson interval."""
    k, n = int(np.sum(hits)), int(np.size(hits))
    ci = binomtest(k, n).proportion_ci(method="wilson")
    return k / n, [round(float(ci.low), 4), round(float(ci.high), 4)]


def outcomes(clf, suite_set: SuiteSet, min_confidence: float = DEFAULT_MIN_CONFIDENCE) -> dict[str, np.ndarray]:
    """Per image of one set, as (N,) bool arrays: ``no_digit``, ``not_sure`` (found, but the top probability is
    below ``min_confidence`` or the model's digit gate says it is no digit), ``refused`` (either), and for
    digits ``right`` (found and read as its label)."""
    s = suite_set
    top, label, gate = np.zeros(len(s.found)), np.full(len(s.found), -1), np.ones(len(s.found), dtype=bool)
    if s.found.any():
        probs, gate[s.found] = clf.frame_answers(s.frames[s.found])
        top[s.found], label[s.found] = probs.max(1), probs.argmax(1)
    out = {"no_digit": ~s.found, "not_sure": s.found & ((top < min_confidence) | ~gate)}
    out["refused"] = out["no_digit"] | out["not_sure"]
    if s.is_digits:
        out["right"] = s.found & (label == s.labels)
    return out


def _row(o: dict[str, np.ndarray]) -> dict:
    row = {
        "images": len(o["no_digit"]),
        "no_digit": float(o["no_digit"].mean()),
        "not_sure": float(o["not_sure"].mean()),
    }
    if "right" in o:
        row["accuracy"], row["accuracy_95ci"] = _rate(o["right"])
        row["rejected"] = float(o["refused"].mean())
    else:
        row["rejected"], row["rejected_95ci"] = _rate(o["refused"])
    return row


def score_set(clf, suite_set: SuiteSet, min_confidence: float = DEFAULT_MIN_CONFIDENCE) -> dict:
    """Accuracy (digits) or refusal rate (not-digits), with the "no digit" and "not sure" rates, of one set."""
    return _row(outcomes(clf, suite_set, min_confidence))


def score_suite(clf, sets: list[SuiteSet], min_confidence: float = DEFAULT_MIN_CONFIDENCE) -> dict:
    """Score one model on prepared sets: a row per set, and the summary figures the suite is judged by.

    ``mean_digit_accuracy`` and ``worst`` cover the digit corruptions (not ``clean``);
    ``tight_crops`` pools the tight crops of each polarity; ``not_digits_rejected`` pools the
    not-digits; ``clean_rejected`` is the share of clean digits refused (no digit or not sure).
    """
    found = {s.name: outcomes(clf, s, min_confidence) for s in sets}
    rows = {name: _row(o) for name, o in found.items()}
    digits = {n: r for n, r in rows.items() if n in DIGIT_CORRUPTIONS}
    summary: dict = {"min_confidence": min_confidence}
    if CLEAN in rows:
        summary["clean_accuracy"], summary["clean_rejected"] = rows[CLEAN]["accuracy"], rows[CLEAN]["rejected"]
    if digits:
        summary["mean_digit_accuracy"] = float(np.mean([r["accuracy"] for r in digits.values()]))
        worst = min(digits, key=lambda n: digits[n]["accuracy"])
        summary["worst"] = {"corruption": worst, "accuracy": digits[worst]["accuracy"]}
        summary["tight_crops"] = {
            polarity: _rate(np.concatenate([found[n]["right"] for n in names if n in found]))[0]
            for polarity, names in TIGHT_CROPS.items()
            if any(n in found for n in names)
        }
    junk = [o["refused"] for n, o in found.items() if n in NOT_DIGITS]
    if junk:
        summary["not_digits_rejected"], summary["not_digits_rejected_95ci"] = _rate(np.concatenate(junk))
    return {"summary": summary, "sets": rows}
