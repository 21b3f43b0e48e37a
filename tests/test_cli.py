"""The real ``mnist-cnn`` command, end to end on a tiny budget, and its answers to user mistakes."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import make_idx_folder
from mnist_cnn.cli import main
from mnist_cnn.inference import default_model_dir

EXE = os.path.join(os.path.dirname(sys.executable), "mnist-cnn")  # the console script installed beside python


def cli(*args, env=None):
    """Run the installed console script the way a user would."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([EXE, *map(str, args)], capture_output=True, text=True, env=full_env, timeout=600)


@pytest.mark.slow
def test_train_evaluate_predict_show_end_to_end(tmp_path, mnist_dir, mnist):
    runs = tmp_path / "runs"
    r = cli("train", "--epochs", "1", "--limit", "800", "--val-split", "400", "--batch-size", "64",
            "--runs-dir", runs, "--name", "tiny", "--data-dir", mnist_dir, "--threads", "2")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "test accuracy 0." in r.stdout and "report:" in r.stdout
    assert "confusion matrix" in r.stdout and "weighted avg" in r.stdout
    run = runs / "tiny"
    assert {"model.safetensors", "config.json", "metrics.json", "report.html", "history.csv"} <= {
        p.name for p in run.iterdir()
    }
    saved = json.loads((run / "config.json").read_text())
    assert saved["train_config"]["limit"] == 800 and saved["train_config"]["batch_size"] == 64

    # The same name again is refused, and nothing is lost.
    before = (run / "model.safetensors").read_bytes()
    r = cli("train", "--runs-dir", runs, "--name", "tiny", "--data-dir", mnist_dir)
    assert r.returncode == 1 and "already exists" in r.stderr and "Traceback" not in r.stderr
    assert (run / "model.safetensors").read_bytes() == before

    r = cli("evaluate", run, "--data-dir", mnist_dir)
    assert r.returncode == 0, r.stderr
    assert f"test accuracy {json.loads((run / 'metrics.json').read_text())['test_accuracy']:.4f}" in r.stdout

    r = cli("show", "--out", tmp_path / "grid.png", "--count", "10", "--data-dir", mnist_dir)
    assert r.returncode == 0 and Image.open(tmp_path / "grid.png").size[0] > 100


def _write_digit_files(folder, mnist, indices):
    """Test digits as users have them: dark ink on white paper, in PNG, JPEG and transparent PNG."""
    paths = []
    for i in indices:
        digit = mnist.test_images[i].numpy()
        paper = 255 - digit
        paths.append(folder / f"digit{i}.png")
        Image.fromarray(paper).save(paths[-1])
        paths.append(folder / f"digit{i}.jpg")
        Image.fromarray(paper).convert("RGB").save(paths[-1], quality=95)
        paths.append(folder / f"digit{i}-alpha.png")
        rgba = np.zeros((28, 28, 4), np.uint8)
        rgba[..., 3] = digit  # black ink, transparent background
        Image.fromarray(rgba, "RGBA").save(paths[-1])
    return paths


def test_predict_reads_image_files_and_reports_bad_ones(tmp_path, trained_run, mnist):
    result, _ = trained_run
    from mnist_cnn import load_model

    clf = load_model(result.run_dir)
    right = [i for i in range(50) if clf.predict(mnist.test_images[i].numpy())[0] == mnist.test_labels[i]][:3]
    good = _write_digit_files(tmp_path, mnist, right)
    not_image = tmp_path / "notes.png"
    not_image.write_text("<html>not an image</html>")
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")

    r = cli("predict", result.run_dir, *good, not_image, empty, "--json")
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(lines) == len(good) + 2
    by_file = {line["file"]: line for line in lines}
    for i in right:
        expected = int(mnist.test_labels[i])
        for suffix in (".png", ".jpg", "-alpha.png"):
            line = by_file[str(tmp_path / f"digit{i}{suffix}")]
            assert line["label"] == expected, (suffix, line)
            assert len(line["probabilities"]) == 10 and abs(sum(line["probabilities"]) - 1) < 1e-4
    assert "not an image" in by_file[str(not_image)]["error"]
    assert "empty (0 bytes)" in by_file[str(empty)]["error"]
    assert "2 of" in r.stderr and "could not be read" in r.stderr

    r = cli("predict", result.run_dir, good[0])
    assert r.returncode == 0 and r.stdout.startswith(f"{good[0]}: {int(mnist.test_labels[right[0]])} (p=")


@pytest.mark.parametrize("argv,status,message", [
    (["train", "--data-dir", "/no/such/folder"], 2, "data folder /no/such/folder does not exist; it should hold train-images-idx3-ubyte"),
    (["evaluate", "/no/such/run"], 2, "model folder /no/such/run does not exist"),
    (["train", "--val-split", "70000", "--data-dir", "{data}"], 2, "leaves nothing to train on"),
    (["train", "--epochs", "0"], 2, "epochs must be at least 1"),
    (["train", "--name", "../../x"], 2, "must be a plain folder name"),
    (["train", "--name", "a/b"], 2, "must be a plain folder name"),
])  # fmt: skip
def test_user_errors_exit_with_a_message_not_a_traceback(
    argv, status, message, capsys, mnist_dir, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    assert main([a.replace("{data}", str(mnist_dir)) for a in argv]) == status
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_missing_file_and_corrupt_file_are_named(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = make_idx_folder(tmp_path / "data")
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    assert main(["train", "--data-dir", str(folder)]) == 2
    assert "lacks t10k-labels-idx1-ubyte" in capsys.readouterr().err

    folder = make_idx_folder(tmp_path / "data2")  # valid IDX, but not MNIST's bytes
    assert main(["train", "--data-dir", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "train-images-idx3-ubyte.gz: digest mismatch" in err
    assert "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db" in err


def test_no_data_and_no_download_says_how_to_point_at_a_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--no-download", "--cache-dir", str(tmp_path / "empty-cache")]) == 2
    err = capsys.readouterr().err
    assert "--data-dir" in err and "MNIST_CNN_DATA" in err


@pytest.mark.parametrize("argv,listed", [
    (["train", "--recipe", "nope"], "basic"),
    (["train", "--model", "nope"], "three-conv"),
])  # fmt: skip
def test_unknown_names_list_the_valid_ones(argv, listed, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert listed in capsys.readouterr().err


def test_recipes_list(capsys):
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    for name in ("basic", "dropout", "three-conv", "deep"):
        assert name in out


def test_every_flag_states_its_default():
    import argparse

    from mnist_cnn.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for command, parser in sub.choices.items():
        for action in parser._actions:
            if action.option_strings and not isinstance(action, argparse._HelpAction):
                assert "default" in (action.help or ""), f"{command} {action.option_strings[0]}"


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_and_saves_what_was_trained(tmp_path, mnist_dir):
    import signal
    import time

    run = tmp_path / "runs" / "stopped"
    proc = subprocess.Popen(
        [EXE, "train", "--epochs", "200", "--limit", "2000", "--val-split", "500", "--batch-size", "100",
         "--runs-dir", str(run.parent), "--name", run.name, "--data-dir", str(mnist_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # As from a terminal: a test run started in the background (`cmd &`) inherits SIGINT ignored.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    deadline = time.monotonic() + 300
    while not (run / "history.json").is_file() or not json.loads((run / "history.json").read_text() or "[]"):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted" in err
    config = json.loads((run / "config.json").read_text())
    assert config["training"]["interrupted"] is True
    assert 1 <= config["training"]["epochs_completed"] < 200
    assert config["metrics"]["test_accuracy"] > 0.5  # the saved weights are the trained ones
    assert (run / "model.safetensors").is_file() and (run / "report.html").is_file()
    assert "test accuracy" in out


@pytest.mark.slow
def test_python_dash_m_runs_the_cli():
    r = subprocess.run([sys.executable, "-m", "mnist_cnn", "recipes"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "three-conv" in r.stdout


def test_predict_on_many_files_in_worker_processes_answers_as_one_process_does(tmp_path, mnist):
    """70 files with a blank and a broken one among them: the same rows, in the same
    order, whether 2 worker processes or this process preprocess them, and the batch's errors counted."""
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(68):
        Image.fromarray(255 - mnist.test_images[i].numpy()).resize((56, 56)).save(folder / f"d{i:02d}.png")
    Image.new("L", (40, 40), 255).save(folder / "d68-blank.png")
    (folder / "d69-broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    runs = {w: cli("predict", folder, "--json", "--workers", w) for w in ("0", "2")}
    for r in runs.values():
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
        assert "1 of 70 file(s) could not be read" in r.stderr
    rows = {w: [json.loads(line) for line in r.stdout.splitlines()] for w, r in runs.items()}
    assert rows["0"] == rows["2"]
    assert [row["file"] for row in rows["2"]] == sorted(str(p) for p in folder.iterdir())
    labels = [row["label"] for row in rows["2"][:68]]
    assert np.mean(np.array(labels) == mnist.test_labels[:68].numpy()) > 0.95
    assert rows["2"][68]["no_digit"] is True and "error" in rows["2"][69]


def test_a_damaged_model_stops_a_pooled_predict_at_once(tmp_path):
    """The workers start while the model loads; when it cannot load, the files not yet begun are dropped:
    one clear message, exit 2, and no wait for 2,000 photos."""
    folder, model = tmp_path / "photos", tmp_path / "model"
    folder.mkdir()
    model.mkdir()
    shutil.copy(default_model_dir() / "config.json", model / "config.json")
    (model / "model.safetensors").write_bytes(b"not weights" * 100)
    page = Image.new("L", (200, 200), 230)
    for i in range(2000):
        page.save(folder / f"p{i:04d}.jpg")
    start = time.perf_counter()
    r = cli("predict", model, folder, "--workers", "2")
    assert r.returncode == 2 and "Traceback" not in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert time.perf_counter() - start < 30  # measured: ~3 s; all 2,000 files would take ~15 s of 2 cores


def test_predict_refuses_a_negative_worker_count(tmp_path):
    Image.new("L", (40, 40), 255).save(tmp_path / "a.png")
    r = cli("predict", tmp_path / "a.png", "--workers", "-1")
    assert r.returncode == 2 and r.stderr.strip().endswith("--workers must be 0 or more, got -1"), r.stderr


def test_the_worker_pool_is_kept_for_many_files_that_are_not_tiny(tmp_path, monkeypatch):
    from mnist_cnn import parallel

    monkeypatch.setattr(parallel.os, "sched_getaffinity", lambda _: {0, 1}, raising=False)
    small, large = [], []
    for i in range(parallel.POOL_MIN_FILES):
        (tmp_path / f"s{i}.png").write_bytes(b"x" * 300)
        (tmp_path / f"l{i}.jpg").write_bytes(b"x" * 20_000)
        small.append(tmp_path / f"s{i}.png")
        large.append(tmp_path / f"l{i}.jpg")
    assert parallel.default_workers(large) == 2
    assert parallel.default_workers(small) == 0  # 28x28 PNGs: faster in one process
    assert parallel.default_workers(large[:10]) == 0  # a pool's start costs more than it saves


def test_worker_processes_do_not_run_the_parents_script_again(tmp_path, mnist):
    """``mnist-cnn`` is a script that imports the whole CLI (and PyTorch, ~1.7 s of CPU): a spawned worker
    would run it again before preprocessing anything. A script whose top level leaves a mark shows who ran it."""
    for i in range(4):
        Image.fromarray(mnist.test_images[i].numpy()).resize((56, 56)).save(tmp_path / f"d{i}.png")
    marks = tmp_path / "marks"
    script = tmp_path / "script.py"
    script.write_text(
        "import os, sys\n"
        f"open({str(marks)!r}, 'a').write(str(os.getpid()) + '\\n')\n"
        "from pathlib import Path\n"
        "from mnist_cnn.parallel import framing\n"
        "if __name__ == '__main__':\n"
        f"    paths = sorted(Path({str(tmp_path)!r}).glob('*.png'))\n"
        "    with framing(paths, 2) as outcomes:\n"
        "        frames = [frame for _, frame in outcomes]\n"
        "    print(len(frames), all(f.shape == (28, 28) for f in frames), sys.modules['__main__'].__file__)\n"
    )
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["4", "True", str(script)]  # every frame, and the script's name given back
    assert len(marks.read_text().splitlines()) == 1  # the parent alone: before, once more in each worker


def _processes_tagged(tag: str) -> list[int]:
    """The pids of the processes whose environment holds ``tag`` (Linux: /proc)."""
    pids = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if tag.encode() in environ.read_bytes():
                pids.append(int(environ.parent.name))
        except OSError:  # gone, or not ours
            continue
    return pids


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the workers through /proc")
def test_predict_stopped_by_sigterm_leaves_no_worker_processes(tmp_path, mnist):
    """SIGTERM (kill, a scheduler, a container stopping) while the pool works ends predict with status 143 and
    takes the workers, their forkserver and resource tracker with it; they used to wait for ever."""
    for i in range(400):
        Image.fromarray(mnist.test_images[i].numpy()).resize((56, 56)).save(tmp_path / f"d{i:03}.png")
    tag = f"MNIST_CNN_TEST_TAG={os.getpid()}-{time.time_ns()}"
    name, value = tag.split("=")
    env = {**os.environ, name: value}
    proc = subprocess.Popen([EXE, "predict", str(tmp_path), "--workers", "2"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while len(_processes_tagged(tag)) < 3 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)  # predict itself, then its forkserver and workers
        assert proc.poll() is None, "predict finished before its workers were seen; give it more files"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 143
        deadline = time.monotonic() + 10
        while _processes_tagged(tag) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _processes_tagged(tag) == []
    finally:
        proc.kill()
        for pid in _processes_tagged(tag):
            os.kill(pid, signal.SIGKILL)


def test_with_a_worker_pool_the_model_takes_the_cores_the_workers_leave(monkeypatch):
    from mnist_cnn import runtime
    from mnist_cnn.cli.images import _model_threads

    monkeypatch.setattr(runtime, "available_cores", lambda: 2)
    assert _model_threads(0, workers=2) == 1  # both cores preprocess: one model thread, not two spinning
    assert _model_threads(0, workers=0) == 0  # no pool: one thread per core, as before
    assert _model_threads(3, workers=2) == 3  # --threads is obeyed
    monkeypatch.setattr(runtime, "available_cores", lambda: 8)
    assert _model_threads(0, workers=2) == 6
