"""The commands that start from a trained model folder: ``evaluate``, ``calibrate``, ``ensemble``, ``export``;
and ``import-keras``, which makes one from a Keras file."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import (
    _add_data_flags,
    _add_inference_runtime_flag,
    _add_runs_dir_flag,
    _add_runtime_flags,
    _add_tta_flag,
    _evaluate_steps,
    _load_data,
    _resolve_run,
)


def add_evaluate(sub, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "evaluate", parents=[common], help="evaluate a saved model on the test set; rewrite its metrics and report"
    )
    p.add_argument("run", type=Path, help="run (model) folder, run name in --runs-dir, or latest")
    _add_runs_dir_flag(p)
    _add_tta_flag(p)
    _add_data_flags(p)
    _add_runtime_flags(p)
    _add_inference_runtime_flag(p)


def add_ensemble(sub, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "ensemble", parents=[common], help="combine model folders into one ensemble model folder and evaluate it"
    )
    p.add_argument("runs", type=Path, nargs="+", metavar="RUN", help="two or more run (model) folders or run names")
    _add_runs_dir_flag(p)
    p.add_argument("--out", type=Path, required=True, help="ensemble folder to write (required; no default)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing folder (default: refuse)")
    _add_tta_flag(p)
    _add_data_flags(p)
    _add_runtime_flags(p)


def add_import_keras(sub, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "import-keras",
        parents=[common],
        help="make a model folder from a Keras model file (.keras or .h5) of a seed architecture",
    )
    p.add_argument(
        "model", type=Path, metavar="MODEL", help="Keras 3 .keras or Keras 2 .h5 file saved with model.save(...)"
    )
    p.add_argument("--out", type=Path, required=True, help="model folder to write (required; no default)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing folder (default: refuse)")


def cmd_import_keras(args) -> int:
    from ..folder import read_config
    from ..keras_import import import_keras

    out = import_keras(args.model, args.out, overwrite=args.overwrite)
    print(f"{args.model} -> {out} (architecture {read_config(out)['architecture']}); "
          f"try: mnist-cnn evaluate {out}")  # fmt: skip
    return 0


def add_export(sub, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "export", parents=[common], help="export a saved model to ONNX and check it against PyTorch on the test set"
    )
    p.add_argument(
        "run", type=Path, help="run (model) folder, run name in --runs-dir, or latest; model.onnx is written into it"
    )
    _add_runs_dir_flag(p)
    p.add_argument("--format", default="onnx", choices=["onnx"], help="export format (default: onnx)")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset version (default: 18)")
    p.add_argument("--tolerance", type=float, default=1e-4,
                   help="largest |ONNX Runtime - PyTorch| logit difference accepted on the test set (default: 1e-4)")  # fmt: skip
    p.add_argument("--quantize", choices=["int8"], default=None,
                   help="also write model.int8.onnx, int8 weights and activations calibrated on training images, for"
                        " --runtime onnxruntime-int8 (default: float32 model.onnx only)")  # fmt: skip
    p.add_argument("--calibration-images", type=int, default=500, metavar="N",
                   help="training images that calibrate the int8 activation ranges (default: 500)")  # fmt: skip
    _add_data_flags(p)


def _fitting_parser(sub, common: argparse.ArgumentParser, name: str, help: str) -> argparse.ArgumentParser:
    """A command that fits something to a run on its data (calibrate, gate): RUN and the shared flags."""
    p = sub.add_parser(name, parents=[common], help=help)
    p.add_argument("run", type=Path, help="run (model) folder, run name in --runs-dir, or latest")
    _add_runs_dir_flag(p)
    _add_data_flags(p)
    _add_runtime_flags(p)
    return p


def add_calibrate(sub, common: argparse.ArgumentParser) -> None:
    _fitting_parser(
        sub, common, "calibrate",
        "fit the temperature on the run's validation split; report the test-set calibration error before and after",
    )  # fmt: skip


def add_gate(sub, common: argparse.ArgumentParser) -> None:
    p = _fitting_parser(
        sub, common, "gate",
        "fit the run's digit gate (is this a digit at all?) on its training digits and generated not-digits; threshold set on its validation digits",
    )  # fmt: skip
    p.add_argument("--digits", type=int, default=48_000, metavar="N", help="training digits, as written, corrupted, photographed and drawn (default: 48000)")  # fmt: skip
    p.add_argument("--not-digits", type=int, default=18_000, metavar="N", help="generated not-digits (default: 18000)")  # fmt: skip


def cmd_gate(args) -> int:
    from ..folder import CONFIG, GATE, ModelFolder
    from ..gate import fit_run_gate
    from ..inference import load_model, read_config
    from ..runtime import configure_threads

    args.run = _resolve_run(args.run, args)
    read_config(args.run)
    for flag, value in (("--digits", args.digits), ("--not-digits", args.not_digits)):
        if value < 100:
            raise ValueError(f"{flag} must be at least 100, got {value}")
    configure_threads(args.threads)
    data = _load_data(args)
    gate, record = fit_run_gate(load_model(args.run), data, digits=args.digits, not_digits=args.not_digits)
    ModelFolder(args.run).save_gate(gate.state_dict(), record)
    print(
        f"digit gate fitted on {record['fitted_on']} in {record['seconds']:.0f} s; threshold {record['threshold']:.4g}"
    )
    print(f"refuses {record['validation_digits_refused']:.2%} of validation digits and "
          f"{record['held_out_not_digits_refused']:.2%} of not-digits drawn apart")  # fmt: skip
    print(f"saved in {args.run / GATE} and {args.run / CONFIG}")
    return 0


def cmd_evaluate(args) -> int:
    from ..inference import load_model, read_config
    from ..runtime import configure_threads

    args.run = _resolve_run(args.run, args)
    read_config(args.run)  # a clear error before the data is loaded
    configure_threads(args.threads)
    if args.runtime != "torch":
        load_model(
            args.run, runtime=args.runtime, tta=args.tta
        )  # a clear error (e.g. no model.onnx) before the data is loaded
    return _evaluate_and_print(args.run, _load_data(args), args)


def _evaluate_and_print(run: Path, data, args) -> int:
    from ..evaluate import format_metrics

    runtime = getattr(args, "runtime", "torch")
    metrics = _evaluate_steps(run, data, device=args.device, tta=args.tta, runtime=runtime)
    print(format_metrics(metrics), end="\n\n")
    val = f"validation {metrics['val_accuracy']:.4f}, " if metrics["val_accuracy"] is not None else ""
    print(f"test accuracy {metrics['test_accuracy']:.4f}  test loss {metrics['test_loss']:.4f}  "
          f"({val}{len(metrics['misclassified'])} of {metrics['test_images']} misclassified"
          f"{', with test-time augmentation' if args.tta else ''})")  # fmt: skip
    print(f"report: {run / 'report.html'}")
    return 0


def cmd_ensemble(args) -> int:
    from ..ensemble import make_ensemble
    from ..runtime import configure_threads

    args.runs = [_resolve_run(run, args) for run in args.runs]
    configure_threads(args.threads)
    data = _load_data(args)  # a clear error before anything is written
    out = make_ensemble(args.runs, args.out, overwrite=args.overwrite)
    print(f"wrote ensemble of {len(args.runs)} models: {out}")
    return _evaluate_and_print(out, data, args)


def cmd_calibrate(args) -> int:
    from ..calibrate import calibrate_run
    from ..evaluate import calibration_line
    from ..inference import read_config
    from ..runtime import configure_threads

    args.run = _resolve_run(args.run, args)
    read_config(args.run)
    configure_threads(args.threads)
    data = _load_data(args)
    record = calibrate_run(args.run, data, device=args.device)
    metrics = _evaluate_steps(args.run, data, device=args.device, calibrate=False)
    print(f"temperature {record['temperature']:.4f}, fitted on the {record['fitted_on']}")
    print(f"validation: NLL {record['val_nll_before']:.4f} -> {record['val_nll_after']:.4f}, "
          f"ECE {record['val_ece_before']:.4f} -> {record['val_ece_after']:.4f}")  # fmt: skip
    print(calibration_line(metrics))
    print(f"saved in {args.run / 'config.json'}; report: {args.run / 'report.html'}")
    return 0


def cmd_export(args) -> int:
    from ..export import export_onnx, verify_onnx
    from ..inference import read_config

    args.run = _resolve_run(args.run, args)
    read_config(args.run)  # a clear error before the data is loaded
    if args.calibration_images < 1:
        raise ValueError(f"--calibration-images must be at least 1, got {args.calibration_images}")
    path = export_onnx(args.run, opset=args.opset)
    data = _load_data(args)
    diff = verify_onnx(args.run, data.test_images.numpy(), tolerance=args.tolerance)
    print(f"wrote {path}")
    print(f"ONNX Runtime matches PyTorch on the {len(data.test_images):,} test images: "
          f"max |logit difference| {diff:.2e} (tolerance {args.tolerance:g})")  # fmt: skip
    if args.quantize == "int8":
        _export_int8(args.run, data, args)
    return 0


def _export_int8(run: Path, data, args) -> None:
    from ..inference import read_config
    from ..quantize import calibration_images, quantize_onnx, verify_int8

    images = calibration_images(read_config(run), data, args.calibration_images)
    path = quantize_onnx(run, images, opset=args.opset)
    verified = verify_int8(run, data.test_images.numpy(), data.test_labels.numpy())
    print(f"wrote {path} (int8, calibrated on {len(images):,} training images)")
    print(f"int8 picks the same digit as float32 for {verified['agreement']:.2%} of the {verified['images']:,} test images; "
          f"test accuracy {verified['int8_accuracy']:.2%} (float32 {verified['fp32_accuracy']:.2%})")  # fmt: skip
