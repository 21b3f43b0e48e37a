"""The robustness suite (issue 13): its generators do what their names say, and the benchmark runs end to end."""

import importlib.util
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mnist_cnn.corruptions import DIGIT_CORRUPTIONS
from mnist_cnn.not_digits import LETTER_FONTS, NOT_DIGITS, font_path
from mnist_cnn.robustness import CLEAN, SuiteSet, generate, prepare, score_set, score_suite, suite_names

ROOT = Path(__file__).resolve().parents[1]


def _load_benchmark():
    spec = importlib.util.spec_from_file_location("robustness_benchmark", ROOT / "benchmarks" / "robustness.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pixels(source) -> np.ndarray:
    img = Image.open(io.BytesIO(source)) if isinstance(source, bytes) else source
    return np.asarray(img.convert("L"))


@pytest.fixture(scope="module")
def digits(mnist):
    return mnist.test_images.numpy()[:8], mnist.test_labels.numpy()[:8]


def test_the_suite_names_every_corruption_and_kind_of_not_digit():
    for name in ("thin-pen", "thick-marker", "pencil", "slant", "rotation", "low-resolution", "blur", "jpeg-20-40",
                 "noise", "uneven-light", "shadow", "coloured", "ruled-paper", "graph-paper", "form-box",
                 "page-offcentre", "tiny-12px", "huge-1000px"):  # fmt: skip
        assert name in DIGIT_CORRUPTIONS
    crops = [n for n in DIGIT_CORRUPTIONS if n.startswith("crop-")]
    assert len(crops) == 6 and {n.split("-edge")[0] for n in crops} == {"crop-1", "crop-2", "crop-4"}
    kinds = {"blank", "dot", "dash", "cross", "scribble", "letter", "smudge", "two-digits"}
    assert set(NOT_DIGITS) == kinds
    assert suite_names()[0] == CLEAN and len(suite_names()) == 1 + len(DIGIT_CORRUPTIONS) + len(kinds)


@pytest.mark.parametrize("name", suite_names())
def test_each_set_repeats_exactly_for_a_seed_and_changes_with_it(name, digits):
    x = digits[0][:1]
    first, again, other = generate(name, x, seed=3), generate(name, x, seed=3), generate(name, x, seed=4)
    assert len(first) == 1
    for a, b in zip(first, again, strict=True):
        assert np.array_equal(pixels(a), pixels(b))
    if name != CLEAN:  # the clean set is the digit itself
        assert any(pixels(a).shape != pixels(c).shape or not np.array_equal(pixels(a), pixels(c))
                   for a, c in zip(first, other, strict=True))  # fmt: skip


def _edges_touched(ink: np.ndarray) -> set[str]:
    """Which edges of a white-on-black image have ink (a pixel at least half bright) on them."""
    edges = {"top": ink[0], "bottom": ink[-1], "left": ink[:, 0], "right": ink[:, -1]}
    return {side for side, line in edges.items() if line.max() >= 128}


@pytest.mark.parametrize("polarity", ["white-on-black", "black-on-white"])
@pytest.mark.parametrize("edges", [1, 2, 4])
def test_tight_crops_touch_the_edges_they_claim_in_their_polarity_and_size(edges, polarity, digits):
    name = f"crop-{edges}-edge{'s' * (edges > 1)}-{polarity}"
    for source in generate(name, digits[0], seed=0):
        assert isinstance(source, bytes) and source[:8] == b"\x89PNG\r\n\x1a\n"  # saved as a PNG file
        img = pixels(source)
        background = np.bincount(img.ravel(), minlength=256).argmax()
        assert background == (0 if polarity == "white-on-black" else 255)
        ink = img if polarity == "white-on-black" else 255 - img
        touched = _edges_touched(ink)
        if edges == 4:
            assert touched == {"top", "bottom", "left", "right"}
        elif edges == 2:
            assert {"top", "bottom"} <= touched or {"left", "right"} <= touched
            assert img.shape[0] == img.shape[1]
        else:
            assert len(touched) == 1 and img.shape[0] == img.shape[1]
        assert 48 <= max(img.shape) <= 128


def _ink_height(img: np.ndarray) -> int:
    """Rows holding ink darker than halfway between the paper and the darkest pixel."""
    paper = float(np.median(img))
    rows = np.nonzero((img < (paper + img.min()) / 2).any(1))[0]
    return int(rows[-1] - rows[0] + 1)


@pytest.mark.parametrize(("name", "height"), [("tiny-12px", 12), ("huge-1000px", 1000)])
def test_tiny_and_huge_digits_are_that_tall(name, height, digits):
    for source in generate(name, digits[0][:3], seed=0):
        assert abs(_ink_height(pixels(source)) - height) <= max(2, height // 50)


def test_coloured_paper_is_rgb_and_jpeg_is_a_jpeg_file(digits):
    for source in generate("coloured", digits[0][:4], seed=0):
        rgb = np.asarray(source, np.int16)
        assert source.mode == "RGB" and (rgb.max(-1) - rgb.min(-1)).max() > 40  # not grey
    for source in generate("jpeg-20-40", digits[0][:4], seed=0):
        assert source[:3] == b"\xff\xd8\xff"


def test_letters_come_from_serif_fonts_shipped_with_matplotlib_and_are_drawn(digits):
    assert all(font_path(f).is_file() for f in LETTER_FONTS)
    assert not any("Sans" in f for f in LETTER_FONTS)  # sans letters may be in training; these stay held out
    for source in generate("letter", np.repeat(digits[0][:1], 6, 0), seed=0):
        img = pixels(source)
        paper = float(np.median(img))
        marked = np.abs(img.astype(float) - paper) > 60
        assert 0.03 < marked.mean() < 0.6  # a letter, neither blank nor a filled page
        assert _ink_height(img if paper > 128 else 255 - img) > 0.3 * img.shape[0]


def test_blank_pages_hold_no_digit_and_two_digits_hold_two(digits):
    blank = prepare("blank", digits[0][:4], digits[1][:4], seed=0)
    assert not blank.found.any() and blank.labels is None
    for source in generate("two-digits", digits[0][:4], seed=0):
        img = pixels(source)
        assert img.shape[1] > img.shape[0]  # wider than tall: side by side


class FixedClassifier:
    """Answers a frame's top-left pixel value mod 10: sure (0.91) for values below 10, unsure (0.46) above;
    its digit gate says "no digit" for values of 100 and above."""

    def frame_answers(self, frames):
        return self.frame_proba(frames), frames[:, 0, 0] < 100

    def frame_proba(self, frames):
        out = np.zeros((len(frames), 10))
        for i, code in enumerate(frames[:, 0, 0]):
            top = 0.91 if code < 10 else 0.46
            out[i] = (1 - top) / 9
            out[i, code % 10] = top
        return out


def _set(name, codes, found, labels):
    frames = np.zeros((len(codes), 28, 28), np.uint8)
    frames[:, 0, 0] = codes
    return SuiteSet(name, frames, np.array(found), None if labels is None else np.array(labels))


def test_scores_count_no_digit_as_wrong_and_as_refused():
    clf = FixedClassifier()
    # 4 digits: right, wrong, no digit found, right but unsure (still counts as right)
    digit_set = _set("blur", [3, 5, 0, 17], [True, True, False, True], [3, 4, 2, 7])
    row = score_set(clf, digit_set)
    assert row["accuracy"] == 0.5 and row["no_digit"] == 0.25 and row["not_sure"] == 0.25
    assert row["rejected"] == 0.5 and row["accuracy_95ci"][0] < 0.5 < row["accuracy_95ci"][1]
    # 4 not-digits: no digit found, unsure, confident (not refused), unsure
    junk = _set("dot", [0, 10, 4, 12], [False, True, True, True], None)
    assert score_set(clf, junk)["rejected"] == 0.75
    assert score_set(clf, junk, min_confidence=0.2)["rejected"] == 0.25
    # the digit gate refuses a confident answer too, and a digit it refuses still counts as read if right
    gated = _set("dot", [104, 4], [True, True], None)
    assert score_set(clf, gated)["rejected"] == 0.5
    row = score_set(clf, _set("blur", [103, 3], [True, True], [3, 3]))
    assert row["accuracy"] == 1.0 and row["not_sure"] == 0.5

    crop = _set("crop-1-edge-white-on-black", [1, 1], [True, False], [1, 1])
    result = score_suite(clf, [digit_set, crop, junk, _set(CLEAN, [2, 2], [True, True], [2, 2])])
    s = result["summary"]
    assert s["mean_digit_accuracy"] == 0.5 and s["worst"]["corruption"] in ("blur", "crop-1-edge-white-on-black")
    assert s["tight_crops"] == {"white-on-black": 0.5}
    assert s["not_digits_rejected"] == 0.75 and s["clean_accuracy"] == 1.0 and s["clean_rejected"] == 0.0


def test_benchmark_refuses_bad_input_with_status_2(tmp_path, capsys, mnist_dir):
    bench = _load_benchmark()
    for flags in (["--per-corruption", "0"], ["--min-confidence", "1.5"], ["--sets", "nonsense"],
                  ["--json-out", str(tmp_path / "missing" / "out.json")]):  # fmt: skip
        with pytest.raises(SystemExit) as exc:
            bench.main([str(tmp_path), *flags])
        assert exc.value.code == 2
    assert bench.main([str(tmp_path / "nope"), "--data-dir", str(mnist_dir)]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("digits_from", ["test", "validation"])
def test_benchmark_runs_end_to_end_and_prints_every_row(digits_from, trained_run, mnist_dir, tmp_path, capsys):
    bench = _load_benchmark()
    out = tmp_path / "robustness.json"
    run = str(trained_run[0].run_dir)
    argv = [run, "--per-corruption", "3", "--workers", "1", "--digits-from", digits_from, "--json-out", str(out)]
    assert bench.main([*argv, "--data-dir", str(mnist_dir)]) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["digits_from"] == digits_from and result["per_corruption"] == 3
    model = result["models"][0]
    assert set(model["sets"]) == set(suite_names())
    for name in suite_names():
        assert f"| {name} | " in printed
    s = model["summary"]
    assert s["worst"]["corruption"] in DIGIT_CORRUPTIONS and set(s["tight_crops"]) == {
        "white-on-black",
        "black-on-white",
    }
    assert 0 <= s["not_digits_rejected"] <= 1 and 0 <= s["clean_rejected"] <= 1
    assert "mean over the digit corruptions" in printed and "not-digits refused" in printed


@pytest.mark.slow
def test_sets_are_the_same_made_in_one_process_or_several(digits):
    from mnist_cnn.robustness import prepare_suite

    names = ["crop-2-edges-black-on-white", "letter"]
    one = prepare_suite(*digits, seed=0, names=names, workers=1)
    two = prepare_suite(*digits, seed=0, names=names, workers=2)
    for a, b in zip(one, two, strict=True):
        assert a.name == b.name and np.array_equal(a.frames, b.frames) and np.array_equal(a.found, b.found)
