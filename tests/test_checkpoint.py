"""Crash-safe checkpoints: killed with SIGKILL at random moments and resumed, a deterministic run
ends with the same weights as one never interrupted; damaged checkpoints are detected and skipped."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from mnist_cnn.callbacks import AfterEpoch
from mnist_cnn.checkpoint import CheckpointError, Checkpoints
from mnist_cnn.cli import main
from mnist_cnn.config import TrainConfig
from mnist_cnn.errors import MnistCnnError
from mnist_cnn.train import RunFinishedError, read_steps, resume_run, state_digest, train_run

EXE = os.path.join(os.path.dirname(sys.executable), "mnist-cnn")
# Everything with state: the deep model's batch norm and dropout, augmentation draws, an EMA of the
# weights, a one-cycle schedule. 10 steps per epoch, a checkpoint every 2 steps.
CONFIG = TrainConfig(model="deep", epochs=2, batch_size=32, limit=320, val_split="100", seed=5, ema=0.9,
                     aug_rotate=10, aug_translate=0.1, label_smoothing=0.1, lr_schedule="onecycle",
                     warmup=0.2)  # fmt: skip
RUN = ["--model", "deep", "--epochs", "2", "--batch-size", "32", "--limit", "320", "--val-split", "100",
       "--seed", "5", "--ema", "0.9", "--aug-rotate", "10", "--aug-translate", "0.1", "--label-smoothing", "0.1", "--lr-schedule", "onecycle", "--warmup", "0.2",
       "--deterministic", "--checkpoint-every", "2", "--threads", "1", "--no-progress"]  # fmt: skip


def _steps(run_dir):  # complete checkpoints: their manifest is written last
    return [int(p.stem.split("-")[1]) for p in Checkpoints(run_dir).paths() if p.with_suffix(".json").exists()]


def _train(*args, mnist_dir):
    return subprocess.Popen([EXE, "train", *map(str, args), "--data-dir", str(mnist_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_gives_the_uninterrupted_weights(tmp_path, mnist_dir, mnist):
    runs = tmp_path / "runs"
    torch.set_num_threads(1)  # as the command below: the thread count can change floating-point sums
    train_run(CONFIG, mnist, runs / "whole", device="cpu", progress=False, deterministic=True)

    rng = random.Random(os.getpid())
    run_dir = runs / "killed"
    kills = []
    proc = _train(*RUN, "--runs-dir", runs, "--name", "killed", mnist_dir=mnist_dir)
    finished = False  # set when a kill came just after training had ended (nothing left to resume)
    for _ in range(3):
        seen = max(_steps(run_dir), default=0)
        deadline = time.monotonic() + 300
        while max(_steps(run_dir), default=0) == seen and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        if proc.poll() is not None:
            break
        time.sleep(rng.uniform(0, 0.4))  # somewhere in the next steps, maybe while a checkpoint is written
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if (run_dir / "config.json").exists():  # on a slow machine the kill may land after training
            finished = True
            break
        kills.append(max(_steps(run_dir), default=0))
        proc = _train("--resume", run_dir, "--no-progress", mnist_dir=mnist_dir)
    if not finished:
        assert proc.wait(timeout=600) == 0, proc.stderr.read()
    assert kills, "the run finished before it could be killed once"

    whole, resumed = load_file(runs / "whole" / "model.safetensors"), load_file(run_dir / "model.safetensors")
    assert whole.keys() == resumed.keys()
    different = [k for k in whole if not torch.equal(whole[k], resumed[k])]
    assert not different, f"killed after checkpoint steps {kills}; differing tensors: {different}"
    history = [json.loads((runs / name / "history.json").read_text()) for name in ("whole", "killed")]
    assert [r["val_loss"] for r in history[0]] == [r["val_loss"] for r in history[1]]
    config = json.loads((run_dir / "config.json").read_text())
    assert config["training"]["epochs_completed"] == 2
    assert finished or config["training"]["resumed_from_step"] is not None
    assert len(Checkpoints(run_dir).paths()) == 3  # the newest K=3 kept

    # A finished run is not resumed again.
    r = subprocess.run([EXE, "train", "--resume", str(run_dir)], capture_output=True, text=True)
    assert r.returncode == 1 and "finished training already" in r.stderr


def test_a_damaged_newest_checkpoint_is_skipped_for_the_previous_one(tmp_path):
    store = Checkpoints(tmp_path, keep=2)
    for step in (1, 2, 3):
        store.save({"weights": torch.full((4,), float(step)), "step": step}, step)
    assert [p.name for p in store.paths()] == ["step-000000002.pt", "step-000000003.pt"]
    newest = store.paths()[-1]
    newest.write_bytes(newest.read_bytes()[:-10])  # cut short, as by a crash on a file system without fsync
    path, state = store.latest()
    assert (
        path.name == "step-000000002.pt" and state["step"] == 2 and torch.equal(state["weights"], torch.full((4,), 2.0))
    )
    store.paths()[0].with_suffix(".json").unlink()  # no manifest: never finished writing
    assert store.latest() is None
    with pytest.raises(CheckpointError, match="manifest"):
        store.load(newest)


class Payload:  # any class: unpickling it could run code
    pass


def test_checkpoints_never_unpickle_objects(tmp_path):
    store = Checkpoints(tmp_path)
    path = store.save({"object": Payload()}, 1)
    with pytest.raises(CheckpointError, match="cannot be read"):
        store.load(path)


def test_resume_mistakes_get_a_message(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path / "nowhere")]) == 1
    assert "no readable run.json" in capsys.readouterr().err
    (tmp_path / "run.json").write_text(json.dumps({"recipe": "basic", "train_config": {"epochs": 1}}))
    assert main(["train", "--resume", str(tmp_path), "--lr", "0.1"]) == 1
    assert "drop the training flags" in capsys.readouterr().err


@pytest.mark.slow
def test_a_checkpoint_from_before_a_new_config_field_still_resumes(tmp_path, mnist):
    """Fields added to TrainConfig later (photo_digits, reject_weight, init) take their defaults, and
    val_split saved as text (before it was a number) still matches."""
    config = TrainConfig(model="basic", epochs=2, limit=300, val_split="200")
    run = tmp_path / "run"
    train_run(config, mnist, run, device="cpu", progress=False)
    store = Checkpoints(run)
    path, state = store.latest()
    for name in ("photo_digits", "reject_weight", "init"):
        del state["config"][name]
    state["config"]["val_split"] = "200"
    step = int(path.stem.split("-")[1])
    store.save({k: v for k, v in state.items() if k != "format_version"}, step + 1)
    result = train_run(config, mnist, run, device="cpu", progress=False, resume=True)
    assert len(result.fit.history) == 2
    with pytest.raises(CheckpointError, match="another training config"):
        train_run(config.replace(lr=0.5), mnist, run, device="cpu", progress=False, resume=True)


def test_a_python_user_resumes_a_stopped_run_to_the_uninterrupted_weights(tmp_path, mnist):
    """resume_run reads the run's own settings (here a run.json from before val_split was a number)."""
    config = TrainConfig(model="basic", epochs=2, batch_size=50, limit=300, val_split=200, seed=4)
    whole = train_run(config, mnist, tmp_path / "whole", device="cpu", progress=False, deterministic=True)

    def stop_after_epoch_1(state):
        if len(state.history) == 1:
            raise KeyboardInterrupt

    run = tmp_path / "stopped"
    stopped = train_run(config, mnist, run, device="cpu", progress=False, deterministic=True,
                        callbacks=[AfterEpoch(stop_after_epoch_1)])  # fmt: skip
    assert stopped.fit.interrupted and len(stopped.fit.history) == 1
    settings = json.loads((run / "run.json").read_text())
    settings["train_config"]["val_split"] = "200"
    (run / "run.json").write_text(json.dumps(settings))

    resumed = resume_run(run, mnist, device="cpu", progress=False)
    assert resumed.fit.resumed_from == 6 and not resumed.fit.interrupted  # 300 images in batches of 50
    assert [r["val_loss"] for r in resumed.fit.history] == [r["val_loss"] for r in whole.fit.history]
    assert state_digest(resumed.model) == state_digest(whole.model)
    assert resumed.config["training"]["deterministic"] is True  # from run.json
    # The curve within epochs (steps.json, drawn for short runs): one point a step here (6 a epoch), the same
    # whether or not the run was stopped, and each epoch's points average to its history row.
    points = read_steps(tmp_path / "whole")
    assert [p["step"] for p in points] == list(range(1, 13)) and points[5]["epoch"] == 1.0
    assert read_steps(run) == points and read_steps(run, until=6) == points[:6]
    for row, epoch in zip(whole.fit.history, (points[:6], points[6:]), strict=True):
        assert np.mean([p["train_loss"] for p in epoch]) == pytest.approx(row["train_loss"], rel=1e-5)
        assert np.mean([p["train_accuracy"] for p in epoch]) == pytest.approx(row["train_accuracy"], rel=1e-5)
    with pytest.raises(RunFinishedError, match="finished training already; there is nothing to resume"):
        resume_run(run, mnist, device="cpu")
    with pytest.raises(MnistCnnError, match="no readable run.json"):
        resume_run(tmp_path / "nowhere", mnist, device="cpu")
