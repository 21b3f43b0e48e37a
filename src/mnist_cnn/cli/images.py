"""The commands that read the user's images: ``predict``, ``read`` and ``preprocess``, with the batch
machinery ``predict`` and ``read`` share (one row per image, a failure counted, the batch goes on)."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import signal
import sys
import threading
from pathlib import Path

from ..config import DEFAULT_MIN_CONFIDENCE
from ..errors import MnistCnnError
from ..parallel import POOL_MIN_FILES
from .common import (
    _add_inference_runtime_flag,
    _add_runs_dir_flag,
    _add_runtime_flags,
    _add_tta_flag,
    _resolve_run,
    log,
)


def _add_model_and_images(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", type=Path, nargs="?", default=None,
                   help="run (model) folder, run name in --runs-dir, or latest, when the first argument is one (default: the model that ships with mnist-cnn)")  # fmt: skip
    p.add_argument("images", type=Path, nargs="+", help="image files, or folders (searched recursively)")
    _add_runs_dir_flag(p)


def _add_min_confidence_flag(p: argparse.ArgumentParser, below: str) -> None:
    p.add_argument("--min-confidence", type=float, default=DEFAULT_MIN_CONFIDENCE, metavar="P",
                   help=f"below this probability {below} (default: {DEFAULT_MIN_CONFIDENCE})")  # fmt: skip


def _add_batch_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", choices=["text", "csv", "jsonl"], default=None,
                   help="output: readable lines, CSV, or JSON Lines (default: text)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="the same as --format jsonl (default: off)")
    p.add_argument("--out", type=Path, default=None, help="write the results to this file (default: standard output)")
    p.add_argument(
        "--no-progress", action="store_true", help="no progress bar (default: shown on a terminal for many files)"
    )


def add_predict(sub, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("predict", parents=[common], help="predict the digit in image files or folders (PNG, JPEG, ...)")
    _add_model_and_images(p)
    _add_min_confidence_flag(p, "the answer is 'not sure — is this a digit?' (best guess still shown)")
    _add_batch_flags(p)
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help=f"processes that preprocess the images (0: none, this process does it) (default: one per core for {POOL_MIN_FILES} files or more unless they are under 4 KB, else 0)")  # fmt: skip
    _add_tta_flag(p)
    _add_runtime_flags(p)
    _add_inference_runtime_flag(p)


def add_read(sub, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "read", parents=[common], help="read the number(s) in images: every digit, left to right, line by line"
    )
    _add_model_and_images(p)
    _add_min_confidence_flag(p, "digits are shown as '?'")
    _add_batch_flags(p)
    _add_tta_flag(p)
    _add_runtime_flags(p)


def add_preprocess(sub, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "preprocess", parents=[common], help="show what the model sees: an image in MNIST format (28x28)"
    )
    p.add_argument("image", type=Path, help="image file")
    p.add_argument("--out", type=Path, default=None, help="PNG file to write the 28x28 result to (default: none)")
    p.add_argument(
        "--json", action="store_true", help="print the record of what was done as JSON (default: readable lines)"
    )


def _choose_model(args) -> None:
    """RUN is optional: the first argument is the model when it names one (a folder, a run name, latest, a
    file in a run folder; or a missing path that is not an image's, so a typo gets "did you mean"); else the images start
    there and the default model reads them (said on standard error, as -q allows)."""
    from ..default_model import describe
    from ..inference import default_model_dir, read_config
    from ..preprocess import IMAGE_SUFFIXES, find_images
    from ..runs import looks_like_run

    typo = args.run is not None and not args.run.exists() and args.run.suffix.lower() not in IMAGE_SUFFIXES
    if args.run is not None and not typo and not looks_like_run(args.run, args.runs_dir):
        args.run, args.images = None, [args.run, *args.images]
    if args.run is not None:
        args.run = _resolve_run(args.run, args)
    elif len(args.images) == 1 and looks_like_run(args.images[0], args.runs_dir):
        raise ValueError(f"{args.images[0]} names a model: name the images to read after it")
    args.images = find_images(args.images)  # a mistyped image is one error line, before a model is loaded or named
    if args.run is None:
        args.run = default_model_dir()
        log.info("using the default model %s", describe(read_config(args.run)))


def _check_min_confidence(args) -> None:
    if not 0 <= args.min_confidence <= 1:
        raise ValueError(f"--min-confidence must be between 0 and 1, got {args.min_confidence}")


def _printable(text) -> str:
    """``text`` for one line of text output: newlines, tabs and other control characters escaped as Python writes
    them (``new\\nline.png``), so a file name can neither split a line nor drive the terminal. JSON and CSV keep it exact."""
    text = str(text)
    return text if text.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class _Output:
    """Rows to standard output or a file, as readable lines (file names escaped: :func:`_printable`), CSV or JSON Lines."""

    def __init__(self, args, columns: list[str]):
        self.format = "jsonl" if args.json else args.format or "text"
        self.columns = columns
        self.file = open(args.out, "w", newline="") if args.out else sys.stdout  # noqa: SIM115
        self.csv = None
        if self.format == "csv":
            import csv

            self.csv = csv.DictWriter(self.file, fieldnames=columns, extrasaction="ignore")
            self.csv.writeheader()

    def write(self, row: dict, text: str) -> None:
        if self.format == "jsonl":
            self.file.write(json.dumps(row) + "\n")
        elif self.csv is not None:
            flat = {**row, **{f"p{d}": p for d, p in enumerate(row.get("probabilities") or [])}}
            self.csv.writerow({k: ("" if flat.get(k) is None else flat[k]) for k in self.columns})
        else:
            self.file.write(_printable(text) + "\n")
        self.file.flush()

    def close(self) -> None:
        if self.file is not sys.stdout:
            self.file.close()


def _each(paths, handle):
    """(path, ``handle(path)`` or the user error it raised) for every path."""
    for path in paths:
        try:
            yield path, handle(path)
        except MnistCnnError as exc:
            yield path, exc


def _batch(args, columns: list[str], outcomes) -> int:
    """Write the outcome of every image of ``args.images``: ``outcomes`` yields (path, (row, text) or the
    user error that stopped that image), in order; count failures, never stop the batch."""
    from tqdm.auto import tqdm

    paths = args.images  # found by _choose_model
    out = _Output(args, columns)
    failures = 0
    bar = tqdm(
        outcomes,
        total=len(paths),
        unit="image",
        disable=args.no_progress or len(paths) < 2 or not sys.stderr.isatty(),
        file=sys.stderr,
    )
    try:
        for path, outcome in bar:
            if isinstance(outcome, tuple):
                row, text = outcome
            else:  # one bad file is reported and counted, the batch goes on
                exc = outcome
                failures += 1
                bar.write(_printable(f"error: {exc}"), file=sys.stderr)
                row, text = {"file": str(path), "error": str(exc)}, f"{path}: error: {exc}"
                if out.format == "text" and out.file is sys.stdout:
                    continue  # said once, on standard error; a CSV, JSON Lines or --out file keeps its row
            out.write(row, text)
    finally:
        bar.close()
        out.close()
    if failures and len(paths) > 1:  # one image's error line says it all
        print(f"{failures} of {len(paths)} file(s) could not be read", file=sys.stderr)
    if args.out:
        print(f"wrote {len(paths)} result(s) to {args.out}", file=sys.stderr)
    return 1 if failures else 0


def _classifier(args):
    _choose_model(args)
    return _load_classifier(args)


def _load_classifier(args, threads: int | None = None):
    """The model ``_choose_model`` named in ``args.run``, on the runtime the flags ask for, with ``threads``
    threads (default: ``--threads``; 0 = one per core): PyTorch's, or ONNX Runtime's chunks side by side."""
    from ..inference import load_model
    from ..runtime import configure_threads

    threads = configure_threads(args.threads if threads is None else threads)
    return load_model(
        args.run,
        device="cpu" if args.device == "auto" else args.device,
        runtime=getattr(args, "runtime", "torch"),
        tta=getattr(args, "tta", False),
        threads=threads,
    )


def _model_threads(threads: int, workers: int) -> int:
    """``--threads``, or with a pool and no ``--threads`` the cores its workers leave (at least one): PyTorch's
    threads would otherwise spin for cores the workers hold (measured on 2 cores: 600 photos in
    0.2 s less, 0.4 s less CPU)."""
    from ..runtime import available_cores

    return threads if threads or workers <= 1 else max(1, available_cores() - workers)


def cmd_predict(args) -> int:
    """One digit per image. ``uncertain``: the best guess is below --min-confidence; ``not_a_digit``: the
    answer to "is this a digit?" is no (no ink found, or the model's digit gate says no) or not sure
    (uncertain). A guess is always shown.

    Files are preprocessed by a pool of worker processes when there are many (``--workers``) and go
    through the model in batches of ``MODEL_BATCH``."""
    from ..parallel import default_workers, framing

    _check_min_confidence(args)
    if args.workers is not None and args.workers < 0:
        raise ValueError(f"--workers must be 0 or more, got {args.workers}")
    _choose_model(args)
    workers = default_workers(args.images) if args.workers is None else args.workers
    columns = ["file", "label", "probability", *[f"p{d}" for d in range(10)], "uncertain", "not_a_digit", "no_digit",
               "error"]  # fmt: skip
    with _terminated_as_exit(), framing(args.images, workers) as outcomes:  # the workers start while the model loads
        clf = _load_classifier(args, _model_threads(args.threads, workers))
        return _batch(args, columns, _predictions(clf, outcomes, args.min_confidence))


@contextlib.contextmanager
def _terminated_as_exit():
    """SIGTERM (``kill``, a job scheduler, a container stopping) ends the command through its ``finally`` blocks,
    as Ctrl-C does, with exit status 143: the worker pool is shut down instead of left waiting for ever."""
    if threading.current_thread() is not threading.main_thread():  # signal handlers belong to the main thread
        yield
        return
    previous = signal.signal(signal.SIGTERM, _exit_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _exit_terminated(signum, frame):
    raise SystemExit(128 + signum)


MODEL_BATCH = 256  # frames per call of the model when predicting many files


def _predictions(clf, outcomes, min_confidence: float):
    """(path, (row, text) or error) per (path, frame or error), the frames through the model in batches."""
    chunk = []
    for item in outcomes:
        chunk.append(item)
        if len(chunk) == MODEL_BATCH:
            yield from _predict_chunk(clf, chunk, min_confidence)
            chunk = []
    yield from _predict_chunk(clf, chunk, min_confidence)


def _predict_chunk(clf, chunk, min_confidence: float):
    import numpy as np

    from ..errors import NoDigitError

    found = [frame for _, frame in chunk if isinstance(frame, np.ndarray)]
    probs, digit = clf.frame_answers(np.stack(found)) if found else ([], [])
    answers = zip(probs, digit, strict=True)
    for path, frame in chunk:
        if isinstance(frame, NoDigitError):
            row = {"file": str(path), "label": None, "uncertain": None, "not_a_digit": True, "no_digit": True}
            yield path, (row, f"{path}: no digit found")
        elif isinstance(frame, Exception):
            yield path, frame
        else:
            yield path, _prediction_row(clf, path, *next(answers), min_confidence)


def _prediction_row(clf, path, probs, looks_like_digit: bool, min_confidence: float) -> tuple[dict, str]:
    label = int(probs.argmax())
    uncertain = bool(probs[label] < min_confidence)
    refused = uncertain or not looks_like_digit
    row = {"file": str(path), "label": label, "probability": round(float(probs[label]), 6),
           "probabilities": [round(float(p), 6) for p in probs], "uncertain": uncertain, "not_a_digit": refused}  # fmt: skip
    guess = f"{clf.labels[label]} (p={probs[label]:.3f})"
    return row, f"{path}: not sure — is this a digit? best guess {guess}" if refused else f"{path}: {guess}"


def cmd_read(args) -> int:
    from ..reading import read_digits

    _check_min_confidence(args)
    clf = _classifier(args)

    def handle(path):
        reading = read_digits(clf, path, min_confidence=args.min_confidence)
        row = {"file": str(path), **reading.to_dict()}
        if not reading.found:
            return row, f"{path}: no digit found"
        row["count"] = len(reading.digits)
        row["min_digit_confidence"] = round(min(d.confidence for d in reading.digits), 6)
        row["uncertain"] = sum(d.uncertain for d in reading.digits)
        confidences = " ".join(f"{d.confidence:.2f}" for d in reading.digits)
        return row, f"{path}: {' / '.join(reading.lines)}  (confidence per digit: {confidences})"

    columns = ["file", "text", "found", "count", "uncertain", "min_digit_confidence", "error"]
    return _batch(args, columns, _each(args.images, handle))


def cmd_preprocess(args) -> int:
    from PIL import Image

    from ..folder import atomic_write
    from ..preprocess import preprocess_image

    result = preprocess_image(args.image)
    if args.out:
        png = io.BytesIO()
        Image.fromarray(result.array).save(
            png, format=Image.registered_extensions().get(args.out.suffix.lower(), "PNG")
        )
        atomic_write(args.out, png.getvalue())
    record = result.record.to_dict()
    if args.json:
        print(json.dumps(record))
    else:
        width = max(map(len, record))
        for key, value in record.items():
            if value not in (None, [], ""):
                print(f"{key:<{width}}  {value}")
    if args.out:
        print(f"wrote {args.out} (28x28, white digit on black: what the model sees)", file=sys.stderr)
    return 0
