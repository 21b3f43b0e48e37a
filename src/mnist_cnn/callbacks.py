"""What runs around the training loop: the progress bar, checkpoints, and hooks of your own.

:func:`mnist_cnn.loop.fit` calls every callback in list order, on every process of a
``torch.distributed`` group, with the :class:`~mnist_cnn.loop.TrainState`:

- ``on_epoch_start`` before an epoch's first step (after a resume: its first step left to do);
- ``on_step`` after each optimiser step;
- ``on_epoch_end`` once the epoch's row (losses, accuracies, seconds) is in ``state.history``,
  the best weights are kept, and the state points at the next epoch (what a checkpoint must hold);
- ``on_end`` once, after the last epoch, a Ctrl-C or an error.

Time spent in a callback is not counted as training time (``train_seconds``, each row's ``seconds``)
unless it sets ``counts_as_training``: following accuracy during training must not make it look slower.

>>> from mnist_cnn.callbacks import AfterEpoch
>>> print_rows = AfterEpoch(lambda state: print(state.history[-1]))
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from tqdm.auto import tqdm

from . import distributed
from .checkpoint import Checkpoints

if TYPE_CHECKING:
    from torch import nn

    from .loop import TrainState


class Callback:
    """A hook into the training loop; override the methods you need."""

    counts_as_training = False  # True: its time is part of train_seconds (work every run does)

    def on_epoch_start(self, state: TrainState) -> None:
        pass

    def on_step(self, state: TrainState) -> None:
        pass

    def on_epoch_end(self, state: TrainState) -> None:
        pass

    def on_end(self, state: TrainState) -> None:
        pass


def call(callbacks: list[Callback], hook: str, state: TrainState) -> None:
    """Run ``hook`` of each callback; the clock stops for those that do not count as training."""
    for callback in callbacks:
        if callback.counts_as_training:
            getattr(callback, hook)(state)
        else:
            with state.clock.paused():
                getattr(callback, hook)(state)


class ProgressBar(Callback):
    """One tqdm bar per epoch (rank 0 only), with the running loss and accuracy every ``every`` steps."""

    counts_as_training = True

    def __init__(self, every: int = 50):
        self.every = every
        self.bar = None

    def on_epoch_start(self, state: TrainState) -> None:
        self.bar = tqdm(total=state.steps, initial=state.step, desc=f"epoch {state.epoch}/{state.config.epochs}",
                        disable=not distributed.current().is_main, leave=False, unit="step")  # fmt: skip

    def on_step(self, state: TrainState) -> None:
        self.bar.update()
        if state.step % self.every == 0 or state.step == state.steps:
            seen = min(state.step * state.config.batch_size, state.train_images) / distributed.current().world_size
            self.bar.set_postfix(loss=f"{state.loss_sum.item() / seen:.4f}", acc=f"{state.correct.item() / seen:.4f}")

    def on_epoch_end(self, state: TrainState) -> None:
        self.on_end(state)

    def on_end(self, state: TrainState) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class Checkpointing(Callback):
    """The whole training state into ``store`` after every epoch and, with ``every`` > 0, every
    ``every`` global steps. Every process must have one (only rank 0 writes)."""

    counts_as_training = True  # a run that checkpoints pays for it

    def __init__(self, store: Checkpoints, every: int = 0):
        if every < 0:
            raise ValueError(f"checkpoints cannot be written every {every} steps; give 0 (after epochs only) or more")
        self.store, self.every = store, every

    def on_step(self, state: TrainState) -> None:
        if self.every > 0 and state.global_step % self.every == 0 and state.step < state.steps:
            self.save(state)

    def on_epoch_end(self, state: TrainState) -> None:
        self.save(state)

    def save(self, state: TrainState) -> None:
        snapshot = state.state_dict()  # on every process: it gathers their random states
        if distributed.current().is_main:
            self.store.save(snapshot, state.global_step)


class EveryNSteps(Callback):
    """``fn(step, model, seconds)`` every ``every`` global steps, with the model that would be kept
    (the moving average, with EMA) and the training time so far: for benchmarks that follow
    accuracy during training. ``fn`` may switch the model to eval mode; training switches back."""

    def __init__(self, every: int, fn: Callable[[int, nn.Module, float], None]):
        if every < 1:
            raise ValueError(f"every must be at least 1 step, got {every}")
        self.every, self.fn = every, fn

    def on_step(self, state: TrainState) -> None:
        if state.global_step % self.every == 0:
            self.fn(state.global_step, state.kept, state.clock.seconds())
            state.model.train()


class StepCurve(Callback):
    """The training loss and accuracy over each stretch of about 1/``per_epoch`` of an epoch, so a run of one or
    two epochs still has a curve (its history has one or two rows). ``points`` holds one dict per stretch:
    ``step`` (global), ``epoch`` (fractional: 0.5 is half-way through the first), ``train_loss``,
    ``train_accuracy``; on rank 0's shard of the data in a ``torch.distributed`` job. ``points`` may start
    with those of a run this one resumes; a stretch cut by the resume starts again from the checkpoint."""

    def __init__(self, per_epoch: int = 50, points: list[dict] | None = None):
        if per_epoch < 1:
            raise ValueError(f"per_epoch must be at least 1, got {per_epoch}")
        self.per_epoch, self.points = per_epoch, list(points or [])
        self.last: tuple[int, float, int] = (0, 0.0, 0)  # the stretch's start: step, loss sum, correct

    def _seen(self, state: TrainState, step: int) -> float:
        """Images this process has trained on after ``step`` steps of the epoch (the last batch may be short)."""
        return min(step * state.config.batch_size, state.train_images) / distributed.current().world_size

    def on_epoch_start(self, state: TrainState) -> None:
        if distributed.current().is_main:
            self.last = (state.step, state.loss_sum.item(), int(state.correct.item()))

    def on_step(self, state: TrainState) -> None:
        every = max(1, state.steps // self.per_epoch)
        if not distributed.current().is_main or (state.step % every and state.step < state.steps):
            return
        step, loss, correct = self.last
        images = self._seen(state, state.step) - self._seen(state, step)
        self.last = (state.step, state.loss_sum.item(), int(state.correct.item()))
        self.points.append({
            "step": state.global_step, "epoch": round(state.global_step / state.steps, 4),
            "train_loss": (self.last[1] - loss) / images, "train_accuracy": (self.last[2] - correct) / images,
        })  # fmt: skip


class AfterEpoch(Callback):
    """``fn(state)`` after every epoch; ``state.history[-1]`` is the epoch's row. Raising
    KeyboardInterrupt stops training as Ctrl-C does; any other exception propagates."""

    def __init__(self, fn: Callable[[TrainState], None]):
        self.fn = fn

    def on_epoch_end(self, state: TrainState) -> None:
        self.fn(state)
