"""The training loop: batch, step, evaluate, keep the best.

It knows nothing about particular architectures: it takes any classifier that returns logits.
Cross-entropy on integer labels is the same loss as Keras' categorical cross-entropy on one-hot
labels, so the seeds' numbers are comparable. What must survive a crash is one
:class:`TrainState`; what happens around the loop (progress bar, checkpoints, files, your own
hooks) is a list of :mod:`~mnist_cnn.callbacks`. A whole run (data, model, files) is
:func:`mnist_cnn.train.train_run`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel

from . import distributed
from .augment import Augmentation
from .callbacks import Callback, ProgressBar, call
from .checkpoint import CheckpointError, rng_states, set_rng_states
from .config import TrainConfig
from .errors import TrainingDivergedError
from .inference import batched_logits
from .runtime import autocast, uses_bf16

log = logging.getLogger(__name__)


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


class Stopwatch:
    """Training time in seconds: ``offset`` (time before a resume) plus the time since it was made,
    less the time spent inside :meth:`paused`."""

    def __init__(self, offset: float = 0.0):
        self.offset, self.start, self.excluded = offset, time.perf_counter(), 0.0

    def seconds(self) -> float:
        return self.offset + time.perf_counter() - self.start - self.excluded

    @contextmanager
    def paused(self) -> Iterator[None]:
        t = time.perf_counter()
        try:
            yield
        finally:
            self.excluded += time.perf_counter() - t


# What a checkpoint's training state holds (TrainState.state_dict writes it): each field, the types it may have
# and, for a number, its least value. Checked where a state is read back, so a damaged one is one error line.
STATE_FIELDS = {
    "model": ((dict,), None), "optimizer": ((dict,), None), "scheduler": ((dict,), None),
    "ema": ((dict, type(None)), None), "shuffle": ((torch.Tensor,), None), "epoch": ((int,), 1), "step": ((int,), 0),
    "loss_sum": ((torch.Tensor,), None), "correct": ((torch.Tensor,), None), "history": ((list,), None),
    "best_epoch": ((int,), 0), "best_acc": ((int, float), -1), "best_state": ((dict, type(None)), None),
    "train_seconds": ((int, float), 0), "rng": ((list,), None), "config": ((dict,), None),
}  # fmt: skip


def check_state(state: dict) -> None:
    """Raise CheckpointError when ``state`` lacks a field of :data:`STATE_FIELDS` or holds one of the wrong type."""
    if not isinstance(state, dict):
        raise CheckpointError(f"the training state is a {type(state).__name__}, not a dict")
    for name, (types, least) in STATE_FIELDS.items():
        if name not in state:
            raise CheckpointError(f"the training state has no {name!r}")
        value = state[name]
        if not isinstance(value, types) or isinstance(value, bool):
            raise CheckpointError(f"the training state's {name!r} is of type {type(value).__name__}, expected {' or '.join(t.__name__ for t in types)}")  # fmt: skip
        if least is not None and not (math.isfinite(value) and value >= least):
            raise CheckpointError(f"the training state's {name!r} is {value!r}; it must be at least {least}")
    if not all(isinstance(row, dict) for row in state["history"]):
        raise CheckpointError("the training state's 'history' must be a list of rows (dicts)")
    if not state["rng"] or not all(isinstance(process, dict) for process in state["rng"]):
        raise CheckpointError("the training state's 'rng' must hold one dict of random states per process")


def _tensors_differ(saved: dict | None, reference: dict) -> str | None:
    """How ``saved`` (a state dict, or None) differs from ``reference`` in names or tensor shapes, or None."""
    if saved is None:
        return None
    if set(saved) != set(reference):
        return f"{len(saved)} tensors, expected {len(reference)} ({sorted(set(saved) ^ set(reference))[0]!r})"
    for name, tensor in reference.items():
        if not isinstance(saved[name], torch.Tensor) or saved[name].shape != tensor.shape:
            return f"{name!r} is {getattr(saved[name], 'shape', type(saved[name]).__name__)}, expected {tuple(tensor.shape)}"
    return None


class TrainState:
    """Everything training needs to continue exactly after a crash: the model, optimiser,
    schedule, EMA, shuffling and augmentation random states, where in which epoch, the running
    loss, the history and the best weights so far.

    :meth:`state_dict` is what a checkpoint holds and :meth:`load_state_dict` puts it back. Inside a
    ``torch.distributed`` group each process holds its own; ``state_dict`` gathers every process's
    random states, so every process must call it.
    """

    def __init__(self, model: nn.Module, config: TrainConfig, train_images: int, device: torch.device):
        env = distributed.current()
        self.model, self.config, self.train_images = model, config, train_images  # the training set's size
        self.steps = steps_per_epoch(train_images, config.batch_size, env.world_size)  # global steps per epoch
        self.optimizer, self.scheduler = _make_optimizer(model, config, config.epochs * self.steps)
        self.ema = _make_ema(model, config.ema)
        # Shuffling draws on the CPU, so the order never depends on the device.
        self.shuffle = torch.Generator().manual_seed(config.seed)
        # Each process augments its own shard with its own draws (rank 0 draws as a single process does).
        self.augment_rng = torch.Generator().manual_seed(config.seed + 1 + 1_000_003 * env.rank)
        self.epoch, self.step = 1, 0  # the epoch under way (1-based) and how many of its steps are done
        self.epoch_shuffle = self.shuffle.get_state()  # what this epoch's order was drawn from
        self.loss_sum = torch.zeros((), device=device)  # this process's summed loss over the epoch so far
        self.correct = torch.zeros((), dtype=torch.long, device=device)
        self.history: list[dict] = []  # one row per completed epoch
        self.best_epoch, self.best_acc, self.best_state = 0, -1.0, None
        self.clock = Stopwatch()
        self.resumed_from: int | None = None  # global step this run continued from

    @property
    def kept(self) -> nn.Module:
        """What is validated and kept: the moving average with EMA, else the model."""
        return self.ema.module if self.ema is not None else self.model

    @property
    def global_step(self) -> int:
        return (self.epoch - 1) * self.steps + self.step

    def next_epoch(self) -> None:
        self.epoch, self.step = self.epoch + 1, 0
        self.loss_sum.zero_()
        self.correct.zero_()
        self.epoch_shuffle = self.shuffle.get_state()

    def state_dict(self) -> dict:
        rng = distributed.gather_objects({"global": rng_states(), "augment": self.augment_rng.get_state()})
        return {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "ema": self.ema.state_dict() if self.ema is not None else None,
            "shuffle": self.epoch_shuffle, "epoch": self.epoch, "step": self.step,
            "loss_sum": self.loss_sum.detach().cpu(), "correct": self.correct.detach().cpu(),
            "history": self.history, "best_epoch": self.best_epoch, "best_acc": self.best_acc,
            "best_state": self.best_state, "train_seconds": self.clock.seconds(), "rng": rng,
            "world_size": distributed.current().world_size, "config": self.config.to_dict(),
        }  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state`` (a :meth:`state_dict` read back); CheckpointError when it is damaged or does not
        fit this run's model, optimiser or number of epochs."""
        check_state(state)
        if state["epoch"] > self.config.epochs + 1:  # epochs + 1: saved after the last epoch ended
            raise CheckpointError(
                f"the training state is at epoch {state['epoch']} of a {self.config.epochs}-epoch run"
            )
        problem = _tensors_differ(state["best_state"], self.kept.state_dict())
        if problem:
            raise CheckpointError(f"the best weights in the training state do not fit the model: {problem}")
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            if self.ema is not None:
                self.ema.load_state_dict(state["ema"])
            self.shuffle.set_state(state["shuffle"])  # mid-epoch: the epoch's order is drawn again, the same
            self.loss_sum.copy_(state["loss_sum"])
            self.correct.copy_(state["correct"])
            self._set_random_states(state["rng"])
        except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as exc:  # torch's types for a misfit
            first = " ".join(str(exc).split())[:300]
            raise CheckpointError(f"the training state does not fit this run: {first}") from None
        self.epoch_shuffle = state["shuffle"]
        self.epoch, self.step = state["epoch"], state["step"]
        self.history, self.best_epoch = list(state["history"]), state["best_epoch"]
        self.best_acc, self.best_state = state["best_acc"], state["best_state"]
        self.clock = Stopwatch(state["train_seconds"])
        self.resumed_from = self.global_step

    def _set_random_states(self, per_process: list[dict]) -> None:
        env = distributed.current()
        if len(per_process) != env.world_size:  # another number of processes: the data shards differ anyway
            log.warning("resuming with %d processes instead of %d: random draws will differ from the original run",
                        env.world_size, len(per_process))  # fmt: skip
            return
        set_rng_states(per_process[env.rank]["global"])
        self.augment_rng.set_state(per_process[env.rank]["augment"])


@dataclass(frozen=True)
class _Setup:
    """What every step uses besides the state; fixed for the whole run, so never checkpointed."""

    net: nn.Module  # the model, inside DistributedDataParallel in a process group
    images: torch.Tensor  # (N, 1, 28, 28) normalised, all of the training set
    labels: torch.Tensor  # (N,)
    rejects: torch.Tensor | None  # not-a-digit images mixed into every batch, or None
    augmentation: Augmentation
    fill: float  # the background of normalised digits, for pixels augmentation brings in
    bf16: bool  # forward passes under bfloat16 autocast
    rank: int
    world: int


def _setup(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, rejects, config: TrainConfig) -> _Setup:
    env, aug = distributed.current(), config.augmentation
    fill = images.amin().item() if aug.active and len(images) else 0.0
    return _Setup(
        distributed.wrap(model, images.device), images, labels, _active_rejects(rejects, config), aug, fill,
        uses_bf16(config.precision, images.device), env.rank, env.world_size,
    )  # fmt: skip


def _to_channels_last(model: nn.Module, train, val, config: TrainConfig):
    """Model and images in channels-last (NHWC) memory when ``config.channels_last``: faster on a CPU."""
    if not config.channels_last:
        return train, val
    model.to(memory_format=torch.channels_last)
    train = (to_memory_format(train[0], True), train[1])
    return train, (to_memory_format(val[0], True), val[1]) if val is not None else None


def _active_rejects(rejects: torch.Tensor | None, config: TrainConfig) -> torch.Tensor | None:
    if rejects is None or config.reject_weight <= 0:
        return None
    return to_memory_format(rejects, config.channels_last)


def _shard(batch: torch.Tensor, setup: _Setup) -> torch.Tensor:
    """This process's share of a global batch (all of it without a process group)."""
    return batch[setup.rank :: setup.world]


def _batch(setup: _Setup, state: TrainState, order: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """This process's images (with not-a-digit ones appended, augmented) and labels for the next
    step of the epoch drawn as ``order``, and the size of the global batch."""
    size = state.config.batch_size
    batch = order[state.step * size : (state.step + 1) * size]  # the global batch
    idx = _shard(batch, setup)
    xb, yb = setup.images[idx], setup.labels[idx]
    if setup.rejects is not None:  # one forward pass for both (DDP wants one per backward)
        pick = torch.randint(len(setup.rejects), (max(1, len(idx) // 4),), generator=state.augment_rng)
        xb = torch.cat([xb, setup.rejects[pick.to(xb.device)]])
    if setup.augmentation.active:
        xb = setup.augmentation(xb, state.augment_rng, setup.fill)
    return xb, yb, len(batch)


def _reject_loss(reject_logits: torch.Tensor, weight: float) -> torch.Tensor:
    """Outlier exposure: ``weight`` x the cross-entropy of not-a-digit images against uniform
    probabilities ("not sure of any digit")."""
    return -(weight * F.log_softmax(reject_logits, 1).mean())


def _optimise(state: TrainState, loss: torch.Tensor) -> None:
    state.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    state.optimizer.step()
    state.scheduler.step()
    if state.ema is not None:
        state.ema.update_parameters(state.model)


def _train_step(setup: _Setup, state: TrainState, order: torch.Tensor) -> None:
    """One optimiser step on the next batch; adds to the epoch's running loss and accuracy."""
    xb, yb, batch_size = _batch(setup, state, order)
    with autocast(xb.device, setup.bf16):
        logits = setup.net(xb)
    logits, reject_logits = logits.float().split([len(yb), len(xb) - len(yb)])
    ce_sum = F.cross_entropy(logits, yb, label_smoothing=state.config.label_smoothing, reduction="sum")
    loss = ce_sum * (setup.world / batch_size)  # DDP averages the processes' gradients: the global batch's mean
    if setup.rejects is not None:
        loss = loss + _reject_loss(reject_logits, state.config.reject_weight)
    _optimise(state, loss)
    state.step += 1
    state.loss_sum += ce_sum.detach()
    state.correct += (logits.argmax(1) == yb).sum()


def _sync_processes(state: TrainState) -> None:
    """Sum the running loss and accuracy over the processes and average their batch-norm statistics."""
    distributed.all_reduce_sum(state.loss_sum)
    distributed.all_reduce_sum(state.correct)
    distributed.average_buffers(state.model)
    if state.ema is not None:
        distributed.average_buffers(state.ema.module)


def _keep_if_best(state: TrainState, row: dict) -> None:
    # Without a validation split every epoch is kept; with one, only a better one (ties go to the
    # earlier epoch: the later one has no evidence of being better).
    if "val_accuracy" not in row or row["val_accuracy"] > state.best_acc:
        state.best_acc, state.best_epoch = row.get("val_accuracy", state.best_acc), row["epoch"]
        state.best_state = {k: v.detach().clone() for k, v in state.kept.state_dict().items()}


def _check_finite(row: dict) -> None:
    """Stop a run whose loss is NaN or infinite: its weights are garbage, and nothing later would say so."""
    losses = {k: row[k] for k in ("train_loss", "val_loss") if k in row}
    if not all(math.isfinite(v) for v in losses.values()):
        raise TrainingDivergedError(
            f"training diverged in epoch {row['epoch']}: {', '.join(f'{k} {v}' for k, v in losses.items())};"
            " lower --lr (or --warmup more steps) and train again"
        )


def _end_epoch(state: TrainState, val, epoch_start: float) -> None:
    """The epoch's history row (validation included), the best weights kept, and on to the next epoch."""
    _sync_processes(state)
    config, seen = state.config, min(state.steps * state.config.batch_size, state.train_images)
    row = {
        "epoch": state.epoch, "train_loss": state.loss_sum.item() / seen, "train_accuracy": state.correct.item() / seen,
        "lr": state.optimizer.param_groups[0]["lr"], "seconds": state.clock.seconds() - epoch_start,
    }  # fmt: skip
    if val is not None:
        row["val_loss"], row["val_accuracy"] = _evaluate(state.kept, *val, config.eval_batch_size)
    row["elapsed"] = state.clock.seconds()
    _check_finite(row)
    _keep_if_best(state, row)
    state.history.append(row)
    log.info(
        "epoch %d/%d  loss %.4f  acc %.4f%s  (%.1fs)", state.epoch, config.epochs, row["train_loss"], row["train_accuracy"],
        f"  val_loss {row['val_loss']:.4f}  val_acc {row['val_accuracy']:.4f}" if val is not None else "", row["seconds"],
    )  # fmt: skip
    state.next_epoch()


def _finish(state: TrainState, interrupted: bool) -> FitResult:
    """Leave the model holding the kept weights; what the run did."""
    seconds, best = state.clock.seconds(), state.best_state
    if best is None and state.ema is not None:
        best = state.kept.state_dict()  # interrupted in the first epoch: the average so far
    if best is not None:
        state.model.load_state_dict(best)
    return FitResult(state.history, state.best_epoch, interrupted, seconds, state.resumed_from)


def fit(
    model: nn.Module,
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor] | None,
    config: TrainConfig,
    *,
    progress: bool = True,
    callbacks: Sequence[Callback] = (),
    resume: dict | None = None,
    rejects: torch.Tensor | None = None,
) -> FitResult:
    """Train ``model`` in place on normalised tensors; leave it holding the best-on-validation weights.

    With ``config.ema`` the moving average is what gets validated, selected and kept. With no
    validation set the last completed epoch's weights are kept. Ctrl-C (or a callback raising
    KeyboardInterrupt) stops after the current step; the best weights so far (or, before the first
    epoch ends, the current ones) are kept. ``callbacks`` (:mod:`mnist_cnn.callbacks`) see the
    :class:`TrainState` around every step and epoch; :class:`~mnist_cnn.callbacks.Checkpointing`
    saves it, and ``resume`` (a ``TrainState.state_dict()`` read back) continues from it exactly.

    Inside a ``torch.distributed`` process group the model is wrapped in DDP and each process
    trains on its shard of every global batch (see :mod:`.distributed`).

    ``rejects`` (normalised not-a-digit images, see :func:`mnist_cnn.train.reject_tensor`): with
    ``config.reject_weight`` > 0, a quarter-batch of them, augmented like the digits, joins every
    step, and ``reject_weight`` x their cross-entropy against uniform probabilities is added to the loss.
    """
    train, val = _to_channels_last(model, train, val, config)
    state = TrainState(model, config, len(train[0]), train[0].device)
    if resume is not None:
        state.load_state_dict(resume)
    setup = _setup(model, *train, rejects, config)
    callbacks = [*([ProgressBar()] if progress else []), *callbacks]
    interrupted = False
    try:
        while state.epoch <= config.epochs:
            model.train()
            order = torch.randperm(len(setup.images), generator=state.shuffle).to(setup.images.device)
            epoch_start = state.clock.seconds()
            call(callbacks, "on_epoch_start", state)
            while state.step < state.steps:
                _train_step(setup, state, order)
                call(callbacks, "on_step", state)
            _end_epoch(state, val, epoch_start)
            call(callbacks, "on_epoch_end", state)
    except KeyboardInterrupt:
        interrupted = True
        log.warning("interrupted: keeping the weights of epoch %s", state.best_epoch or "in progress")
    finally:
        call(callbacks, "on_end", state)
    return _finish(state, interrupted)
