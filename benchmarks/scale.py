"""Time one process against N data-parallel processes, and the cost of checkpoints.

    flock /tmp/mnist-cnn-bench.lock python benchmarks/scale.py --repeats 3 --out runs/bench-scale

Each configuration trains the same recipe on the same images (``--limit``, one epoch by default)
through the real command line (``mnist-cnn train``, ``--nproc`` for several processes) and reads
the training-loop time the run recorded. Prints one JSON line per run, a JSON summary with the
machine, and a Markdown table of medians. The checkpoint figures time ``Checkpoints.save`` on the
recipe's full training state.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from mnist_cnn import RECIPES
from mnist_cnn.checkpoint import Checkpoints, rng_states
from mnist_cnn.models import create_model

sys.path.insert(0, str(Path(__file__).parent))
from recipes import cpu_name  # noqa: E402

EXE = os.path.join(os.path.dirname(sys.executable), "mnist-cnn")


def train_seconds(out: Path, name: str, args: list[str]) -> float:
    run_dir = out / name
    shutil.rmtree(run_dir, ignore_errors=True)
    cmd = [EXE, "train", *args, "--runs-dir", str(out), "--name", name, "--no-progress", "-q"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    config = json.loads((run_dir / "config.json").read_text())
    return config["training"]["train_seconds"]


def checkpoint_cost(recipe: str, repeats: int, out: Path) -> dict:
    model = create_model(RECIPES[recipe].config.model)
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(2, 1, 28, 28)).sum().backward()
    opt.step()
    state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "best_state": model.state_dict(),
             "rng": [rng_states()], "history": []}  # fmt: skip
    store = Checkpoints(out / "checkpoint-cost", keep=2)
    times = []
    for step in range(repeats * 3):
        start = time.perf_counter()
        path = store.save(state, step)
        times.append(time.perf_counter() - start)
    load_start = time.perf_counter()
    store.latest()
    return {"save_ms": 1000 * statistics.median(times), "load_ms": 1000 * (time.perf_counter() - load_start),
            "bytes": path.stat().st_size}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default="deep")
    p.add_argument("--limit", type=int, default=10000, help="training images (default: 10000)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--nproc", type=int, nargs="+", default=[2], help="process counts to compare with 1 (default: 2)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=Path("runs/bench-scale"))
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    cores = len(os.sched_getaffinity(0))
    common = ["--recipe", args.recipe, "--limit", str(args.limit), "--epochs", str(args.epochs), "--val-split", "1000"]
    setups = {"1 process": [*common, "--threads", str(cores)]}
    setups.update({f"{n} processes": [*common, "--nproc", str(n)] for n in args.nproc})
    setups["1 process, checkpoint every 5 steps"] = [*setups["1 process"], "--checkpoint-every", "5"]
    results = {}
    for repeat in range(args.repeats):
        for label, cmd in setups.items():
            seconds = train_seconds(args.out, f"{label.replace(' ', '_').replace(',', '')}-{repeat}", cmd)
            print(json.dumps({"setup": label, "repeat": repeat, "train_seconds": seconds}), flush=True)
            results.setdefault(label, []).append(seconds)
    cost = checkpoint_cost(args.recipe, args.repeats, args.out)
    summary = {
        "machine": f"{cpu_name()}, {cores} cores",
        "torch": torch.__version__,
        "recipe": args.recipe, "images": args.limit, "epochs": args.epochs,
        "median_train_seconds": {k: statistics.median(v) for k, v in results.items()},
        "runs": results,
        "checkpoint": cost,
    }  # fmt: skip
    print(json.dumps(summary))
    base = summary["median_train_seconds"]["1 process"]
    print(
        f"\n{args.recipe}, {args.limit} images x {args.epochs} epoch(s), {summary['machine']}, median of {args.repeats}\n"
    )
    print("| setup | training time (median) | relative |\n|---|---|---|")
    for label, seconds in summary["median_train_seconds"].items():
        print(f"| {label} | {seconds:.1f} s | {seconds / base:.2f}x |")
    print(f"\ncheckpoint of {args.recipe}: {cost['bytes'] / 1e6:.1f} MB, save {cost['save_ms']:.0f} ms "
          f"(atomic, fsync), load and verify {cost['load_ms']:.0f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
