"""TensorBoard event files for a run (optional: ``pip install 'mnist-cnn[tensorboard]'``).

``mnist-cnn train --tensorboard`` writes ``RUN/tensorboard/events.out.tfevents.*`` with the loss,
accuracy and learning-rate curves (after every epoch, at the global step), a grid of sample
training images and the resolved config; ``tensorboard --logdir runs`` shows every run.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from .errors import MnistCnnError

log = logging.getLogger(__name__)

EVENTS_DIR = "tensorboard"


class TensorBoardLogger:
    """Writes one run's curves and images; use as a context manager so the file is flushed."""

    def __init__(self, run_dir: str | Path, purge_step: int | None = None):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # torch's writer needs the tensorboard package
            raise MnistCnnError(
                "--tensorboard needs the tensorboard package: pip install 'mnist-cnn[tensorboard]'"
            ) from None
        # purge_step drops events a killed run wrote past its last checkpoint, so a resumed run's
        # curves do not show the lost steps twice.
        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / EVENTS_DIR), purge_step=purge_step)

    def config(self, config: dict) -> None:
        self.writer.add_text("config", "```\n" + json.dumps(config, indent=2) + "\n```")

    def images(self, images: torch.Tensor, labels: torch.Tensor, n: int = 32) -> None:
        """A grid of the first ``n`` training images (uint8 (N, 28, 28) or normalised (N, 1, 28, 28))."""
        x = images[:n].detach().float().cpu()
        x = x[:, None] if x.ndim == 3 else x
        x = (x - x.amin()) / (x.amax() - x.amin()).clamp_min(1e-8)  # to 0-1 whatever the normalisation
        self.writer.add_images("samples", x, 0, dataformats="NCHW")
        self.writer.add_text("samples/labels", " ".join(str(int(v)) for v in labels[:n]))

    def epoch(self, row: dict, step: int) -> None:
        """One history row: train/val loss and accuracy and the learning rate, at global ``step``."""
        for key, value in row.items():
            if key in ("epoch", "seconds") or not isinstance(value, int | float):
                continue
            group, _, metric = key.partition("_")
            tag = f"{metric}/{group}" if group in ("train", "val") else key  # loss/train beside loss/val
            self.writer.add_scalar(tag, value, step)
        self.writer.add_scalar("epoch", row["epoch"], step)

    def scalar(self, tag: str, value: float, step: int) -> None:
        self.writer.add_scalar(tag, value, step)

    def close(self) -> None:
        self.writer.close()

    def __enter__(self) -> TensorBoardLogger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
