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
