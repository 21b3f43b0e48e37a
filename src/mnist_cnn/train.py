"""The training loop and a whole run: split, train, keep the best-on-validation weights, save.

The loop knows nothing about particular architectures: it takes any classifier that returns
logits. Cross-entropy on integer labels is the same loss as Keras' categorical cross-entropy on
one-hot labels, so the seeds' numbers are comparable.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel
from tqdm.auto import tqdm

from . import distributed
from .checkpoint import CheckpointError, Checkpoints, rng_states, set_rng_states
from .config import TrainConfig
from .data import MNIST, split_validation
from .errors import ModelFolderError
from .folder import MNIST_NORMALIZATION, atomic_write, save_model, versions, write_json
from .inference import batched_logits, select_device, to_model_input
from .models import count_parameters, create_model, list_models
from .reproducibility import git_commit, package_versions, seed_everything
from .tracking import TensorBoardLogger

log = logging.getLogger(__name__)
REJECT_SOURCE_DIGITS = 40_000  # training digits cut and paired into about half as many not-a-digit images


def configure_threads(threads: int | None) -> int:
    """Use ``threads`` CPU threads, or by default one per core this process may run on."""
    if threads is None or threads <= 0:
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    torch.set_num_threads(threads)
    return threads


@dataclass
class FitResult:
    history: list[dict] = field(default_factory=list)  # one row per completed epoch
    best_epoch: int = 0  # 1-based epoch whose weights were kept (0: none completed)
    interrupted: bool = False  # stopped by Ctrl-C
    train_seconds: float = 0.0  # including the time before a resume
    resumed_from: int | None = None  # global step of the checkpoint this run continued from


def _evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> tuple[float, float]:
    logits = batched_logits(model, x, batch_size)
    return F.cross_entropy(logits, y).item(), (logits.argmax(1) == y).float().mean().item()


def lr_factor(config: TrainConfig, steps: int) -> Callable[[int], float]:
    """The learning-rate multiplier at each step: linear warm-up, then the configured schedule."""
    warm = int(config.warmup * steps)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        t = min(step - warm, steps - warm) / max(1, steps - warm)  # 0 -> 1 over the rest of the run
        if config.lr_schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * t))
        if config.lr_schedule == "onecycle":  # after the warm-up, straight down to zero
            return 1.0 - t
        return 1.0  # "constant", as the seeds trained

    return factor


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 natively (AVX512-BF16 or AMX on a CPU), so autocast pays off."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return False


def uses_bf16(precision: str, device: torch.device) -> bool:
    """``precision`` ('fp32', 'bf16' or 'auto') resolved for ``device``."""
    return precision == "bf16" or (precision == "auto" and native_bf16(device))


def _make_optimizer(model: nn.Module, config: TrainConfig, steps: int):
    if config.weight_decay > 0:
        opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(config, steps))


def _ema_update(decay: float):
    """EMA step whose decay warms up as ``(1 + n) / (10 + n)``, so early averages are not stuck at initialisation."""

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        n = int(num_averaged)
        d = min(decay, (1 + n) / (10 + n))
        for a, c in zip(averaged, current, strict=True):
            if a.is_floating_point():
                a.lerp_(c, 1 - d)
            else:  # integer buffers (batch norm's step counter): track the model
                a.copy_(c)

    return update


def _make_ema(model: nn.Module, decay: float) -> AveragedModel | None:
    """An exponential moving average of the weights and batch-norm statistics, or None when off."""
    if decay <= 0:
        return None
    return AveragedModel(model, multi_avg_fn=_ema_update(decay), use_buffers=True)


def to_memory_format(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x


def steps_per_epoch(n: int, batch_size: int, world_size: int = 1) -> int:
    """Global steps per epoch; a last partial batch smaller than the number of processes is
    dropped (every process needs at least one image)."""
    steps = math.ceil(n / batch_size)
    if world_size > 1 and 0 < n % batch_size < world_size:
        steps -= 1
    return steps


def fit(
    model: nn.Module,
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor] | None,
    config: TrainConfig,
    *,
    progress: bool = True,
    on_epoch: Callable[[FitResult], None] | None = None,
    on_step: Callable[[int, nn.Module, float], None] | None = None,
    step_every: int = 0,
    checkpoints: Checkpoints | None = None,
    checkpoint_every: int = 0,
    resume: dict | None = None,
    rejects: torch.Tensor | None = None,
) -> FitResult:
    """Train ``model`` in place on normalised tensors; leave it holding the best-on-validation weights.

    With ``config.ema`` the moving average is what gets validated, selected and kept. With no
    validation set the last completed epoch's weights are kept. Ctrl-C stops after the current
    step; the best weights so far (or, before the first epoch ends, the current ones) are kept.
    ``on_step(step, model, seconds)`` is called every ``step_every`` steps with the model that would
    be kept and the training time so far (for benchmarks that follow accuracy during training); time
    spent in callbacks is not counted in ``train_seconds``.

    ``checkpoints`` receives the whole training state (model, optimiser, schedule, EMA, random
    states, history, best weights) after every epoch and, with ``checkpoint_every=N``, every N
    steps; ``resume`` (a state read back from one) continues from it exactly. Inside a
    ``torch.distributed`` process group the model is wrapped in DDP and each process trains on its
    shard of every global batch (see :mod:`.distributed`); every process must pass ``checkpoints``
    (only rank 0 writes).

    ``rejects`` (normalised not-a-digit images, see :func:`reject_tensor`): with
    ``config.reject_weight`` > 0, a quarter-batch of them, augmented like the digits, joins every
    step, and ``reject_weight`` x their cross-entropy against uniform probabilities ("not sure of
    any digit": outlier exposure) is added to the loss.
    """
    x, y = train
    n = len(x)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
        x = to_memory_format(x, True)
        if val is not None:
            val = (to_memory_format(val[0], True), val[1])
    if rejects is not None and config.reject_weight <= 0:
        rejects = None
    if rejects is not None:
        rejects = to_memory_format(rejects, config.channels_last)
    env = distributed.current()
    world, rank = env.world_size, env.rank
    steps = steps_per_epoch(n, config.batch_size, world)
    opt, sched = _make_optimizer(model, config, config.epochs * steps)
    ema = _make_ema(model, config.ema)
    kept = ema.module if ema is not None else model  # what is validated and kept
    bf16 = uses_bf16(config.precision, x.device)
    aug = config.augmentation
    fill = x.amin().item() if aug.active and n else 0.0  # the background of normalised digits
    shuffle = torch.Generator().manual_seed(config.seed)  # on the CPU, so shuffling never depends on the device
    # Each process augments its own shard with its own draws (rank 0 draws as a single process does).
    aug_rng = torch.Generator().manual_seed(config.seed + 1 + 1_000_003 * rank)
    result, best_acc, best_state = FitResult(), -1.0, None
    first_epoch, first_step, elapsed = 1, 0, 0.0
    if resume is not None:
        model.load_state_dict(resume["model"])
        opt.load_state_dict(resume["optimizer"])
        sched.load_state_dict(resume["scheduler"])
        if ema is not None:
            ema.load_state_dict(resume["ema"])
        shuffle.set_state(resume["shuffle"])
        first_epoch, first_step, elapsed = resume["epoch"], resume["step"], resume["train_seconds"]
        result.history, result.best_epoch, best_acc = list(resume["history"]), resume["best_epoch"], resume["best_acc"]
        best_state = resume["best_state"]
        if len(resume["rng"]) == world:
            set_rng_states(resume["rng"][rank]["global"])
            aug_rng.set_state(resume["rng"][rank]["augment"])
        else:  # another number of processes: the data shards differ anyway
            log.warning("resuming with %d processes instead of %d: random draws will differ from the original run",
                        world, len(resume["rng"]))  # fmt: skip
        result.resumed_from = (first_epoch - 1) * steps + first_step
    net = distributed.wrap(model, x.device)
    start, paused = time.perf_counter(), 0.0
    epoch, step_done, epoch_shuffle = first_epoch, first_step, shuffle.get_state()
    global_step = (first_epoch - 1) * steps + first_step
    loss_sum = torch.zeros((), device=x.device)
    correct = torch.zeros((), dtype=torch.long, device=x.device)
    if resume is not None and first_step > 0:
        loss_sum += resume["loss_sum"].to(x.device)
        correct += resume["correct"].to(x.device)

    def callback(fn, *args) -> None:
        nonlocal paused
        t = time.perf_counter()
        fn(*args)
        paused += time.perf_counter() - t

    def state() -> dict:  # everything needed to continue exactly from here; called on every rank
        rng = distributed.gather_objects({"global": rng_states(), "augment": aug_rng.get_state()})
        return {
            "model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
            "ema": ema.state_dict() if ema is not None else None,
            "shuffle": epoch_shuffle, "epoch": epoch, "step": step_done,
            "loss_sum": loss_sum.detach().cpu(), "correct": correct.detach().cpu(),
            "history": result.history, "best_epoch": result.best_epoch, "best_acc": best_acc, "best_state": best_state,
            "train_seconds": elapsed + time.perf_counter() - start - paused, "rng": rng, "world_size": world,
            "config": config.to_dict(),
        }  # fmt: skip

    def save_checkpoint() -> None:
        if checkpoints is None:
            return
        snapshot = state()
        if env.is_main:
            checkpoints.save(snapshot, global_step)

    try:
        while epoch <= config.epochs:
            model.train()
            epoch_start, epoch_paused = time.perf_counter(), paused
            # After a resume mid-epoch, shuffle holds the state this epoch started with: same order.
            order = torch.randperm(n, generator=shuffle).to(x.device)
            bar = tqdm(
                range(step_done, steps),
                desc=f"epoch {epoch}/{config.epochs}",
                disable=not progress or not env.is_main,
                leave=False,
                unit="step",
            )
            for step in bar:
                batch = order[step * config.batch_size : (step + 1) * config.batch_size]  # the global batch
                idx = batch[rank::world]  # this process's shard of it
                xb, yb = x[idx], y[idx]
                if rejects is not None:  # one forward pass for both (DDP wants one per backward)
                    pick = torch.randint(len(rejects), (max(1, len(idx) // 4),), generator=aug_rng)
                    xb = torch.cat([xb, rejects[pick.to(x.device)]])
                if aug.active:
                    xb = aug(xb, aug_rng, fill)
                with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
                    logits = net(xb)
                logits, reject_logits = logits.float().split([len(yb), len(xb) - len(yb)])
                ce_sum = F.cross_entropy(logits, yb, label_smoothing=config.label_smoothing, reduction="sum")
                # DDP averages the processes' gradients, so this makes it the global batch's mean.
                loss = ce_sum * (world / len(batch))
                if rejects is not None:
                    loss = loss - config.reject_weight * F.log_softmax(reject_logits, 1).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                if ema is not None:
                    ema.update_parameters(model)
                global_step += 1
                step_done = step + 1
                loss_sum += ce_sum.detach()
                correct += (logits.argmax(1) == yb).sum()
                if step % 50 == 49 or step == steps - 1:
                    seen = min((step + 1) * config.batch_size, n) / world
                    bar.set_postfix(loss=f"{loss_sum.item() / seen:.4f}", acc=f"{correct.item() / seen:.4f}")
                if on_step is not None and step_every > 0 and global_step % step_every == 0:
                    callback(on_step, global_step, kept, elapsed + time.perf_counter() - start - paused)
                    model.train()
                if checkpoint_every > 0 and global_step % checkpoint_every == 0 and step_done < steps:
                    save_checkpoint()
            distributed.all_reduce_sum(loss_sum)
            distributed.all_reduce_sum(correct)
            distributed.average_buffers(model)
            if ema is not None:
                distributed.average_buffers(ema.module)
            seen = min(steps * config.batch_size, n)
            row = {
                "epoch": epoch,
                "train_loss": loss_sum.item() / seen,
                "train_accuracy": correct.item() / seen,
                "lr": opt.param_groups[0]["lr"],
                "seconds": time.perf_counter() - epoch_start - (paused - epoch_paused),
            }
            if val is not None:
                row["val_loss"], row["val_accuracy"] = _evaluate(kept, *val, config.eval_batch_size)
            row["elapsed"] = elapsed + time.perf_counter() - start - paused
            # Without a validation split every epoch is kept; with one, only a better one (ties go
            # to the earlier epoch: the later one has no evidence of being better).
            if val is None or row["val_accuracy"] > best_acc:
                best_acc, result.best_epoch = row.get("val_accuracy", best_acc), epoch
                best_state = {k: v.detach().clone() for k, v in kept.state_dict().items()}
            result.history.append(row)
            log.info(
                "epoch %d/%d  loss %.4f  acc %.4f%s  (%.1fs)", epoch, config.epochs, row["train_loss"], row["train_accuracy"],
                f"  val_loss {row['val_loss']:.4f}  val_acc {row['val_accuracy']:.4f}" if val is not None else "", row["seconds"],
            )  # fmt: skip
            epoch, step_done = epoch + 1, 0
            loss_sum.zero_()
            correct.zero_()
            epoch_shuffle = shuffle.get_state()
            save_checkpoint()
            if on_epoch is not None:
                callback(on_epoch, result)
    except KeyboardInterrupt:
        result.interrupted = True
        log.warning("interrupted: keeping the weights of epoch %s", result.best_epoch or "in progress")
    result.train_seconds = elapsed + time.perf_counter() - start - paused
    if best_state is None and ema is not None:
        best_state = kept.state_dict()  # interrupted in the first epoch: the average so far
    if best_state is not None:
        model.load_state_dict(best_state)
    return result


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
    ``config.photo_digits`` photographed copies of training digits are added to it."""
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
    return train, val


def reject_tensor(config: TrainConfig, data: MNIST, device: torch.device) -> torch.Tensor | None:
    """Normalised not-a-digit images (:func:`mnist_cnn.synthetic.digit_parts`) made from training digits
    only, for ``config.reject_weight``; None when that is 0."""
    if config.reject_weight <= 0:
        return None
    from .synthetic import digit_parts

    train_idx, _ = _split(config, data)
    rng = np.random.default_rng(config.seed + 2)
    pick = rng.permutation(train_idx.numpy())[:REJECT_SOURCE_DIGITS]
    return to_model_input(digit_parts(data.train_images.numpy()[pick], rng)).to(device)


def initial_weights(config: TrainConfig) -> dict[str, torch.Tensor]:
    """The weights of the model folder ``config.init``, checked to fit ``config.model`` (fine-tuning)."""
    from .inference import load_model

    found = load_model(config.init)  # ModelFolderError with a clear message when it is not a model
    architecture = found.config.get("architecture")
    if architecture != config.model:
        hint = f"; pass --model {architecture}" if architecture in list_models() else " (give it one trained model)"
        raise ModelFolderError(f"--init {config.init} holds a {architecture!r} model, not {config.model!r}{hint}")
    return found.model.state_dict()


def state_digest(model: nn.Module) -> str:
    """SHA-256 of a model's parameters and buffers, in state-dict order."""
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def read_run_settings(run_dir: str | os.PathLike) -> dict:
    """What ``run.json`` recorded when the run started (recipe, config, options); {} if unreadable."""
    try:
        settings = json.loads((Path(run_dir) / "run.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return settings if isinstance(settings, dict) else {}


def train_run(
    config: TrainConfig,
    data: MNIST,
    run_dir: str | os.PathLike,
    *,
    recipe: str | None = None,
    device: str | torch.device = "auto",
    progress: bool = True,
    on_step: Callable[[int, nn.Module, float], None] | None = None,
    step_every: int = 0,
    deterministic: bool = False,
    tensorboard: bool = False,
    checkpoint_every: int = 0,
    keep_checkpoints: int = 3,
    resume: bool = False,
) -> RunResult:
    """Train one model as ``config`` says and save it, with its history, in ``run_dir``.

    The test set is not touched here: choosing the checkpoint uses the validation split only.
    ``deterministic`` refuses non-deterministic kernels (see :mod:`.reproducibility`);
    ``tensorboard`` also writes TensorBoard event files in ``run_dir/tensorboard``.
    A checkpoint is written after every epoch (and every ``checkpoint_every`` steps when > 0), the
    newest ``keep_checkpoints`` kept; ``resume=True`` continues from the newest intact one.
    In a ``torch.distributed`` job every process calls this; only rank 0 writes files.
    """
    run_dir = Path(run_dir)
    env = distributed.current()
    dev = device if isinstance(device, torch.device) else select_device(device)
    store = Checkpoints(run_dir, keep=keep_checkpoints)
    state = None
    if resume:
        found = store.latest()
        if found is None:  # killed before its first checkpoint was complete: nothing to lose
            log.warning("%s has no intact checkpoint yet; training it again from the start", run_dir)
        else:
            path, state = found
            # Filled in with today's defaults, so a checkpoint from before a new field still matches.
            if {**TrainConfig().to_dict(), **state["config"]} != config.to_dict():
                raise CheckpointError(f"{path} was written with another training config than {run_dir / 'run.json'}")
            log.info("resuming from %s (epoch %d, step %d)", path, state["epoch"], state["step"])
    started = read_run_settings(run_dir).get("started") if resume else None
    started = started or time.strftime("%Y-%m-%dT%H:%M:%S%z")
    if env.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if not resume:
            write_json(run_dir / "run.json", {
                "recipe": recipe, "train_config": config.to_dict(), "started": started, "deterministic": deterministic,
                "threads": torch.get_num_threads(), "world_size": env.world_size, "tensorboard": tensorboard,
                "checkpoint_every": checkpoint_every, "keep_checkpoints": keep_checkpoints,
            })  # fmt: skip
    # Checked before the slow steps; a resumed run has its own weights in the checkpoint.
    initial = initial_weights(config) if config.init and state is None else None
    train, val = split_tensors(config, data, dev)
    rejects = reject_tensor(config, data, dev)
    steps = steps_per_epoch(len(train[0]), config.batch_size, env.world_size)
    purge = (state["epoch"] - 1) * steps + state["step"] if state else 0 if resume else None
    board = TensorBoardLogger(run_dir, purge_step=purge) if tensorboard and env.is_main else None

    previous = torch.are_deterministic_algorithms_enabled()
    seed_everything(config.seed, deterministic)  # initialisation and dropout
    model = create_model(config.model).to(dev)
    if initial is not None:
        model.load_state_dict(initial)
        log.info("starting from the weights of %s", config.init)
    if env.rank > 0:  # same initial weights everywhere (DDP also broadcasts them); other dropout masks
        torch.manual_seed(config.seed + 1_000_003 * env.rank)
    log.info(
        "training %s (%s parameters) on %d images, validating on %d, device %s, %d CPU threads, %s steps%s",
        config.model, f"{count_parameters(model):,}", len(train[0]), len(val[0]) if val else 0, dev, torch.get_num_threads(),
        "bfloat16" if uses_bf16(config.precision, dev) else "float32",
        f", {env.world_size} processes (global batch {config.batch_size})" if env.active else "",
    )  # fmt: skip

    def on_epoch(result: FitResult) -> None:
        if not env.is_main:
            return
        write_history(run_dir, result.history)
        if board is not None:
            board.epoch(result.history[-1], result.history[-1]["epoch"] * steps)

    try:
        if board is not None and state is None:
            board.config({"recipe": recipe, **config.to_dict()})
            board.images(data.train_images, data.train_labels)
        result = fit(model, train, val, config, progress=progress, on_epoch=on_epoch,
                     checkpoints=store, checkpoint_every=checkpoint_every, resume=state,
                     on_step=on_step, step_every=step_every, rejects=rejects)  # fmt: skip
    finally:
        torch.use_deterministic_algorithms(previous)
        if board is not None:
            board.close()
    # Every process must end with the same model; check it rather than trust it.
    digests = distributed.gather_objects(state_digest(model))
    if len(set(digests)) > 1:
        log.error("the processes ended with different weights (SHA-256 per rank: %s)", digests)
    if not env.is_main:
        return RunResult(run_dir, model, result, {})
    write_history(run_dir, result.history)

    meta = {
        "architecture": config.model,
        "recipe": recipe,
        "train_config": config.to_dict(),
        "training": {
            "best_epoch": result.best_epoch,
            "epochs_completed": len(result.history),
            "interrupted": result.interrupted,
            "train_seconds": round(result.train_seconds, 2),
            "train_images": len(train[0]),
            "val_images": len(val[0]) if val else 0,
            "reject_images": len(rejects) if rejects is not None else 0,
            "device": str(dev),
            "threads": torch.get_num_threads(),
            "processes": env.world_size,
            "resumed_from_step": result.resumed_from,
            "weights_sha256_per_rank": digests,
            "deterministic": deterministic,
            "selection": "best validation accuracy" if val is not None else "last epoch (no validation split)",
        },
        "normalization": MNIST_NORMALIZATION,
        "data": {"source": data.source, "sha256": data.digests},
        "versions": {**versions(), **package_versions()},
        "git": git_commit(),
        "started": started,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    save_model(run_dir, model, meta)
    return RunResult(run_dir, model, result, meta)
