"""`mnist-cnn serve` as a real process on loopback: a load smoke test, graceful shutdown, start-up errors."""

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load_benchmark():
    spec = importlib.util.spec_from_file_location("serve_load", ROOT / "benchmarks" / "serve_load.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


serve_load = _load_benchmark()


def start_server(run, *flags):
    port = serve_load.free_port()
    cmd = [sys.executable, "-m", "mnist_cnn", "serve", str(run), "--port", str(port), *flags]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        serve_load.wait_ready(url, timeout=120, proc=proc)
    except RuntimeError:
        proc.kill()
        raise AssertionError(f"server did not start: {proc.communicate()[1][-2000:]}") from None
    return proc, url


@pytest.fixture(scope="module")
def server(exported_run):
    proc, url = start_server(exported_run, "--no-access-log")
    yield url
    proc.terminate()
    proc.communicate(timeout=30)


def test_load_smoke_a_few_hundred_requests_at_concurrency_8(server):
    import asyncio

    bodies = serve_load.pixel_bodies(32)
    result = asyncio.run(serve_load.level(server, 8, 400, bodies))
    assert result["requests"] == 400 and result["errors"] == 0, result
    with urllib.request.urlopen(server + "/v1/model") as r:
        batches = json.load(r)["batches"]
    assert batches["images"] >= 400  # every request went through the micro-batcher


def test_load_smoke_uploads_photos_and_every_one_is_answered(server):
    """The load test's --uploads: multipart PNG photos of digits, decoded and read by the service."""
    import asyncio

    bodies = serve_load.upload_bodies(8)
    result = asyncio.run(serve_load.level(server, 4, 40, bodies, serve_load.UPLOAD_TYPE))
    assert result["requests"] == 40 and result["errors"] == 0, result


def test_graceful_shutdown_lets_in_flight_requests_finish(exported_run):
    # Each forward pass waits 1.5 s for more requests, so a request is surely in flight at SIGTERM.
    proc, url = start_server(exported_run, "--batch-wait-ms", "1500", "--runtime", "torch")
    answer = {}

    def send():
        req = urllib.request.Request(url + "/v1/predict", data=json.dumps({"pixels": [0] * 784}).encode(),
                                     headers={"content-type": "application/json"})  # fmt: skip
        with urllib.request.urlopen(req, timeout=30) as r:
            answer["status"], answer["body"] = r.status, json.load(r)

    t = threading.Thread(target=send)
    t.start()
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    t.join(30)
    _, stderr = proc.communicate(timeout=30)
    assert answer.get("status") == 200 and 0 <= answer["body"]["label"] <= 9
    # uvicorn re-raises the signal once it has shut down cleanly, so the status is "terminated by SIGTERM".
    assert proc.returncode in (0, -signal.SIGTERM) and "Application shutdown complete" in stderr
    access = [json.loads(line) for line in stderr.splitlines() if line.startswith('{"method"')]
    assert any(a["path"] == "/v1/predict" and a["status"] == 200 and a["ms"] > 1000 for a in access), stderr[-2000:]
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url + "/healthz", timeout=2)


def test_start_up_errors_are_one_line_without_traceback(tmp_path, exported_run):
    def serve(*args):
        return subprocess.run([sys.executable, "-m", "mnist_cnn", "serve", *args], capture_output=True, text=True, timeout=120)  # fmt: skip

    r = serve(str(tmp_path / "nothing"))
    assert r.returncode == 2 and "does not exist" in r.stderr and "Traceback" not in r.stderr
    folder = tmp_path / "no-onnx"
    folder.mkdir()
    for name in ("model.safetensors", "config.json"):
        (folder / name).write_bytes((exported_run / name).read_bytes())
    r = serve(str(folder), "--runtime", "onnxruntime")  # asked for explicitly: without it, torch serves it
    assert r.returncode == 2 and "mnist-cnn export" in r.stderr and "Traceback" not in r.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        r = serve(str(exported_run), "--port", str(busy.getsockname()[1]), "--runtime", "torch")
    assert r.returncode != 0 and "Traceback" not in r.stderr
    r = serve(str(exported_run), "--max-queue", "0")
    assert r.returncode == 2 and "max_queue must be at least 1" in r.stderr
    assert os.environ.get("PYTEST_CURRENT_TEST")  # sanity: ran under pytest


def _fresh_run(tmp_path):
    """A run as `train` leaves it: a model folder with no model.onnx."""
    from mnist_cnn.folder import save_model
    from mnist_cnn.models import create_model

    return save_model(tmp_path / "runs" / "fast-20261201-050000", create_model("fast"), {"architecture": "fast"})


def test_serve_a_fresh_run_on_torch_and_say_so(tmp_path, monkeypatch, capsys):
    import mnist_cnn.serve
    from mnist_cnn.cli import main

    run = _fresh_run(tmp_path)
    served = {}
    monkeypatch.setattr(mnist_cnn.serve, "run", lambda folder, settings, **kw: served.update(folder=folder, settings=settings))  # fmt: skip
    monkeypatch.chdir(tmp_path)
    assert main(["serve", "latest", "--port", "8123"]) == 0
    assert served["folder"] == Path("runs") / run.name and served["settings"].runtime == "torch"
    line = capsys.readouterr().err.strip()
    assert line.startswith(f"serving runs/{run.name} (torch runtime: no model.onnx;"), line


def test_a_port_in_use_is_one_line_and_exit_2(tmp_path, capsys):
    from mnist_cnn.cli import main

    run = _fresh_run(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", str(run), "--port", str(port)]) == 2
    assert capsys.readouterr().err == f"error: port {port} is in use; choose another with --port\n"


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Linux /proc): the server's forkserver and the decoding processes under it."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        children = [p for p, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def _upload(url: str, body: bytes) -> tuple[int, dict]:
    req = urllib.request.Request(url + "/v1/predict", data=body, headers={"content-type": serve_load.UPLOAD_TYPE})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the decoding processes in /proc")
def test_uploads_decoded_in_separate_processes_answer_as_threads_do_and_survive_a_killed_one(exported_run, mnist):
    """--decode-processes: photos of digits decoded beside the server, the same answers and the same 4xx as in
    threads; when a decoding process is killed, the uploads go on (in threads) instead of failing."""
    photos = serve_load.upload_bodies(6, mnist.test_images[:6].numpy())
    garbage = photos[0].replace(b"\x89PNG", b"\x89GIF", 1)
    answers = {}
    for flags in ([], ["--decode-processes", "1"]):
        proc, url = start_server(exported_run, "--no-access-log", *flags)
        try:
            answers[bool(flags)] = [_upload(url, body) for body in [*photos, garbage]]
            if flags:
                decoders = _descendants(proc.pid)
                assert decoders, "no decoding process under the server"
                maps = [Path(f"/proc/{pid}/maps").read_text() for pid in decoders]
                assert not any("libtorch" in m for m in maps)  # they decode without PyTorch (~200 MB each with it)
                for pid in decoders:
                    os.kill(pid, signal.SIGKILL)
                time.sleep(0.5)
                after = [_upload(url, body) for body in photos]
                assert after == answers[True][:6]  # the same answers, now from threads
        finally:
            proc.terminate()
            proc.communicate(timeout=30)
    assert answers[True] == answers[False]
    assert [status for status, _ in answers[True]] == [200] * 6 + [415]
    assert all(0 <= body["label"] <= 9 and len(body["probabilities"]) == 10 for _, body in answers[True][:6])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the decoding processes in /proc")
def test_a_stopped_server_leaves_no_decoding_process_behind(exported_run, mnist):
    """SIGTERM ends the server by its signal once the requests are done, with no exit handlers: its decoding
    processes must have ended by then, or they wait for work for ever."""
    proc, url = start_server(exported_run, "--no-access-log", "--decode-processes", "2")
    try:
        assert _upload(url, serve_load.upload_bodies(1, mnist.test_images[:1].numpy())[0])[0] == 200
        helpers = _descendants(proc.pid)
        assert len(helpers) >= 3  # the forkserver and the two decoding processes
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
    deadline = time.time() + 10
    while any(_alive(pid) for pid in helpers) and time.time() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in helpers if _alive(pid)]
