"""MNIST on disk and in memory: a strict IDX reader, verified sources, a seeded validation split.

Where the files come from, in this order:

1. an explicit folder (``data_dir=``, ``--data-dir`` or the ``MNIST_CNN_DATA`` variable);
2. the cache folder (``cache_dir=``, ``--cache-dir``, ``MNIST_CNN_CACHE``, else ``~/.cache/mnist-cnn``);
3. a download into the cache from the first mirror in :data:`MIRRORS` that answers with the right bytes.

Every file is checked against the published digests before it is used: the official MD5 of the
gzip file, or the SHA-256 of its decompressed content (the content is what matters; some
re-compressed copies differ in their gzip bytes only).
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import io
import logging
import math
import os
import urllib.request
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import DataError
from .folder import atomic_write

log = logging.getLogger(__name__)

# Public copies of the four original files, tried in order.
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)

# IDX type codes (third byte of the magic number) and the numpy types they hold, big-endian.
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
# No MNIST file is larger than this once decompressed (47 MB); a bigger one is refused, not read.
_MAX_IDX_BYTES = 64 * 1024 * 1024
_MAX_DOWNLOAD_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class FileSpec:
    name: str  # file name without .gz, as published
    shape: tuple[int, ...]  # expected array shape
    gzip_md5: tuple[str, ...]  # accepted MD5s of the .gz file
    sha256: str  # SHA-256 of the decompressed content


FILES = {
    "train_images": FileSpec(
        "train-images-idx3-ubyte",
        (60000, 28, 28),
        ("f68b3c2dcbeaaa9fbdd348bbdeb94873",),
        "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    ),
    "train_labels": FileSpec(
        "train-labels-idx1-ubyte",
        (60000,),
        ("d53e105ee54ea40749a09fcbcd1e9432",),
        "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    ),
    "test_images": FileSpec(
        "t10k-images-idx3-ubyte",
        (10000, 28, 28),
        ("9fb629c4189551a2d022fa330f9573f3",),
        "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    ),
    "test_labels": FileSpec(
        "t10k-labels-idx1-ubyte",
        (10000,),
        ("ec29112dd5afa0611ce80d1b7f02629c",),
        "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    ),
}

EXPECTED_NAMES = ", ".join(f"{spec.name}[.gz]" for spec in FILES.values())
# How to go on without a download; ends every error that finds no usable copy.
POINT_AT_FOLDER = (
    "Put the four MNIST files in a folder and pass --data-dir FOLDER (or set MNIST_CNN_DATA=FOLDER). "
    f"Expected names: {EXPECTED_NAMES}."
)


# ----------------------------------------------------------------------------- IDX format


def parse_idx(raw: bytes, name: str = "<bytes>") -> np.ndarray:
    """Decode the bytes of an IDX file, checking its magic number, dimensions and length."""
    if len(raw) < 4:
        raise DataError(f"{name}: not an IDX file ({len(raw)} bytes, shorter than the 4-byte magic number)")
    if raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise DataError(f"{name}: not an IDX file (bad magic number 0x{raw[:4].hex()})")
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise DataError(f"{name}: truncated IDX header (needs {header} bytes for {ndim} dimensions)")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + math.prod(dims) * dtype.itemsize
    if len(raw) != expected:
        what = "truncated" if len(raw) < expected else "has trailing bytes"
        raise DataError(
            f"{name}: {what}: header says {'x'.join(map(str, dims))} values of {dtype.itemsize} byte(s), "
            f"so {expected} bytes, but the file has {len(raw)}"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def _read_bytes(path: Path, name: str | None = None) -> tuple[bytes, bytes]:
    """Return (bytes on disk, decompressed bytes) of an IDX file that may be gzip-compressed.

    ``name`` is what error messages call the file (default: its path).
    """
    name = name or str(path)
    try:
        disk = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{name}: cannot read ({exc.strerror or exc})") from None
    return _decompressed(disk, name)


def _decompressed(disk: bytes, name: str) -> tuple[bytes, bytes]:
    """(``disk``, its content): gunzipped if it is gzip data, else ``disk`` itself."""
    if disk[:2] != b"\x1f\x8b":
        return disk, disk
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(disk)) as f:
            content = f.read(_MAX_IDX_BYTES + 1)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{name}: corrupt gzip data ({exc})") from None
    if len(content) > _MAX_IDX_BYTES:
        raise DataError(f"{name}: decompresses to more than {_MAX_IDX_BYTES} bytes; not an MNIST file")
    return disk, content


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (plain or gzip-compressed) into a numpy array.

    >>> images = read_idx("data/t10k-images-idx3-ubyte.gz")  # doctest: +SKIP
    >>> images.shape, images.dtype                            # doctest: +SKIP
    ((10000, 28, 28), dtype('uint8'))
    """
    path = Path(path)
    return parse_idx(_read_bytes(path)[1], str(path))


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write an array as an IDX file (gzip-compressed if the name ends in .gz)."""
    array = np.asarray(array)
    codes = {np.dtype(v).newbyteorder("="): k for k, v in _IDX_TYPES.items()}
    code = codes.get(array.dtype.newbyteorder("="))
    if code is None:
        raise ValueError(f"IDX cannot hold {array.dtype}; use one of {sorted(map(str, codes))}")
    header = bytes([0, 0, code, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    raw = header + array.astype(_IDX_TYPES[code]).tobytes()
    path = Path(path)
    atomic_write(path, gzip.compress(raw, mtime=0) if path.suffix == ".gz" else raw)


# ----------------------------------------------------------------------------- finding and verifying


def _locate(folder: Path, spec: FileSpec) -> Path | None:
    for candidate in (folder / (spec.name + ".gz"), folder / spec.name):
        if candidate.is_file():
            return candidate
    return None


_LOCAL_HINT = " The file is corrupt or not the original MNIST; delete it to download it again, or pass --no-verify for other IDX data."


def _check_digest(path: str | Path, disk: bytes, content: bytes, spec: FileSpec, hint: str = _LOCAL_HINT) -> str:
    """Return the content's SHA-256 if it is the published file; raise DataError otherwise."""
    sha = hashlib.sha256(content).hexdigest()
    if sha == spec.sha256:
        return sha
    if disk is not content and hashlib.md5(disk, usedforsecurity=False).hexdigest() in spec.gzip_md5:
        return sha
    raise DataError(
        f"{path}: digest mismatch: expected the decompressed content to have SHA-256 {spec.sha256} "
        f"(or the gzip file MD5 {' or '.join(spec.gzip_md5)}), got SHA-256 {sha}.{hint}"
    )


def _load_file(path: Path, spec: FileSpec, verify: bool) -> tuple[np.ndarray, str]:
    disk, content = _read_bytes(path)
    sha = _check_digest(path, disk, content, spec) if verify else hashlib.sha256(content).hexdigest()
    array = parse_idx(content, str(path))
    if array.dtype != np.uint8 or array.ndim != len(spec.shape) or array.shape[1:] != spec.shape[1:]:
        want = "N x " + " x ".join(map(str, spec.shape[1:])) if len(spec.shape) > 1 else "N labels"
        raise DataError(f"{path}: expected uint8 data shaped {want}, got {array.dtype} {array.shape}")
    return array, sha


def default_cache_dir() -> Path:
    """``MNIST_CNN_CACHE``, else ``$XDG_CACHE_HOME/mnist-cnn``, else ``~/.cache/mnist-cnn``."""
    if os.environ.get("MNIST_CNN_CACHE"):
        return Path(os.environ["MNIST_CNN_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mnist-cnn"


Opener = Callable[..., object]  # urllib.request.urlopen's signature: (url, timeout=...) -> response


def download_mnist(
    cache_dir: str | os.PathLike,
    mirrors: Sequence[str] | None = None,
    *,
    timeout: float = 30.0,
    opener: Opener = urllib.request.urlopen,
) -> Path:
    """Download the four files into ``cache_dir``, verifying each before it is moved into place.

    A file that is already there and verifies is kept. Each file is fetched into memory and
    written (atomically) only once its digest is right, so an interrupted or
    corrupt download never leaves a file that looks valid. Mirrors (default :data:`MIRRORS`)
    are tried in order.
    """
    mirrors = MIRRORS if mirrors is None else mirrors
    cache = Path(cache_dir).expanduser()
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create the cache folder {cache}: {exc.strerror or exc}") from None
    for spec in FILES.values():
        target = cache / (spec.name + ".gz")
        if target.is_file():
            try:
                _check_digest(target, *_read_bytes(target), spec)
                continue
            except DataError as exc:
                log.warning("%s; downloading it again", exc)
        failures = []
        for mirror in mirrors:
            url = mirror.rstrip("/") + "/" + spec.name + ".gz"
            try:
                _fetch_verified(url, target, spec, timeout, opener)
                log.info("downloaded %s", url)
                break
            except (OSError, DataError, ValueError, http.client.HTTPException) as exc:
                failures.append(f"  {url}: {exc}")
        else:
            raise DataError(
                f"could not download {spec.name}.gz from any mirror:\n" + "\n".join(failures) + "\n"
                "With no network: " + POINT_AT_FOLDER
            )
    return cache


def _fetch_verified(url: str, target: Path, spec: FileSpec, timeout: float, opener: Opener) -> None:
    """Download ``url`` into memory and write it to ``target`` only once its digest is right."""
    body = io.BytesIO()
    with opener(url, timeout=timeout) as response:
        while chunk := response.read(1 << 16):
            if body.tell() + len(chunk) > _MAX_DOWNLOAD_BYTES:
                raise DataError(f"response larger than {_MAX_DOWNLOAD_BYTES} bytes; not an MNIST file")
            body.write(chunk)
    disk = body.getvalue()
    _check_digest(url, *_decompressed(disk, url), spec, hint="")
    atomic_write(target, disk)


def find_data_dir(
    data_dir: str | os.PathLike | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    download: bool = True,
    mirrors: Sequence[str] | None = None,
) -> Path:
    """Resolve the folder that holds the four files, downloading into the cache if needed."""
    explicit = data_dir if data_dir is not None else os.environ.get("MNIST_CNN_DATA") or None
    if explicit is not None:
        folder = Path(explicit).expanduser()
        if not folder.is_dir():
            raise DataError(f"data folder {folder} does not exist; it should hold {EXPECTED_NAMES}")
        missing = [spec.name for spec in FILES.values() if _locate(folder, spec) is None]
        if missing:
            raise DataError(
                f"data folder {folder} lacks {', '.join(missing)} (plain or .gz); it should hold {EXPECTED_NAMES}"
            )
        return folder
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    if all(_locate(cache, spec) for spec in FILES.values()):
        return cache
    if not download:
        raise DataError(f"MNIST is not in the cache folder {cache} and downloading is off. {POINT_AT_FOLDER}")
    log.info("MNIST not found in %s; downloading", cache)
    return download_mnist(cache, mirrors)


# ----------------------------------------------------------------------------- the data set in memory


@dataclass(frozen=True)
class MNIST:
    """The whole data set as tensors: images uint8 (N, 28, 28), labels int64 (N,)."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    source: str  # the folder the files were read from
    digests: dict  # file name -> SHA-256 of its decompressed content


def load_mnist(
    data_dir: str | os.PathLike | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    download: bool = True,
    verify: bool = True,
    mirrors: Sequence[str] | None = None,
) -> MNIST:
    """Load MNIST into memory from the first source that has it (see the module docstring).

    ``verify=False`` skips the digest check, for other data sets in the same IDX layout.
    """
    folder = find_data_dir(data_dir, cache_dir=cache_dir, download=download, mirrors=mirrors)
    arrays, digests = {}, {}
    for key, spec in FILES.items():
        path = _locate(folder, spec)
        if path is None:  # the folder changed since find_data_dir looked
            raise DataError(f"data folder {folder} lacks {spec.name}; it should hold {EXPECTED_NAMES}")
        arrays[key], digests[spec.name] = _load_file(path, spec, verify)
    for split in ("train", "test"):
        n_img, n_lab = len(arrays[f"{split}_images"]), len(arrays[f"{split}_labels"])
        if n_img != n_lab:
            raise DataError(
                f"{folder}: {FILES[f'{split}_images'].name} holds {n_img} images but "
                f"{FILES[f'{split}_labels'].name} holds {n_lab} labels"
            )
        if arrays[f"{split}_labels"].max(initial=0) > 9:
            raise DataError(f"{folder}: {FILES[f'{split}_labels'].name} holds labels outside 0-9")
    tensors = {k: torch.from_numpy(v.copy()) for k, v in arrays.items()}
    for k in ("train_labels", "test_labels"):
        tensors[k] = tensors[k].long()
    return MNIST(**tensors, source=str(folder), digests=digests)


def parse_val_split(value: str | int | float) -> int | float:
    """``"5000"`` -> 5000 images; ``"0.3"`` -> 30% of the training set."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"validation split must be a count or a fraction, got {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"validation split must be a count or a fraction, got {value!r}")
    if number == 1 and not _integer_spelling(value):
        raise ValueError(f"validation split {value!r}: 1.0 is ambiguous: give a count or a fraction below 1")
    if 0 < number < 1:
        return number
    if number >= 1 and number == int(number):
        return int(number)
    if number == 0:
        return 0
    raise ValueError(f"validation split must be a count >= 0 or a fraction in (0, 1), got {value!r}")


def _integer_spelling(value) -> bool:
    """True for 1 and "1", False for 1.0 and "1.0" (is it a count or all of the set?)."""
    if isinstance(value, str):
        return value.strip().lstrip("+").isdigit()
    return isinstance(value, int)


def split_validation(n: int, val_split: int | float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded split of ``range(n)`` into (train indices, validation indices), both sorted.

    The split depends only on ``n``, ``val_split`` and ``seed`` — never on the device.
    """
    val_split = parse_val_split(val_split)
    count = round(n * val_split) if isinstance(val_split, float) else val_split
    if not 0 <= count < n:
        raise ValueError(f"validation split of {count} images leaves nothing to train on (the set has {n})")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[count:].sort().values, perm[:count].sort().values
