"""The image commands end to end: preprocess, predict and read on files and folders (CSV, JSON Lines), calibrate."""

import csv
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from mnist_cnn.config import DEFAULT_MIN_CONFIDENCE
from test_cli import cli


@pytest.fixture(scope="module")
def images(tmp_path_factory, mnist):
    """A folder tree of photographed test digits and numbers, a blank page and a broken file."""
    from mnist_cnn.synthetic import render_digit, render_string

    root = tmp_path_factory.mktemp("images")
    (root / "digits" / "more").mkdir(parents=True)
    rng = np.random.default_rng(3)
    x, y = mnist.test_images.numpy(), mnist.test_labels.numpy()
    truth = {}
    for i in range(4):
        path = root / "digits" / ("more" if i % 2 else "") / f"d{i}.jpg"
        render_digit(x[i], rng).save(path)
        truth[str(path)] = int(y[i])
    Image.fromarray(np.full((120, 160), 235, np.uint8)).save(root / "digits" / "blank.png")
    (root / "digits" / "more" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (root / "digits" / "notes.txt").write_text("not looked at: not an image suffix")
    render_string(x[10:15], np.random.default_rng(4)).save(root / "number.png")
    return root, truth, "".join(str(int(v)) for v in y[10:15])


@pytest.mark.slow
def test_preprocess_writes_what_the_model_sees(images, tmp_path):
    root, _, _ = images
    r = cli("preprocess", root / "number.png", "--out", tmp_path / "x.png", "--json")
    assert r.returncode == 0, r.stderr
    record = json.loads(r.stdout)
    assert record["inverted"] is True and record["format"] == "PNG" and len(record["bbox"]) == 4
    out = Image.open(tmp_path / "x.png")
    assert out.size == (28, 28) and out.mode == "L"
    r = cli("preprocess", root / "digits" / "blank.png")
    assert r.returncode == 1 and "no digit found" in r.stderr and "Traceback" not in r.stderr


def test_predict_a_folder_as_csv_and_jsonl(images, trained_run, tmp_path):
    root, truth, _ = images
    run = trained_run[0].run_dir
    r = cli("predict", run, root / "digits", "--format", "csv", "--out", tmp_path / "out.csv")
    assert r.returncode == 1, r.stderr  # one broken file
    assert "1 of 6 file(s) could not be read" in r.stderr and "Traceback" not in r.stderr
    rows = {row["file"]: row for row in csv.DictReader(open(tmp_path / "out.csv"))}
    assert len(rows) == 6 and "notes.txt" not in "".join(rows)  # recursive, images only
    assert rows[str(root / "digits" / "blank.png")]["no_digit"] == "True"
    assert "cannot decode" in rows[str(root / "digits" / "more" / "broken.png")]["error"]
    for path in truth:
        assert abs(sum(float(rows[path][f"p{d}"]) for d in range(10)) - 1) < 1e-4
    right = sum(int(rows[p]["label"]) == label for p, label in truth.items())
    assert right >= 3, rows

    r = cli("predict", run, *truth, root / "digits" / "blank.png", "--json")
    assert r.returncode == 0, r.stderr  # "no digit found" is an answer, not a failure
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    assert [line["file"] for line in lines] == [*truth, str(root / "digits" / "blank.png")]
    assert lines[-1]["label"] is None and lines[-1]["no_digit"] is True


def test_predict_says_not_sure_below_min_confidence_and_still_guesses(images, trained_run):
    root, truth, _ = images
    run, blank = trained_run[0].run_dir, root / "digits" / "blank.png"
    r = cli("predict", run, *truth, blank, "--json")  # the default level, the same as read's
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    for row in rows[:-1]:
        assert row["uncertain"] is row["not_a_digit"] is (row["probability"] < DEFAULT_MIN_CONFIDENCE)
    assert rows[-1]["not_a_digit"] is True and rows[-1]["uncertain"] is None and rows[-1]["label"] is None

    sure = [row["probability"] for row in rows[:-1]]
    assert max(sure) - min(sure) > 1e-5, sure  # calibrated probabilities of four photographed digits differ
    level = (min(sure) + max(sure)) / 2  # the least sure digit is flagged, the surest is not
    unsure = {row["file"]: row for row in rows[:-1] if row["probability"] < level}
    r = cli("predict", run, *truth, "--min-confidence", repr(level))
    assert r.returncode == 0, r.stderr
    for line, path in zip(r.stdout.splitlines(), truth, strict=True):
        if path in unsure:  # the best guess is still given
            row = unsure[path]
            assert line == f"{path}: not sure — is this a digit? best guess {row['label']} (p={row['probability']:.3f})"
        else:
            assert line.startswith(f"{path}: ") and "not sure" not in line
    r = cli("predict", run, *truth, "--min-confidence", repr(level), "--format", "csv")
    flagged = {row["file"]: row for row in csv.DictReader(r.stdout.splitlines())}
    assert {p for p, row in flagged.items() if row["uncertain"] == "True" == row["not_a_digit"]} == set(unsure)
    assert all(row["label"] != "" for row in flagged.values())

    r = cli("predict", run, *truth, "--min-confidence", "1.5")
    assert r.returncode == 2 and "between 0 and 1" in r.stderr and "Traceback" not in r.stderr


def test_read_a_number(images, trained_run):
    root, _, number = images
    run = trained_run[0].run_dir
    r = cli("read", run, root / "number.png", "--json", "--min-confidence", "0")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert len(result["text"]) == 5 and len(result["digits"]) == 5
    assert sum(a == b for a, b in zip(result["text"], number, strict=True)) >= 4
    assert all(set(d) >= {"box", "label", "confidence", "probabilities"} for d in result["digits"])

    confidences = sorted(d["confidence"] for d in result["digits"])
    level = (confidences[2] + confidences[3]) / 2  # the 3 least sure digits become "?" (unless they tie)
    r = cli("read", run, root / "number.png", "--min-confidence", repr(level))
    expected = "".join("?" if d["confidence"] < level else d["char"] for d in result["digits"])
    assert r.returncode == 0
    if confidences[3] - confidences[2] > 1e-5:
        assert r.stdout.startswith(f"{root / 'number.png'}: {expected}  (confidence per digit: ")
        assert expected.count("?") == 3

    r = cli("read", run, root, "--format", "csv")
    assert r.returncode == 1 and "could not be read" in r.stderr
    rows = list(csv.DictReader(r.stdout.splitlines()))
    assert len(rows) == 7 and {"no digit found", ""} >= {row["text"] for row in rows if row["found"] != "True"}

    r = cli("read", run, root / "number.png", "--min-confidence", "2")
    assert r.returncode == 2 and "between 0 and 1" in r.stderr


def test_calibrate_command(trained_run, mnist_dir, tmp_path):
    run = shutil.copytree(trained_run[0].run_dir, tmp_path / "run")
    r = cli("calibrate", run, "--data-dir", mnist_dir)
    assert r.returncode == 0, r.stderr
    assert "fitted on the validation split (2000 images" in r.stdout
    assert (
        "expected calibration error on the test set (15 bins)" in r.stdout and "after temperature scaling" in r.stdout
    )
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["temperature"] == json.loads((run / "config.json").read_text())["calibration"]["temperature"]

    config = json.loads((run / "config.json").read_text())
    config["train_config"]["val_split"] = "0"
    (run / "config.json").write_text(json.dumps(config))
    r = cli("calibrate", run, "--data-dir", mnist_dir)
    assert r.returncode == 2 and "calibration is not possible" in r.stderr and "Traceback" not in r.stderr
