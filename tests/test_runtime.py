"""Device choice, CPU threads and bfloat16 resolution (mnist_cnn.runtime)."""

import pytest
import torch

from mnist_cnn import runtime


def test_devices_are_checked_by_name():
    assert runtime.select_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="unknown device 'tpu'; choose auto, cpu, cuda or mps"):
        runtime.select_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device 'cuda:1' was asked for, but PyTorch sees no CUDA GPU"):
            runtime.select_device("cuda:1")


def test_threads_default_to_the_cores_this_process_may_use():
    before = torch.get_num_threads()
    try:
        assert runtime.configure_threads(1) == 1 and torch.get_num_threads() == 1
        assert runtime.configure_threads(0) == runtime.available_cores() == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def test_an_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="unknown precision 'fp16'"):
        runtime.uses_bf16("fp16", torch.device("cpu"))


def test_without_cpu_affinity_the_cores_are_the_machines(monkeypatch):
    """macOS and Windows have no os.sched_getaffinity: the core count falls back to os.cpu_count(), for
    PyTorch's threads, predict's workers and the photographed digits made for training alike."""
    import os

    from mnist_cnn import parallel, synthetic

    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 3)
    assert runtime.available_cores() == parallel.available_cores() == 3
    assert synthetic._in_processes(max, [(1, 2)], None) == [2]  # one job: no pool, and no AttributeError
