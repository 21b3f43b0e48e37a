"""Hostile clients against a live ``mnist-cnn serve`` (issue 17): memory, connections, slow and huge headers, overload.

Starts ``mnist-cnn serve`` (the shipped default model unless RUN is given) on a free loopback port, under an
open-file limit of 1,024 (``resource.setrlimit`` in the server's process, as ``ulimit -n 1024`` would), then:

- memory: 32 concurrent uploads to /v1/predict of a 680-byte lossless WebP of 3999x4000 white pixels (a
  16-megapixel decode each); the server's peak RSS (VmHWM, reset first) and its RSS 3 s afterwards, and answers
  by status (the image is blank, so 422 "no digit" is the right answer; 503 + Retry-After means "busy, retry");
- huge header: one request whose header is 150 MB; how soon it is refused (431 or 400), and the slowest of
  other clients' requests meanwhile;
- slow header: 100 clients that send a header line a second and never finish; when each is closed (and 408'd);
- connections: 1,100 sockets that connect and send nothing, then 80 probe requests (GET /healthz, 5 s timeout)
  from other clients over the next 8 s: the share answered;
- overload: 400 concurrent clients uploading a photo-like digit (JPEG) for 20 s with a 10 s client timeout:
  answers by status, timeouts, and whether every 503 carried Retry-After.

The server's log is scanned for tracebacks. The load generator runs on the same machine (and cores).

    python benchmarks/hostile.py                                  # all attacks, default model
    python benchmarks/hostile.py --only memory --json-out out.json
    python benchmarks/hostile.py RUN --serve-args "--decode-slots 1"

Prints JSON, then a short table on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import resource
import selectors
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_load import cpu_name, free_port, wait_ready  # noqa: E402

ATTACKS = ("memory", "huge_header", "slow_header", "connections", "overload")
NOFILE = 1024  # the server's open-file limit: the common default of `ulimit -n`
BOUNDARY = "hostile0boundary"


# ----------------------------------------------------------------------------- the server


def start_server(run: Path | None, port: int, serve_args: list[str], log) -> subprocess.Popen:
    def limit_files():  # in the child, before exec: what `ulimit -n 1024` does
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, hard if hard == resource.RLIM_INFINITY else max(hard, NOFILE)))  # fmt: skip

    cmd = [sys.executable, "-m", "mnist_cnn", "serve", *([str(run)] if run else []), "--port", str(port), *serve_args]
    return subprocess.Popen(cmd, stdout=log, stderr=log, preexec_fn=limit_files)


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def tree_rss_mb(pid: int) -> float:
    """VmRSS of ``pid`` and every process below it (decoding processes, their forkserver), added up: an upper
    bound on what they hold together, since pages they share (libraries) count once per process."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
    tree, grew = {pid}, True
    while grew:
        below = {child for child, parent in parents.items() if parent in tree} - tree
        tree, grew = tree | below, bool(below)
    total = 0.0
    for member in tree:
        with contextlib.suppress(OSError):
            total += rss_mb(member)
    return total


def reset_peak(pid: int) -> bool:
    """Reset the process's VmHWM to its current RSS (Linux: writing 5 to clear_refs)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class RssSampler(threading.Thread):
    """The highest VmRSS seen, sampled every 5 ms (a check on VmHWM, which cannot always be reset), of the
    server and, summed, of the server with its decoding processes."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peak, self.tree_peak, self.stop = pid, 0.0, 0.0, threading.Event()

    def run(self):
        while not self.stop.is_set():
            with contextlib.suppress(OSError):
                self.peak = max(self.peak, rss_mb(self.pid))
                self.tree_peak = max(self.tree_peak, tree_rss_mb(self.pid))
            time.sleep(0.005)


# ----------------------------------------------------------------------------- requests by hand


def multipart(data: bytes, filename: str, ctype: str) -> bytes:
    return (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{filename}\"\r\n"
            f"Content-Type: {ctype}\r\n\r\n").encode() + data + f"\r\n--{BOUNDARY}--\r\n".encode()  # fmt: skip


def upload_request(path: str, body: bytes, keep_alive: bool = False) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
            f"Content-Length: {len(body)}\r\n{'' if keep_alive else 'Connection: close'}\r\n\r\n").encode() + body  # fmt: skip


def exchange(port: int, request: bytes, timeout: float) -> tuple[int | None, dict, float]:
    """Send ``request`` on a new connection; (status or None on timeout or error, headers, seconds)."""
    t0 = time.perf_counter()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(request)
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return None, {}, time.perf_counter() - t0
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    if not head[0].startswith("HTTP/1.1 "):
        return None, {}, time.perf_counter() - t0
    headers = dict(line.lower().split(": ", 1) for line in head[1:] if ": " in line)
    return int(head[0][9:12]), headers, time.perf_counter() - t0


def probe(port: int, timeout: float = 5.0) -> tuple[int | None, float]:
    status, _, seconds = exchange(port, b"GET /healthz HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n", timeout)
    return status, seconds


def counts(statuses) -> dict[str, int]:
    out: dict[str, int] = {}
    for s in statuses:
        key = "timeout or error" if s is None else str(s)
        out[key] = out.get(key, 0) + 1
    return dict(sorted(out.items()))


# ----------------------------------------------------------------------------- the attacks


def webp_bomb() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (3999, 4000), 255).save(buffer, "WEBP", lossless=True)
    return buffer.getvalue()


def photo_digit() -> bytes:
    """A photo-like 640x480 JPEG of a dark '7' on uneven, noisy paper."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFilter

    rng = np.random.default_rng(0)
    paper = (200 + 30 * np.linspace(0, 1, 640)[None, :] + rng.normal(0, 6, (480, 640))).clip(0, 255)
    image = Image.fromarray(paper.astype(np.uint8), "L")
    ImageDraw.Draw(image).line([(250, 120), (400, 120), (300, 380)], fill=40, width=28)
    buffer = io.BytesIO()
    image.filter(ImageFilter.GaussianBlur(1.5)).convert("RGB").save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


def attack_memory(port: int, pid: int, clients: int = 32) -> dict:
    data = webp_bomb()
    request = upload_request("/v1/predict", multipart(data, "w.webp", "image/webp"))
    time.sleep(1.0)
    before, tree_before = rss_mb(pid), tree_rss_mb(pid)
    hwm_reset = reset_peak(pid)
    sampler = RssSampler(pid)
    sampler.start()
    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(lambda _: exchange(port, request, 120.0), range(clients)))
    seconds = time.perf_counter() - t0
    sampler.stop.set()
    sampler.join()
    hwm = rss_mb(pid, "VmHWM")
    time.sleep(3.0)
    statuses = [r[0] for r in results]
    return {
        "upload": f"lossless WebP, 3999x4000 white, {len(data)} bytes", "clients": clients,
        "answers": counts(statuses), "5xx_other_than_503": sum(1 for s in statuses if s and s >= 500 and s != 503),
        "503_with_retry_after": sum(1 for s, h, _ in results if s == 503 and "retry-after" in h),
        "rss_before_mb": round(before, 1), "peak_rss_mb": round(max(hwm if hwm_reset else 0, sampler.peak), 1),
        "peak_rss_source": "VmHWM (reset before) and 5 ms samples" if hwm_reset else "5 ms samples",
        "rss_after_3s_mb": round(rss_mb(pid), 1), "seconds": round(seconds, 2),
        "with_decoding_processes": {"rss_before_mb": round(tree_before, 1), "peak_rss_mb": round(sampler.tree_peak, 1),
                                    "rss_after_3s_mb": round(tree_rss_mb(pid), 1)},
        "slowest_answer_s": round(max(r[2] for r in results), 2),
    }  # fmt: skip


def attack_huge_header(port: int, megabytes: int = 150) -> dict:
    result: dict = {}
    others: list[float] = []
    done = threading.Event()

    def others_meanwhile():
        while not done.is_set():
            status, seconds = probe(port, 10.0)
            others.append(seconds if status == 200 else float("inf"))
            time.sleep(0.05)

    watcher = threading.Thread(target=others_meanwhile, daemon=True)
    watcher.start()
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    t0 = time.perf_counter()

    def send():
        chunk = b"a" * (1 << 20)
        sent = 0
        with contextlib.suppress(OSError):
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: bench\r\nX-Big: ")
            for _ in range(megabytes):
                s.sendall(chunk)
                sent += len(chunk)
            s.sendall(b"\r\n\r\n")
        result["bytes_sent_before_close"] = sent

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    answer = b""
    with contextlib.suppress(OSError):
        answer = s.recv(65536)
    result["answer_s"] = round(time.perf_counter() - t0, 3)
    sender.join(60)
    s.close()
    time.sleep(0.5)
    done.set()
    watcher.join(15)
    line = answer.split(b"\r\n", 1)[0].decode("latin-1")
    return {
        "header_mb": megabytes, "answer": line or "(connection closed without an answer)", **result,
        "other_requests_meanwhile": len(others),
        "slowest_other_request_s": round(max(others), 3) if others else None,
    }  # fmt: skip


def attack_slow_header(port: int, clients: int = 100, limit_s: float = 40.0) -> dict:
    sel = selectors.DefaultSelector()
    opened: dict[socket.socket, float] = {}
    closed_after: dict[socket.socket, float] = {}
    got_408: dict[socket.socket, float] = {}
    for _ in range(clients):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: bench\r\n")
        s.setblocking(False)
        opened[s] = time.perf_counter()
        sel.register(s, selectors.EVENT_READ)
    served = probe(port)[0]  # another client, while they trickle
    next_line = time.perf_counter() + 1.0
    deadline = time.perf_counter() + limit_s
    while len(closed_after) < clients and time.perf_counter() < deadline:
        for key, _ in sel.select(timeout=0.1):
            s = key.fileobj
            try:
                data = s.recv(65536)
            except OSError:
                data = b""
            if data.startswith(b"HTTP/1.1 408"):
                got_408[s] = time.perf_counter() - opened[s]
            if not data:
                closed_after[s] = time.perf_counter() - opened[s]
                sel.unregister(s)
        if time.perf_counter() >= next_line:  # one more header line a second from everyone still open
            for s in opened:
                if s not in closed_after:
                    with contextlib.suppress(OSError):
                        s.send(b"X-Slow: 1\r\n")
            next_line += 1.0
    for s in opened:
        s.close()
    times, answers = sorted(closed_after.values()), sorted(got_408.values())
    return {
        "clients": clients, "closed_by_server": len(times), "answered_408": len(answers),
        "answered_408_after_s_median": round(statistics.median(answers), 2) if answers else None,
        "answered_408_after_s_max": round(max(answers), 2) if answers else None,
        "closed_after_s_median": round(statistics.median(times), 2) if times else None,
        "closed_after_s_max": round(max(times), 2) if times else None,
        "other_client_meanwhile": served,
    }  # fmt: skip


def attack_connections(port: int, idle: int = 1100, probes: int = 80, over_s: float = 8.0) -> dict:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):  # this client needs more than 1,024 sockets itself
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))
    sockets = []
    t0 = time.perf_counter()
    for _ in range(idle):
        try:
            s = socket.socket()
            s.settimeout(2.0)
            s.connect(("127.0.0.1", port))
            sockets.append(s)
        except OSError:
            s.close()
    opened_s = time.perf_counter() - t0
    results = []
    with ThreadPoolExecutor(16) as pool:
        futures = []
        for _ in range(probes):
            futures.append(pool.submit(probe, port, 5.0))
            time.sleep(over_s / probes)
        results = [f.result() for f in futures]
    for s in sockets:
        s.close()
    statuses = [r[0] for r in results]
    latencies = sorted(r[1] for r in results if r[0] is not None)
    return {
        "idle_sockets": idle, "idle_connected": len(sockets), "seconds_to_open": round(opened_s, 2),
        "probes": probes, "probe_answers": counts(statuses),
        "probes_answered_pct": round(100 * sum(s is not None for s in statuses) / probes, 1),
        "probes_200_pct": round(100 * sum(s == 200 for s in statuses) / probes, 1),
        "probe_p95_s": round(latencies[int(0.95 * (len(latencies) - 1))], 3) if latencies else None,
    }  # fmt: skip


async def _uploader(port: int, request: bytes, until: float, timeout: float, tally: dict) -> None:
    writer = None
    while time.perf_counter() < until:
        try:
            if writer is None:
                reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
            writer.write(request)
            status, headers, length = await asyncio.wait_for(_read_head(reader), timeout)
            await asyncio.wait_for(reader.readexactly(length), timeout)
            tally[str(status)] = tally.get(str(status), 0) + 1
            if status == 503 and "retry-after" not in headers:
                tally["503_without_retry_after"] = tally.get("503_without_retry_after", 0) + 1
            if headers.get("connection") == "close":
                writer.close()
                writer = None
        except TimeoutError:
            tally["timeouts"] = tally.get("timeouts", 0) + 1
            writer = _drop(writer)
        except (OSError, asyncio.IncompleteReadError, ValueError):
            tally["connection errors"] = tally.get("connection errors", 0) + 1
            writer = _drop(writer)
            await asyncio.sleep(0.05)
    _drop(writer)


def _drop(writer):
    if writer is not None:
        writer.close()
    return None


async def _read_head(reader) -> tuple[int, dict, int]:
    status_line = await reader.readline()
    if not status_line.startswith(b"HTTP/1.1 "):
        raise ValueError("no status line")
    headers = {}
    while (line := await reader.readline()) not in (b"\r\n", b""):
        key, _, value = line.decode("latin-1").partition(":")
        headers[key.strip().lower()] = value.strip()
    return int(status_line[9:12]), headers, int(headers.get("content-length", 0))


def attack_overload(port: int, clients: int = 400, seconds: float = 20.0, timeout: float = 10.0) -> dict:
    data = photo_digit()
    request = upload_request("/v1/predict", multipart(data, "seven.jpg", "image/jpeg"), keep_alive=True)
    tally: dict[str, int] = {}

    async def main():
        until = time.perf_counter() + seconds
        await asyncio.gather(*(_uploader(port, request, until, timeout, tally) for _ in range(clients)))

    t0 = time.perf_counter()
    asyncio.run(main())
    answered = sum(v for k, v in tally.items() if k.isdigit())
    return {
        "upload": f"JPEG, 640x480 photo-like digit, {len(data):,} bytes", "clients": clients, "seconds": seconds,
        "client_timeout_s": timeout, "answers": dict(sorted(tally.items())), "answered": answered,
        "wall_s": round(time.perf_counter() - t0, 1),
        "answers_per_s": round(answered / (time.perf_counter() - t0), 1),
    }  # fmt: skip


# ----------------------------------------------------------------------------- main


def summary(results: dict) -> str:
    rows = ["| attack | result |", "|---|---|"]
    if m := results.get("memory"):
        rows.append(f"| memory: {m['clients']} x 16 MP WebP | peak RSS {m['peak_rss_mb']:.0f} MB (before "
                    f"{m['rss_before_mb']:.0f}), {m['rss_after_3s_mb']:.0f} MB 3 s after; answers {m['answers']}; "
                    f"5xx other than 503: {m['5xx_other_than_503']} |")  # fmt: skip
        t = m["with_decoding_processes"]
        if t["rss_before_mb"] > m["rss_before_mb"] + 1:  # the server has processes below it
            rows.append(f"| the same, with its decoding processes (RSS added up) | peak {t['peak_rss_mb']:.0f} MB "
                        f"(before {t['rss_before_mb']:.0f}), {t['rss_after_3s_mb']:.0f} MB 3 s after |")  # fmt: skip
    if h := results.get("huge_header"):
        rows.append(f"| {h['header_mb']} MB header | {h['answer']} after {h['answer_s']} s; others' slowest "
                    f"{h['slowest_other_request_s']} s |")  # fmt: skip
    if s := results.get("slow_header"):
        rows.append(f"| {s['clients']} slow-header clients | {s['answered_408']} answered 408 after "
                    f"{s['answered_408_after_s_median']} s (max {s['answered_408_after_s_max']} s), "
                    f"{s['closed_by_server']} closed after {s['closed_after_s_max']} s at most |")  # fmt: skip
    if c := results.get("connections"):
        rows.append(f"| {c['idle_sockets']} idle sockets, ulimit -n {NOFILE} | probes answered "
                    f"{c['probes_answered_pct']}% ({c['probes_200_pct']}% 200) |")  # fmt: skip
    if o := results.get("overload"):
        rows.append(f"| uploads at concurrency {o['clients']}, {o['seconds']:.0f} s | {o['answers']} |")
    return "\n".join(rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", nargs="?", type=Path, default=None, help="model folder (default: the shipped default model)")
    p.add_argument("--only", nargs="+", choices=ATTACKS, default=list(ATTACKS), help="attacks to run (default: all)")
    p.add_argument("--serve-args", default="", help="extra flags for mnist-cnn serve, e.g. '--decode-slots 1'")
    p.add_argument("--json-out", type=Path, default=None, help="also write the JSON here")
    p.add_argument("--server-log", type=Path, default=None, help="keep the server's log (access log included) here")
    args = p.parse_args(argv)

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    results: dict = {}
    with tempfile.TemporaryDirectory() as scratch:
        log_path = Path(scratch) / "server.log"
        with open(log_path, "w") as log:
            proc = start_server(args.run, port, args.serve_args.split(), log)
            try:
                wait_ready(url, timeout=180, proc=proc)
                with urllib.request.urlopen(url + "/v1/model") as r:
                    model = json.load(r)
                results["server"] = {"architecture": model["architecture"], "runtime": model["runtime"],
                                     "limits": model["limits"], "serve_args": args.serve_args,
                                     "open_file_limit": NOFILE, "rss_at_start_mb": round(rss_mb(proc.pid), 1)}  # fmt: skip
                for name in args.only:
                    print(f"{name} ...", file=sys.stderr, flush=True)
                    attack = globals()[f"attack_{name}"]
                    results[name] = attack(port, proc.pid) if name == "memory" else attack(port)
                    results[name]["server_alive"] = proc.poll() is None and probe(port, 10.0)[0] == 200
                    print(json.dumps(results[name]), file=sys.stderr, flush=True)
            finally:
                proc.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=30)
                if proc.poll() is None:
                    proc.kill()
        text = log_path.read_text(errors="replace")
        if args.server_log:
            args.server_log.write_text(text)
        results["server_log"] = {"lines": text.count("\n"), "tracebacks": text.count("Traceback"),
                                 "status_500_lines": text.count('"status":500')}  # fmt: skip
    results["machine"] = {"cpu": cpu_name(), "cores": len(os.sched_getaffinity(0)), "python": sys.version.split()[0]}
    text = json.dumps(results, indent=2)
    print(text)
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(text + "\n")
    print(summary(results), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
