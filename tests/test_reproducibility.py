"""--deterministic: same seed, same weights; every run records its config, versions, commit and data
digests; TensorBoard event files hold the curves and sample images."""

import json

import pytest
import torch

from mnist_cnn.config import TrainConfig
from mnist_cnn.train import train_run


def _weights(run_dir):
    from safetensors.torch import load_file

    return load_file(run_dir / "model.safetensors")


@pytest.mark.slow
def test_two_deterministic_runs_with_the_same_seed_give_identical_weights(mnist, tmp_path):
    # Dropout draws random masks at every step: the part that depends on random state.
    config = TrainConfig(model="dropout", epochs=2, batch_size=64, limit=384, val_split="200", seed=3)
    runs = [train_run(config, mnist, tmp_path / name, device="cpu", progress=False, deterministic=True)
            for name in ("a", "b")]  # fmt: skip
    a, b = (_weights(r.run_dir) for r in runs)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert runs[0].fit.history[-1]["val_loss"] == runs[1].fit.history[-1]["val_loss"]
    assert not torch.are_deterministic_algorithms_enabled(), "the global setting is restored afterwards"

    other = train_run(config.replace(seed=4), mnist, tmp_path / "c", device="cpu", progress=False, deterministic=True)
    c = _weights(other.run_dir)
    assert not all(torch.equal(a[k], c[k]) for k in a), "another seed should give other weights"

    saved = json.loads((tmp_path / "a" / "config.json").read_text())
    assert saved["train_config"] == config.to_dict()
    assert saved["training"]["deterministic"] is True
    assert saved["versions"]["torch"] == torch.__version__ and "numpy" in saved["versions"]
    assert "safetensors" in saved["versions"] and "python" in saved["versions"]
    assert saved["git"] is None or len(saved["git"]["commit"]) == 40
    assert set(saved["data"]["sha256"].values()) == set(mnist.digests.values())


@pytest.mark.slow
def test_tensorboard_events_hold_curves_and_sample_images(mnist, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = TrainConfig(model="basic", epochs=2, batch_size=100, limit=300, val_split="200", seed=0)
    result = train_run(config, mnist, tmp_path / "tb", device="cpu", progress=False, tensorboard=True)
    events = EventAccumulator(str(tmp_path / "tb" / "tensorboard"), size_guidance={"images": 0}).Reload()
    tags = events.Tags()
    assert {"loss/train", "loss/val", "accuracy/train", "accuracy/val", "lr"} <= set(tags["scalars"])
    val = events.Scalars("accuracy/val")
    assert [e.step for e in val] == [3, 6]  # global steps: 3 per epoch
    assert [e.value for e in val] == [row["val_accuracy"] for row in result.fit.history]
    assert "samples" in tags["images"]
