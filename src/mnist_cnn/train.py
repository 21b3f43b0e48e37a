"""A whole training run: split, train, keep the best-on-validation weights, save; or resume one.

:func:`train_run` writes a run folder: ``run.json`` (the settings it started with), checkpoints,
``history.json``/``history.csv`` after every epoch, and at the end the model folder
(``model.safetensors`` + ``config.json``). :func:`resume_run` continues a run killed or stopped
part-way, from its newest intact checkpoint, and ends with the weights of a run never stopped.
The loop itself is :mod:`mnist_cnn.loop`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import distributed
from .callbacks import Callback, Checkpointing, StepCurve
from .checkpoint import CheckpointError, Checkpoints
from .config import TrainConfig
from .data import MNIST, split_validation
from .errors import MnistCnnError, ModelFolderError
from .folder import MNIST_NORMALIZATION, atomic_write, read_config, save_model, versions, write_json
from .inference import to_model_input
from .loop import FitResult, check_state, fit, steps_per_epoch
from .models import count_parameters, create_model, list_models
from .reproducibility import git_commit, package_versions, seed_everything
from .runs import read_run_settings, write_run_settings
from .runtime import configure_threads, select_device, uses_bf16
from .tracking import TensorBoardLogger

log = logging.getLogger(__name__)
REJECT_SOURCE_DIGITS = 40_000  # training digits cut and paired into about half as many not-a-digit images


STEPS_JSON = "steps.json"  # the training loss and accuracy within epochs (StepCurve): the curves of short runs


def read_steps(run_dir: Path, until: int | None = None) -> list[dict]:
    """The points of a run's ``steps.json`` (none if it has no readable one), those up to global step ``until``."""
    try:
        points = json.loads((Path(run_dir) / STEPS_JSON).read_text())
    except (OSError, ValueError):
        return []
    if not isinstance(points, list) or not all(isinstance(p, dict) and isinstance(p.get("step"), int) for p in points):
        return []
    return [p for p in points if until is None or p["step"] <= until]


def write_history(run_dir: Path, history: list[dict]) -> None:
    write_json(run_dir / "history.json", history)
    if history:
        columns = list(dict.fromkeys(k for row in history for k in row))
        table = io.StringIO(newline="")
        writer = csv.DictWriter(table, fieldnames=columns)
        writer.writeheader()
        writer.writerows(history)
        atomic_write(run_dir / "history.csv", table.getvalue())


@dataclass
class RunResult:
    run_dir: Path
    model: nn.Module
    fit: FitResult
    config: dict  # what was written to config.json


def _split(config: TrainConfig, data: MNIST) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the training images (capped by ``config.limit``) and of the validation images."""
    train_idx, val_idx = split_validation(len(data.train_images), config.val_split, config.validation_seed)
    return (train_idx[: config.limit] if config.limit > 0 else train_idx), val_idx


def split_tensors(config: TrainConfig, data: MNIST, device: torch.device):
    """The seeded (train, validation) split as normalised tensors on ``device``; validation is
    None when ``config.val_split`` is 0. ``config.limit`` caps the training part, and
    ``config.photo_digits`` photographed copies of training digits and ``config.pen_digits`` drawn
    digits (:mod:`mnist_cnn.pen_digits`) are added to it."""
    train_idx, val_idx = _split(config, data)
    x_all = to_model_input(data.train_images).to(device)
    y_all = data.train_labels.to(device)
    train = (x_all[train_idx.to(device)], y_all[train_idx.to(device)])
    val = (x_all[val_idx.to(device)], y_all[val_idx.to(device)]) if len(val_idx) else None
    if config.photo_digits > 0:
        from .synthetic import photographed

        pick = train_idx[torch.randperm(len(train_idx), generator=torch.Generator().manual_seed(config.seed))]
        pick = pick[: config.photo_digits].sort().values
        start = time.perf_counter()
        photos = to_model_input(photographed(data.train_images[pick].numpy(), config.seed)).to(device)
        log.info("photographed %d training digits in %.0f s", len(pick), time.perf_counter() - start)
        train = (torch.cat([train[0], photos]), torch.cat([train[1], y_all[pick.to(device)]]))
    if config.pen_digits > 0:
        from .pen_digits import pen_digits

        drawn, labels = pen_digits(config.pen_digits, config.seed + 4)
        train = (torch.cat([train[0], to_model_input(drawn).to(device)]),
                 torch.cat([train[1], torch.from_numpy(labels).to(device)]))  # fmt: skip
    return train, val


def reject_tensor(config: TrainConfig, data: MNIST, device: torch.device) -> torch.Tensor | None:
    """Normalised not-a-digit images for ``config.reject_weight`` (None when that is 0): parts and pairs
    of training digits only (:func:`mnist_cnn.synthetic.digit_parts`), plus ``config.not_digits``
    generated ones (:func:`mnist_cnn.synthetic.not_digits`)."""
    if config.reject_weight <= 0:
        return None
    from .synthetic import digit_parts, not_digits

    train_idx, _ = _split(config, data)
    rng = np.random.default_rng(config.seed + 2)
    pick = rng.permutation(train_idx.numpy())[:REJECT_SOURCE_DIGITS]
    rejects = digit_parts(data.train_images.numpy()[pick], rng)
    if config.not_digits > 0:
        start = time.perf_counter()
        junk = not_digits(config.not_digits, config.seed + 3)
        log.info("drew %d not-digits in %.0f s", len(junk), time.perf_counter() - start)
        rejects = np.concatenate([rejects, junk])
    return to_model_input(rejects).to(device)


def initial_weights(config: TrainConfig) -> dict[str, torch.Tensor]:
    """The weights of the model folder ``config.init``, checked to fit ``config.model`` (fine-tuning)."""
    from .inference import load_model

    found = load_model(config.init)  # ModelFolderError with a clear message when it is not a model
    architecture = found.config.get("architecture")
    if architecture != config.model:
        hint = (
            f"; train model {architecture!r} from it"
            if architecture in list_models()
            else " (give it one trained model)"
        )
        raise ModelFolderError(f"{config.init} holds a {architecture!r} model, not {config.model!r}{hint}")
    return found.model.state_dict()


def state_digest(model: nn.Module) -> str:
    """SHA-256 of a model's parameters and buffers, in state-dict order."""
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class RunFinishedError(MnistCnnError):
    """The run saved its model after its last epoch: there is nothing left to resume."""


def _was_interrupted(run_dir: Path) -> bool:
    try:
        return bool(read_config(run_dir)["training"]["interrupted"])
    except (MnistCnnError, KeyError, TypeError):
        return True  # unreadable: let the checkpoints decide


def resumable_settings(run_dir: str | os.PathLike) -> dict:
    """The settings ``run_dir`` started with (its ``run.json``, checked field by field), checked that the run can be
    resumed. Raises :class:`~mnist_cnn.runs.RunSettingsError` for a damaged ``run.json``."""
    run_dir = Path(run_dir)
    settings = read_run_settings(run_dir)
    if "train_config" not in settings:
        raise MnistCnnError(f"{run_dir} is not a run folder that can be resumed: it has no readable run.json")
    if (run_dir / "config.json").is_file() and not _was_interrupted(run_dir):
        raise RunFinishedError(f"{run_dir} finished training already; there is nothing to resume")
    return settings


def _checkpoint_to_resume(store: Checkpoints, config: TrainConfig) -> tuple[Path, dict] | None:
    """The newest intact checkpoint and its state, checked (fields, and that it comes from ``config``);
    None when there is none yet."""
    run_dir = store.folder.parent
    found = store.latest()
    if found is None:  # killed before its first checkpoint was complete: nothing to lose
        log.warning("%s has no intact checkpoint yet; training it again from the start", run_dir)
        return None
    path, state = found
    try:
        check_state(state)
        saved = TrainConfig.from_saved(state["config"])
    except (CheckpointError, ValueError) as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    if saved != config:
        raise CheckpointError(f"{path} was written with another training config than {run_dir / 'run.json'}")
    log.info("resuming from %s (epoch %d, step %d)", path, state["epoch"], state["step"])
    return path, state


def _start_folder(run_dir: Path, config: TrainConfig, resume: bool, options: dict) -> str:
    """Create the run folder and, for a new run, its ``run.json``; return when the run started."""
    env = distributed.current()
    started = (read_run_settings(run_dir).get("started") if resume else None) or time.strftime("%Y-%m-%dT%H:%M:%S%z")
    if env.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if not resume:
            write_run_settings(run_dir, {
                "recipe": options["recipe"], "train_config": config.to_dict(), "started": started,
                "deterministic": options["deterministic"], "threads": torch.get_num_threads(),
                "world_size": env.world_size, "tensorboard": options["tensorboard"],
                "checkpoint_every": options["checkpoint_every"], "keep_checkpoints": options["keep_checkpoints"],
            })  # fmt: skip
    return started


def _tensorboard(run_dir: Path, state: dict | None, steps: int, resume: bool) -> TensorBoardLogger:
    # A resumed run drops the events a killed run wrote past its last checkpoint.
    purge = (state["epoch"] - 1) * steps + state["step"] if state else 0 if resume else None
    return TensorBoardLogger(run_dir, purge_step=purge)


def _seeded_model(config: TrainConfig, device: torch.device, initial: dict | None, deterministic: bool) -> nn.Module:
    """The model, initialised from ``config.seed`` (or ``initial`` weights); seeds dropout too."""
    seed_everything(config.seed, deterministic)  # initialisation and dropout
    model = create_model(config.model).to(device)
    if initial is not None:
        model.load_state_dict(initial)
        log.info("starting from the weights of %s", config.init)
    rank = distributed.current().rank
    if rank > 0:  # same initial weights everywhere (DDP also broadcasts them); other dropout masks
        torch.manual_seed(config.seed + 1_000_003 * rank)
    return model


def _log_start(config: TrainConfig, model: nn.Module, train, val, device: torch.device) -> None:
    env = distributed.current()
    log.info(
        "training %s (%s parameters) on %d images, validating on %d, device %s, %d CPU threads, %s steps%s",
        config.model, f"{count_parameters(model):,}", len(train[0]), len(val[0]) if val else 0, device,
        torch.get_num_threads(), "bfloat16" if uses_bf16(config.precision, device) else "float32",
        f", {env.world_size} processes (global batch {config.batch_size})" if env.active else "",
    )  # fmt: skip


class _RunFiles(Callback):
    """``history.json``/``history.csv`` and ``steps.json`` after every epoch, and the history's scalars in
    TensorBoard (rank 0 only)."""

    def __init__(self, run_dir: Path, board: TensorBoardLogger | None, curve: StepCurve):
        self.run_dir, self.board, self.curve = run_dir, board, curve

    def on_epoch_end(self, state) -> None:
        if not distributed.current().is_main:
            return
        write_history(self.run_dir, state.history)
        write_json(self.run_dir / STEPS_JSON, self.curve.points)
        if self.board is not None:
            self.board.epoch(state.history[-1], state.history[-1]["epoch"] * state.steps)


def _digests_per_process(model: nn.Module) -> list[str]:
    """Every process must end with the same model; checked rather than trusted."""
    digests = distributed.gather_objects(state_digest(model))
    if len(set(digests)) > 1:
        log.error("the processes ended with different weights (SHA-256 per rank: %s)", digests)
    return digests


def _model_config(config: TrainConfig, data: MNIST, result: FitResult, record: dict, options: dict) -> dict:
    """The model folder's ``config.json``: architecture, training record, normalisation, data, versions."""
    env = distributed.current()
    return {
        "architecture": config.model,
        "recipe": options["recipe"],
        "train_config": config.to_dict(),
        "training": {
            "best_epoch": result.best_epoch,
            "epochs_completed": len(result.history),
            "interrupted": result.interrupted,
            "train_seconds": round(result.train_seconds, 2),
            **record["images"],
            "device": str(record["device"]),
            "threads": torch.get_num_threads(),
            "processes": env.world_size,
            "resumed_from_step": result.resumed_from,
            "weights_sha256_per_rank": record["digests"],
            "deterministic": options["deterministic"],
            "selection": "best validation accuracy"
            if record["images"]["val_images"]
            else "last epoch (no validation split)",
        },
        "normalization": MNIST_NORMALIZATION,
        "data": {"source": data.source, "sha256": data.digests},
        "versions": {**versions(), **package_versions()},
        "git": git_commit(),
        "started": record["started"],
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _save(run_dir: Path, model: nn.Module, history: list[dict], meta: dict) -> None:
    """The one place a run writes its model folder."""
    write_history(run_dir, history)
    save_model(run_dir, model, meta)


def train_run(
    config: TrainConfig,
    data: MNIST,
    run_dir: str | os.PathLike,
    *,
    recipe: str | None = None,
    device: str | torch.device = "auto",
    progress: bool = True,
    callbacks: Sequence[Callback] = (),
    deterministic: bool = False,
    tensorboard: bool = False,
    checkpoint_every: int = 0,
    keep_checkpoints: int = 3,
    resume: bool = False,
) -> RunResult:
    """Train one model as ``config`` says and save it, with its history, in ``run_dir``.

    The test set is not touched here: choosing the checkpoint uses the validation split only.
    ``deterministic`` refuses non-deterministic kernels (see :mod:`.reproducibility`);
    ``tensorboard`` also writes TensorBoard event files in ``run_dir/tensorboard``; ``callbacks``
    (:mod:`mnist_cnn.callbacks`) run after the run's own. A checkpoint is written after every epoch
    (and every ``checkpoint_every`` steps when > 0), the newest ``keep_checkpoints`` kept;
    ``resume=True`` continues from the newest intact one (see :func:`resume_run`).
    In a ``torch.distributed`` job every process calls this; only rank 0 writes files.
    """
    run_dir, env = Path(run_dir), distributed.current()
    dev = device if isinstance(device, torch.device) else select_device(device)
    options = {"recipe": recipe, "deterministic": deterministic, "tensorboard": tensorboard,
               "checkpoint_every": checkpoint_every, "keep_checkpoints": keep_checkpoints}  # fmt: skip
    checkpointing = Checkpointing(Checkpoints(run_dir, keep=keep_checkpoints), checkpoint_every)  # checked first
    resumed = _checkpoint_to_resume(checkpointing.store, config) if resume else None
    state = resumed[1] if resumed else None
    started = _start_folder(run_dir, config, resume, options)
    # Checked before the slow steps; a resumed run has its own weights in the checkpoint.
    initial = initial_weights(config) if config.init and state is None else None
    train, val = split_tensors(config, data, dev)
    rejects = reject_tensor(config, data, dev)
    steps = steps_per_epoch(len(train[0]), config.batch_size, env.world_size)
    board = _tensorboard(run_dir, state, steps, resume) if tensorboard and env.is_main else None
    previous = torch.are_deterministic_algorithms_enabled()
    model = _seeded_model(config, dev, initial, deterministic)
    _log_start(config, model, train, val, dev)
    # A resumed run keeps the points of the steps its checkpoint holds.
    curve = StepCurve(points=read_steps(run_dir, (state["epoch"] - 1) * steps + state["step"]) if state else [])
    hooks = [checkpointing, curve, _RunFiles(run_dir, board, curve), *callbacks]
    try:
        if board is not None and state is None:
            board.config({"recipe": recipe, **config.to_dict()})
            board.images(data.train_images, data.train_labels)
        try:
            result = fit(model, train, val, config, progress=progress, callbacks=hooks, resume=state, rejects=rejects)
        except CheckpointError as exc:  # only the resumed state raises it: it does not fit the model
            raise CheckpointError(f"{resumed[0]}: {exc}") from None
    finally:
        torch.use_deterministic_algorithms(previous)
        if board is not None:
            board.close()
    digests = _digests_per_process(model)
    if not env.is_main:
        return RunResult(run_dir, model, result, {})
    images = {"train_images": len(train[0]), "val_images": len(val[0]) if val else 0,
              "reject_images": len(rejects) if rejects is not None else 0}  # fmt: skip
    record = {"images": images, "device": dev, "digests": digests, "started": started}
    meta = _model_config(config, data, result, record, options)
    _save(run_dir, model, result.history, meta)
    return RunResult(run_dir, model, result, meta)


def resume_run(
    run_dir: str | os.PathLike,
    data: MNIST,
    *,
    device: str | torch.device = "auto",
    progress: bool = True,
    callbacks: Sequence[Callback] = (),
    threads: int | None = None,
    deterministic: bool = False,
    tensorboard: bool = False,
    checkpoint_every: int | None = None,
    keep_checkpoints: int = 3,
) -> RunResult:
    """Continue the run in ``run_dir`` from its newest intact checkpoint, with the recipe and
    config it started with (its ``run.json``), and save it as :func:`train_run` does. A
    deterministic run resumed this way ends with the weights it would have had if never stopped.

    ``threads`` (CPU threads while training) defaults to the count a single-process run started
    with: another count can change floating-point sums, and so the weights; PyTorch's count is
    set back afterwards. ``deterministic`` and ``tensorboard`` can only be switched on;
    ``checkpoint_every`` defaults to the run's. Raises :class:`RunFinishedError` for a run that
    finished, :class:`~mnist_cnn.errors.MnistCnnError` for a folder that is not a run.

    >>> from mnist_cnn import load_mnist
    >>> result = resume_run("runs/basic-20250101-120000", load_mnist())  # doctest: +SKIP
    """
    settings = resumable_settings(run_dir)
    before = torch.get_num_threads()
    if threads is None and settings.get("world_size", 1) == 1 and settings.get("threads"):
        threads = settings["threads"]
    if threads is not None:
        configure_threads(threads)
    try:
        return train_run(
            TrainConfig.from_saved(settings["train_config"]), data, run_dir, recipe=settings.get("recipe"),
            device=device, progress=progress, callbacks=callbacks, resume=True,
            deterministic=settings.get("deterministic", False) or deterministic,
            tensorboard=settings.get("tensorboard", False) or tensorboard,
            checkpoint_every=settings.get("checkpoint_every", 0) if checkpoint_every is None else checkpoint_every,
            keep_checkpoints=keep_checkpoints,
        )  # fmt: skip
    finally:
        torch.set_num_threads(before)
