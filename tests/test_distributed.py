"""Data-parallel training: 2 CPU processes with gloo, launched through torchrun by ``--nproc 2``,
reach the accuracy of one process with the same global batch and end with identical weights."""

import json
import os
import subprocess
import sys

import pytest
import torch

from mnist_cnn.config import TrainConfig
from mnist_cnn.loop import steps_per_epoch
from mnist_cnn.train import state_digest, train_run

EXE = os.path.join(os.path.dirname(sys.executable), "mnist-cnn")
# The deep model, for its batch norm: global batch 32, i.e. 16 images per process.
CONFIG = TrainConfig(model="deep", epochs=2, batch_size=32, limit=1024, val_split="1000", seed=0)


@pytest.mark.slow
def test_two_gloo_processes_match_one_process_and_each_other(tmp_path, mnist_dir, mnist):
    runs = tmp_path / "runs"
    args = ["train", "--nproc", "2", "--model", "deep", "--epochs", "2", "--batch-size", "32", "--limit", "1024",
            "--val-split", "1000", "--seed", "0", "--runs-dir", runs, "--name", "ddp", "--data-dir", mnist_dir,
            "--no-progress"]  # fmt: skip
    r = subprocess.run([EXE, *map(str, args)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "test accuracy" in r.stdout

    torch.set_num_threads(1)  # each of the two processes used one of the two cores
    single = train_run(CONFIG, mnist, tmp_path / "single", device="cpu", progress=False)

    config = json.loads((runs / "ddp" / "config.json").read_text())
    training = config["training"]
    assert training["processes"] == 2 and training["threads"] == 1
    digests = training["weights_sha256_per_rank"]
    assert len(digests) == 2 and digests[0] == digests[1], "the two processes ended with different weights"
    from mnist_cnn import load_model

    assert state_digest(load_model(runs / "ddp").model) == digests[0]  # the saved model is that model

    ddp_val = [row["val_accuracy"] for row in json.loads((runs / "ddp" / "history.json").read_text())]
    single_val = [row["val_accuracy"] for row in single.fit.history]
    # Same global batch, same number of steps: the same accuracy within the noise of 1,000 images.
    assert abs(ddp_val[-1] - single_val[-1]) < 0.04, (ddp_val, single_val)
    assert ddp_val[-1] > 0.85
    # Only rank 0 wrote: one run folder, under the name the launcher chose.
    assert sorted(p.name for p in runs.iterdir()) == ["ddp"]


def test_a_partial_last_batch_smaller_than_the_process_count_is_dropped():
    assert steps_per_epoch(1000, 32) == 32
    assert steps_per_epoch(1000, 32, world_size=2) == 32  # last batch of 8: 4 images each
    assert steps_per_epoch(993, 32, world_size=2) == 31  # last batch of 1: one process would have none
