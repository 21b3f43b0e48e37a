"""The training loop and a whole run: split, train, keep the best-on-validation weights, save.

The loop knows nothing about particular architectures: it takes any classifier that returns
logits. Cross-entropy on integer labels is the same loss as Keras' categorical cross-entropy on
one-hot labels, so the seeds' numbers are comparable.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel
from tqdm.auto import tqdm

from .config import TrainConfig
from .data import MNIST, split_validation
from .inference import MNIST_NORMALIZATION, batched_logits, save_model, select_device, to_model_input, write_json
from .models import count_parameters, create_model

log = logging.getLogger(__name__)


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
    train_seconds: float = 0.0


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
) -> FitResult:
    """Train ``model`` in place on normalised tensors; leave it holding the best-on-validation weights.

    With ``config.ema`` the moving average is what gets validated, selected and kept. With no
    validation set the last completed epoch's weights are kept. Ctrl-C stops after the current
    step; the best weights so far (or, before the first epoch ends, the current ones) are kept.
    ``on_step(step, model, seconds)`` is called every ``step_every`` steps with the model that would
    be kept and the training time so far (for benchmarks that follow accuracy during training); time
    spent in callbacks is not counted in ``train_seconds``.
    """
    x, y = train
    n = len(x)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
        x = to_memory_format(x, True)
        if val is not None:
            val = (to_memory_format(val[0], True), val[1])
    steps_per_epoch = math.ceil(n / config.batch_size)
    opt, sched = _make_optimizer(model, config, config.epochs * steps_per_epoch)
    ema = _make_ema(model, config.ema)
    kept = ema.module if ema is not None else model  # what is validated and kept
    aug = config.augmentation
    fill = x.amin().item() if aug.active and n else 0.0  # the background of normalised digits
    shuffle = torch.Generator().manual_seed(config.seed)  # on the CPU, so shuffling never depends on the device
    aug_rng = torch.Generator().manual_seed(config.seed + 1)
    result, best_acc, best_state = FitResult(), -1.0, None
    start, paused, global_step = time.perf_counter(), 0.0, 0

    def callback(fn, *args) -> None:
        nonlocal paused
        t = time.perf_counter()
        fn(*args)
        paused += time.perf_counter() - t

    try:
        for epoch in range(1, config.epochs + 1):
            model.train()
            epoch_start, epoch_paused = time.perf_counter(), paused
            order = torch.randperm(n, generator=shuffle).to(x.device)
            loss_sum = torch.zeros((), device=x.device)
            correct = torch.zeros((), dtype=torch.long, device=x.device)
            bar = tqdm(
                range(steps_per_epoch),
                desc=f"epoch {epoch}/{config.epochs}",
                disable=not progress,
                leave=False,
                unit="step",
            )
            for step in bar:
                idx = order[step * config.batch_size : (step + 1) * config.batch_size]
                xb, yb = x[idx], y[idx]
                if aug.active:
                    xb = aug(xb, aug_rng, fill)
                logits = model(xb)
                loss = F.cross_entropy(logits, yb, label_smoothing=config.label_smoothing)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                if ema is not None:
                    ema.update_parameters(model)
                global_step += 1
                loss_sum += loss.detach() * len(idx)
                correct += (logits.argmax(1) == yb).sum()
                if step % 50 == 49 or step == steps_per_epoch - 1:
                    seen = min((step + 1) * config.batch_size, n)
                    bar.set_postfix(loss=f"{loss_sum.item() / seen:.4f}", acc=f"{correct.item() / seen:.4f}")
                if on_step is not None and step_every > 0 and global_step % step_every == 0:
                    callback(on_step, global_step, kept, time.perf_counter() - start - paused)
                    model.train()
            row = {
                "epoch": epoch,
                "train_loss": loss_sum.item() / n,
                "train_accuracy": correct.item() / n,
                "lr": opt.param_groups[0]["lr"],
                "seconds": time.perf_counter() - epoch_start - (paused - epoch_paused),
            }
            if val is not None:
                row["val_loss"], row["val_accuracy"] = _evaluate(kept, *val, config.eval_batch_size)
            row["elapsed"] = time.perf_counter() - start - paused
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
            if on_epoch is not None:
                callback(on_epoch, result)
    except KeyboardInterrupt:
        result.interrupted = True
        log.warning("interrupted: keeping the weights of epoch %s", result.best_epoch or "in progress")
    result.train_seconds = time.perf_counter() - start - paused
    if best_state is None and ema is not None:
        best_state = kept.state_dict()  # interrupted in the first epoch: the average so far
    if best_state is not None:
        model.load_state_dict(best_state)
    return result


def write_history(run_dir: Path, history: list[dict]) -> None:
    write_json(run_dir / "history.json", history)
    if history:
        columns = list(dict.fromkeys(k for row in history for k in row))
        tmp = run_dir / ".history.csv.tmp"
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(history)
        os.replace(tmp, run_dir / "history.csv")


@dataclass
class RunResult:
    run_dir: Path
    model: nn.Module
    fit: FitResult
    config: dict  # what was written to config.json


def train_run(
    config: TrainConfig,
    data: MNIST,
    run_dir: str | os.PathLike,
    *,
    recipe: str | None = None,
    device: str = "auto",
    progress: bool = True,
    on_step: Callable[[int, nn.Module, float], None] | None = None,
    step_every: int = 0,
) -> RunResult:
    """Train one model as ``config`` says and save it, with its history, in ``run_dir``.

    The test set is not touched here: choosing the checkpoint uses the validation split only.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    dev = select_device(device)
    train_idx, val_idx = split_validation(len(data.train_images), config.val_split, config.seed)
    if config.limit > 0:
        train_idx = train_idx[: config.limit]
    x_all = to_model_input(data.train_images).to(dev)
    y_all = data.train_labels.to(dev)
    train = (x_all[train_idx.to(dev)], y_all[train_idx.to(dev)])
    val = (x_all[val_idx.to(dev)], y_all[val_idx.to(dev)]) if len(val_idx) else None
    del x_all

    torch.manual_seed(config.seed)  # initialisation and dropout
    model = create_model(config.model).to(dev)
    log.info(
        "training %s (%s parameters) on %d images, validating on %d, device %s, %d CPU threads",
        config.model, f"{count_parameters(model):,}", len(train_idx), len(val_idx), dev, torch.get_num_threads(),
    )  # fmt: skip
    result = fit(
        model, train, val, config, progress=progress, on_epoch=lambda r: write_history(run_dir, r.history),
        on_step=on_step, step_every=step_every,
    )  # fmt: skip
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
            "train_images": len(train_idx),
            "val_images": len(val_idx),
            "device": str(dev),
            "threads": torch.get_num_threads(),
            "selection": "best validation accuracy" if val is not None else "last epoch (no validation split)",
        },
        "normalization": MNIST_NORMALIZATION,
        "data": {"source": data.source, "sha256": data.digests},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    save_model(run_dir, model, meta)
    return RunResult(run_dir, model, result, meta)
