"""``mnist-cnn runs``: the table of the runs in a folder, read from their JSON files."""

import json
import shutil

from mnist_cnn.cli import main
from mnist_cnn.runs import format_table, list_runs


def test_runs_lists_finished_and_unfinished_runs(trained_run, tmp_path, capsys):
    result, metrics = trained_run
    folder = tmp_path / "runs"
    shutil.copytree(result.run_dir, folder / "finished")
    # A run killed during its second epoch: history and run.json, checkpoints, no model yet.
    stopped = folder / "stopped"
    (stopped / "checkpoints").mkdir(parents=True)
    (stopped / "run.json").write_text(json.dumps({"recipe": "deep", "train_config": {"model": "deep", "epochs": 30},
                                                  "started": "2026-11-21T10:00:00+0000"}))  # fmt: skip
    (stopped / "history.json").write_text(json.dumps([{"epoch": 1, "val_accuracy": 0.981, "seconds": 35.5}]))
    (folder / "not-a-run").mkdir()
    (folder / "broken").mkdir()
    (folder / "broken" / "config.json").write_text("{not json")

    rows = list_runs(folder)
    assert [r.run for r in rows] == ["stopped", "finished"]  # by date
    done = rows[1]
    assert (done.recipe, done.model, done.epochs, done.status) == ("basic", "basic", "3/3", "done")
    assert done.test_acc == metrics["test_accuracy"] and done.val_acc == metrics["val_accuracy"]
    assert (rows[0].epochs, rows[0].val_acc, rows[0].status) == ("1/30", 0.981, "in progress or stopped (resumable)")

    assert main(["runs", str(folder)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["run", "recipe", "model", "epochs", "val_acc", "test_acc", "time_s", "date", "status"]
    assert f"{100 * metrics['test_accuracy']:.2f}%" in lines[2] and lines[2].startswith("finished")
    assert lines == format_table(rows).splitlines()

    assert main(["runs", str(folder), "--sort", "val", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [r["run"] for r in listed] == ["stopped", "finished"] or metrics["val_accuracy"] > 0.981


def test_runs_of_a_missing_or_empty_folder(tmp_path, capsys):
    assert main(["runs", str(tmp_path / "nowhere")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["runs", str(tmp_path)]) == 0
    assert "no runs in" in capsys.readouterr().out


# --- RUN as a person types it (issue 14) ---


def _tiny_runs(tmp_path):
    """runs/ with two finished tiny runs (older basic-..., newer fast-...), one unfinished, and an image."""
    import numpy as np
    from PIL import Image

    from mnist_cnn.folder import ModelFolder, save_model
    from mnist_cnn.models import create_model

    runs = tmp_path / "runs"
    for name, created in [("basic-20261201-041509", "2026-12-01T04:15:09+0000"),
                          ("fast-20261201-050000", "2026-12-01T05:00:00+0000")]:  # fmt: skip
        save_model(runs / name, create_model("fast"), {"architecture": "fast"})
        ModelFolder(runs / name).update(created=created)
    (runs / "stopped" / "checkpoints").mkdir(parents=True)  # still training: never 'latest'
    image = np.zeros((28, 28), np.uint8)
    image[5:23, 12:16] = 255
    Image.fromarray(image).save(tmp_path / "d.png")
    return runs


def test_resolve_run_takes_folders_names_latest_and_files(tmp_path):
    import pytest

    from mnist_cnn.errors import ModelFolderError
    from mnist_cnn.runs import resolve_run

    runs = _tiny_runs(tmp_path)
    basic, fast = runs / "basic-20261201-041509", runs / "fast-20261201-050000"
    assert resolve_run(basic, runs) == basic
    assert resolve_run("basic-20261201-041509", runs) == basic
    assert resolve_run("latest", runs) == fast
    assert resolve_run(fast / "model.safetensors", runs) == fast
    with pytest.raises(ModelFolderError, match=f"model folder {runs / 'basic'} does not exist; did you mean: {basic}$"):
        resolve_run(runs / "basic", runs)
    with pytest.raises(ModelFolderError, match=f"did you mean: {basic}"):
        resolve_run("basic", runs)
    with pytest.raises(ModelFolderError, match=f"did you mean: {fast}$"):  # a typo of the recipe part of a name
        resolve_run("fastt", runs)
    with pytest.raises(ModelFolderError, match=f"holds runs but is not one; name one of: {basic}, {fast}$"):
        resolve_run(runs, runs)
    with pytest.raises(ModelFolderError, match="no finished runs in"):
        resolve_run("latest", tmp_path / "nothing")


def test_cli_commands_resolve_run_names(tmp_path, monkeypatch, capsys):
    runs = _tiny_runs(tmp_path)
    monkeypatch.chdir(tmp_path)  # --runs-dir defaults to ./runs
    fast = "runs/fast-20261201-050000"
    for argv in (["predict", "latest", "d.png"], ["read", "latest", "d.png"], ["predict", f"{fast}/model.safetensors", "d.png"],
                 ["predict", "fast-20261201-050000", "d.png"], ["predict", "basic-20261201-041509", "d.png", "--runs-dir", str(runs)]):  # fmt: skip
        assert main(argv) == 0, argv
        assert capsys.readouterr().out.startswith("d.png: "), argv
    for argv, message in [
        (["predict", "runs/basic", "d.png"], "model folder runs/basic does not exist; did you mean: runs/basic-20261201-041509"),
        (["predict", "runs", "d.png"], "runs holds runs but is not one; name one of: runs/basic-20261201-041509, " + fast),
        (["evaluate", "basic"], "model folder basic does not exist; did you mean: runs/basic-20261201-041509"),
        (["export", "runs"], "runs holds runs but is not one"),
        (["calibrate", "nope"], "model folder nope does not exist (train one with: mnist-cnn train)"),
        (["serve", "runs/fast"], f"did you mean: {fast}"),
        (["ensemble", "latest", "basic", "--out", "e"], "model folder basic does not exist; did you mean"),
    ]:  # fmt: skip
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and message in err and "\n" not in err, (argv, err)


def test_a_missing_image_is_one_line_and_exit_2_before_any_model_loads(tmp_path, monkeypatch, capsys):
    _tiny_runs(tmp_path)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    for argv, message in [
        (["predict", "missing.png"], "missing.png: no such file"),  # the default model: not named, not loaded
        (["predict", "latest", "missing.png", "d.png"], "missing.png: no such file"),  # nothing is read
        (["read", "latest", "missing.png", "gone.jpg"], "missing.png, gone.jpg: no such files"),
        (["preprocess", "missing.png"], "missing.png: no such file"),
        (["predict", "empty"], "empty: no image files in this folder"),
    ]:  # fmt: skip
        assert main(argv) == 2, argv
        captured = capsys.readouterr()
        assert captured.out == "" and captured.err.startswith(f"error: {message}"), (argv, captured)
        assert captured.err.count("\n") == 1, (argv, captured.err)


def test_one_unreadable_image_is_one_line(tmp_path, monkeypatch, capsys):
    _tiny_runs(tmp_path)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "junk.png").write_text("not an image")
    assert main(["predict", "latest", "junk.png"]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1 and "junk.png: not an image" in captured.err
    assert main(["predict", "latest", "junk.png", "d.png"]) == 1  # a batch goes on, and says how many failed
    captured = capsys.readouterr()
    assert captured.out.startswith("d.png: ") and "1 of 2 file(s) could not be read" in captured.err
