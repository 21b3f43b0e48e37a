"""How fast images become answers: ``mnist-cnn predict`` on folders of each kind, and the preprocessing's steps.

Folders (made in a temporary folder from MNIST test digits, seeded):

- photos: digits rendered by ``mnist_cnn.synthetic`` as phone photos of handwriting (JPEG quality 85, 80-320 px);
- png28: the 28x28 test images themselves as PNG files (white on black, what a data set hands over);
- phone: photos of the same kind enlarged to phone sizes, 0.3, 3 and 12 megapixels in turn (JPEG quality 90):
  the cost of decoding and of finding one digit in a large image (the enlargement adds no detail).

For each folder, ``mnist-cnn predict FOLDER --workers N`` is run as a user runs it (a new process) for each
N in ``--workers`` (0: one process); files/s excludes the interpreter's start and the model's load, which are
measured apart (the same command on one file, right before each run) and reported as ``start_s``. Then, in this process, the
milliseconds per file of each step of ``preprocess_image`` on the photos (decode, ink map, framing).

    python benchmarks/image_path.py                      # 600 photos, 1,000 PNGs, 60 phone photos, workers 0 and 2
    python benchmarks/image_path.py --photos 300 --pngs 300 --phone 0 --workers 0 --json-out out.json

Prints JSON, then a short table on stderr. Figures depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from mnist_cnn.data import load_mnist
from mnist_cnn.decode import decode_image
from mnist_cnn.preprocess import drop_specks, ink_map, to_frame
from mnist_cnn.strokes import remove_lines
from mnist_cnn.synthetic import render_digit

EXE = [sys.executable, "-m", "mnist_cnn"]


PHONE_SIZES = ((640, 480), (2000, 1500), (4000, 3000))  # 0.3, 3 and 12 megapixels


def make_folders(root: Path, photos: int, pngs: int, phone: int = 0) -> dict[str, Path]:
    data = load_mnist()
    rng = np.random.default_rng(0)
    folders = {"photos": root / "photos", "png28": root / "png28"} | ({"phone": root / "phone"} if phone else {})
    for folder in folders.values():
        folder.mkdir()
    for i in range(phone):
        photo = render_digit(data.test_images[photos + i].numpy(), rng).convert("RGB")
        photo.resize(PHONE_SIZES[i % len(PHONE_SIZES)], Image.Resampling.BICUBIC).save(
            folders["phone"] / f"{i:05d}.jpg", quality=90
        )
    for i in range(photos):
        render_digit(data.test_images[i].numpy(), rng).convert("RGB").save(
            folders["photos"] / f"{i:05d}.jpg", quality=85
        )
    for i in range(pngs):
        Image.fromarray(data.test_images[i].numpy()).save(folders["png28"] / f"{i:05d}.png")
    return folders


def _wall(args: list) -> float:
    """Wall seconds of one ``mnist-cnn`` command."""
    start = time.perf_counter()
    subprocess.run([*EXE, *map(str, args)], check=True, capture_output=True)
    return time.perf_counter() - start


def cli_rates(folder: Path, workers: list[int], repeats: int) -> dict:
    """files/s of ``predict`` on the folder for each worker count, the start (the same command on one file)
    measured right before each run and subtracted from it: the median over ``repeats`` such pairs."""
    files = sorted(folder.iterdir())
    starts, walls = [], {n: [] for n in workers}
    for _ in range(repeats):
        for n in workers:
            starts.append(_wall(["predict", files[0], "--no-progress"]))
            walls[n].append(_wall(["predict", folder, "--no-progress", "--workers", n]) - starts[-1])
    jitter = max(starts) - min(starts)
    out = {"files": len(files), "start_s": round(statistics.median(starts), 3), "start_s_range": round(jitter, 3)}
    for n in workers:
        if min(walls[n]) <= 2 * jitter:  # a rate then measures the start's noise, not the files
            print(f"warning: {folder.name} with {n} workers takes {min(walls[n]):.2f} s beyond the start, within "
                  f"twice its jitter ({jitter:.2f} s): give it more files", file=sys.stderr)  # fmt: skip
        out[f"workers_{n}"] = {
            "wall_s": round(statistics.median(walls[n]) + out["start_s"], 3),
            "files_per_s": round(statistics.median(len(files) / max(w, 1e-3) for w in walls[n]), 1),
            "files_per_s_runs": sorted(round(len(files) / max(w, 1e-3), 1) for w in walls[n]),
        }
    return out


def steps(folder: Path, limit: int) -> dict:
    """Milliseconds per file of each preprocessing step, in this process."""
    spent = {"decode": 0.0, "ink": 0.0, "frame": 0.0}
    files = sorted(folder.iterdir())[:limit]
    for path in files:
        t0 = time.perf_counter()
        grey, record = decode_image(path)
        t1 = time.perf_counter()
        ink = ink_map(grey, record)
        t2 = time.perf_counter()
        ink, record.lines_removed = remove_lines(ink)
        to_frame(drop_specks(ink, record), record, even=True)
        t3 = time.perf_counter()
        spent["decode"] += t1 - t0
        spent["ink"] += t2 - t1
        spent["frame"] += t3 - t2
    return {k: round(1000 * v / len(files), 2) for k, v in spent.items()} | {"files": len(files)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--photos", type=int, default=600, help="photos in the photo folder (default: 600)")
    p.add_argument("--pngs", type=int, default=1000, help="28x28 PNGs in the PNG folder (default: 1000)")
    p.add_argument("--phone", type=int, default=60,
                   help="phone-sized photos (0.3, 3 and 12 MP in turn) in a third folder; 0: none (default: 60)")  # fmt: skip
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="predict --workers values (default: 0 2)")
    p.add_argument("--repeats", type=int, default=3, help="runs of each command; the median is kept (default: 3)")
    p.add_argument("--json-out", type=Path, default=None, help="also write the JSON here (default: none)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folders = make_folders(Path(tmp), args.photos, args.pngs, args.phone)
        result = {
            "benchmark": "image_path",
            "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
            "cli": {kind: cli_rates(folder, args.workers, args.repeats) for kind, folder in folders.items()},
            "steps_ms_per_photo": steps(folders["photos"], min(args.photos, 200)),
        }
    text = json.dumps(result, indent=2)
    print(text)
    if args.json_out:
        args.json_out.write_text(text + "\n")
    print("\n| folder | files | start (s) | " + " | ".join(f"files/s, workers {n}" for n in args.workers) + " |",
          file=sys.stderr)  # fmt: skip
    print("|---" * (3 + len(args.workers)) + "|", file=sys.stderr)
    for kind, row in result["cli"].items():
        rates = " | ".join(str(row[f"workers_{n}"]["files_per_s"]) for n in args.workers)
        print(f"| {kind} | {row['files']} | {row['start_s']} | {rates} |", file=sys.stderr)
    print(f"\nper photo, ms: {result['steps_ms_per_photo']}", file=sys.stderr)


if __name__ == "__main__":
    main()
