"""Where and how PyTorch computes: the device, the CPU threads, and whether bfloat16 pays off.

Every command calls :func:`configure_threads` once before it computes; training asks
:func:`uses_bf16` whether its steps run under bfloat16 autocast.
"""

from __future__ import annotations

import torch

from .parallel import available_cores  # owned there (torch-free, for the worker pools); callers import it from here too

PRECISIONS = ("fp32", "bf16", "auto")
MAX_THREADS = 1024  # more threads than any machine has cores is a typo, and asks for memory per thread


def select_device(name: str = "auto") -> torch.device:
    """'auto' picks CUDA, then Apple's MPS, then the CPU; 'cuda:1' names one GPU of several."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    kind = name.split(":", 1)[0]
    if kind not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unknown device {name!r}; choose auto, cpu, cuda or mps")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} was asked for, but PyTorch sees no CUDA GPU")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {name!r} was asked for, but this PyTorch has no MPS backend")
    return torch.device(name)


def configure_threads(threads: int | None) -> int:
    """Use ``threads`` CPU threads, or by default (None or 0) one per core this process may run on."""
    if threads is None or threads <= 0:
        threads = available_cores()
    if threads > MAX_THREADS:
        raise ValueError(f"threads must be at most {MAX_THREADS}, got {threads}")
    torch.set_num_threads(threads)
    return threads


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 natively (AVX512-BF16 or AMX on a CPU), so autocast pays off."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return False


def uses_bf16(precision: str, device: torch.device) -> bool:
    """``precision`` ('fp32', 'bf16' or 'auto') resolved for ``device``: True for bfloat16 steps."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of: {', '.join(PRECISIONS)}")
    return precision == "bf16" or (precision == "auto" and native_bf16(device))


def autocast(device: torch.device, bf16: bool) -> torch.autocast:
    """The context that runs a forward pass in bfloat16 when ``bf16``, else changes nothing."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
