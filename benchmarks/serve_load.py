"""Load test of the REST service: requests per second and latency percentiles at several concurrency levels.

Starts ``mnist-cnn serve RUN`` on a free loopback port (or drives ``--url``), waits for
``/readyz``, then at each concurrency level sends a bounded number of ``POST /v1/predict``
requests with 784 JSON pixel values (real MNIST test digits when ``MNIST_CNN_DATA`` is set,
else random images), over keep-alive connections, one connection per concurrent client. With
``--uploads`` each request uploads a photo of a digit instead (multipart ``image`` field, a 112x112 PNG
made by ``mnist_cnn.synthetic`` from a test digit), which the service decodes and preprocesses.
The client is a minimal HTTP/1.1 client on asyncio (uvloop when installed): a general-purpose
one (httpx, aiohttp) costs more CPU per request than the server, and on a 2-core machine it
shares the cores with the server.

    python benchmarks/serve_load.py RUN                          # concurrency 1, 4, 8, 16, 32
    python benchmarks/serve_load.py RUN --concurrency 16 --requests 20000 --rounds 3
    python benchmarks/serve_load.py --url http://127.0.0.1:8000  # a service already running
    python benchmarks/serve_load.py RUN --uploads --concurrency 1 16 64 --requests 1000

Prints JSON, then a table on stderr. Every non-200 answer or connection error counts as an error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, timeout: float = 60.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server exited with status {proc.returncode}")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(url + "/readyz", timeout=1) as r:
                if r.status == 200:
                    return
        time.sleep(0.1)
    raise RuntimeError(f"{url} was not ready after {timeout:.0f} s")


def pixel_bodies(n: int = 256) -> list[bytes]:
    """JSON bodies with 784 pixel values in 0-255: MNIST test digits if the data is at hand."""
    images = None
    with contextlib.suppress(Exception):
        from mnist_cnn import load_mnist

        if os.environ.get("MNIST_CNN_DATA"):
            images = load_mnist(os.environ["MNIST_CNN_DATA"], download=False).test_images[:n].numpy()
    if images is None:
        images = np.random.default_rng(0).integers(0, 256, (n, 28, 28), dtype=np.uint8)
    return [json.dumps({"pixels": img.ravel().tolist()}, separators=(",", ":")).encode() for img in images]


BOUNDARY = "mnist-cnn-load-test"
UPLOAD_TYPE = f"multipart/form-data; boundary={BOUNDARY}"
UPLOAD_SIDE = 112  # px: a photo of a digit as the page sends it, scaled down in the browser


def upload_bodies(n: int = 64, images: np.ndarray | None = None) -> list[bytes]:
    """Multipart bodies, each a photographed digit as a PNG: of ``images`` (uint8 (N, 28, 28)), else of test
    digits when ``MNIST_CNN_DATA`` is set, else of random ones."""
    import io

    from PIL import Image

    from mnist_cnn.synthetic import render_digit

    if images is None:
        images = np.random.default_rng(0).integers(0, 2, (n, 28, 28), dtype=np.uint8) * 255
        with contextlib.suppress(Exception):
            from mnist_cnn import load_mnist

            images = load_mnist(os.environ["MNIST_CNN_DATA"], download=False).test_images[:n].numpy()
    rng, bodies = np.random.default_rng(0), []
    for img in images:
        buf = io.BytesIO()
        render_digit(img, rng).convert("L").resize((UPLOAD_SIDE, UPLOAD_SIDE), Image.Resampling.LANCZOS).save(
            buf, "PNG"
        )
        bodies.append(
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="digit.png"\r\n'
            f"Content-Type: image/png\r\n\r\n".encode()
            + buf.getvalue()
            + f"\r\n--{BOUNDARY}--\r\n".encode()
        )
    return bodies


async def client(host, port, path, bodies, count, latencies, errors, offset, content_type="application/json"):
    """One keep-alive connection sending ``count`` requests one after another."""
    reader, writer = await asyncio.open_connection(host, port)
    heads = [
        (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\n"
         f"Content-Length: {len(b)}\r\n\r\n").encode() + b
        for b in bodies
    ]  # fmt: skip
    try:
        for i in range(count):
            t0 = time.perf_counter()
            writer.write(heads[(offset + i) % len(heads)])
            status_line = await reader.readline()
            length = 0
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b""):
                    break
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - t0)
            if status_line[9:12] != b"200":
                errors.append(status_line.decode(errors="replace").strip())
    except (OSError, asyncio.IncompleteReadError) as exc:
        errors.append(f"connection: {exc!r}")
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def level(
    url: str, concurrency: int, requests: int, bodies: list[bytes], content_type: str = "application/json"
) -> dict:
    parts = urlsplit(url)
    latencies: list[float] = []
    errors: list[str] = []
    per = [requests // concurrency + (i < requests % concurrency) for i in range(concurrency)]
    t0 = time.perf_counter()
    await asyncio.gather(*(
        client(parts.hostname, parts.port, "/v1/predict", bodies, n, latencies, errors, i * 17, content_type)
        for i, n in enumerate(per)
    ))  # fmt: skip
    wall = time.perf_counter() - t0
    lat = np.array(latencies) * 1e3
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "errors": len(errors) + (requests - len(latencies) - len(errors) if len(latencies) < requests else 0),
        "error_examples": sorted(set(errors))[:3],
        "seconds": wall,
        "requests_per_s": len(latencies) / wall,
        "p50_ms": float(np.percentile(lat, 50)) if len(lat) else None,
        "p95_ms": float(np.percentile(lat, 95)) if len(lat) else None,
        "p99_ms": float(np.percentile(lat, 99)) if len(lat) else None,
        "max_ms": float(lat.max()) if len(lat) else None,
    }


def cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def run_levels(url: str, concurrencies, requests: int, rounds: int, warmup: int, uploads: bool = False) -> list[dict]:
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    bodies, kind = (upload_bodies(), UPLOAD_TYPE) if uploads else (pixel_bodies(), "application/json")  # fmt: skip
    asyncio.run(level(url, 8, warmup, bodies, kind))  # connections, caches, the model's first batch sizes
    results = []
    for c in concurrencies:
        runs = [asyncio.run(level(url, c, requests, bodies, kind)) for _ in range(rounds)]
        med = sorted(runs, key=lambda r: r["requests_per_s"])[len(runs) // 2]
        results.append({**med, "rounds": [{k: r[k] for k in ("requests_per_s", "p99_ms", "errors")} for r in runs],
                        "errors": sum(r["errors"] for r in runs)})  # fmt: skip
        print(f"concurrency {c:>3}: {med['requests_per_s']:8,.0f} req/s  p50 {med['p50_ms']:6.2f} ms  "
              f"p95 {med['p95_ms']:6.2f} ms  p99 {med['p99_ms']:6.2f} ms  errors {results[-1]['errors']}",
              file=sys.stderr, flush=True)  # fmt: skip
    return results


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", nargs="?", type=Path, help="model folder to serve (needs model.onnx for the default runtime)")
    p.add_argument("--url", default=None, help="drive a service that is already running instead")
    p.add_argument("--concurrency", nargs="+", type=int, default=[1, 4, 8, 16, 32], help="levels (default: 1 4 8 16 32)")  # fmt: skip
    p.add_argument("--requests", type=int, default=10000, help="requests per level and round (default: 10000)")
    p.add_argument("--rounds", type=int, default=3, help="rounds per level; the median round is reported (default: 3)")  # fmt: skip
    p.add_argument("--warmup", type=int, default=2000, help="requests sent before measuring (default: 2000)")
    p.add_argument("--uploads", action="store_true", help="upload photos of digits (multipart PNG) instead of JSON pixels")  # fmt: skip
    p.add_argument("--serve-args", default="", help="extra flags for mnist-cnn serve, e.g. '--runtime torch'")
    p.add_argument("--server-log", type=Path, default=None, help="file for the server's log (default: discarded)")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = p.parse_args(argv)
    if (args.run is None) == (args.url is None):
        p.error("give a model folder RUN or --url, not both")

    proc = None
    url = args.url
    if url is None:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        cmd = [sys.executable, "-m", "mnist_cnn", "serve", str(args.run), "--port", str(port), *args.serve_args.split()]
        log = open(args.server_log, "w") if args.server_log else subprocess.DEVNULL  # noqa: SIM115
        proc = subprocess.Popen(cmd, stderr=log)  # the access log (one line per request) goes here
    try:
        wait_ready(url, proc=proc)
        with urllib.request.urlopen(url + "/v1/model") as r:
            model = json.load(r)
        results = run_levels(url, args.concurrency, args.requests, args.rounds, args.warmup, args.uploads)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
    out = {
        "machine": {"cpu": cpu_name(), "cores": len(os.sched_getaffinity(0)), "python": platform.python_version()},
        "server": {
            "url": url,
            "architecture": model["architecture"],
            "runtime": model["runtime"],
            "serve_args": args.serve_args,
            "server_log": str(args.server_log) if args.server_log else "discarded (/dev/null)",
        },
        "request": (
            f"POST /v1/predict, multipart upload of a {UPLOAD_SIDE}x{UPLOAD_SIDE} PNG photo of a digit"
            if args.uploads
            else "POST /v1/predict, JSON body with 784 pixel values (0-255)"
        )
        + ", keep-alive, one connection per client",
        "levels": results,
    }
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(
        "| concurrency | requests/s | p50 ms | p95 ms | p99 ms | errors |\n|---|---|---|---|---|---|", file=sys.stderr
    )
    for r in results:
        print(f"| {r['concurrency']} | {r['requests_per_s']:,.0f} | {r['p50_ms']:.2f} | {r['p95_ms']:.2f} | "
              f"{r['p99_ms']:.2f} | {r['errors']} |", file=sys.stderr)  # fmt: skip
    return 0 if all(r["errors"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
