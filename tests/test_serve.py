"""The REST service through its app factory: every endpoint, limit and error code; same answers as load_model."""

import io
import json
import logging
import re
import threading
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from mnist_cnn import load_model
from mnist_cnn.config import DEFAULT_MIN_CONFIDENCE
from mnist_cnn.preprocess import load_image
from mnist_cnn.serve import Settings, create_app


def _ready(client: TestClient) -> TestClient:
    for _ in range(400):
        if client.get("/readyz").status_code == 200:
            return client
        time.sleep(0.025)
    raise AssertionError(f"not ready: {client.get('/readyz').json()}")


@pytest.fixture(scope="module", params=["onnxruntime", "torch"])
def client(request, exported_run):
    with TestClient(create_app(exported_run, Settings(runtime=request.param))) as c:
        yield _ready(c)


@pytest.fixture(scope="module")
def strict(exported_run):
    """Small limits, to test them with small requests."""
    settings = Settings(max_body_bytes=4096, max_image_pixels=10_000, image_formats="PNG,JPEG")
    with TestClient(create_app(exported_run, settings)) as c:
        yield _ready(c)


def png(array: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, fmt)
    return buf.getvalue()


def test_json_pixels_give_exactly_what_load_model_gives(client, exported_run, mnist):
    runtime = client.app.state.service.settings.runtime
    clf = load_model(exported_run, runtime=runtime)
    images = mnist.test_images[:24].numpy()
    expected = clf.predict_proba(images)
    for i, image in enumerate(images):
        layout = image.tolist() if i % 2 else image.ravel().tolist()  # 28x28 nested, or 784 flat
        r = client.post("/v1/predict", json={"pixels": layout})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["label"] == int(clf.predict(image)[0]) == int(expected[i].argmax())
        np.testing.assert_allclose(body["probabilities"], expected[i], atol=1e-6)
        assert body["confidence"] == pytest.approx(max(body["probabilities"]))
        assert body["confident"] == (body["confidence"] >= DEFAULT_MIN_CONFIDENCE)
        assert np.array_equal(np.array(body["input"], np.uint8), image)


def test_predict_flags_an_unsure_answer_and_still_gives_the_best_guess(client, exported_run, mnist):
    clf = load_model(exported_run, runtime=client.app.state.service.settings.runtime)
    images = mnist.test_images[:200].numpy()
    confidences = clf.predict_proba(images).max(1)
    sure, unsure = int(confidences.argmax()), int(confidences.argmin())
    level = float(confidences[unsure] + confidences[sure]) / 2  # one answer below it, the other above
    assert confidences[unsure] < level < confidences[sure], confidences
    for i, flagged in ((unsure, True), (sure, False)):
        in_body = {"pixels": images[i].tolist(), "min_confidence": level}
        in_query = {"json": {"pixels": images[i].tolist()}, "params": {"min_confidence": str(level)}}
        for body in (client.post("/v1/predict", json=in_body).json(), client.post("/v1/predict", **in_query).json()):
            assert body["uncertain"] is body["not_a_digit"] is flagged and body["confident"] is not flagged, body
            assert body["min_confidence"] == level and body["label"] == int(clf.predict(images[i])[0])
    # In the form of an upload (which goes through the preprocessing, so its confidence is its own).
    upload = {"image": ("d.png", png(images[unsure]), "image/png")}
    body = client.post("/v1/predict", files=upload, data={"min_confidence": str(level)}).json()
    assert body["min_confidence"] == level and body["not_a_digit"] is (body["confidence"] < level)
    # Without min_confidence, the service's threshold (--min-confidence) decides.
    body = client.post("/v1/predict", json={"pixels": images[unsure].tolist()}).json()
    assert body["min_confidence"] == DEFAULT_MIN_CONFIDENCE
    assert body["not_a_digit"] is body["uncertain"] is (body["confidence"] < DEFAULT_MIN_CONFIDENCE)


@pytest.mark.parametrize("value", ["abc", 1.5, -0.1, True, [0.5], "nan"])
def test_predict_refuses_a_malformed_min_confidence(client, value):
    pixels = [0] * 784
    r = client.post("/v1/predict", json={"pixels": pixels, "min_confidence": value})
    assert r.status_code == 422 and r.json()["field"] == "min_confidence", r.text
    if not isinstance(value, list | bool):
        r = client.post("/v1/predict", json={"pixels": pixels}, params={"min_confidence": str(value)})
        assert r.status_code == 422 and r.json()["field"] == "min_confidence", r.text
    r = client.post("/v1/predict", json={"pixels": pixels, "min_confidence": 0.5}, params={"min_confidence": "0.5"})
    assert r.status_code == 422 and "sent twice" in r.json()["detail"]


def test_values_in_0_1_and_an_explicit_scale(client, exported_run, mnist):
    clf = load_model(exported_run, runtime=client.app.state.service.settings.runtime)
    image = mnist.test_images[3].numpy()
    scaled = (image / 255.0).tolist()
    expected = clf.predict_proba(image / 255.0)[0]
    for body in ({"pixels": scaled}, {"pixels": scaled, "scale": 1}):
        r = client.post("/v1/predict", json=body)
        np.testing.assert_allclose(r.json()["probabilities"], expected, atol=1e-6)
    # A nearly blank 0-255 image with values 0 and 1 only: scale=255 says how to read it.
    faint = {"pixels": [0, 1] * 392, "scale": 255}
    r = client.post("/v1/predict", json=faint)
    assert r.status_code == 200 and max(max(row) for row in r.json()["input"]) == 1


def test_an_uploaded_image_goes_through_the_package_preprocessing(client, exported_run, mnist, tmp_path):
    clf = load_model(exported_run, runtime=client.app.state.service.settings.runtime)
    for i in range(4):
        scan = np.kron(255 - mnist.test_images[i].numpy(), np.ones((4, 4), np.uint8))  # 112x112, dark on light
        path = tmp_path / f"{i}.png"
        path.write_bytes(png(scan))
        expected = clf.predict_proba(load_image(path))[0]
        r = client.post("/v1/predict", files={"image": ("digit.png", path.read_bytes(), "image/png")})
        assert r.status_code == 200, r.text
        assert r.json()["label"] == int(expected.argmax()) == int(mnist.test_labels[i])
        np.testing.assert_allclose(r.json()["probabilities"], expected, atol=1e-6)
        assert np.array_equal(np.array(r.json()["input"], np.uint8), load_image(path))


@pytest.mark.parametrize("body,status,field,message", [
    (b"{", 422, "body", "not valid JSON"),
    (b"[1, 2]", 422, "body", "must be a JSON object"),
    (b"{}", 422, "pixels", "pixels is required"),
    (b'{"pixels": [], "colour": 1}', 422, "colour", "unknown field 'colour'"),
    (b'{"pixels": "abc"}', 422, "pixels", "got a string"),
    (json.dumps({"pixels": [0] * 783}).encode(), 422, "pixels", "got a list of 783"),
    (json.dumps({"pixels": [[0] * 28] * 27 + [[0] * 27]}).encode(), 422, "pixels[27]", "must hold 28 numbers; got 27"),
    (json.dumps({"pixels": [0] * 100 + ["7"] + [0] * 683}).encode(), 422, "pixels[100]", "must be a number; got a string"),  # fmt: skip
    (json.dumps({"pixels": [0] * 5 + [True] + [0] * 778}).encode(), 422, "pixels[5]", "got a boolean"),
    (json.dumps({"pixels": [None] * 784}).encode(), 422, "pixels[0]", "got null"),
    (json.dumps({"pixels": [[0] * 28] * 3 + [[0] * 27 + [-1]] + [[0] * 28] * 24}).encode(), 422, "pixels[3][27]", "must not be negative"),  # fmt: skip
    (json.dumps({"pixels": [0] * 783 + [256]}).encode(), 422, "pixels[783]", "at most 255"),
    (json.dumps({"pixels": [0] * 783 + [1.5], "scale": 1}).encode(), 422, "pixels[783]", "at most 1"),
    (json.dumps({"pixels": [0] * 784, "scale": 100}).encode(), 422, "scale", "must be 255"),
    (b'{"pixels": [1e400]}', 422, "body", "not valid JSON"),
])  # fmt: skip
def test_malformed_or_out_of_range_json_is_a_422_naming_the_field(client, body, status, field, message):
    r = client.post("/v1/predict", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status
    assert r.json()["field"] == field and message in r.json()["detail"]


def test_body_larger_than_the_limit_is_a_413(strict):
    big = json.dumps({"pixels": [255.0] * 784}).encode()  # ~4.7 KB > 4,096
    r = strict.post("/v1/predict", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "larger than the limit of 4,096 bytes" in r.json()["detail"]

    def chunks():  # no Content-Length: the limit is enforced while reading
        for _ in range(10):
            yield b" " * 1000

    r = strict.post("/v1/predict", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    r = strict.post("/v1/predict", json={"pixels": [0] * 784})  # small enough: still works
    assert r.status_code == 200


def test_default_body_limit_is_one_mib(client):
    r = client.post("/v1/predict", content=b" " * (1 << 20), headers={"content-type": "application/json"})
    assert r.status_code == 422  # exactly 1 MiB is allowed (and is not JSON)
    r = client.post("/v1/predict", content=b" " * ((1 << 20) + 1), headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_image_limits_formats_and_broken_files(strict):
    one = np.zeros((50, 50), np.uint8)
    one[10:40, 22:27] = 255  # a stroke: a digit to read
    ok = strict.post("/v1/predict", files={"image": ("a.png", png(one), "image/png")})
    assert ok.status_code == 200
    r = strict.post("/v1/predict", files={"image": ("a.png", png(np.zeros((50, 50), np.uint8)), "image/png")})
    assert r.status_code == 422 and "no digit found" in r.json()["detail"]  # a blank page is not guessed
    r = strict.post("/v1/predict", files={"image": ("a.png", png(np.zeros((101, 100), np.uint8)), "image/png")})
    assert r.status_code == 413 and "100x101 pixels" in r.json()["detail"] and "10,000" in r.json()["detail"]
    r = strict.post("/v1/predict", files={"image": ("a.bmp", png(np.zeros((20, 20), np.uint8), "BMP"), "image/bmp")})
    assert r.status_code == 415 and "BMP is not accepted" in r.json()["detail"]
    r = strict.post("/v1/predict", files={"image": ("a.txt", b"hello, not an image", "text/plain")})
    assert r.status_code == 415 and r.json()["field"] == "image"
    truncated = png(np.random.default_rng(0).integers(0, 255, (60, 60), dtype=np.uint8))[:300]
    r = strict.post("/v1/predict", files={"image": ("a.png", truncated, "image/png")})
    assert r.status_code == 422 and "cannot be decoded" in r.json()["detail"]
    r = strict.post("/v1/predict", files={"image": ("a.png", b"", "image/png")})
    assert r.status_code == 422 and "empty" in r.json()["detail"]
    r = strict.post("/v1/predict", files={"photo": ("a.png", b"x", "image/png")})
    assert r.status_code == 422 and "field named 'image'" in r.json()["detail"] and "'photo'" in r.json()["detail"]
    r = strict.post(
        "/v1/predict", content=b"--x\r\nbroken", headers={"content-type": "multipart/form-data; boundary=x"}
    )
    assert r.status_code == 422 and r.json()["field"] in ("body", "image")


def test_content_types_outside_the_allow_list_are_a_415(client):
    for ctype in ("text/plain", "application/xml", "image/png", ""):
        r = client.post("/v1/predict", content=b"123", headers={"content-type": ctype})
        assert r.status_code == 415 and "application/json or multipart/form-data" in r.json()["detail"]


def test_queue_full_is_a_503_with_retry_after_and_others_still_succeed(exported_run, mnist):
    settings = Settings(runtime="torch", max_queue=1, retry_after_s=2)
    release = threading.Event()
    with TestClient(create_app(exported_run, settings)) as c:
        _ready(c)
        service = c.app.state.service
        real = service.batcher._predict

        def slow(batch):
            release.wait(10)
            return real(batch)

        service.batcher._predict = slow
        results = {}
        body = {"pixels": mnist.test_images[0].numpy().tolist()}

        def send(key):
            results[key] = c.post("/v1/predict", json=body)

        first = threading.Thread(target=send, args=("first",))
        first.start()
        time.sleep(0.3)  # taken by the worker, which now waits
        second = threading.Thread(target=send, args=("second",))
        second.start()
        time.sleep(0.3)  # waiting in the queue: the queue is full
        third = c.post("/v1/predict", json=body)
        assert third.status_code == 503 and third.headers["retry-after"] == "2"
        assert "retry" in third.json()["detail"]
        release.set()
        first.join(10)
        second.join(10)
        assert results["first"].status_code == results["second"].status_code == 200
        assert results["first"].json()["label"] == int(mnist.test_labels[0])


def test_readyz_is_503_until_the_model_is_loaded(exported_run, mnist, monkeypatch):
    from mnist_cnn.serve import Service

    gate = threading.Event()
    real = Service._load

    def slow_load(self):
        gate.wait(10)
        return real(self)

    monkeypatch.setattr(Service, "_load", slow_load)
    with TestClient(create_app(exported_run, Settings(retry_after_s=3))) as c:
        assert c.get("/healthz").json() == {"status": "ok"}
        r = c.get("/readyz")
        assert r.status_code == 503 and r.headers["retry-after"] == "3"
        r = c.post("/v1/predict", json={"pixels": [0] * 784})
        assert r.status_code == 503 and "loading" in r.json()["detail"]
        r = c.post("/v1/read", files={"image": ("a.png", png(np.zeros((20, 60), np.uint8)), "image/png")})
        assert r.status_code == 503 and r.headers["retry-after"] == "3" and "loading" in r.json()["detail"]
        gate.set()
        _ready(c)
        assert c.post("/v1/predict", json={"pixels": [0] * 784}).status_code == 200


def test_a_model_that_cannot_load_keeps_readyz_at_503_with_the_reason(exported_run, tmp_path):
    import shutil

    folder = tmp_path / "m"
    shutil.copytree(exported_run, folder)
    (folder / "model.onnx").unlink()
    with TestClient(create_app(folder, Settings(runtime="onnxruntime"))) as c:
        for _ in range(200):
            r = c.get("/readyz")
            if "could not be loaded" in r.text:
                break
            time.sleep(0.025)
        assert r.status_code == 503 and "no model.onnx" in r.json()["detail"]
        assert c.get("/healthz").status_code == 200


def test_model_info(client, exported_run):
    info = client.get("/v1/model").json()
    config = json.loads((exported_run / "config.json").read_text())
    assert info["architecture"] == "basic" and info["parameters"] == 225_034
    assert info["metrics"]["test_accuracy"] == config["metrics"]["test_accuracy"]
    assert info["runtime"] == client.app.state.service.settings.runtime
    assert info["versions"]["serving"]["mnist_cnn"] and info["versions"]["torch"]
    assert info["limits"]["max_body_bytes"] == 1 << 20 and "PNG" in info["limits"]["image_formats"]
    assert info["onnx"]["verified"]["max_abs_logit_diff"] <= 1e-4


@pytest.fixture(scope="module")
def sure(exported_run, mnist):
    """Test digits the model reads right with probability > 0.9, by label: keeps the /v1/read tests about the wiring."""
    clf = load_model(exported_run)
    images, labels = mnist.test_images[:2000].numpy(), mnist.test_labels[:2000].numpy()
    probs = clf.predict_proba(images)
    ok = (probs.argmax(1) == labels) & (probs.max(1) > 0.9)
    return {d: images[ok & (labels == d)][:3] for d in range(10)}


def number_page(glyphs: list[np.ndarray], gap: int = 40, scale: int = 3, margin: int = 40) -> np.ndarray:
    """MNIST digits scaled up and written left to right as dark ink on white paper, ``gap`` px apart."""
    big = [np.asarray(Image.fromarray(g).resize((28 * scale, 28 * scale), Image.Resampling.BICUBIC)) for g in glyphs]
    crops = [b[:, np.nonzero(b.max(0) > 20)[0][0] : np.nonzero(b.max(0) > 20)[0][-1] + 1] for b in big]
    page = np.zeros((28 * scale + 2 * margin, sum(c.shape[1] for c in crops) + gap * (len(crops) - 1) + 2 * margin), np.uint8)  # fmt: skip
    x = margin
    for c in crops:
        page[margin : margin + c.shape[0], x : x + c.shape[1]] = c
        x += c.shape[1] + gap
    return 255 - page


def test_read_gives_the_number_with_boxes_left_to_right(client, exported_run, sure):
    from mnist_cnn.reading import read_digits

    digits = [4, 0, 7, 1, 9, 2]
    page = number_page([sure[d][0] for d in digits])
    r = client.post("/v1/read", files={"image": ("number.png", png(page), "image/png")})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["found"] is True and body["text"] == "407192" and body["lines"] == ["407192"]
    assert "detail" not in body and body["min_confidence"] == DEFAULT_MIN_CONFIDENCE  # the service's --min-confidence
    got = body["digits"]
    assert [d["label"] for d in got] == digits and [d["char"] for d in got] == [str(d) for d in digits]
    boxes = [d["box"] for d in got]
    assert all(0 <= x0 < x1 <= page.shape[1] and 0 <= y0 < y1 <= page.shape[0] for x0, y0, x1, y1 in boxes)
    assert all(a[2] <= b[0] for a, b in zip(boxes[:-1], boxes[1:], strict=True)), (
        boxes
    )  # left to right, not overlapping
    assert all(d["confidence"] > DEFAULT_MIN_CONFIDENCE and not d["uncertain"] and d["line"] == 0 for d in got)
    assert all(len(d["probabilities"]) == 10 and d["confidence"] == pytest.approx(max(d["probabilities"])) for d in got)  # fmt: skip
    # The same answer as the library on the same file, with the runtime the service runs.
    clf = load_model(exported_run, runtime=client.app.state.service.settings.runtime)
    expected = read_digits(clf, png(page), min_confidence=DEFAULT_MIN_CONFIDENCE)
    assert [d["box"] for d in got] == [list(d.box) for d in expected.digits]
    np.testing.assert_allclose([d["confidence"] for d in got], [d.confidence for d in expected.digits], atol=1e-5)


def test_read_a_photographed_string_as_the_library_does(client, exported_run, mnist):
    """A rendered photo (JPEG, uneven light, noise) of 5 test digits: the service answers what read_digits answers."""
    from mnist_cnn.reading import read_digits
    from mnist_cnn.synthetic import render_string

    rng = np.random.default_rng(3)
    buf = io.BytesIO()
    render_string(mnist.test_images[20:25].numpy(), rng).save(buf, "JPEG", quality=95)
    clf = load_model(exported_run, runtime=client.app.state.service.settings.runtime)
    expected = read_digits(clf, buf.getvalue(), min_confidence=0.5).to_dict()
    r = client.post("/v1/read", files={"image": ("photo.jpg", buf.getvalue(), "image/jpeg")}, data={"min_confidence": "0.5"})  # fmt: skip
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["text"] == expected["text"] and len(body["digits"]) == len(expected["digits"]) == 5
    assert [d["box"] for d in body["digits"]] == [d["box"] for d in expected["digits"]]
    assert [d["char"] for d in body["digits"]] == [d["char"] for d in expected["digits"]]


def test_read_min_confidence_from_the_form_or_the_query(client, sure):
    data = png(number_page([sure[d][1] for d in (2, 5, 8)]))
    upload = {"image": ("n.png", data, "image/png")}
    plain = client.post("/v1/read", files=upload, data={"min_confidence": "0"}).json()
    assert plain["text"] == "258" and plain["min_confidence"] == 0
    confidences = [d["confidence"] for d in plain["digits"]]
    low, middle = sorted(confidences)[:2]
    assert middle - low > 1e-5, confidences  # (rounded to 6 decimals in the answer)
    level = (low + middle) / 2  # the least sure digit is below it, the others are not
    expected = "".join("?" if c < level else d["char"] for c, d in zip(confidences, plain["digits"], strict=True))
    assert expected.count("?") == 1
    for kwargs in ({"data": {"min_confidence": str(level)}}, {"params": {"min_confidence": str(level)}}):
        body = client.post("/v1/read", files=upload, **kwargs).json()
        assert body["text"] == expected and body["min_confidence"] == level
        assert [d["label"] for d in body["digits"]] == [2, 5, 8]  # the best guess is still there
        assert [d["uncertain"] for d in body["digits"]] == [c == "?" for c in expected]
    for bad in ("abc", "1.5", "-0.1", "nan", "inf"):
        r = client.post("/v1/read", files=upload, data={"min_confidence": bad})
        assert r.status_code == 422 and r.json()["field"] == "min_confidence", (bad, r.text)
        r = client.post("/v1/read", files=upload, params={"min_confidence": bad})
        assert r.status_code == 422 and r.json()["field"] == "min_confidence", (bad, r.text)
    r = client.post("/v1/read", files=upload, data={"min_confidence": "0.5"}, params={"min_confidence": "0.5"})
    assert r.status_code == 422 and "sent twice" in r.json()["detail"]


def test_read_an_image_without_ink_is_no_digit_found(client):
    for blank in (np.full((120, 400), 235, np.uint8), np.zeros((60, 60), np.uint8)):
        r = client.post("/v1/read", files={"image": ("blank.png", png(blank), "image/png")})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["found"] is False and body["text"] == "" and body["lines"] == [] and body["digits"] == []
        assert body["detail"] == "no digit found in the image"


def test_read_refuses_bad_uploads_with_client_errors(strict):
    def read(image=None, **kwargs):
        files = {"image": image} if image is not None else kwargs.pop("files")
        return strict.post("/v1/read", files=files, **kwargs)

    r = read(("a.png", png(np.zeros((101, 100), np.uint8)), "image/png"))
    assert r.status_code == 413 and "100x101 pixels" in r.json()["detail"] and r.json()["field"] == "image"
    big = png(np.random.default_rng(1).integers(0, 255, (90, 90), dtype=np.uint8))  # ~8 KB > 4,096 bytes
    r = read(("a.png", big, "image/png"))
    assert r.status_code == 413 and "larger than the limit of 4,096 bytes" in r.json()["detail"]
    r = read(("a.bmp", png(np.zeros((20, 20), np.uint8), "BMP"), "image/bmp"))
    assert r.status_code == 415 and "BMP is not accepted" in r.json()["detail"]
    r = read(("a.txt", b"hello, not an image", "text/plain"))
    assert r.status_code == 415 and r.json()["field"] == "image"
    truncated = png(np.random.default_rng(0).integers(0, 255, (60, 60), dtype=np.uint8))[:300]
    r = read(("a.png", truncated, "image/png"))
    assert r.status_code == 422 and r.json()["field"] == "image" and "decod" in r.json()["detail"]
    r = read(("a.png", b"", "image/png"))
    assert r.status_code == 422 and "empty" in r.json()["detail"]
    r = read(files={"photo": ("a.png", b"x", "image/png")})
    assert r.status_code == 422 and "field named 'image'" in r.json()["detail"]
    r = strict.post("/v1/read", content=b"--x\r\nbroken", headers={"content-type": "multipart/form-data; boundary=x"})  # fmt: skip
    assert r.status_code == 422
    for ctype, content in (("application/json", b'{"pixels": [0]}'), ("image/png", png(np.zeros((9, 9), np.uint8))), ("", b"1")):  # fmt: skip
        r = strict.post("/v1/read", content=content, headers={"content-type": ctype})
        assert r.status_code == 415 and "multipart/form-data" in r.json()["detail"], r.text
    r = strict.get("/v1/read")
    assert r.status_code == 405


def test_openapi_docs_and_the_page(client):
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/v1/predict"]["post"]["requestBody"]["content"]
    assert set(body) == {"application/json", "multipart/form-data"}
    assert set(body["multipart/form-data"]["schema"]["properties"]) == {"image", "min_confidence"}
    answer = spec["components"]["schemas"]["Prediction"]["properties"]
    assert {"label", "confidence", "uncertain", "not_a_digit", "min_confidence"} <= set(answer)
    assert {"413", "415", "422", "503"} <= set(spec["paths"]["/v1/predict"]["post"]["responses"])
    assert {"/healthz", "/readyz", "/v1/model", "/v1/read"} <= set(spec["paths"])
    read = spec["paths"]["/v1/read"]["post"]
    assert set(read["requestBody"]["content"]) == {"multipart/form-data"}
    assert set(read["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]) == {"image", "min_confidence"}  # fmt: skip
    assert {"200", "413", "415", "422", "503"} <= set(read["responses"]) and "501" not in read["responses"]
    assert "/v1/read" in spec["info"]["description"]
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<canvas id="pad"' in page.text
    files = (("app.js", "text/javascript"), ("pad.js", "text/javascript"), ("style.css", "text/css"), ("favicon.svg", "image/svg+xml"))  # fmt: skip
    for name, ctype in files:
        r = client.get(f"/static/{name}")
        assert r.status_code == 200 and r.headers["content-type"].startswith(ctype)
        assert _external_urls(r.text) == []  # works offline: no CDN
    assert _external_urls(page.text) == []
    assert client.get("/static/secrets.txt").status_code == 404
    assert client.get("/static/..%2Fserve.py").status_code == 404


def _external_urls(text: str) -> list[str]:
    return [u for u in re.findall(r"https?://[^\s\"')]+", text) if u != "http://www.w3.org/2000/svg"]


def test_each_request_writes_one_structured_access_log_line(client, caplog):
    with caplog.at_level(logging.INFO, logger="mnist_cnn.access"):
        client.post("/v1/predict", content=b"{", headers={"content-type": "application/json"})
        client.get("/healthz")
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "mnist_cnn.access"]
    assert [(x["method"], x["path"], x["status"]) for x in lines[-2:]] == [("POST", "/v1/predict", 422), ("GET", "/healthz", 200)]  # fmt: skip
    assert lines[-2]["bytes_in"] == 1 and lines[-1]["ms"] >= 0


def test_settings_are_checked():
    with pytest.raises(ValueError, match="unknown runtime"):
        Settings(runtime="tpu")
    with pytest.raises(ValueError, match="max_queue must be at least 1"):
        Settings(max_queue=0)
    with pytest.raises(ValueError, match="min_confidence"):
        Settings(min_confidence=1.5)
