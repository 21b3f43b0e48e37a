"""Property test of the service: at least 1,000 generated requests per operation, never a 5xx.

Hypothesis generates bodies from "anything JSON" to "nearly valid" (784 values with one wrong), and
image uploads from random bytes to real images of every format, mode and size Pillow writes.
Examples are derandomised, so a failure reproduces in CI and locally.
"""

import io
import json

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from mnist_cnn.serve import Settings, create_app

EXAMPLES = 1000
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                suppress_health_check=list(HealthCheck))  # fmt: skip
CLIENT_ERRORS = {400, 404, 405, 413, 415, 422}


@pytest.fixture(scope="module")
def client(exported_run):
    # Small limits so that generated requests reach them often.
    with TestClient(create_app(exported_run, Settings(max_body_bytes=64 * 1024, max_image_pixels=250_000))) as c:
        for _ in range(400):
            if c.get("/readyz").status_code == 200:
                break
        yield c


def check(r, allowed=frozenset({200}) | CLIENT_ERRORS):
    assert r.status_code in allowed, (r.status_code, r.text)
    assert r.status_code < 500, r.text
    if r.status_code != 200:
        assert isinstance(r.json()["detail"], str)


json_scalars = (
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=8)
)
any_json = st.recursive(json_scalars, lambda kids: st.lists(kids, max_size=6) | st.dictionaries(st.text(max_size=6), kids, max_size=4), max_leaves=20)  # fmt: skip
pixel = st.integers(0, 255) | st.floats(0, 1) | st.sampled_from([-1, 256, 1.5, -0.0, 1e300, "7", None, True, [], {}])


@st.composite
def nearly_valid(draw):
    """784 good values with a few changes: a wrong value, length, nesting or extra field."""
    seed, scale = draw(st.integers(0, 2**16)), draw(st.sampled_from([255, 1]))
    rng = np.random.default_rng(seed)  # faster than drawing 784 values one by one
    values = rng.integers(0, 256, 784).tolist() if scale == 255 else rng.random(784).tolist()
    for _ in range(draw(st.integers(0, 3))):
        values[draw(st.integers(0, 783))] = draw(pixel)
    if draw(st.booleans()):
        values = values[: draw(st.integers(0, 790))] + draw(st.lists(pixel, max_size=3))
    body = {"pixels": [values[i : i + 28] for i in range(0, len(values), 28)] if draw(st.booleans()) else values}
    if draw(st.booleans()):
        body["scale"] = draw(st.sampled_from([1, 255, 0, 1.0, "255", None, 100]))
    if draw(st.integers(0, 9)) == 0:
        body[draw(st.text(max_size=5))] = draw(json_scalars)
    return body


def test_predict_json_never_fails_on_the_server(client):
    sent = []

    @FUZZ
    @given(body=nearly_valid() | any_json.map(lambda v: {"pixels": v}) | any_json, raw=st.booleans(), junk=st.binary(max_size=64))  # fmt: skip
    def run(body, raw, junk):
        content = junk if raw else json.dumps(body).encode()
        check(client.post("/v1/predict", content=content, headers={"content-type": "application/json"}))
        sent.append(1)

    run()
    assert len(sent) >= EXAMPLES


FORMATS = {"PNG": ["1", "L", "LA", "P", "RGB", "RGBA", "I;16"], "JPEG": ["L", "RGB", "CMYK"], "GIF": ["L", "P"],
           "BMP": ["1", "L", "RGB"], "TIFF": ["1", "L", "RGB", "RGBA", "I;16"], "WEBP": ["RGB", "RGBA"]}  # fmt: skip


@st.composite
def uploads(draw):
    kind = draw(st.integers(0, 4))
    if kind == 0:
        return draw(st.binary(max_size=512))
    fmt = draw(st.sampled_from(sorted(FORMATS)))
    mode = draw(st.sampled_from(FORMATS[fmt]))
    w, h = draw(st.integers(1, 700)), draw(st.integers(1, 700))
    seed = draw(st.integers(0, 2**16))
    pixels = np.random.default_rng(seed).integers(0, 256, (h, w), dtype=np.uint8)
    img = Image.fromarray(pixels).convert(mode) if mode != "I;16" else Image.fromarray(pixels.astype(np.uint16) * 257)
    buf = io.BytesIO()
    img.save(buf, fmt)
    data = buf.getvalue()
    if kind == 1:  # truncated or corrupted after a valid header
        cut = draw(st.integers(0, len(data)))
        data = data[:cut] + draw(st.binary(max_size=16))
    return data


def test_predict_upload_never_fails_on_the_server(client):
    sent = []

    @FUZZ
    @given(data=uploads(), field=st.sampled_from(["image", "image", "image", "file"]), ctype=st.sampled_from(["image/png", "application/octet-stream", ""]))  # fmt: skip
    def run(data, field, ctype):
        check(client.post("/v1/predict", files={field: ("upload", data, ctype)}))
        sent.append(1)

    run()
    assert len(sent) >= EXAMPLES


def test_read_never_fails_on_the_server(client):
    sent = []

    @FUZZ
    @given(data=st.binary(max_size=256), ctype=st.sampled_from(["image/png", "multipart/form-data", "application/json", "text/plain"]))  # fmt: skip
    def run(data, ctype):
        check(client.post("/v1/read", content=data, headers={"content-type": ctype}), CLIENT_ERRORS)
        sent.append(1)

    run()
    assert len(sent) >= EXAMPLES


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/v1/model"])
def test_get_endpoints_ignore_whatever_else_is_sent(client, path):
    sent = []

    @settings(FUZZ, max_examples=EXAMPLES)
    @given(query=st.dictionaries(st.text(min_size=1, max_size=5), st.text(max_size=10), max_size=3),
           header=st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40))  # fmt: skip
    def run(query, header):
        r = client.get(path, params=query, headers={"x-anything": header, "accept": header or "*/*"})
        assert r.status_code == 200, r.text
        sent.append(1)

    run()
    assert len(sent) >= EXAMPLES
