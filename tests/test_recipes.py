"""The fast and best recipes, EMA, schedules, TTA and ensemble model folders."""

from __future__ import annotations

import importlib.util
import itertools
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import evaluate_fully
from mnist_cnn.callbacks import EveryNSteps
from mnist_cnn.config import RECIPES, TrainConfig
from mnist_cnn.data import split_validation
from mnist_cnn.ensemble import TTA, make_ensemble
from mnist_cnn.errors import ModelFolderError
from mnist_cnn.evaluate import evaluate_run
from mnist_cnn.inference import load_model, to_model_input
from mnist_cnn.loop import fit, lr_factor
from mnist_cnn.models import count_parameters, create_model
from mnist_cnn.train import train_run

ROOT = Path(__file__).resolve().parents[1]


def _subset(mnist, start, n):
    return to_model_input(mnist.train_images[start : start + n]), mnist.train_labels[start : start + n]


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, mnist):
    """Two small models (the fast recipe on 3,000 images, seeds 0 and 1), evaluated."""
    root = tmp_path_factory.mktemp("ens")
    runs = []
    for seed in (0, 1):
        config = RECIPES["fast"].config.replace(limit=3000, val_split="1000", seed=seed, epochs=2)
        train_run(config, mnist, root / f"fast-{seed}", recipe="fast", device="cpu", progress=False)
        evaluate_fully(root / f"fast-{seed}", mnist)
        runs.append(root / f"fast-{seed}")
    return runs


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["fast", "best"])
def test_new_recipes_train_a_few_steps_and_save_a_model(recipe, mnist, tmp_path):
    config = RECIPES[recipe].config.replace(limit=512, val_split="256", epochs=1)
    result = train_run(config, mnist, tmp_path / recipe, recipe=recipe, device="cpu", progress=False)
    row = result.fit.history[0]
    assert math.isfinite(row["train_loss"]) and 0 <= row["val_accuracy"] <= 1
    clf = load_model(tmp_path / recipe)
    assert clf.predict(mnist.test_images[:5]).shape == (5,)
    assert json.loads((tmp_path / recipe / "config.json").read_text())["train_config"] == config.to_dict()


def test_recipe_settings_and_sizes():
    fast, best = RECIPES["fast"].config, RECIPES["best"].config
    assert (fast.model, fast.epochs, fast.lr_schedule) == ("fast-valid", 1, "onecycle")
    assert best.model == "best" and best.ema > 0 and best.label_smoothing > 0 and best.augmentation.active
    assert count_parameters(create_model("fast")) == count_parameters(create_model("fast-valid")) == 29_434
    assert count_parameters(create_model("best")) == 141_930
    assert count_parameters(create_model("best-fullres")) == 150_698


def test_fast_valid_drops_only_the_stem_padding():
    """Same weights, so a saved ``fast`` run must keep loading as ``fast``: the two differ in what they compute."""
    padded, valid = create_model("fast").eval(), create_model("fast-valid").eval()
    valid.load_state_dict(padded.state_dict())
    stem = dict(padded.features.named_children())["0"], dict(valid.features.named_children())["0"]
    assert (stem[0].padding, stem[1].padding) == ((2, 2), (0, 0))
    x = torch.rand(4, 1, 28, 28)
    assert padded.features(x).shape == valid.features(x).shape == (4, 64, 3, 3)
    assert not torch.allclose(padded(x), valid(x))


@pytest.mark.slow
def test_fast_recipe_learns_in_one_epoch_on_a_subset(mnist, tmp_path):
    # 10,000 images, one epoch, about a second: far above chance, the recipe's settings work.
    config = RECIPES["fast"].config.replace(limit=10_000, val_split="2000")
    result = train_run(config, mnist, tmp_path / "fast", recipe="fast", device="cpu", progress=False)
    assert result.fit.history[0]["val_accuracy"] > 0.95


@pytest.mark.slow
def test_bf16_training_learns_and_keeps_float32_weights(mnist, tmp_path):
    # Forced bf16 (emulated where the CPU has no native bfloat16): the steps run in bfloat16, what
    # is optimised, validated and saved stays float32, and the model still learns.
    config = RECIPES["fast"].config.replace(limit=6000, val_split="1000", precision="bf16")
    result = train_run(config, mnist, tmp_path / "bf16", recipe="fast", device="cpu", progress=False)
    assert result.fit.history[0]["val_accuracy"] > 0.9
    clf = load_model(tmp_path / "bf16")
    assert {p.dtype for p in clf.model.parameters()} == {torch.float32}
    assert clf.predict_proba(mnist.test_images[:3]).dtype == np.float32


def test_precision_auto_follows_the_hardware(monkeypatch):
    from mnist_cnn import runtime

    cpu = torch.device("cpu")
    assert not runtime.uses_bf16("fp32", cpu) and runtime.uses_bf16("bf16", cpu)
    for native in (True, False):
        monkeypatch.setattr(runtime, "native_bf16", lambda device, native=native: native)
        assert runtime.uses_bf16("auto", cpu) is native
    with pytest.raises(ValueError, match="unknown precision 'fp16'; choose one of: fp32, bf16, auto"):
        TrainConfig(precision="fp16")


@pytest.mark.slow
def test_with_ema_and_augmentation_the_kept_checkpoint_is_the_best_on_validation(mnist):
    train, val = _subset(mnist, 0, 1500), _subset(mnist, 50_000, 1000)
    config = TrainConfig(model="fast", epochs=5, batch_size=50, lr=0.05, seed=2, ema=0.9, aug_rotate=10,
                         aug_translate=0.05)  # fmt: skip
    torch.manual_seed(2)
    model = create_model("fast")
    result = fit(model, train, val, config, progress=False)
    accs = [row["val_accuracy"] for row in result.history]
    assert result.best_epoch == int(np.argmax(accs)) + 1
    model.eval()
    with torch.no_grad():
        kept = (model(val[0]).argmax(1) == val[1]).float().mean().item()
    assert kept == pytest.approx(max(accs))  # the EMA weights that scored best, not the raw ones


def test_schedules_warm_up_then_decay_to_zero():
    steps = 100
    one = lr_factor(TrainConfig(lr_schedule="onecycle", warmup=0.2), steps)
    assert one(0) == pytest.approx(1 / 20) and one(19) == pytest.approx(1.0)
    assert one(60) == pytest.approx(0.5) and one(100) == pytest.approx(0.0)
    cos = lr_factor(TrainConfig(lr_schedule="cosine"), steps)
    assert cos(0) == 1.0 and cos(50) == pytest.approx(0.5) and cos(100) == pytest.approx(0.0)
    assert lr_factor(TrainConfig(), steps)(99) == 1.0


@pytest.mark.slow
def test_step_callback_sees_the_kept_model_and_is_not_timed(mnist):
    train = _subset(mnist, 0, 1000)
    config = TrainConfig(model="fast", epochs=2, batch_size=100, ema=0.5)
    calls = []

    def on_step(step, model, seconds):
        calls.append((step, seconds))
        import time

        time.sleep(0.05)

    result = fit(create_model("fast"), train, None, config, progress=False, callbacks=[EveryNSteps(5, on_step)])
    assert [s for s, _ in calls] == [5, 10, 15, 20]
    assert all(b[1] > a[1] for a, b in itertools.pairwise(calls)) and calls[-1][1] < 0.2 + result.train_seconds
    assert result.train_seconds < sum(r["seconds"] for r in result.history) + 0.1
    assert all(r["seconds"] >= 0 for r in result.history)


def test_tta_with_only_the_identity_view_is_the_model_itself():
    torch.manual_seed(0)
    model = create_model("fast").eval()
    x = torch.randn(6, 1, 28, 28)
    tta = TTA(model, views=[(0, 1.0, 0, 0)]).eval()
    with torch.no_grad():
        assert torch.allclose(tta(x), F.log_softmax(model(x), 1), atol=1e-5)
        out = TTA(model).eval()(x)
    assert out.shape == (6, 10)
    assert torch.allclose(out.exp().sum(1), torch.ones(6), atol=1e-5)  # log-probabilities


@pytest.mark.slow
def test_tta_classifier_and_evaluate(two_runs, mnist):
    plain, tta = load_model(two_runs[0]), load_model(two_runs[0], tta=True)
    images = mnist.test_images[:500].numpy()
    p = tta.predict_proba(images)
    assert p.shape == (500, 10) and np.allclose(p.sum(1), 1, atol=1e-5)
    agree = (tta.predict(images) == plain.predict(images)).mean()
    assert agree > 0.9  # the same model, looked at from a few angles
    metrics = evaluate_run(two_runs[0], mnist, tta=True).metrics
    assert metrics["tta"] is True and 0.9 < metrics["val_accuracy"] <= 1


@pytest.mark.slow
def test_ensemble_folder_averages_its_members_probabilities(two_runs, mnist, tmp_path):
    out = make_ensemble(two_runs, tmp_path / "ens")
    ens = load_model(out)
    images = mnist.test_images[:300].numpy()
    by_hand = np.mean([load_model(r).predict_proba(images) for r in two_runs], axis=0)
    assert np.allclose(ens.predict_proba(images), by_hand, atol=1e-5)
    assert (ens.predict(images) == by_hand.argmax(1)).all()
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "ensemble" and len(config["members"]) == 2
    # self-contained: the members' folders are copies, so the originals may go
    assert (out / "members" / "0" / "model.safetensors").is_file()
    metrics = evaluate_fully(out, mnist)
    assert metrics["test_accuracy"] > 0.9 and metrics["val_accuracy"] is None
    assert (out / "report.html").is_file()


@pytest.mark.slow
def test_members_sharing_one_validation_split_give_the_ensemble_a_validation_figure(two_runs, mnist, tmp_path, caplog):
    # Seed 2 with split seed 0 holds out the same 1,000 images as two_runs[0] (seed 0).
    assert (TrainConfig(seed=3).validation_seed, TrainConfig(seed=3, split_seed=0).validation_seed) == (3, 0)
    config = RECIPES["fast"].config.replace(limit=3000, val_split="1000", seed=2, split_seed=0, epochs=2)
    train_run(config, mnist, tmp_path / "fast-2", recipe="fast", device="cpu", progress=False)
    out = make_ensemble([two_runs[0], tmp_path / "fast-2"], tmp_path / "ens")
    assert json.loads((out / "config.json").read_text())["validation"] == {"val_split": 1000, "seed": 0}
    metrics = evaluate_fully(out, mnist)
    _, val_idx = split_validation(len(mnist.train_images), "1000", 0)
    by_hand = (
        load_model(out).predict(mnist.train_images[val_idx].numpy()) == mnist.train_labels[val_idx].numpy()
    ).mean()
    assert 0.9 < metrics["val_accuracy"] == pytest.approx(by_hand)
    assert metrics["temperature"] != 1.0  # calibrated as a whole, on that split
    caplog.clear()
    with caplog.at_level("WARNING"):
        other = make_ensemble(two_runs, tmp_path / "ens-2")  # seeds 0 and 1: two different splits
    assert "different validation splits" in caplog.text and "--split-seed" in caplog.text
    assert "validation" not in json.loads((other / "config.json").read_text())


@pytest.mark.slow
def test_ensemble_refuses_bad_requests(two_runs, tmp_path):
    with pytest.raises(ValueError, match="at least two"):
        make_ensemble(two_runs[:1], tmp_path / "one")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("x")
    with pytest.raises(ModelFolderError, match="already exists"):
        make_ensemble(two_runs, tmp_path / "taken")
    assert (tmp_path / "taken" / "file").read_text() == "x"  # nothing lost
    with pytest.raises(ModelFolderError, match="does not exist"):
        make_ensemble([two_runs[0], tmp_path / "missing"], tmp_path / "e")
    assert not (tmp_path / "e").exists()
    nested = make_ensemble(two_runs, tmp_path / "nested")
    with pytest.raises(ModelFolderError, match="itself an ensemble"):
        make_ensemble([nested, two_runs[0]], tmp_path / "e2")


@pytest.mark.slow
def test_cli_ensemble_and_tta(two_runs, mnist_dir, tmp_path):
    env_cmd = [sys.executable, "-m", "mnist_cnn"]
    out = tmp_path / "ens"
    done = subprocess.run([*env_cmd, "ensemble", *map(str, two_runs), "--out", str(out), "--data-dir", str(mnist_dir),
                           "--tta", "-q"], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "with test-time augmentation" in done.stdout and (out / "metrics.json").is_file()
    assert json.loads((out / "metrics.json").read_text())["tta"] is True
    again = subprocess.run([*env_cmd, "ensemble", *map(str, two_runs), "--out", str(out), "--data-dir", str(mnist_dir)],
                           capture_output=True, text=True, timeout=300)  # fmt: skip
    assert again.returncode == 2 and "already exists" in again.stderr and "Traceback" not in again.stderr


def _ensemble_benchmark():
    spec = importlib.util.spec_from_file_location("ensemble_benchmark", ROOT / "benchmarks" / "ensemble.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_ensemble_benchmark_keeps_the_subset_best_on_validation_ties_to_fewer_and_faster_members():
    choose = _ensemble_benchmark().choose
    labels = np.array([0, 1, 2, 3])
    onehot = np.eye(4)

    def member(predicted, confidence):  # probability `confidence` on the class predicted, the rest shared
        return np.array([c * onehot[p] + (1 - c) / 4 for p, c in zip(predicted, confidence, strict=True)])

    # Each right on 3 of 4, sure where the other is wrong: together all 4; the third member adds nothing.
    a, c = member([0, 1, 2, 0], [0.6, 0.6, 0.9, 0.6]), member([0, 1, 0, 3], [0.6, 0.6, 0.6, 0.9])
    wrong = member([1, 0, 2, 3], [0.6] * 4)
    assert choose([a, wrong, c], labels, [1.0, 1.0, 1.0]) == ((0, 2), 1.0)
    same = member(
        [0, 1, 2, 3], [0.6] * 4
    )  # every subset of these gets all four right: the fewest, then the fastest, win
    subset, accuracy = choose([same, same, same], labels, [30.0, 20.0, 10.0])
    assert (subset, accuracy) == ((1, 2), 1.0)


def test_the_ensemble_benchmark_refuses_runs_selected_on_different_splits():
    shared_validation = _ensemble_benchmark().shared_validation

    class Run:
        def __init__(self, seed):
            self.config = {"train_config": {"val_split": 5000, "seed": seed}}

    assert shared_validation([Run(0), Run(0)]) == (5000, 0)
    with pytest.raises(SystemExit, match="--split-seed"):
        shared_validation([Run(0), Run(1)])
