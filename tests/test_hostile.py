"""Hostile and unlucky input (issue 17): every case here is refused with one clear error, never garbage.

Model folders are tiny and untrained: what is tested is what the loaders and the service accept.
"""

import json
import math
import re
import time

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from mnist_cnn import load_model
from mnist_cnn.config import ServeSettings, TrainConfig
from mnist_cnn.errors import ModelFolderError, NonFiniteOutputError, TrainingDivergedError
from mnist_cnn.folder import ModelFolder, save_model
from mnist_cnn.loop import fit
from mnist_cnn.models import create_model
from mnist_cnn.serve import Settings, create_app


@pytest.fixture
def folder(tmp_path):
    torch.manual_seed(0)
    return save_model(tmp_path / "m", create_model("fast"), {"architecture": "fast"})


def _edit(folder, **changes):
    path = folder / "config.json"
    config = {**json.loads(path.read_text()), **changes}
    path.write_text(json.dumps(config))


# ----------------------------------------------------------------------------- configs


@pytest.mark.parametrize(
    "field", ["lr", "weight_decay", "warmup", "label_smoothing", "ema", "aug_rotate", "aug_shear", "reject_weight"]
)
@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_train_config_refuses_non_finite_numbers(field, value):
    with pytest.raises(ValueError, match=f"{field} must be a finite number"):
        TrainConfig(**{field: value})


@pytest.mark.parametrize("value", [1.0, "1.0", "1.", 1e0])
def test_a_val_split_of_one_point_zero_is_ambiguous(value):
    with pytest.raises(ValueError, match="1.0 is ambiguous: give a count or a fraction below 1"):
        TrainConfig(val_split=value)


@pytest.mark.parametrize(("value", "read"), [(1, 1), ("1", 1), (0.3, 0.3), ("5000", 5000), (0, 0)])
def test_val_split_counts_and_fractions_still_read(value, read):
    assert TrainConfig(val_split=value).val_split == read


def test_train_config_refuses_a_string_where_a_number_goes():
    with pytest.raises(ValueError, match="epochs must be a number"):
        TrainConfig(epochs="abc")


@pytest.mark.parametrize(
    "changes",
    [{"batch_wait_ms": math.inf}, {"batch_wait_ms": math.nan}, {"min_confidence": math.nan}, {"threads": -3},
     {"threads": 10**6}, {"max_queue": 0}, {"retry_after_s": -1}],
)  # fmt: skip
def test_serve_settings_refuse_non_finite_and_out_of_range_numbers(changes):
    with pytest.raises(ValueError):
        ServeSettings(**changes)


# ----------------------------------------------------------------------------- training


def test_a_run_whose_loss_becomes_nan_stops_with_a_clear_error():
    torch.manual_seed(0)
    model = create_model("fast")
    with torch.no_grad():
        next(model.parameters()).fill_(math.nan)  # what --lr inf does after the first step
    x, y = torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,))
    config = TrainConfig(model="fast", epochs=2, batch_size=32, val_split=0)
    with pytest.raises(TrainingDivergedError, match="training diverged in epoch 1.*lower --lr"):
        fit(model, (x, y), None, config, progress=False)
    assert TrainingDivergedError.exit_code != 0


# ----------------------------------------------------------------------------- model folders


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"normalization": {"mean": 0.1, "std": 0}}, "normalization std must be above 0"),
        ({"normalization": {"mean": 0.1, "std": math.nan}}, "normalization must hold a finite mean and std"),
        ({"normalization": {"mean": 0.1, "std": "0.3"}}, "normalization must hold a finite mean and std"),
        ({"normalization": "mnist"}, "normalization must hold a finite mean and std"),
        ({"calibration": {"temperature": -1}}, "calibration temperature must be a finite number above 0"),
        ({"calibration": {"temperature": 0}}, "calibration temperature must be a finite number above 0"),
        ({"calibration": {"temperature": "1.2"}}, "calibration temperature must be a finite number above 0"),
        ({"calibration": {"temperature": math.inf}}, "calibration temperature must be a finite number above 0"),
        ({"num_classes": 10**12}, "num_classes must be an integer from 2 to 10000"),
        ({"num_classes": 10.5}, "num_classes must be an integer"),
        ({"in_channels": "1"}, "in_channels must be an integer from 1 to 64"),
        ({"in_channels": True}, "in_channels must be an integer"),
        ({"format_version": "2"}, "format_version must be an integer, got '2'"),
        ({"format_version": None}, "format_version must be an integer, got None"),
        ({"format_version": 99}, "newer mnist-cnn"),
        ({"versions": ["torch"]}, "versions must be a JSON object"),
        ({"architecture": 7}, "does not name an architecture"),
    ],
)
def test_a_damaged_config_is_one_model_folder_error(folder, changes, message):
    _edit(folder, **changes)
    with pytest.raises(ModelFolderError, match=message) as info:
        load_model(folder)
    assert "\n" not in str(info.value)


def test_calibration_without_a_temperature_still_loads(folder):
    _edit(folder, calibration=None)
    load_model(folder)
    _edit(folder, calibration={"temperature": None})
    load_model(folder)


def _nan_weights(folder):
    model = create_model("fast")
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(math.nan)
    return save_model(folder, model, {"architecture": "fast"})


def test_non_finite_probabilities_raise_instead_of_returning_nan(tmp_path):
    clf = load_model(_nan_weights(tmp_path / "nan"))
    image = np.zeros((28, 28), np.uint8)
    with pytest.raises(NonFiniteOutputError, match="NaN or infinite"):
        clf.predict_proba(image)
    with pytest.raises(NonFiniteOutputError):
        clf.predict(image)


def test_the_service_never_answers_200_for_a_model_that_computes_nan(tmp_path):
    folder = _nan_weights(tmp_path / "nan")
    with TestClient(create_app(folder, Settings(runtime="torch"))) as c:
        for _ in range(200):
            r = c.post("/v1/predict", json={"pixels": [0] * 784})
            if "still loading" not in r.text:
                break
            time.sleep(0.025)
        assert r.status_code == 503, r.text
        assert str(tmp_path) not in r.text  # no server path in a body
        assert c.get("/healthz").status_code == 200


def test_model_folder_read_accepts_what_save_writes(folder):
    assert ModelFolder(folder).read()["architecture"] == "fast"


# ----------------------------------------------------------------------------- weights integrity


def test_saving_records_the_sha256_of_the_weights(folder):
    import hashlib

    recorded = json.loads((folder / "config.json").read_text())["weights_sha256"]
    assert recorded == hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()


def test_a_bit_flipped_weights_file_is_refused(folder):
    raw = bytearray((folder / "model.safetensors").read_bytes())
    raw[-3] ^= 0x10  # inside the last tensor: safetensors itself would load it
    (folder / "model.safetensors").write_bytes(bytes(raw))
    with pytest.raises(ModelFolderError, match="the weights do not match the SHA-256 recorded in config.json"):
        load_model(folder)


def test_a_folder_saved_before_the_digest_was_recorded_still_loads(folder):
    config = json.loads((folder / "config.json").read_text())
    del config["weights_sha256"]
    (folder / "config.json").write_text(json.dumps(config))
    load_model(folder)
    _edit(folder, weights_sha256="abc")
    with pytest.raises(ModelFolderError, match="weights_sha256 must be a hex SHA-256"):
        load_model(folder)


# ----------------------------------------------------------------------------- checkpoints


def test_rotation_keeps_the_fresh_intact_checkpoints_not_the_damaged_higher_steps(tmp_path):
    from mnist_cnn.checkpoint import Checkpoints

    store = Checkpoints(tmp_path, keep=3)
    for step in (10, 20, 30):
        store.save({"step": step}, step)
    for path in store.paths():  # all damaged: the machine died while they were written
        path.write_bytes(path.read_bytes()[:-5])
    assert store.latest() is None
    for step in (1, 2, 3, 4):  # the run starts over; a crash now must not lose this progress
        store.save({"step": step}, step)
    assert [p.name for p in store.paths()] == ["step-000000002.pt", "step-000000003.pt", "step-000000004.pt"]
    path, state = store.latest()
    assert state["step"] == 4


def test_rotation_still_keeps_the_newest_k_when_all_are_intact(tmp_path):
    from mnist_cnn.checkpoint import Checkpoints

    store = Checkpoints(tmp_path, keep=2)
    for step in (1, 2, 3):
        store.save({"step": step}, step)
    assert [p.name for p in store.paths()] == ["step-000000002.pt", "step-000000003.pt"]


@pytest.mark.parametrize("damage", ["manifest_list", "state_list"])
def test_a_checkpoint_that_is_not_a_dict_is_a_checkpoint_error(tmp_path, damage):
    import hashlib
    import io

    from mnist_cnn.checkpoint import CheckpointError, Checkpoints

    store = Checkpoints(tmp_path)
    path = store.save({"step": 1}, 1)
    if damage == "manifest_list":
        path.with_suffix(".json").write_text("[]")
    else:
        buffer = io.BytesIO()
        torch.save([1, 2], buffer)
        data = buffer.getvalue()
        path.write_bytes(data)
        manifest = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        path.with_suffix(".json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError):
        store.load(path)


# ----------------------------------------------------------------------------- decoding memory

_PEAK = """
import resource, sys
from mnist_cnn.decode import decode_image
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
grey, record = decode_image(sys.argv[1])
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024, *grey.shape, record.working_scale)
"""


def _png(path, size, mode="L"):
    from PIL import Image, ImageDraw

    paper, ink = (255, 0) if mode == "L" else ((255, 255, 255, 0), (0, 0, 0, 255))  # RGBA: ink on a transparent page
    image = Image.new(mode, size, paper)
    ImageDraw.Draw(image).line((size[0] // 4, size[1] // 8, size[0] // 3, size[1] * 7 // 8), fill=ink, width=90)
    image.save(path)
    return path


def test_a_huge_image_is_decoded_without_a_full_size_float_copy(tmp_path):
    """A 3999x4000 greyscale PNG: 16 MB as stored, 64 MB as a float32 array; the decode must stay well under that."""
    import os
    import subprocess
    import sys

    path = _png(tmp_path / "big.png", (3999, 4000))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", _PEAK, str(path)], capture_output=True, text=True, env=env, check=True)
    growth, h, w, scale = out.stdout.split()
    assert (int(h), int(w), float(scale)) == (1200, 1200, 0.3)
    assert int(growth) < 48, f"decoding grew the process by {growth} MB"


@pytest.mark.parametrize("mode", ["L", "RGBA"])
def test_shrinking_before_the_float_copy_changes_no_result(tmp_path, mode):
    """The frame of a huge image is the frame of the same image reduced to the working side in one step."""
    from PIL import Image

    from mnist_cnn import decode, preprocess

    path = _png(tmp_path / "big.png", (3999, 4000), mode)
    full = decode._grey_from_pil(Image.open(path))  # the old way: a float copy at full size
    reference, _ = decode.downscale(full, decode.WORK_SIDE)
    grey, record = decode.decode_image(path)
    assert grey.shape == reference.shape and record.working_scale == 0.3
    assert np.abs(grey - reference).mean() < 1e-3 and np.abs(grey - reference).max() <= 0.5
    new, old = preprocess.preprocess_image(path), preprocess.preprocess_image(reference)
    # the same frame (within 2 of 255 grey levels), placed within the pixel that rounding the centre of mass leaves open
    placed = [np.roll(r.array.astype(int), (-r.record.shift[1], -r.record.shift[0]), (0, 1)) for r in (new, old)]
    assert np.abs(placed[0] - placed[1]).max() <= 2


def _png_bytes() -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (40, 40), 255).save(buffer, "PNG")
    return buffer.getvalue()


def _wait_for(condition, seconds=10.0):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def _gated_decode(running: dict, lock, release):
    """A decode that stands for a slow one of a huge image: counts itself in ``running`` (now, calls, most)
    and waits for ``release``."""

    def gated_decode(data, *args):
        with lock:
            running["now"] += 1
            running["calls"] = running.get("calls", 0) + 1
            running["most"] = max(running["most"], running["now"])
        release.wait(10)
        with lock:
            running["now"] -= 1
        return np.zeros((28, 28), np.float32)

    return gated_decode


def test_uploads_over_the_queue_limit_get_503_before_decoding_and_decodes_are_bounded(folder, monkeypatch):
    import threading

    from mnist_cnn.serve import service as service_module

    release, lock = threading.Event(), threading.Lock()
    running = {"now": 0, "most": 0, "calls": 0}

    monkeypatch.setattr(service_module, "upload_frame", _gated_decode(running, lock, release))
    settings = Settings(runtime="torch", max_queue=3, decode_slots=2, retry_after_s=4)
    files = {"image": ("a.png", _png_bytes(), "image/png")}
    with TestClient(create_app(folder, settings)) as c:
        _wait_for(lambda: c.get("/readyz").status_code == 200)
        service, results = c.app.state.service, []
        threads = [
            threading.Thread(target=lambda: results.append(c.post("/v1/predict", files=files))) for _ in range(3)
        ]
        for t in threads:
            t.start()
        _wait_for(lambda: service.uploads == 3 and running["now"] == 2)
        refused = c.post("/v1/predict", files=files)
        assert refused.status_code == 503 and refused.headers["retry-after"] == "4"
        assert c.post("/v1/read", files=files).status_code == 503
        assert running["calls"] == 2  # the refused ones were never decoded; the third waits for a slot
        release.set()
        for t in threads:
            t.join(10)
        assert [r.status_code for r in results] == [200, 200, 200] and running["most"] == 2
        assert c.post("/v1/predict", json={"pixels": [0] * 784}).status_code == 200
        assert c.get("/v1/model").json()["limits"]["decode_slots"] == 2


# ----------------------------------------------------------------------------- transport limits


@pytest.fixture
def live_server():
    """A uvicorn server in a thread with the service's transport limits and a trivial app: yields its port."""
    import asyncio
    import threading

    import uvicorn

    from mnist_cnn.serve.transport import uvicorn_options

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    settings = Settings(max_header_bytes=8192, header_timeout_s=0.5, limit_concurrency=50, timeout_keep_alive_s=1)
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, lifespan="off", loop="asyncio",
                            **uvicorn_options(settings))  # fmt: skip
    server = uvicorn.Server(config)
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    _wait_for(lambda: server.started)
    yield server.servers[0].sockets[0].getsockname()[1]
    server.should_exit = True
    thread.join(5)


def _get(port, extra=b"", timeout=5.0) -> bytes:
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n" + extra + b"connection: close\r\n\r\n")
        return b"".join(iter(lambda: s.recv(65536), b""))


def test_an_oversized_header_is_refused_with_431(live_server):
    assert _get(live_server).startswith(b"HTTP/1.1 200")
    assert _get(live_server, b"x-small: " + b"a" * 4000 + b"\r\n").startswith(b"HTTP/1.1 200")
    started = time.monotonic()
    answer = _get(live_server, b"x-big: " + b"a" * 2_000_000 + b"\r\n")
    assert answer.startswith(b"HTTP/1.1 431") and time.monotonic() - started < 2
    assert _get(live_server).startswith(b"HTTP/1.1 200")  # others still served


def test_silent_and_slow_header_clients_are_closed_after_the_header_timeout(live_server):
    import socket

    silent = socket.create_connection(("127.0.0.1", live_server), timeout=5)
    slow = socket.create_connection(("127.0.0.1", live_server), timeout=5)
    slow.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n")  # and never the blank line
    assert _get(live_server).startswith(b"HTTP/1.1 200")  # others are served meanwhile
    started = time.monotonic()
    for s in (silent, slow):
        assert s.recv(65536).startswith(b"HTTP/1.1 408")
        assert s.recv(65536) == b""  # closed
        s.close()
    assert time.monotonic() - started < 3


def test_transport_limits_are_settings_with_help():
    import dataclasses

    fields = {f.name: f for f in dataclasses.fields(ServeSettings)}
    for name in ("limit_concurrency", "timeout_keep_alive_s", "header_timeout_s", "max_header_bytes", "decode_slots"):
        assert fields[name].metadata["help"]
    with pytest.raises(ValueError):
        ServeSettings(header_timeout_s=0)
    with pytest.raises(ValueError):
        ServeSettings(max_header_bytes=0)


# ----------------------------------------------------------------------------- fail fast


@pytest.mark.parametrize("runtime", ["torch", "onnxruntime"])
def test_serving_a_folder_that_cannot_load_fails_before_opening_a_port(folder, runtime, monkeypatch):
    import uvicorn

    from mnist_cnn.serve.app import run

    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: pytest.fail("uvicorn started"))
    (folder / "model.safetensors").unlink()  # and there is no model.onnx either
    with pytest.raises(ModelFolderError):
        run(folder, Settings(runtime=runtime))


# ----------------------------------------------------------------------------- multipart limits


def _multipart(parts: list[tuple[str, str | None, bytes]], boundary: str = "b0undary") -> bytes:
    """A multipart body by hand: (field name, file name or None for a text field, data) per part."""
    out = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


@pytest.fixture
def client(folder):
    with TestClient(create_app(folder, Settings(runtime="torch"))) as c:
        _wait_for(lambda: c.get("/readyz").status_code == 200)
        yield c


@pytest.mark.parametrize("route", ["/v1/predict", "/v1/read"])
@pytest.mark.parametrize(
    ("parts", "status", "field", "message"),
    [
        ([("image", "a.png", b"x"), ("other", "b.png", b"y")], 422, "other", "one file"),
        ([("image", "a.png", b"x"), *[(f"f{i}", None, b"1") for i in range(5)]], 422, "f4", "fields"),
        ([("image", "a.png", b"x"), ("min_confidence", None, b"0" * 5000)], 413, "min_confidence", "longer than"),
    ],
    ids=["two files", "too many fields", "text field too long"],
)  # fmt: skip
def test_multipart_limits_are_the_services_errors_with_the_field_named(client, route, parts, status, field, message):
    headers = {"content-type": "multipart/form-data; boundary=b0undary"}
    r = client.post(route, content=_multipart(parts), headers=headers)
    assert r.status_code == status, r.text
    assert r.json()["field"] == field and message in r.json()["detail"]


@pytest.mark.parametrize("route", ["/v1/predict", "/v1/read"])
def test_a_multipart_body_without_a_boundary_names_the_content_type(client, route):
    r = client.post(route, content=_multipart([("image", "a.png", _png_bytes())]),
                    headers={"content-type": "multipart/form-data"})  # fmt: skip
    assert r.status_code == 422 and r.json()["field"] == "content-type" and "boundary" in r.json()["detail"]


def test_a_malformed_multipart_body_is_a_422_naming_the_body(client):
    body = b'--b0undary\r\nContent-Disposition: form-data; filename="a.png"\r\n\r\nxx\r\n--b0undary--\r\n'  # no name
    r = client.post("/v1/predict", content=body, headers={"content-type": "multipart/form-data; boundary=b0undary"})
    assert r.status_code == 422 and r.json()["field"] == "body"


def test_an_image_upload_still_works_with_min_confidence(client):
    parts = [("image", "a.png", _png_bytes()), ("min_confidence", None, b"0.3")]
    r = client.post("/v1/predict", content=_multipart(parts), headers={"content-type": "multipart/form-data; boundary=b0undary"})  # fmt: skip
    assert r.status_code in (200, 422), r.text  # a blank image: no digit (422), never a parser error
    if r.status_code == 422:
        assert r.json()["field"] == "image"


# ----------------------------------------------------------------------------- client disconnects


@pytest.fixture
def live_app(folder):
    """The real app on uvicorn in a thread, with the transport limits ``mnist-cnn serve`` uses: yields its port."""
    import asyncio
    import threading

    import uvicorn

    from mnist_cnn.serve.transport import uvicorn_options

    settings = Settings(runtime="torch")
    config = uvicorn.Config(create_app(folder, settings), host="127.0.0.1", port=0, log_config=None, lifespan="on",
                            loop="asyncio", access_log=False, **uvicorn_options(settings))  # fmt: skip
    server = uvicorn.Server(config)
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    _wait_for(lambda: server.started)
    port = server.servers[0].sockets[0].getsockname()[1]
    _wait_for(lambda: _status(f"http://127.0.0.1:{port}/readyz") == 200)
    yield port
    server.should_exit = True
    thread.join(10)


def _status(url: str) -> int:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.parametrize("ctype", ["multipart/form-data; boundary=b0undary", "application/json"])
def test_a_client_that_leaves_mid_body_is_one_access_log_line_and_no_traceback(live_app, caplog, ctype):
    import logging
    import socket

    caplog.set_level(logging.INFO)
    head = f"POST /v1/predict HTTP/1.1\r\nhost: x\r\ncontent-type: {ctype}\r\ncontent-length: 100000\r\n\r\n"
    part = (
        b'--b0undary\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n'
        if "multi" in ctype
        else b""
    )
    with socket.create_connection(("127.0.0.1", live_app), timeout=5) as s:
        s.sendall(head.encode() + part + b"x" * 5000)
        time.sleep(0.3)  # the server is reading the body
    _wait_for(lambda: any(r.name == "mnist_cnn.access" and "/v1/predict" in r.getMessage() for r in caplog.records))
    time.sleep(0.2)  # anything else it would log about this request
    access = [json.loads(r.getMessage()) for r in caplog.records if r.name == "mnist_cnn.access"]
    assert [(a["path"], a["status"]) for a in access if a["path"] != "/readyz"] == [("/v1/predict", 499)]
    access = [a for a in access if a["path"] != "/readyz"]
    assert access[0]["bytes_in"] >= 5000 and access[0]["detail"] == "client disconnected"
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR], caplog.text


# ----------------------------------------------------------------------------- unreadable inputs


def _digit_png(path):
    from PIL import Image, ImageDraw

    image = Image.new("L", (60, 60), 255)
    ImageDraw.Draw(image).line((30, 8, 30, 52), fill=0, width=6)
    image.save(path)
    return path


def _deny_listing(monkeypatch, folder):
    """What chmod 000 does to a folder, also for root (who may read any folder): listing it fails."""
    import os

    scandir = os.scandir

    def denied(path="."):
        if os.fspath(path) == os.fspath(folder):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", denied)


@pytest.mark.parametrize("how", ["chmod", "monkeypatch"])
@pytest.mark.parametrize("where", ["named", "inside"])
def test_an_unreadable_folder_is_permission_denied_not_no_image_files(tmp_path, monkeypatch, capsys, how, where):
    import os

    from mnist_cnn.cli import main

    if how == "chmod" and os.geteuid() == 0:
        pytest.skip("root reads any folder; the monkeypatched case stands for it")
    top = tmp_path / "scans"
    _digit_png((top / "ok").mkdir(parents=True) or top / "ok" / "one.png")
    locked = top if where == "named" else top / "locked"
    locked.mkdir(exist_ok=True)
    if how == "chmod":
        locked.chmod(0)
    else:
        _deny_listing(monkeypatch, locked)
    try:
        code = main(["predict", str(top), "--no-progress"])
    finally:
        locked.chmod(0o755)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1, err
    assert "permission denied" in lines[0].lower() and str(locked) in lines[0] and "no image files" not in err


def test_an_unreadable_image_file_is_permission_denied(tmp_path, monkeypatch, capsys):
    import pathlib

    from mnist_cnn.cli import main

    path = _digit_png(tmp_path / "one.png")
    read_bytes = pathlib.Path.read_bytes

    def denied(self):
        if self == path:
            raise PermissionError(13, "Permission denied", str(self))
        return read_bytes(self)

    monkeypatch.setattr(pathlib.Path, "read_bytes", denied)
    assert main(["predict", str(path), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert f"error: {path}: cannot read (Permission denied)" in err and "Traceback" not in err


# ----------------------------------------------------------------------------- file names in text output

ODD_NAMES = ["new\nline.png", "carriage\rreturn.png", "tab\there.png", "escape\x1b[31m.png"]


@pytest.mark.parametrize("command", ["predict", "read"])
def test_text_output_escapes_control_characters_in_file_names(tmp_path, capsys, command):
    import os

    from mnist_cnn.cli import main

    for name in ODD_NAMES:
        _digit_png(tmp_path / name)
    (tmp_path / "broken\nfile.png").write_bytes(b"not an image")
    assert main([command, str(tmp_path), "--no-progress"]) == 1  # the broken file is counted
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert len(lines) == len(ODD_NAMES), out  # one line per image, none split
    for name in ODD_NAMES:
        escaped = name.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t").replace("\x1b", "\\x1b")
        assert sum(line.startswith(f"{tmp_path}{os.sep}{escaped}: ") for line in lines) == 1, (escaped, out)
    assert not any(c in out + err for c in "\r\t\x1b")
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "broken\\nfile.png" in errors[0], err


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_json_and_csv_keep_file_names_exact(tmp_path, capsys, fmt):
    import csv
    import io

    from mnist_cnn.cli import main

    for name in ODD_NAMES:
        _digit_png(tmp_path / name)
    assert main(["predict", str(tmp_path), "--no-progress", "--format", fmt]) == 0
    out = capsys.readouterr().out
    rows = [json.loads(line) for line in out.splitlines()] if fmt == "jsonl" else list(csv.DictReader(io.StringIO(out)))
    assert sorted(row["file"] for row in rows) == sorted(str(tmp_path / name) for name in ODD_NAMES)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"onnx": "yes"}, "onnx must be a JSON object or null, got 'yes'"),
        ({"labels": 5}, "labels must be a list, got 5"),
        ({"labels": ["a"]}, "labels must be 10 names"),
        ({"input_shape": "x"}, "input_shape must be a list"),
        ({"input_shape": [1, 28]}, "input_shape must be \\[channels, height, width\\]"),
        ({"training": [1]}, "training must be a JSON object, got \\[1\\]"),
        ({"train_config": None}, "train_config must be a JSON object, got None"),
        ({"validation": "x"}, "validation must be a JSON object"),
        ({"calibration": 1.2}, "calibration must be a JSON object or null"),
        ({"recipe": 5}, "recipe must be a string or null"),
        ({"model_kwargs": {"width": "x"}}, "cannot be built with model_kwargs {'width': 'x'}"),
    ],
)
def test_more_damaged_configs_are_one_model_folder_error(folder, changes, message):
    _edit(folder, **changes)
    with pytest.raises(ModelFolderError, match=message) as info:
        load_model(folder)
    assert "\n" not in str(info.value)


def test_v1_model_of_a_folder_whose_versions_is_a_list_is_refused_at_start(folder, capsys):
    from mnist_cnn.cli import main

    _edit(folder, versions=["torch"])
    with pytest.raises(ModelFolderError, match="versions must be a JSON object"):
        create_app(folder, Settings(runtime="torch"))
    assert main(["serve", str(folder), "--port", "0"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: ")


# ----------------------------------------------------------------------------- run.json and resume state


def _run_json(**changes) -> dict:
    settings = {"recipe": "basic", "train_config": {"model": "fast", "epochs": 2}, "started": "2026-01-01T00:00:00",
                "deterministic": False, "threads": 1, "world_size": 1, "tensorboard": False, "checkpoint_every": 0,
                "keep_checkpoints": 3}  # fmt: skip
    return {**settings, **changes}


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (_run_json(train_config={"epochs": "abc"}), "train_config: epochs must be a number, got 'abc'"),
        (_run_json(train_config={"bogus": 1}), "train_config: unknown training config field 'bogus'"),
        (_run_json(threads=10**6), "threads must be from 1 to 1024, got 1000000"),
        (_run_json(threads="abc"), "threads must be an integer, got 'abc'"),
        (_run_json(deterministic="yes"), "deterministic must be true or false, got 'yes'"),
        (_run_json(checkpoint_every="x"), "checkpoint_every must be an integer, got 'x'"),
        (_run_json(world_size=[1]), "world_size must be an integer"),
        (_run_json(train_config=[1]), "train_config must be a JSON object"),
        ([], "run.json: must be a JSON object, got \\[\\]"),
        ("{not json", "run.json cannot be read"),
    ],
)
def test_a_damaged_run_json_is_one_error_line_when_resuming(tmp_path, capsys, settings, message):
    from mnist_cnn.cli import main

    (tmp_path / "run.json").write_text(settings if isinstance(settings, str) else json.dumps(settings))
    assert main(["train", "--resume", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"error: {tmp_path / 'run.json'}")
    assert re.search(message, err), err


def test_runs_lists_a_stopped_run_whose_run_json_is_damaged(tmp_path):
    from mnist_cnn.runs import list_runs

    run = tmp_path / "stopped"
    (run / "checkpoints").mkdir(parents=True)
    (run / "run.json").write_text(json.dumps(_run_json(train_config=[1])))
    [row] = list_runs(tmp_path)
    assert row.run == "stopped" and row.epochs == "0/?" and "resumable" in row.status


def test_threads_beyond_any_machine_are_refused_before_torch_sees_them():
    from mnist_cnn.runtime import configure_threads

    with pytest.raises(ValueError, match="threads must be at most 1024"):
        configure_threads(10**6)


def _train_state(config):
    from mnist_cnn.loop import TrainState

    torch.manual_seed(0)
    return TrainState(create_model(config.model), config, 64, torch.device("cpu")).state_dict()


def _wrong_shape(state):
    name = next(iter(state["model"]))
    state["model"] = {**state["model"], name: torch.zeros(3, 3)}
    return state


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda s: s.pop("optimizer") and s, "has no 'optimizer'"),
        (lambda s: s.pop("rng") and s, "has no 'rng'"),
        (lambda s: {**s, "config": [1]}, "'config' is of type list"),
        (lambda s: {**s, "epoch": "x"}, "'epoch' is of type str"),
        (lambda s: {**s, "step": -5}, "'step' is -5; it must be at least 0"),
        (lambda s: {**s, "epoch": 10**9}, "at epoch 1000000000 of a 2-epoch run"),
        (lambda s: {**s, "history": 5}, "'history' is of type int"),
        (lambda s: {**s, "train_seconds": "x"}, "'train_seconds' is of type str"),
        (lambda s: {**s, "rng": []}, "one dict of random states per process"),
        (lambda s: {**s, "shuffle": torch.zeros(3)}, "does not fit this run: RNG state must be a torch.ByteTensor"),
        (_wrong_shape, "does not fit this run: Error\\(s\\) in loading state_dict for Fast: size mismatch"),
        (lambda s: {**s, "best_state": {"x": torch.zeros(1)}}, "best weights in the training state do not fit"),
    ],
)
def test_a_damaged_training_state_is_a_checkpoint_error(damage, message):
    from mnist_cnn.checkpoint import CheckpointError

    config = TrainConfig(model="fast", epochs=2, batch_size=32, val_split=0)
    x, y = torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,))
    with pytest.raises(CheckpointError, match=message) as info:
        fit(create_model("fast"), (x, y), None, config, progress=False, resume=damage(_train_state(config)))
    assert "\n" not in str(info.value)


def test_resuming_names_the_checkpoint_that_is_damaged(tmp_path):
    from mnist_cnn.checkpoint import CheckpointError, Checkpoints
    from mnist_cnn.train import _checkpoint_to_resume

    config = TrainConfig(model="fast", epochs=2, batch_size=32, val_split=0)
    store = Checkpoints(tmp_path)
    path = store.save({**_train_state(config), "epoch": "x"}, 2)
    with pytest.raises(CheckpointError, match=f"{re.escape(str(path))}: the training state's 'epoch' is of type str"):
        _checkpoint_to_resume(store, config)
    store.save(_train_state(config), 3)
    assert _checkpoint_to_resume(store, config)[1]["epoch"] == 1  # an intact one resumes


# ----------------------------------------------------------------------------- model.onnx integrity


def _tiny_onnx() -> bytes:
    """A graph with the exported input and output (images (N, 1, 28, 28) -> logits (N, 10)): one MatMul."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    weights = numpy_helper.from_array(np.random.default_rng(0).normal(size=(784, 10)).astype(np.float32), "w")
    shape = numpy_helper.from_array(np.array([-1, 784], np.int64), "shape")
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["images", "shape"], ["flat"]), helper.make_node("MatMul", ["flat", "w"], ["logits"])],
        "tiny", [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 1, 28, 28])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], [weights, shape],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    return model.SerializeToString()


def test_a_damaged_model_onnx_is_refused_by_its_recorded_sha256(folder, capsys):
    import hashlib

    from mnist_cnn.cli import main

    data = _tiny_onnx()
    (folder / "model.onnx").write_bytes(data)
    _edit(folder, onnx={"file": "model.onnx", "sha256": hashlib.sha256(data).hexdigest()})
    load_model(folder, runtime="onnxruntime").predict(np.zeros((28, 28), np.uint8))  # intact: loads and runs
    flipped = bytearray(data)
    flipped[-100] ^= 0x01  # inside the weights: ONNX Runtime itself would load it
    (folder / "model.onnx").write_bytes(bytes(flipped))
    with pytest.raises(ModelFolderError, match="model.onnx is damaged or was replaced: it does not match the SHA-256"):
        load_model(folder, runtime="onnxruntime")
    assert main(["predict", str(folder), str(_digit_png(folder.parent / "one.png")), "--runtime", "onnxruntime"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "SHA-256" in err[0]


def test_a_model_onnx_exported_before_the_digest_was_recorded_still_loads(folder):
    (folder / "model.onnx").write_bytes(_tiny_onnx())
    _edit(folder, onnx={"file": "model.onnx"})
    load_model(folder, runtime="onnxruntime")
    _edit(folder, onnx={"file": "model.onnx", "sha256": "abc"})
    with pytest.raises(ModelFolderError, match="onnx sha256 must be a hex SHA-256"):
        load_model(folder, runtime="onnxruntime")


@pytest.mark.slow
def test_export_records_the_sha256_of_model_onnx(folder):
    import hashlib

    from mnist_cnn.export import export_onnx

    pytest.importorskip("onnx")
    export_onnx(folder)
    recorded = json.loads((folder / "config.json").read_text())["onnx"]["sha256"]
    assert recorded == hashlib.sha256((folder / "model.onnx").read_bytes()).hexdigest()
    load_model(folder, runtime="onnxruntime")


def test_decodes_hold_at_most_the_pixel_budget_and_wait_at_most_decode_wait_s(folder, monkeypatch):
    """Two 40x40 uploads (1,600 pixels each) under a budget of 3,000 pixels never decode together; the one that
    cannot get in within decode_wait_s is a 503 + Retry-After, and an upload with no image header costs nothing."""
    import threading

    from mnist_cnn.serve import service as service_module

    release, lock = threading.Event(), threading.Lock()
    running = {"now": 0, "most": 0}

    monkeypatch.setattr(service_module, "upload_frame", _gated_decode(running, lock, release))
    settings = Settings(runtime="torch", decode_slots=4, decode_pixels=3000, decode_wait_s=0.5, retry_after_s=3)
    files = {"image": ("a.png", _png_bytes(), "image/png")}
    with TestClient(create_app(folder, settings)) as c:
        _wait_for(lambda: c.get("/readyz").status_code == 200)
        first = []
        thread = threading.Thread(target=lambda: first.append(c.post("/v1/predict", files=files)))
        thread.start()
        _wait_for(lambda: running["now"] == 1)
        started = time.monotonic()
        refused = c.post("/v1/predict", files=files)
        assert refused.status_code == 503 and refused.headers["retry-after"] == "3", refused.text
        assert 0.4 < time.monotonic() - started < 5 and "decoding other images" in refused.json()["detail"]
        headless = []  # no header Pillow reads: decoding refuses it at once, so it takes no pixels
        other = threading.Thread(target=lambda: headless.append(c.post("/v1/predict", files={"image": ("x", b"junk")})))
        other.start()
        _wait_for(lambda: running["now"] == 2)
        release.set()
        thread.join(10)
        other.join(10)
        assert first[0].status_code == 200 and headless[0].status_code == 200 and running["most"] == 2
        limits = c.get("/v1/model").json()["limits"]
        assert (limits["decode_pixels"], limits["decode_wait_s"]) == (3000, 0.5)


def test_the_decode_budget_defaults_to_one_full_size_image(folder):
    with TestClient(create_app(folder, Settings(runtime="torch", max_image_pixels=1000))) as c:
        _wait_for(lambda: c.get("/readyz").status_code == 200)
        limits = c.get("/v1/model").json()["limits"]
    assert (limits["decode_pixels"], limits["decode_wait_s"], limits["max_image_pixels"]) == (1000, 5.0, 1000)


# ----------------------------------------------------------------------------- the connection cap


@pytest.fixture
def capped_server():
    """uvicorn in a thread with the service's transport and a cap of 20 connections; GET /hold waits for ``release``."""
    import asyncio
    import threading

    import uvicorn

    from mnist_cnn.serve.transport import uvicorn_options

    release = threading.Event()

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        if scope["path"] == "/hold":
            await asyncio.get_running_loop().run_in_executor(None, release.wait, 10)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    settings = Settings(limit_concurrency=20, header_timeout_s=30, retry_after_s=7)
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, lifespan="off", loop="asyncio",
                            **uvicorn_options(settings))  # fmt: skip
    server = uvicorn.Server(config)
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    _wait_for(lambda: server.started)
    yield server.servers[0].sockets[0].getsockname()[1], release
    release.set()
    server.should_exit = True
    thread.join(5)


def test_at_the_connection_cap_the_oldest_idle_socket_makes_room_for_a_new_client(capped_server):
    import socket

    port, _ = capped_server
    idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(30)]  # more than the cap
    for _ in range(5):
        assert _get(port).startswith(b"HTTP/1.1 200")  # each newcomer is served, even with 30 silent sockets
    time.sleep(0.3)
    closed = []
    for s in idle:
        s.setblocking(False)
        try:
            closed.append(s.recv(65536).startswith(b"HTTP/1.1 408") and s.recv(65536) == b"")
        except BlockingIOError:  # nothing to read: still open
            closed.append(False)
        s.close()
    # 30 + the first newcomer is 11 over the cap: the 11 oldest were closed (408), the rest are still open
    assert closed == [True] * 11 + [False] * 19


def test_when_every_connection_is_busy_a_newcomer_gets_503_with_retry_after(capped_server):
    import socket
    import threading

    port, release = capped_server

    def hold():
        with socket.create_connection(("127.0.0.1", port), timeout=15) as s:
            s.sendall(b"GET /hold HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            s.recv(65536)

    holders = [threading.Thread(target=hold) for _ in range(20)]
    for t in holders:  # 20 requests under way: nothing to close for a newcomer
        t.start()
    time.sleep(0.5)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        answer = s.recv(65536)
    assert answer.startswith(b"HTTP/1.1 503") and b"retry-after: 7" in answer
    release.set()
    for t in holders:
        t.join(15)
    assert _get(port).startswith(b"HTTP/1.1 200")


def test_the_connection_cap_leaves_room_under_a_tight_open_file_limit(monkeypatch):
    import resource

    from mnist_cnn.serve.transport import FD_RESERVE, connection_cap

    monkeypatch.setattr(resource, "getrlimit", lambda which: (256, 4096))
    assert connection_cap(900) == 256 - FD_RESERVE
    monkeypatch.setattr(resource, "getrlimit", lambda which: (65536, 65536))
    assert connection_cap(900) == 900


def test_the_decode_gate_ends_every_wait_on_time_and_lets_in_first_come_first_served():
    """300 waiters behind a held slot are all refused within their wait (a lock they all queued for, woken
    together, once made waits of 5 s last 20 s); and a large image first in line is not passed by small ones."""
    import asyncio

    from mnist_cnn.serve.decoding import DecodeGate, DecodeRefused

    async def scenario():
        gate, order = DecodeGate(slots=2, pixels=100, wait_s=0.3), []

        async def decode(name, pixels, seconds):
            try:
                async with gate.admit(pixels):
                    order.append(name)
                    await asyncio.sleep(seconds)
            except DecodeRefused:
                order.append(f"refused {name}")

        holder = asyncio.create_task(decode("holder", 100, 1.0))  # the whole budget for 1 s
        await asyncio.sleep(0.01)
        started = time.monotonic()
        await asyncio.gather(*(decode(i, 1, 0) for i in range(300)))
        waited = time.monotonic() - started
        await holder
        assert order[0] == "holder" and order.count("holder") == 1 and len(order) == 301
        assert all(str(x).startswith("refused") for x in order[1:]) and waited < 0.8, waited
        order.clear()
        gate.wait_s = 2.0
        small = asyncio.create_task(decode("small", 10, 0.2))  # holds 10 of 100
        await asyncio.sleep(0.01)
        await asyncio.gather(decode("large", 100, 0), decode("small after", 10, 0))
        await small
        assert order == ["small", "large", "small after"]
        assert (gate.decoding, gate.held) == (0, 0)

    asyncio.run(scenario())
