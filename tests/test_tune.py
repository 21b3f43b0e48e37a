"""Hyper-parameter search: an Optuna study in SQLite shared by two worker processes, resumed, shown,
and its best trial trained with one command."""

import json
import os
import subprocess
import sys

import optuna
import pytest
import torch

from mnist_cnn.cli import main

EXE = os.path.join(os.path.dirname(sys.executable), "mnist-cnn")
TINY = ["--recipe", "basic", "--limit", "300", "--val-split", "200", "--epochs", "2", "--batch-size", "50",
        "--threads", "1", "--no-progress"]  # fmt: skip


@pytest.mark.slow
def test_two_workers_share_one_study_which_resumes_and_trains_its_best(tmp_path, mnist_dir, capsys):
    storage = f"sqlite:///{tmp_path / 'tune.db'}"
    args = ["tune", *TINY, "--trials", "4", "--storage", storage, "--study", "shared", "--data-dir", str(mnist_dir)]
    workers = [subprocess.Popen([EXE, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(2)]  # fmt: skip
    outputs = [w.communicate(timeout=300) for w in workers]
    for worker, (_out, err) in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, err

    study = optuna.load_study(study_name="shared", storage=storage)
    finished = [t for t in study.trials if t.state.is_finished()]
    assert len(finished) >= 4
    assert len({t.user_attrs["worker"] for t in finished}) == 2, "both workers should have run trials"
    for t in finished:
        if t.state == optuna.trial.TrialState.COMPLETE:  # objective: the best validation accuracy
            assert t.value == max(t.intermediate_values.values())
            assert 0 < t.value <= 1
            assert t.user_attrs["train_config"]["limit"] == 300
    assert study.user_attrs["recipe"] == "basic"

    # Started again with the same storage and study, it adds trials to the same study.
    assert main(["tune", *args[1:-6], "--trials", "6", "--storage", storage, "--study", "shared",
                 "--data-dir", str(mnist_dir)]) == 0  # fmt: skip
    study = optuna.load_study(study_name="shared", storage=storage)
    assert sum(t.state.is_finished() for t in study.trials) >= 6
    assert [t.number for t in study.trials][:4] == list(range(4))

    capsys.readouterr()
    assert main(["tune", "--show", "--storage", storage, "--study", "shared"]) == 0
    shown = capsys.readouterr().out
    best = study.best_trial
    assert f"{100 * best.value:.2f}%" in shown.splitlines()[5]  # first row of the table is the best
    assert f"mnist-cnn train --from-study shared --storage {storage}" in shown

    # The best trial's config, trained with one command.
    runs = tmp_path / "runs"
    assert main(["train", "--from-study", "shared", "--storage", storage, "--runs-dir", str(runs), "--name", "best",
                 "--data-dir", str(mnist_dir), "--epochs", "1", "--threads", "1", "--no-progress"]) == 0  # fmt: skip
    saved = json.loads((runs / "best" / "config.json").read_text())
    assert saved["train_config"]["lr"] == pytest.approx(best.params["lr"])
    assert saved["train_config"]["weight_decay"] == best.params["weight_decay"]
    assert saved["train_config"]["batch_size"] == 50  # fixed on the command line, so not searched
    assert saved["train_config"]["epochs"] == 1 and saved["recipe"] == "basic"


def test_search_space_is_printed_and_fixed_fields_are_not_searched(capsys):
    assert main(["tune", "--recipe", "deep", "--space", "--batch-size", "128"]) == 0
    out = capsys.readouterr().out
    assert "lr: 0.0003 to 0.02 (log scale)" in out
    assert "batch_size" not in out


def test_tune_mistakes_get_a_message(tmp_path, mnist_dir, capsys):
    storage = f"sqlite:///{tmp_path / 'tune.db'}"
    assert main(["tune", "--show", "--storage", storage, "--study", "missing"]) == 1
    assert "no study named 'missing'" in capsys.readouterr().err
    assert main(["tune", *TINY, "--val-split", "0", "--storage", storage, "--data-dir", str(mnist_dir)]) == 2
    assert "needs a validation split" in capsys.readouterr().err
    assert main(["train", "--from-study", "missing", "--storage", storage]) == 1
    assert "no study named 'missing'" in capsys.readouterr().err
    assert main(["tune", "--show", "--storage", "postgresql://nobody@127.0.0.1:1/none", "--study", "x"]) == 1
    assert "cannot open the study storage" in capsys.readouterr().err


def test_trials_of_a_fine_tuning_base_start_from_its_weights(trained_run, mnist, tmp_path):
    """--init is honoured by tune: with a learning rate too small to move anything, a trial scores as the source."""
    from mnist_cnn.config import TrainConfig
    from mnist_cnn.train import split_tensors
    from mnist_cnn.tune import run_study

    source = trained_run[0]
    fixed = {"lr": 1e-12, "batch_size": 32, "weight_decay": 0.0, "lr_schedule": "constant"}  # nothing searched
    base = TrainConfig(model="basic", epochs=1, limit=300, val_split="500", init=str(source.run_dir), **fixed)
    _, (xv, yv) = split_tensors(base, mnist, "cpu")
    with torch.no_grad():
        expected = float((source.model.eval()(xv).argmax(1) == yv).float().mean())
    study = run_study("basic", base, mnist, trials=1, storage=f"sqlite:///{tmp_path / 't.db'}", fixed=fixed,
                      device="cpu")  # fmt: skip
    assert expected > 0.9 and study.best_value == pytest.approx(expected, abs=0.004)
