"""What several commands share: the flag groups (data, runtime, test-time augmentation, verbosity),
loading the data set, and evaluating a model folder the way ``train``, ``evaluate``, ``ensemble``
and ``calibrate`` all do."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger("mnist_cnn")


def _add_data_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="folder holding the four MNIST files (default: $MNIST_CNN_DATA, else the cache, else download)",
    )
    g.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="where downloads are kept (default: $MNIST_CNN_CACHE, else ~/.cache/mnist-cnn)",
    )
    g.add_argument(
        "--no-download", action="store_true", help="never download; fail if no local copy (default: download if needed)"
    )
    g.add_argument("--no-verify", action="store_true", help="skip the digest check, for other data in MNIST's IDX layout (default: verify)")  # fmt: skip


def _add_runtime_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--device",
        default="auto",
        choices=["auto", "cpu", "cuda", "mps"],
        help="where to compute (default: auto = cuda, then mps, then cpu)",
    )
    p.add_argument("--threads", type=int, default=0, help="CPU threads for PyTorch or ONNX Runtime (default: 0 = one per available core)")  # fmt: skip


def _add_runs_dir_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runs-dir", type=Path, default=Path("runs"),
                   help="where RUN names and 'latest' are looked up (default: runs)")  # fmt: skip


def _resolve_run(run: Path, args) -> Path:
    """RUN as a person types it (a folder, a run name, 'latest', a file in a run folder) -> the model folder."""
    from ..runs import resolve_run

    return resolve_run(run, args.runs_dir)


def _add_inference_runtime_flag(p: argparse.ArgumentParser) -> None:
    from ..classifier import RUNTIMES

    p.add_argument("--runtime", default="torch", choices=RUNTIMES,
                   help="predict with PyTorch, with the exported model.onnx on ONNX Runtime, or with its int8"
                        " version model.int8.onnx (export --quantize int8) (default: torch)")  # fmt: skip


def _add_tta_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tta", action="store_true",
                   help="test-time augmentation: average over small rotations and zooms of each image (5x the compute; default: off)")  # fmt: skip


def _add_verbosity_flags(p: argparse.ArgumentParser, suppress: bool) -> None:
    p.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS if suppress else 0,
                   help="more log output (default: progress and results)")  # fmt: skip
    p.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS if suppress else False,
                   help="only warnings and errors (default: off)")  # fmt: skip


def _load_data(args):
    from ..data import load_mnist

    return load_mnist(args.data_dir, cache_dir=args.cache_dir, download=not args.no_download, verify=not args.no_verify)


def _evaluate_steps(run: Path, data, *, device: str, calibrate: bool = True, **options) -> dict:
    """Fit the temperature on the validation split (``calibrate``), measure on the test set, record
    the metrics, write the report and the model card (README.md); return the metrics."""
    from ..calibrate import calibrate_if_possible
    from ..evaluate import evaluate_run, save_metrics
    from ..model_card import write_model_card
    from ..report import write_run_report

    if calibrate:
        calibrate_if_possible(run, data, device=device)
    measured = evaluate_run(run, data, device=device, **options)
    save_metrics(measured)
    write_run_report(measured, data)
    write_model_card(measured)
    return measured.metrics
