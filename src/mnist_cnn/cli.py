"""The ``mnist-cnn`` command. Only this module prints and chooses exit codes.

Exit status: 0 success; 1 some inputs failed (a file ``predict`` or ``read`` could not read; the
others are still processed, and an image with no ink is an answer — "no digit found" — not a
failure); 2 a usage or data error (bad flag, missing data folder, corrupt file); 130 interrupted.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import logging
import sys
import time
from pathlib import Path

from .config import DEFAULT_MIN_CONFIDENCE, DEFAULT_RECIPE, RECIPES, TrainConfig
from .errors import MnistCnnError

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
    p.add_argument("--threads", type=int, default=0, help="CPU threads for PyTorch (default: 0 = one per available core)")  # fmt: skip


def _add_inference_runtime_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runtime", default="torch", choices=["torch", "onnxruntime"],
                   help="predict with PyTorch or with the exported model.onnx on ONNX Runtime (default: torch)")  # fmt: skip


def _add_serve_flags(p: argparse.ArgumentParser) -> None:
    """One flag per ServeSettings field, like the training flags."""
    from .config import ServeSettings as Settings

    g = p.add_argument_group("service (limits and batching)")
    for f in dataclasses.fields(Settings):
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            g.add_argument(flag, dest=f.name, default=None, action=argparse.BooleanOptionalAction,
                           help=f"{f.metadata['help']} (default: {'on' if f.default else 'off'})")  # fmt: skip
            continue
        extra = {"choices": ["torch", "onnxruntime"]} if f.name == "runtime" else {}
        g.add_argument(flag, dest=f.name, type=type(f.default), default=None, metavar=f.name.upper(),
                       help=f"{f.metadata['help']} (default: {f.default})", **extra)  # fmt: skip


def _add_config_flags(p: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field; unset flags keep the recipe's value."""
    base = RECIPES[DEFAULT_RECIPE].config
    g = p.add_argument_group("training (each overrides the recipe)")
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        # val_split is a count or a fraction: TrainConfig reads the text, so its messages are the same everywhere.
        kind = str if f.name == "val_split" else int if f.name == "split_seed" else type(getattr(base, f.name))
        if kind is bool:
            extra = {"action": argparse.BooleanOptionalAction}
        else:
            extra = {"type": kind, "metavar": f.name.upper()}
            if f.name == "model":
                extra["choices"] = sorted(_models())
        g.add_argument(flag, dest=f.name, default=None, **extra,
                       help=f"{f.metadata['help']} (default: the recipe's; {getattr(base, f.name)} in '{DEFAULT_RECIPE}')")  # fmt: skip


def _add_tta_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tta", action="store_true",
                   help="test-time augmentation: average over small rotations and zooms of each image (5x the compute; default: off)")  # fmt: skip


def _models() -> list[str]:
    from .models import list_models

    return list_models()


def _add_verbosity_flags(p: argparse.ArgumentParser, suppress: bool) -> None:
    p.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS if suppress else 0,
                   help="more log output (default: progress and results)")  # fmt: skip
    p.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS if suppress else False,
                   help="only warnings and errors (default: off)")  # fmt: skip


def _add_model_and_images(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", type=Path, nargs="?", default=None,
                   help="run (model) folder, when the first argument is one (default: the model that ships with mnist-cnn)")  # fmt: skip
    p.add_argument("images", type=Path, nargs="+", help="image files, or folders (searched recursively)")


def _is_model_folder(path: Path) -> bool:
    from .inference import CONFIG

    return (path / CONFIG).is_file()


def _choose_model(args) -> None:
    """RUN is optional: the first argument is the model folder when it is one; else the images start
    there and the default model reads them (said on standard error, as -q allows)."""
    from .default_model import describe
    from .inference import default_model_dir, read_config

    if args.run is not None and not _is_model_folder(args.run):
        args.run, args.images = None, [args.run, *args.images]
    if args.run is None:
        if len(args.images) == 1 and _is_model_folder(args.images[0]):
            raise ValueError(f"{args.images[0]} is a model folder: name the images to read after it")
        args.run = default_model_dir()
        log.info("using the default model %s", describe(read_config(args.run)))


def _add_min_confidence_flag(p: argparse.ArgumentParser, below: str) -> None:
    p.add_argument("--min-confidence", type=float, default=DEFAULT_MIN_CONFIDENCE, metavar="P",
                   help=f"below this probability {below} (default: {DEFAULT_MIN_CONFIDENCE})")  # fmt: skip


def _check_min_confidence(args) -> None:
    if not 0 <= args.min_confidence <= 1:
        raise ValueError(f"--min-confidence must be between 0 and 1, got {args.min_confidence}")


def _add_batch_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", choices=["text", "csv", "jsonl"], default=None,
                   help="output: readable lines, CSV, or JSON Lines (default: text)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="the same as --format jsonl (default: off)")
    p.add_argument("--out", type=Path, default=None, help="write the results to this file (default: standard output)")
    p.add_argument(
        "--no-progress", action="store_true", help="no progress bar (default: shown on a terminal for many files)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mnist-cnn", description="Train, evaluate and use CNNs that read handwritten digits."
    )
    _add_verbosity_flags(parser, suppress=False)
    common = argparse.ArgumentParser(add_help=False)
    _add_verbosity_flags(common, suppress=True)  # after the command they override only when given
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "train", parents=[common], help="train a recipe, evaluate it on the test set and write the report"
    )
    p.add_argument(
        "--recipe",
        default=DEFAULT_RECIPE,
        choices=list(RECIPES),
        help=f"named configuration (default: {DEFAULT_RECIPE}; see 'mnist-cnn recipes')",
    )
    p.add_argument("--runs-dir", type=Path, default=Path("runs"), help="parent folder of run folders (default: runs)")
    p.add_argument("--name", default=None, help="run folder name (default: RECIPE-YYYYmmdd-HHMMSS)")
    p.add_argument(
        "--overwrite", action="store_true", help="reuse an existing run folder of the same name (default: refuse)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars (default: shown on a terminal)")
    _add_repro_flags(p)
    g = p.add_argument_group("checkpoints, resume and processes")
    g.add_argument("--resume", type=Path, default=None, metavar="RUN",
                   help="continue the run in folder RUN from its newest intact checkpoint, with the settings it started with (default: a new run)")  # fmt: skip
    g.add_argument("--checkpoint-every", type=int, default=None, metavar="STEPS",
                   help="also write a checkpoint every STEPS steps (default: 0 = after every epoch only)")  # fmt: skip
    g.add_argument("--keep-checkpoints", type=int, default=3, metavar="K", help="newest checkpoints kept (default: 3)")
    g.add_argument("--nproc", type=int, default=1, metavar="N",
                   help="train with N processes on this machine (DistributedDataParallel through torchrun; default: 1)")  # fmt: skip
    p.add_argument("--tensorboard", action="store_true",
                   help="also write TensorBoard event files in RUN/tensorboard (needs mnist-cnn[tensorboard]; default: off)")  # fmt: skip
    g = p.add_argument_group("from a tuning study")
    g.add_argument("--from-study", metavar="STUDY", default=None,
                   help="start from the config of this study's best trial (default: the recipe's); other flags still override")  # fmt: skip
    g.add_argument("--storage", default=None, help="the study's database URL (default: sqlite:///runs/tune.db)")
    _add_config_flags(p)
    _add_data_flags(p)
    _add_runtime_flags(p)

    p = sub.add_parser(
        "evaluate", parents=[common], help="evaluate a saved model on the test set; rewrite its metrics and report"
    )
    p.add_argument("run", type=Path, help="run (model) folder")
    _add_tta_flag(p)
    _add_data_flags(p)
    _add_runtime_flags(p)
    _add_inference_runtime_flag(p)

    p = sub.add_parser(
        "ensemble", parents=[common], help="combine model folders into one ensemble model folder and evaluate it"
    )
    p.add_argument("runs", type=Path, nargs="+", metavar="RUN", help="two or more run (model) folders")
    p.add_argument("--out", type=Path, required=True, help="ensemble folder to write (required; no default)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing folder (default: refuse)")
    _add_tta_flag(p)
    _add_data_flags(p)
    _add_runtime_flags(p)

    p = sub.add_parser("predict", parents=[common], help="predict the digit in image files or folders (PNG, JPEG, ...)")
    _add_model_and_images(p)
    _add_min_confidence_flag(p, "the answer is 'not sure — is this a digit?' (best guess still shown)")
    _add_batch_flags(p)
    _add_tta_flag(p)
    _add_runtime_flags(p)
    _add_inference_runtime_flag(p)

    p = sub.add_parser(
        "export", parents=[common], help="export a saved model to ONNX and check it against PyTorch on the test set"
    )
    p.add_argument("run", type=Path, help="run (model) folder; model.onnx is written into it")
    p.add_argument("--format", default="onnx", choices=["onnx"], help="export format (default: onnx)")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset version (default: 18)")
    p.add_argument("--tolerance", type=float, default=1e-4,
                   help="largest |ONNX Runtime - PyTorch| logit difference accepted on the test set (default: 1e-4)")  # fmt: skip
    _add_data_flags(p)

    p = sub.add_parser("serve", parents=[common], help="serve a saved model over HTTP: REST API and drawing page")
    p.add_argument("run", type=Path, nargs="?", default=None,
                   help="run (model) folder (default: the model that ships with mnist-cnn, served on torch when it ships without model.onnx and --runtime is not given)")  # fmt: skip
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default: 8000)")
    p.add_argument("--graceful-timeout", type=float, default=10.0,
                   help="seconds in-flight requests get to finish on shutdown (default: 10)")  # fmt: skip
    _add_serve_flags(p)

    p = sub.add_parser(
        "read", parents=[common], help="read the number(s) in images: every digit, left to right, line by line"
    )
    _add_model_and_images(p)
    _add_min_confidence_flag(p, "digits are shown as '?'")
    _add_batch_flags(p)
    _add_tta_flag(p)
    _add_runtime_flags(p)

    p = sub.add_parser(
        "preprocess", parents=[common], help="show what the model sees: an image in MNIST format (28x28)"
    )
    p.add_argument("image", type=Path, help="image file")
    p.add_argument("--out", type=Path, default=None, help="PNG file to write the 28x28 result to (default: none)")
    p.add_argument(
        "--json", action="store_true", help="print the record of what was done as JSON (default: readable lines)"
    )

    p = sub.add_parser(
        "calibrate", parents=[common],
        help="fit the temperature on the run's validation split; report the test-set calibration error before and after",
    )  # fmt: skip
    p.add_argument("run", type=Path, help="run (model) folder")
    _add_data_flags(p)
    _add_runtime_flags(p)

    p = sub.add_parser("show", parents=[common], help="save a grid of sample digits")
    p.add_argument("--out", type=Path, default=Path("digits.png"), help="PNG file to write (default: digits.png)")
    p.add_argument("--split", choices=["train", "test"], default="train", help="which set (default: train)")
    p.add_argument("--count", type=int, default=32, help="how many digits (default: 32)")
    p.add_argument("--seed", type=int, default=0, help="which random sample (default: 0)")
    _add_data_flags(p)

    sub.add_parser("recipes", parents=[common], help="list the named training recipes")

    p = sub.add_parser("runs", parents=[common], help="list the runs in a folder: recipe, epochs, accuracy, time, date")
    p.add_argument("folder", type=Path, nargs="?", default=Path("runs"), help="folder of run folders (default: runs)")
    p.add_argument("--sort", choices=["date", "val", "name"], default="date",
                   help="order: date (oldest first), val (best validation accuracy first) or name (default: date)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="a JSON list instead of a table (default: table)")

    p = sub.add_parser("tune", parents=[common],
                       help="search hyper-parameters with Optuna (TPE, pruning) on validation accuracy")  # fmt: skip
    p.add_argument("--recipe", default=DEFAULT_RECIPE, choices=list(RECIPES),
                   help=f"recipe whose hyper-parameters are searched (default: {DEFAULT_RECIPE})")  # fmt: skip
    p.add_argument("--trials", type=int, default=20,
                   help="run until the study holds this many finished trials, counting earlier runs and other workers (default: 20)")  # fmt: skip
    p.add_argument("--storage", default=None,
                   help="study database URL: sqlite:///FILE, postgresql://..., mysql+pymysql://... (default: sqlite:///runs/tune.db)")  # fmt: skip
    p.add_argument("--study", default=None, help="study name; the same name resumes it (default: tune-RECIPE)")
    p.add_argument("--pruner", choices=["median", "hyperband", "none"], default="median",
                   help="stop trials that fall behind after an epoch (default: median)")  # fmt: skip
    p.add_argument("--sampler-seed", type=int, default=None,
                   help="seed of the TPE sampler, for a repeatable single-worker search (default: random)")  # fmt: skip
    p.add_argument("--timeout", type=float, default=None, help="stop starting trials after this many seconds (default: none)")  # fmt: skip
    p.add_argument("--show", action="store_true", help="print the study's best trials and exit (default: search)")
    p.add_argument("--space", action="store_true", help="print the recipe's search space and exit (default: search)")
    p.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bars (default: a bar per epoch of each trial on a terminal)",
    )
    _add_config_flags(p)
    _add_data_flags(p)
    _add_runtime_flags(p)
    return parser


def _add_repro_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--deterministic", action="store_true",
                   help="deterministic algorithms only, every RNG seeded: the same seed gives the same weights (default: off)")  # fmt: skip


def _load_data(args):
    from .data import load_mnist

    return load_mnist(args.data_dir, cache_dir=args.cache_dir, download=not args.no_download, verify=not args.no_verify)


def cmd_train(args) -> int:
    from . import distributed
    from .evaluate import format_metrics
    from .runtime import configure_threads

    if args.nproc > 1 and not distributed.launched_by_torchrun():
        return _launch_distributed(args)
    if args.resume is not None:
        _check_resumable(args)
        recipe, config, run_dir = None, None, args.resume
    else:
        recipe, config, run_dir = _new_run(args)
    env, device, threads = distributed.Dist(), args.device, args.threads
    if distributed.launched_by_torchrun():
        env, device = distributed.init_from_env(args.device)
        run_dir = distributed.broadcast_object(run_dir)  # rank 0's clock names the folder
        threads = threads or distributed.threads_per_rank(env.local_world_size)
        if not env.is_main:
            logging.getLogger("mnist_cnn").setLevel(logging.WARNING)
    if args.resume is None and env.is_main and run_dir.exists() and any(run_dir.iterdir()) and not args.overwrite:
        raise MnistCnnError(f"run folder {run_dir} already exists; choose another --name or pass --overwrite")
    configure_threads(threads)
    data = _load_data(args)
    try:
        result = _train_or_resume(args, recipe, config, run_dir, data, torch_device(device))
    finally:
        distributed.shutdown()
    if not env.is_main:
        return 130 if result.fit.interrupted else 0
    metrics = _evaluate_steps(run_dir, data, device=str(torch_device(device)))
    print(format_metrics(metrics), end="\n\n")
    print(f"test accuracy {metrics['test_accuracy']:.4f}  (validation {metrics['val_accuracy'] or float('nan'):.4f}, "
          f"kept epoch {result.fit.best_epoch}, {result.fit.train_seconds:.1f} s of training)")  # fmt: skip
    print(f"run folder: {run_dir}\nreport:     {run_dir / 'report.html'}")
    return 130 if result.fit.interrupted else 0


def _check_resumable(args) -> None:
    """--resume RUN: a clear error before anything is loaded when RUN cannot be resumed."""
    from .train import RunFinishedError, resumable_settings

    try:
        resumable_settings(args.resume)
    except RunFinishedError as exc:
        raise MnistCnnError(f"{exc} (evaluate it with: mnist-cnn evaluate {args.resume})") from None
    if _config_overrides(args) or args.from_study:
        raise MnistCnnError("--resume continues a run with the settings it started with; drop the training flags")


def _new_run(args) -> tuple[str, TrainConfig, Path]:
    """(recipe, config, run folder) of a new run: the recipe (or a study's best trial) and the flags."""
    recipe, base = args.recipe, RECIPES[args.recipe].config
    if args.from_study:
        from .tune import DEFAULT_STORAGE, best_config

        recipe, base, trial = best_config(args.storage or DEFAULT_STORAGE, args.from_study)
        log.info(
            "starting from trial %d of study %s (validation accuracy %.4f)", trial.number, args.from_study, trial.value
        )
    config = base.replace(**_config_overrides(args))
    if recipe in RECIPES and RECIPES[recipe].fine_tunes and not config.init:
        raise MnistCnnError(
            f"the {recipe} recipe fine-tunes a trained {config.model} run: pass --init RUN"
            f" (train one with: mnist-cnn train --recipe {config.model})"
        )
    return recipe, config, args.runs_dir / (args.name or f"{recipe}-{time.strftime('%Y%m%d-%H%M%S')}")


def _train_or_resume(args, recipe, config, run_dir, data, device):
    from .train import resume_run, train_run

    progress = not args.no_progress and sys.stderr.isatty()
    if args.resume is not None:
        # Without --threads, the run's own thread count (the library's default), so the resume is exact.
        return resume_run(run_dir, data, device=device, progress=progress, threads=args.threads or None,
                          deterministic=args.deterministic, tensorboard=args.tensorboard,
                          checkpoint_every=args.checkpoint_every, keep_checkpoints=args.keep_checkpoints)  # fmt: skip
    return train_run(config, data, run_dir, recipe=recipe, device=device, progress=progress,
                     deterministic=args.deterministic, tensorboard=args.tensorboard,
                     checkpoint_every=args.checkpoint_every or 0, keep_checkpoints=args.keep_checkpoints)  # fmt: skip


def torch_device(name: str):
    """The torch.device named ``name`` ('auto', 'cpu', 'cuda', 'cuda:1', ...), checked to exist."""
    from .runtime import select_device

    return select_device(name)


def _launch_distributed(args) -> int:
    """--nproc N: run this same command in N processes through torchrun, under one run folder."""
    from . import distributed

    argv = list(args.argv)
    for i, item in enumerate(argv):  # drop --nproc N / --nproc=N
        if item == "--nproc":
            del argv[i : i + 2]
            break
        if item.startswith("--nproc="):
            del argv[i]
            break
    if args.resume is None and args.name is None:
        recipe = args.recipe if not args.from_study else args.from_study
        argv += ["--name", f"{recipe}-{time.strftime('%Y%m%d-%H%M%S')}"]
    return distributed.launch(args.nproc, argv)


def _config_overrides(args) -> dict:
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if getattr(args, f.name) is not None}


def cmd_evaluate(args) -> int:
    from .inference import load_model, read_config
    from .runtime import configure_threads

    read_config(args.run)  # a clear error before the data is loaded
    configure_threads(args.threads)
    if args.runtime != "torch":
        load_model(
            args.run, runtime=args.runtime, tta=args.tta
        )  # a clear error (e.g. no model.onnx) before the data is loaded
    return _evaluate_and_print(args.run, _load_data(args), args)


def _evaluate_steps(run: Path, data, *, device: str, calibrate: bool = True, **options) -> dict:
    """Fit the temperature on the validation split (``calibrate``), measure on the test set, record
    the metrics, write the report; return the metrics."""
    from .calibrate import calibrate_if_possible
    from .evaluate import evaluate_run, save_metrics
    from .report import write_run_report

    if calibrate:
        calibrate_if_possible(run, data, device=device)
    measured = evaluate_run(run, data, device=device, **options)
    save_metrics(measured)
    write_run_report(measured, data)
    return measured.metrics


def _evaluate_and_print(run: Path, data, args) -> int:
    from .evaluate import format_metrics

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
    from .ensemble import make_ensemble
    from .runtime import configure_threads

    configure_threads(args.threads)
    data = _load_data(args)  # a clear error before anything is written
    out = make_ensemble(args.runs, args.out, overwrite=args.overwrite)
    print(f"wrote ensemble of {len(args.runs)} models: {out}")
    return _evaluate_and_print(out, data, args)


def cmd_calibrate(args) -> int:
    from .calibrate import calibrate_run
    from .evaluate import calibration_line
    from .inference import read_config
    from .runtime import configure_threads

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


class _Output:
    """Rows to standard output or a file, as readable lines, CSV or JSON Lines."""

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
            self.file.write(text + "\n")
        self.file.flush()

    def close(self) -> None:
        if self.file is not sys.stdout:
            self.file.close()


def _batch(args, columns: list[str], handle) -> int:
    """Run ``handle(path) -> (row, text)`` on every image; count failures, never stop the batch."""
    from tqdm.auto import tqdm

    from .preprocess import find_images

    paths = find_images(args.images)
    out = _Output(args, columns)
    failures = 0
    bar = tqdm(
        paths, unit="image", disable=args.no_progress or len(paths) < 2 or not sys.stderr.isatty(), file=sys.stderr
    )
    try:
        for path in bar:
            try:
                row, text = handle(path)
            except MnistCnnError as exc:  # one bad file is reported and counted, the batch goes on
                failures += 1
                bar.write(f"error: {exc}", file=sys.stderr)
                row, text = {"file": str(path), "error": str(exc)}, f"{path}: error: {exc}"
            out.write(row, text)
    finally:
        bar.close()
        out.close()
    if failures:
        print(f"{failures} of {len(paths)} file(s) could not be read", file=sys.stderr)
    if args.out:
        print(f"wrote {len(paths)} result(s) to {args.out}", file=sys.stderr)
    return 1 if failures else 0


def _classifier(args):
    from .inference import load_model
    from .runtime import configure_threads

    _choose_model(args)
    configure_threads(args.threads)
    return load_model(
        args.run,
        device="cpu" if args.device == "auto" else args.device,
        runtime=getattr(args, "runtime", "torch"),
        tta=getattr(args, "tta", False),
    )


def cmd_predict(args) -> int:
    """One digit per image. ``uncertain``: the best guess is below --min-confidence; ``not_a_digit``: the
    answer to "is this a digit?" is no (no ink found) or not sure (uncertain). A guess is always shown."""
    import numpy as np

    from .preprocess import NoDigitError, preprocess_image

    _check_min_confidence(args)
    clf = _classifier(args)

    def handle(path):
        try:
            image = preprocess_image(path).array
        except NoDigitError:
            row = {"file": str(path), "label": None, "uncertain": None, "not_a_digit": True, "no_digit": True}
            return row, f"{path}: no digit found"
        probs = clf.predict_proba(image)[0]
        label = int(np.argmax(probs))
        uncertain = bool(probs[label] < args.min_confidence)
        row = {"file": str(path), "label": label, "probability": round(float(probs[label]), 6),
               "probabilities": [round(float(p), 6) for p in probs], "uncertain": uncertain, "not_a_digit": uncertain}  # fmt: skip
        guess = f"{clf.labels[label]} (p={probs[label]:.3f})"
        return row, f"{path}: not sure — is this a digit? best guess {guess}" if uncertain else f"{path}: {guess}"

    columns = ["file", "label", "probability", *[f"p{d}" for d in range(10)], "uncertain", "not_a_digit", "no_digit",
               "error"]  # fmt: skip
    return _batch(args, columns, handle)


def cmd_read(args) -> int:
    from .reading import read_digits

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
    return _batch(args, columns, handle)


def cmd_preprocess(args) -> int:
    from PIL import Image

    from .folder import atomic_write
    from .preprocess import preprocess_image

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


def cmd_export(args) -> int:
    from .export import export_onnx, verify_onnx
    from .inference import read_config

    read_config(args.run)  # a clear error before the data is loaded
    path = export_onnx(args.run, opset=args.opset)
    data = _load_data(args)
    diff = verify_onnx(args.run, data.test_images.numpy(), tolerance=args.tolerance)
    print(f"wrote {path}")
    print(f"ONNX Runtime matches PyTorch on the {len(data.test_images):,} test images: "
          f"max |logit difference| {diff:.2e} (tolerance {args.tolerance:g})")  # fmt: skip
    return 0


def cmd_serve(args) -> int:
    from .default_model import describe
    from .export import ONNX_FILE
    from .inference import default_model_dir, load_model, read_config
    from .serve import run, settings_from

    what = args.run
    if args.run is None:
        args.run = default_model_dir()
        what = f"the default model {describe(read_config(args.run))}"
        if args.runtime is None and not (args.run / ONNX_FILE).is_file():
            args.runtime = "torch"  # it ships without model.onnx; `mnist-cnn export` a copy for onnxruntime
    settings = settings_from(vars(args))
    load_model(args.run, runtime=settings.runtime)  # a clear error now rather than a server that never gets ready
    if not 0 < args.port < 65536:
        raise ValueError(f"--port must be between 1 and 65535; got {args.port}")
    print(f"serving {what} ({settings.runtime} runtime) on http://{args.host}:{args.port}/ (API docs at /docs); "
          "Ctrl-C stops", file=sys.stderr)  # fmt: skip
    run(args.run, settings, host=args.host, port=args.port, graceful_timeout=args.graceful_timeout)
    return 0


def cmd_show(args) -> int:
    from .report import sample_grid

    if args.count < 1:
        raise ValueError("--count must be at least 1")
    data = _load_data(args)
    images = getattr(data, f"{args.split}_images").numpy()
    labels = getattr(data, f"{args.split}_labels").numpy()
    sample_grid(images, labels, args.out, n=args.count, seed=args.seed)
    print(f"wrote {args.out}")
    return 0


def cmd_recipes(args) -> int:
    width = max(map(len, RECIPES))
    for name, recipe in RECIPES.items():
        print(f"{name:<{width}}  {recipe.description}")
    return 0


def cmd_runs(args) -> int:
    from .runs import format_table, list_runs, rows_as_dicts

    rows = list_runs(args.folder, sort=args.sort)
    if args.json:
        print(json.dumps(rows_as_dicts(rows), indent=2))
    elif rows:
        print(format_table(rows))
    else:
        print(f"no runs in {args.folder}")
    return 0


def cmd_tune(args) -> int:
    from .runtime import configure_threads
    from .tune import DEFAULT_STORAGE, format_study, run_study, search_space

    storage = args.storage or DEFAULT_STORAGE
    study = args.study or f"tune-{args.recipe}"
    fixed = _config_overrides(args)
    if args.space:
        print(f"search space of recipe {args.recipe} (fields fixed on the command line are left out):")
        print("\n".join(f"  {p.describe()}" for p in search_space(args.recipe, fixed)))
        return 0
    if args.show:
        print(format_study(storage, study))
        return 0
    base = RECIPES[args.recipe].config.replace(**fixed)
    configure_threads(args.threads)
    data = _load_data(args)
    run_study(args.recipe, base, data, trials=args.trials, storage=storage, study_name=study, pruner=args.pruner,
              fixed=fixed, device=args.device, sampler_seed=args.sampler_seed, timeout=args.timeout,
              progress=not args.no_progress and sys.stderr.isatty())  # fmt: skip
    print(format_study(storage, study))
    return 0


COMMANDS = {
    "train": cmd_train,
    "evaluate": cmd_evaluate,
    "ensemble": cmd_ensemble,
    "predict": cmd_predict,
    "export": cmd_export,
    "serve": cmd_serve,
    "read": cmd_read,
    "preprocess": cmd_preprocess,
    "calibrate": cmd_calibrate,
    "show": cmd_show,
    "recipes": cmd_recipes,
    "runs": cmd_runs,
    "tune": cmd_tune,
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    level = logging.WARNING if args.quiet else logging.DEBUG if args.verbose else logging.INFO
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr)
    try:
        return COMMANDS[args.command](args)
    except MnistCnnError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except ValueError as exc:  # invalid settings, e.g. --val-split 70000
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as exc:  # e.g. cannot write the run folder or output file
        print(f"error: {exc.strerror or exc}: {exc.filename or ''}", file=sys.stderr)
        return 1
