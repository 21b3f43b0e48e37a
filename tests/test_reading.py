"""Reading numbers: segmentation of drawn and photographed strings, broken and touching digits, lines, confidence."""

import numpy as np
import pytest
from PIL import Image, ImageDraw

from mnist_cnn import load_model
from mnist_cnn.preprocess import ImageError, components, decode_image, ink_map
from mnist_cnn.reading import DEFAULT_MIN_CONFIDENCE, SEGMENT, read_digits
from mnist_cnn.synthetic import render_string


@pytest.fixture(scope="module")
def clf(trained_run):
    return load_model(trained_run[0].run_dir)


@pytest.fixture(scope="module")
def sure(clf, mnist):
    """Test digits the model reads right with confidence, by label: keeps these tests about segmentation."""
    images, labels = mnist.test_images[:2000].numpy(), mnist.test_labels[:2000].numpy()
    probs = clf.predict_proba(images)
    ok = (probs.argmax(1) == labels) & (probs.max(1) > 0.9)
    return {d: images[ok & (labels == d)][:5] for d in range(10)}


def _page(glyphs: list[np.ndarray], gaps: list[int], scale: int = 3, margin: int = 40) -> np.ndarray:
    """White-on-black digits, scaled up, side by side (gaps in px at the final scale, negative = overlap), as ink on paper."""
    big = [np.asarray(Image.fromarray(g).resize((28 * scale, 28 * scale), Image.Resampling.BICUBIC)) for g in glyphs]
    crops = [b[:, np.nonzero(b.max(0) > 20)[0][0] : np.nonzero(b.max(0) > 20)[0][-1] + 1] for b in big]
    width = sum(c.shape[1] for c in crops) + sum(gaps) + 2 * margin
    page = np.zeros((28 * scale + 2 * margin, width), np.uint8)
    x = margin
    for c, gap in zip(crops, [0, *gaps], strict=True):
        x += gap
        region = page[margin : margin + c.shape[0], x : x + c.shape[1]]
        np.maximum(region, c, out=region)
        x += c.shape[1]
    return 255 - page


def test_a_drawn_number_reads_left_to_right_with_boxes(clf, sure):
    digits = [3, 0, 7, 1, 9]
    page = _page([sure[d][0] for d in digits], [30, 45, 25, 35])
    reading = read_digits(clf, page)
    assert reading.found and reading.text == "30719"
    lefts = [d.box[0] for d in reading.digits]
    assert lefts == sorted(lefts) and all(d.box[2] > d.box[0] and d.box[3] > d.box[1] for d in reading.digits)
    assert all(0 <= d.box[0] and d.box[2] <= page.shape[1] for d in reading.digits)
    assert all(d.array.shape == (28, 28) and len(d.probabilities) == 10 for d in reading.digits)
    assert reading.to_dict()["digits"][0]["char"] == "3"


def test_a_broken_stroke_is_one_digit(clf, sure):
    seven = sure[7][0].copy()
    rows = np.nonzero(seven.max(1))[0]
    cut = (rows[0] + rows[-1]) // 2
    seven[cut : cut + 2] = 0  # a gap across the whole digit: two pieces
    page = _page([sure[4][0], seven, sure[2][0]], [40, 40])
    reading = read_digits(clf, page)
    assert len(reading.digits) == 3 and reading.text[0] == "4" and reading.text[2] == "2"


def test_touching_digits_are_split(clf, sure):
    page = _page([sure[0][1], sure[8][1], sure[5][1]], [-6, 40])  # 0 and 8 overlap by 6 px
    reading = read_digits(clf, page)
    assert len(reading.digits) == 3
    assert reading.text.endswith("5")


def _touching(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, float]:
    """The two digits moved together until their strokes touch (one connected blot), and the blot's width / height."""
    for overlap in range(0, 40, 2):
        page = _page([a, b], [-overlap])
        grey, record = decode_image(page)
        ink = ink_map(grey, record)
        if components(ink)[1] == 1:
            rows, cols = np.nonzero(ink.max(1) > 0.35)[0], np.nonzero(ink.max(0) > 0.35)[0]
            return page, (cols[-1] - cols[0]) / (rows[-1] - rows[0])
    raise AssertionError("the digits never touched")


def test_touching_pairs_are_read_as_two_digits(clf, sure):
    """Two MNIST digits whose strokes touch: two digits, the right ones, when the blot is wider than tall.

    (A blot narrower than that, such as a 1 leaning on a 9, is read as one digit: see SegmentParams.wide.)
    """
    pairs = [(0, 8), (2, 3), (4, 5), (5, 0), (3, 5), (7, 2), (9, 4), (8, 6), (6, 7), (1, 9)]
    texts = {}
    for a, b in pairs:
        page, ratio = _touching(sure[a][1], sure[b][1])
        if ratio > 1.1:
            texts[f"{a}{b}"] = read_digits(clf, page, min_confidence=0).text
    assert len(texts) >= 6, texts
    assert all(len(t) == 2 for t in texts.values()), texts
    assert sum(t == truth for truth, t in texts.items()) >= len(texts) - 1, texts


def test_a_wide_blot_no_grouping_can_read_is_kept_whole_not_lost(clf, sure, monkeypatch):
    """Cutting relabels a piece's pixels; when no grouping of the parts reads as digits, the piece is still there."""
    page, ratio = _touching(sure[0][1], sure[8][1])
    assert ratio > SEGMENT.wide
    monkeypatch.setattr("mnist_cnn.segmentation._best_grouping", lambda *args, **kwargs: {})
    reading = read_digits(clf, page, min_confidence=0)
    assert len(reading.digits) == 1 and reading.digits[0].box[2] - reading.digits[0].box[0] > 60


@pytest.mark.parametrize("direction", ["across", "diagonal"])
def test_a_broken_8_is_one_digit(clf, sure, direction):
    """A thin 8 broken in two (across its waist, or diagonally through it) is one digit, not two."""
    eight = sure[8][0].copy()
    rows = np.nonzero(eight.max(1) > 60)[0]
    waist = rows[0] + int(np.argmin((eight[rows[0] : rows[-1] + 1] > 60).sum(1)[3:-3])) + 3
    if direction == "across":
        eight[waist - 1 : waist + 1] = 0
    else:
        yy, xx = np.mgrid[0:28, 0:28]
        eight[np.abs((yy - waist) + 0.7 * (xx - 14)) < 1.2] = 0
    grey, record = decode_image(_page([eight], []))
    assert components(ink_map(grey, record))[1] >= 2  # really broken
    reading = read_digits(clf, _page([sure[4][0], eight, sure[2][0]], [40, 40]), min_confidence=0)
    assert len(reading.digits) == 3 and reading.text[0] == "4" and reading.text[2] == "2", reading.text
    # The middle digit is the whole 8, both pieces (which digit the small test model then sees in a
    # broken 8 is its business: the deep model reads 8).
    _, top, _, bottom = reading.digits[1].box
    assert bottom - top >= 0.8 * 3 * (rows[-1] - rows[0] + 1), (reading.digits[1].box, rows)


def _drawn(shapes: list[tuple], size: tuple[int, int] = (200, 130)) -> np.ndarray:
    """Black pen strokes on white paper: ("line", points, width), ("ellipse" or "arc", box, width)."""
    img = Image.new("L", size, 255)
    draw = ImageDraw.Draw(img)
    for kind, where, width in shapes:
        if kind == "line":
            draw.line(where, fill=0, width=width)
        elif kind == "arc":  # clockwise from upper left (220 degrees) to lower left (150 degrees)
            draw.arc(where, 220, 150, fill=0, width=width)
        else:
            draw.ellipse(where, outline=0, width=width)
    return np.asarray(img)


def test_a_fragment_joins_the_digit_it_lies_over_not_a_touching_neighbour(clf):
    """A 9 whose loop is broken off its stem, 3 px right of a 1: the loop joins its stem (below it), not the 1."""
    page = _drawn([
        ("line", [(44, 20), (44, 100)], 8),  # the 1: x 40-48
        ("ellipse", [(51, 20), (84, 50)], 6),  # the loop, nearly touching the 1
        ("line", [(80, 58), (76, 100)], 6),  # the stem, under the loop's right side
    ])  # fmt: skip
    grey, record = decode_image(page)
    assert components(ink_map(grey, record))[1] == 3  # three separate strokes
    reading = read_digits(clf, page, min_confidence=0)
    assert len(reading.digits) == 2, reading.text
    one, nine = (d.box for d in reading.digits)
    assert one[2] <= 50 and nine[0] <= 53 and nine[1] <= 22 and nine[3] >= 98, (one, nine)


def test_a_5_broken_into_bar_and_bowl_stays_on_its_line(clf):
    """A 5 whose bar is a separate stroke above a bowl reaching further left, then two 1s set a little higher:
    one line of three digits, the 5 spanning bar and bowl (the bar must not start a line of its own)."""
    page = _drawn([
        ("line", [(60, 22), (95, 22)], 6),  # the bar, apart from the rest
        ("line", [(62, 34), (58, 60)], 6),  # the stem
        ("arc", [(42, 52), (94, 102)], 6),  # the bowl, from its upper left round to its lower left
        ("line", [(130, 15), (128, 95)], 7),
        ("line", [(170, 15), (168, 95)], 7),
    ])  # fmt: skip
    reading = read_digits(clf, page, min_confidence=0)
    assert len(reading.lines) == 1 and len(reading.digits) == 3, reading.text
    _, top, _, bottom = reading.digits[0].box
    assert top <= 21 and bottom >= 99, reading.digits[0].box


def test_a_thin_stroke_broken_into_bits_stays_with_its_digit(clf):
    """A 9 whose thin tail came out as a dotted line (bits as small as specks), beside a bold 0: the 9 keeps its tail."""
    dashes = [("line", [(124 - 0.08 * (y - 40), y), (124 - 0.08 * (y - 35), y + 5)], 3) for y in range(48, 100, 8)]
    page = _drawn([("ellipse", [(20, 20), (70, 100)], 9), ("ellipse", [(90, 20), (125, 52)], 5), *dashes])
    grey, record = decode_image(page)
    assert components(ink_map(grey, record))[1] >= 6  # the tail is in bits
    reading = read_digits(clf, page, min_confidence=0)
    assert len(reading.digits) == 2, reading.text
    assert reading.digits[1].box[3] >= 100, reading.digits[1].box


def test_two_lines(clf, sure):
    top = _page([sure[d][2] for d in (1, 2, 3)], [40, 40])
    bottom = _page([sure[d][2] for d in (4, 6)], [40])
    page = np.full((top.shape[0] + bottom.shape[0], max(top.shape[1], bottom.shape[1])), 255, np.uint8)
    page[: top.shape[0], : top.shape[1]] = top
    page[top.shape[0] :, : bottom.shape[1]] = bottom
    reading = read_digits(clf, page)
    assert reading.lines == ["123", "46"] and reading.text == "123\n46"
    assert {d.line for d in reading.digits} == {0, 1}


def test_photographed_strings_are_segmented(clf, mnist):
    """Rendered photos of 3-8 test digits: the right number of digits almost always, and mostly the right ones."""
    rng = np.random.default_rng(5)
    images, labels = mnist.test_images.numpy(), mnist.test_labels.numpy()
    count_right = digits_right = digits_total = 0
    for _ in range(24):
        idx = rng.integers(0, len(images), int(rng.integers(3, 9)))
        reading = read_digits(clf, render_string(images[idx], rng), min_confidence=0)
        got = [d.label for d in reading.digits]
        if len(got) == len(idx):
            count_right += 1
            digits_right += sum(int(a == b) for a, b in zip(got, labels[idx], strict=True))
            digits_total += len(idx)
    assert count_right >= 21, count_right
    assert digits_right / digits_total >= 0.9, digits_right / digits_total


def test_uncertain_digits_are_question_marks(clf, sure):
    page = _page([sure[2][3], sure[5][3]], [40])
    plain = read_digits(clf, page, min_confidence=0)
    assert plain.text == "25" and not any(d.uncertain for d in plain.digits)
    # A threshold above each digit's probability marks it, and only it (float32 may round a sure digit to 1.0).
    for threshold in sorted({d.confidence for d in plain.digits} | {0.5}):
        level = min(1.0, threshold + 1e-6)
        doubtful = read_digits(clf, page, min_confidence=level)
        expected = "".join("?" if d.confidence < level else d.char for d in plain.digits)
        assert doubtful.text == expected
        assert [d.label for d in doubtful.digits] == [2, 5]  # the best guess is still there
    with pytest.raises(ValueError, match="between 0 and 1"):
        read_digits(clf, page, min_confidence=1.5)


def test_no_ink_is_no_digit_and_bad_input_raises(clf, tmp_path):
    blank = read_digits(clf, np.full((200, 600), 240, np.uint8))
    assert not blank.found and blank.text == "" and blank.digits == []
    (tmp_path / "x.png").write_text("not an image")
    with pytest.raises(ImageError, match="not an image"):
        read_digits(clf, tmp_path / "x.png")


def test_the_cli_library_and_service_share_one_default_threshold():
    import inspect

    from mnist_cnn import cli
    from mnist_cnn.serve import Settings

    assert inspect.signature(read_digits).parameters["min_confidence"].default == DEFAULT_MIN_CONFIDENCE
    assert cli.build_parser().parse_args(["read", "run", "x.png"]).min_confidence == DEFAULT_MIN_CONFIDENCE
    assert Settings().min_confidence == DEFAULT_MIN_CONFIDENCE


def test_the_speck_thresholds_are_segment_params():
    """A 4-pixel speck far from a digit-sized blob is dropped by default, and kept when SegmentParams says so."""
    from dataclasses import replace

    from mnist_cnn.segmentation import _pieces

    ink = np.zeros((60, 100), np.float32)
    ink[10:50, 10:30] = 1.0  # the digit: 800 units of ink
    ink[30:32, 60:62] = 1.0  # the speck: 4
    kept, _ = _pieces(ink, SEGMENT)
    assert [(p.x0, p.x1) for p in kept] == [(8, 32)]  # with the faint edge: edge_px around the ink
    kept, _ = _pieces(ink, replace(SEGMENT, speck_mass=0.001, small_mass=0.0))
    assert [(p.x0, p.x1) for p in sorted(kept, key=lambda p: p.x0)] == [(8, 32), (58, 64)]
