"""Data-parallel training on ``torch.distributed``: one process per CPU core group or GPU.

Launch with PyTorch's own launcher, which sets RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous::

    torchrun --standalone --nproc_per_node=4 -m mnist_cnn train --recipe deep
    mnist-cnn train --recipe deep --nproc 4        # the same, launched for you

How the work is split (see :func:`mnist_cnn.train.fit`):

* ``--batch-size`` is the *global* batch. Every rank draws the same seeded permutation of the
  training set each epoch; each global batch is dealt out ``batch[rank::world_size]``, so the
  shards are disjoint and together cover the set. The gradient DDP averages is exactly the
  gradient of the global batch, so the recipe's learning rate needs no change when the number of
  processes changes (and is recorded with the global batch it was meant for).
* Batch norm: SyncBatchNorm on GPUs (statistics over the global batch); on CPUs, where PyTorch's
  SyncBatchNorm does not run, each rank normalises with its shard's statistics and the running
  averages are averaged over the ranks at the end of every epoch, so all ranks hold the same model.
* Only rank 0 writes files (history, checkpoints, model, report) and prints results.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Dist:
    """Where this process stands in the job; ``Dist()`` is a single process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    return "LOCAL_RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(device: str = "auto") -> tuple[Dist, str]:
    """Join the process group that torchrun described in the environment.

    Returns this process's place and the device it should use: ``cuda:LOCAL_RANK`` with NCCL when
    CUDA is asked for (or ``auto`` finds it), else the CPU with gloo.
    """
    env = Dist(
        rank=int(os.environ["RANK"]),
        world_size=int(os.environ["WORLD_SIZE"]),
        local_rank=int(os.environ["LOCAL_RANK"]),
        local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"])),
    )
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        torch.cuda.set_device(env.local_rank)
        device = f"cuda:{env.local_rank}"
    elif device in ("auto", "mps"):
        device = "cpu"  # MPS has no collective backend
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    log.debug("rank %d of %d (local %d), device %s", env.rank, env.world_size, env.local_rank, device)
    return env, device


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def current() -> Dist:
    """This process's place, from the initialised process group (a single process if none)."""
    if not (dist.is_available() and dist.is_initialized()):
        return Dist()
    return Dist(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
        local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", dist.get_world_size())),
    )


def broadcast_object(obj, src: int = 0):
    """``obj`` as rank ``src`` has it, on every rank (unchanged when not distributed)."""
    if not current().active:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_objects(obj) -> list:
    """Every rank's ``obj``, in rank order, on every rank."""
    env = current()
    if not env.active:
        return [obj]
    out = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if current().active:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """DistributedDataParallel around ``model`` (SyncBatchNorm first on GPUs); unchanged if single."""
    if not current().active:
        return model
    from torch.nn.parallel import DistributedDataParallel

    if device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return DistributedDataParallel(model, device_ids=[device.index], broadcast_buffers=False)
    # Buffers are averaged once an epoch (average_buffers) rather than broadcast at every step.
    return DistributedDataParallel(model, broadcast_buffers=False)


def unwrap(model: nn.Module) -> nn.Module:
    return (
        model.module if hasattr(model, "module") and isinstance(model, nn.parallel.DistributedDataParallel) else model
    )


@torch.no_grad()
def average_buffers(model: nn.Module) -> None:
    """Average floating-point buffers (batch-norm running mean/var) over the ranks."""
    env = current()
    if not env.active:
        return
    for buf in unwrap(model).buffers():
        if buf.is_floating_point():
            dist.all_reduce(buf, op=dist.ReduceOp.SUM)
            buf.div_(env.world_size)


def threads_per_rank(local_world_size: int) -> int:
    """An even share of this machine's cores for each of the processes on it (at least one)."""
    from .runtime import available_cores

    return max(1, available_cores() // max(local_world_size, 1))


def launch(nproc: int, argv: list[str]) -> int:
    """Run ``python -m mnist_cnn ARGV`` in ``nproc`` processes on this machine through torchrun
    (``torch.distributed.run --standalone``); return its exit status."""
    if nproc < 1:
        raise ValueError(f"--nproc must be at least 1, got {nproc}")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "mnist_cnn", *argv]  # fmt: skip
    log.info("launching %d processes: %s", nproc, " ".join(cmd))
    try:
        return subprocess.run(cmd, check=False).returncode
    except KeyboardInterrupt:
        return 130
