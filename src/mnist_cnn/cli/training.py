"""The training commands: ``train``, ``tune``, ``recipes``, ``runs``, and ``show`` (the digits trained on)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path

from ..config import DEFAULT_RECIPE, RECIPES, TrainConfig
from ..errors import MnistCnnError
from .common import _add_data_flags, _add_runtime_flags, _evaluate_steps, _load_data, log


def _models() -> list[str]:
    from ..models import list_models

    return list_models()


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


def _add_repro_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--deterministic", action="store_true",
                   help="deterministic algorithms only, every RNG seeded: the same seed gives the same weights (default: off)")  # fmt: skip


def add_train(sub, common: argparse.ArgumentParser) -> None:
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


def add_show(sub, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("show", parents=[common], help="save a grid of sample digits")
    p.add_argument("--out", type=Path, default=Path("digits.png"), help="PNG file to write (default: digits.png)")
    p.add_argument("--split", choices=["train", "test"], default="train", help="which set (default: train)")
    p.add_argument("--count", type=int, default=32, help="how many digits (default: 32)")
    p.add_argument("--seed", type=int, default=0, help="which random sample (default: 0)")
    _add_data_flags(p)


def add_recipes(sub, common: argparse.ArgumentParser) -> None:
    sub.add_parser("recipes", parents=[common], help="list the named training recipes")


def add_runs(sub, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("runs", parents=[common], help="list the runs in a folder: recipe, epochs, accuracy, time, date")
    p.add_argument("folder", type=Path, nargs="?", default=Path("runs"), help="folder of run folders (default: runs)")
    p.add_argument("--sort", choices=["date", "val", "name"], default="date",
                   help="order: date (oldest first), val (best validation accuracy first) or name (default: date)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="a JSON list instead of a table (default: table)")


def add_tune(sub, common: argparse.ArgumentParser) -> None:
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


def cmd_train(args) -> int:
    from .. import distributed
    from ..evaluate import format_metrics
    from ..runtime import configure_threads

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
    from ..train import RunFinishedError, resumable_settings

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
        from ..tune import DEFAULT_STORAGE, best_config

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
    return recipe, config, args.runs_dir / _run_name(args.name, recipe)


def _run_name(name: str | None, recipe: str) -> str:
    """The run folder's name inside --runs-dir: one plain name, so a run never lands outside that folder."""
    if name is None:
        return f"{recipe}-{time.strftime('%Y%m%d-%H%M%S')}"
    if not name or name in (".", "..") or Path(name).name != name or "\\" in name:
        raise ValueError(
            f"--name {name!r} must be a plain folder name (no '/', '..' or '\\'); use --runs-dir for the place"
        )
    return name


def _train_or_resume(args, recipe, config, run_dir, data, device):
    from ..train import resume_run, train_run

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
    from ..runtime import select_device

    return select_device(name)


def _launch_distributed(args) -> int:
    """--nproc N: run this same command in N processes through torchrun, under one run folder."""
    from .. import distributed

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


def cmd_show(args) -> int:
    from ..report import sample_grid

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
    from ..runs import format_table, list_runs, rows_as_dicts

    rows = list_runs(args.folder, sort=args.sort)
    if args.json:
        print(json.dumps(rows_as_dicts(rows), indent=2))
    elif rows:
        print(format_table(rows))
    else:
        print(f"no runs in {args.folder}")
    return 0


def cmd_tune(args) -> int:
    from ..runtime import configure_threads
    from ..tune import DEFAULT_STORAGE, format_study, run_study, search_space

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
