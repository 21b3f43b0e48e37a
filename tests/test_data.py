"""Tests for mnist_cnn.data: the IDX reader, loading and verifying MNIST, finding it, downloading it
(from a real HTTP server on 127.0.0.1, never the internet) and the seeded validation split."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.client
import http.server
import os
import shutil
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch

import mnist_cnn.data as data
from conftest import make_idx_folder
from mnist_cnn.data import (
    FILES,
    DataError,
    default_cache_dir,
    download_mnist,
    find_data_dir,
    load_mnist,
    parse_idx,
    parse_val_split,
    read_idx,
    split_validation,
    write_idx,
)

NAMES = [spec.name for spec in FILES.values()]


def idx_bytes(array: np.ndarray, code: int = 0x08) -> bytes:
    """The IDX encoding of a uint8 array, written by hand (independent of write_idx)."""
    header = bytes([0, 0, code, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(">u1").tobytes()


def corrupt_gzip(payload: bytes = b"") -> bytes:
    """A valid 10-byte gzip header followed by bytes that are not deflate data."""
    return gzip.compress(payload or b"\x00" * 100, mtime=0)[:10] + b"\xff" * 64


def cache_entries(folder: Path) -> list[str]:
    return sorted(os.listdir(folder)) if folder.exists() else []


# ============================================================================= IDX reader


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize(
    "array",
    [
        np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4),
        np.array([-128, -1, 0, 127], dtype=np.int8),
        np.array([[-32768, 1], [256, 32767]], dtype=np.int16),
        np.array([-(2**31), 2**31 - 1, 65536], dtype=np.int32),
        np.array([1.5, -0.25, 3e38], dtype=np.float32),
        np.array([[1e-300, -2.5]], dtype=np.float64),
    ],
    ids=["uint8-3d", "int8", "int16", "int32", "float32", "float64"],
)
def test_idx_round_trip(tmp_path, array, suffix):
    path = tmp_path / ("x-idx" + suffix)
    write_idx(path, array)
    disk = path.read_bytes()
    assert (disk[:2] == b"\x1f\x8b") == (suffix == ".gz")  # compressed exactly when named .gz
    back = read_idx(path)
    assert back.dtype == array.dtype.newbyteorder("=")
    assert back.shape == array.shape
    np.testing.assert_array_equal(back, array)


def test_write_idx_is_big_endian_idx(tmp_path):
    """The bytes on disk follow the IDX spec: magic 00 00 type ndim, big-endian dims and values."""
    path = tmp_path / "x"
    write_idx(path, np.array([1, 256], dtype=np.int16))
    assert path.read_bytes() == b"\x00\x00\x0b\x01" + b"\x00\x00\x00\x02" + b"\x00\x01\x01\x00"


def test_parse_idx_decodes_big_endian_values():
    raw = (
        b"\x00\x00\x0c\x01"
        + (3).to_bytes(4, "big")
        + b"".join(v.to_bytes(4, "big", signed=True) for v in (1, -2, 70000))
    )
    out = parse_idx(raw)
    assert out.dtype == np.dtype("int32")  # native byte order, usable directly
    assert out.tolist() == [1, -2, 70000]


def test_write_idx_refuses_a_type_idx_cannot_hold(tmp_path):
    with pytest.raises(ValueError, match="IDX cannot hold int64"):
        write_idx(tmp_path / "x", np.arange(3, dtype=np.int64))
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    "magic, shown",
    [
        (b"\x01\x00\x08\x01", "0x01000801"),  # first byte not zero
        (b"\x00\x07\x08\x01", "0x00070801"),  # second byte not zero
        (b"\x00\x00\x07\x01", "0x00000701"),  # unknown type code
        (b"\x1f\x8b\x08\x00", "0x1f8b0800"),  # e.g. a gzip header where IDX content was expected
    ],
)
def test_parse_idx_bad_magic(magic, shown):
    with pytest.raises(DataError) as info:
        parse_idx(magic + (4).to_bytes(4, "big") + b"abcd", "some-file")
    msg = str(info.value)
    assert msg.startswith("some-file: ")
    assert "bad magic number" in msg and shown in msg


def test_read_idx_bad_magic_names_the_file(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(b"PK\x03\x04" + b"\x00" * 20)
    with pytest.raises(DataError, match="bad magic number") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_parse_idx_truncated_header():
    raw = b"\x00\x00\x08\x03" + (10).to_bytes(4, "big") + (28).to_bytes(4, "big")  # 3 dims, only 2 given
    with pytest.raises(DataError, match=r"f: truncated IDX header \(needs 16 bytes for 3 dimensions\)"):
        parse_idx(raw, "f")


def test_parse_idx_zero_dimensions_is_refused():
    with pytest.raises(DataError, match="truncated IDX header"):
        parse_idx(b"\x00\x00\x08\x00", "f")


def test_read_idx_truncated_data(tmp_path):
    raw = idx_bytes(np.zeros((5, 28, 28), np.uint8))
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(raw[:-100])
    with pytest.raises(DataError) as info:
        read_idx(path)
    msg = str(info.value)
    assert str(path) in msg
    assert "truncated" in msg
    assert "5x28x28" in msg and str(len(raw)) in msg and str(len(raw) - 100) in msg


def test_read_idx_truncated_data_in_gzip(tmp_path):
    raw = idx_bytes(np.zeros(10, np.uint8))
    path = tmp_path / "labels.gz"
    path.write_bytes(gzip.compress(raw[:-3]))  # valid gzip around a truncated IDX file
    with pytest.raises(DataError, match="truncated") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_read_idx_trailing_bytes(tmp_path):
    path = tmp_path / "labels"
    path.write_bytes(idx_bytes(np.arange(10, dtype=np.uint8)) + b"\x00")
    with pytest.raises(DataError, match="has trailing bytes") as info:
        read_idx(path)
    assert str(path) in str(info.value)
    assert "so 18 bytes, but the file has 19" in str(info.value)


def test_read_idx_zero_byte_file(tmp_path):
    path = tmp_path / "t10k-labels-idx1-ubyte"
    path.write_bytes(b"")
    with pytest.raises(DataError, match="not an IDX file") as info:
        read_idx(path)
    assert str(path) in str(info.value) and "0 bytes" in str(info.value)


def test_read_idx_missing_file(tmp_path):
    path = tmp_path / "nope.gz"
    with pytest.raises(DataError, match="cannot read") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_read_idx_truncated_gzip(tmp_path):
    whole = gzip.compress(idx_bytes(np.arange(200, dtype=np.uint8) % 10))
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DataError, match="corrupt gzip data") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_read_idx_gzip_with_bad_crc(tmp_path):
    whole = bytearray(gzip.compress(idx_bytes(np.arange(200, dtype=np.uint8) % 10)))
    whole[-8] ^= 0xFF  # the CRC32 in the gzip trailer
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    path.write_bytes(bytes(whole))
    with pytest.raises(DataError, match="corrupt gzip data") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_read_idx_corrupt_gzip_body(tmp_path):
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    path.write_bytes(corrupt_gzip())
    with pytest.raises(DataError, match="corrupt gzip data") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_parse_idx_dimensions_overflowing_int64():
    dims = (2**22, 2**21, 2**21)  # product is 2**64: wraps to 0 in int64
    raw = b"\x00\x00\x08\x03" + b"".join(d.to_bytes(4, "big") for d in dims)
    with pytest.raises(DataError):
        parse_idx(raw, "crafted")


def test_read_real_test_images(mnist_dir):
    images = read_idx(mnist_dir / "t10k-images-idx3-ubyte.gz")
    assert images.shape == (10000, 28, 28)
    assert images.dtype == np.uint8
    assert images.min() == 0 and images.max() == 255
    labels = read_idx(mnist_dir / "t10k-labels-idx1-ubyte.gz")
    assert labels.shape == (10000,)
    assert labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]  # the well-known first test digits


# ============================================================================= load_mnist


def test_load_mnist_unverified_small_folder(tmp_path):
    folder = make_idx_folder(tmp_path / "small", n_train=60, n_test=20, seed=3)
    ds = load_mnist(folder, verify=False)
    assert ds.source == str(folder)
    assert ds.train_images.shape == (60, 28, 28) and ds.train_images.dtype == torch.uint8
    assert ds.test_images.shape == (20, 28, 28) and ds.test_images.dtype == torch.uint8
    assert ds.train_labels.shape == (60,) and ds.train_labels.dtype == torch.int64
    assert ds.test_labels.shape == (20,) and ds.test_labels.dtype == torch.int64
    np.testing.assert_array_equal(ds.train_images.numpy(), read_idx(folder / "train-images-idx3-ubyte.gz"))
    np.testing.assert_array_equal(ds.test_labels.numpy(), read_idx(folder / "t10k-labels-idx1-ubyte.gz"))
    assert set(ds.digests) == set(NAMES)
    for name in NAMES:
        content = gzip.decompress((folder / f"{name}.gz").read_bytes())
        assert ds.digests[name] == hashlib.sha256(content).hexdigest()


def test_load_mnist_verify_rejects_other_data(tmp_path):
    folder = make_idx_folder(tmp_path / "small")
    with pytest.raises(DataError) as info:
        load_mnist(folder)  # verify=True is the default
    msg = str(info.value)
    assert str(folder / "train-images-idx3-ubyte.gz") in msg
    assert "digest mismatch" in msg
    assert FILES["train_images"].sha256 in msg
    assert "--no-verify" in msg


def test_load_mnist_plain_files(tmp_path):
    folder = make_idx_folder(tmp_path / "plain", n_train=30, n_test=10, gz=False)
    assert not list(folder.glob("*.gz"))
    ds = load_mnist(folder, verify=False)
    assert len(ds.train_images) == 30 and len(ds.test_labels) == 10


def test_load_mnist_prefers_gz_when_both_exist(tmp_path):
    folder = make_idx_folder(tmp_path / "both", n_train=30, n_test=10, gz=True)
    write_idx(folder / "train-labels-idx1-ubyte", np.zeros(31, np.uint8))  # would not match the images
    ds = load_mnist(folder, verify=False)
    assert len(ds.train_labels) == 30


@pytest.mark.parametrize("split, images, labels", [("train", 60, 59), ("test", 20, 21)])
def test_load_mnist_count_mismatch(tmp_path, split, images, labels):
    folder = make_idx_folder(tmp_path / "small", n_train=60, n_test=20)
    key = f"{split}_labels"
    write_idx(folder / f"{FILES[key].name}.gz", np.zeros(labels, np.uint8))
    with pytest.raises(DataError) as info:
        load_mnist(folder, verify=False)
    msg = str(info.value)
    assert FILES[f"{split}_images"].name in msg and FILES[key].name in msg
    assert f"{images} images" in msg and f"{labels} labels" in msg


@pytest.mark.parametrize("key", ["train_labels", "test_labels"])
def test_load_mnist_labels_out_of_range(tmp_path, key):
    folder = make_idx_folder(tmp_path / "small", n_train=60, n_test=20)
    n = 60 if key == "train_labels" else 20
    labels = np.zeros(n, np.uint8)
    labels[5] = 10
    write_idx(folder / f"{FILES[key].name}.gz", labels)
    with pytest.raises(DataError, match="labels outside 0-9") as info:
        load_mnist(folder, verify=False)
    assert FILES[key].name in str(info.value)


def test_load_mnist_label_nine_is_fine(tmp_path):
    folder = make_idx_folder(tmp_path / "small", n_train=60, n_test=20)
    write_idx(folder / "train-labels-idx1-ubyte.gz", np.full(60, 9, np.uint8))
    assert int(load_mnist(folder, verify=False).train_labels.max()) == 9


@pytest.mark.parametrize(
    "key, array, shown",
    [
        ("train_images", np.zeros((60, 28, 27), np.uint8), "(60, 28, 27)"),
        ("test_images", np.zeros((20, 784), np.uint8), "(20, 784)"),
        ("test_images", np.zeros((20, 28, 28), np.float32), "float32"),
        ("train_labels", np.zeros((60, 1), np.uint8), "(60, 1)"),
    ],
    ids=["28x27", "flat", "float", "labels-2d"],
)
def test_load_mnist_wrong_shape_or_type(tmp_path, key, array, shown):
    folder = make_idx_folder(tmp_path / "small", n_train=60, n_test=20)
    path = folder / f"{FILES[key].name}.gz"
    write_idx(path, array)
    with pytest.raises(DataError) as info:
        load_mnist(folder, verify=False)
    msg = str(info.value)
    assert str(path) in msg and shown in msg
    assert ("28 x 28" in msg) if key.endswith("images") else ("N labels" in msg)


def test_load_mnist_real_data_set(mnist):
    assert mnist.train_images.shape == (60000, 28, 28) and mnist.train_images.dtype == torch.uint8
    assert mnist.train_labels.shape == (60000,) and mnist.train_labels.dtype == torch.int64
    assert mnist.test_images.shape == (10000, 28, 28)
    assert mnist.test_labels.shape == (10000,) and mnist.test_labels.dtype == torch.int64
    assert mnist.digests == {spec.name: spec.sha256 for spec in FILES.values()}
    assert torch.bincount(mnist.train_labels).tolist()[:2] == [5923, 6742]  # published class counts


def test_load_mnist_verifies_plain_copies_by_content(tmp_path, mnist_dir):
    """Decompressed originals verify by SHA-256 of their content (there is no gzip MD5 to check)."""
    folder = tmp_path / "mixed"
    folder.mkdir()
    for name in NAMES:
        if "labels" in name:
            (folder / name).write_bytes(gzip.decompress((mnist_dir / f"{name}.gz").read_bytes()))
        else:
            (folder / f"{name}.gz").symlink_to(mnist_dir / f"{name}.gz")
    ds = load_mnist(folder)
    assert ds.digests == {spec.name: spec.sha256 for spec in FILES.values()}
    assert ds.test_labels[:3].tolist() == [7, 2, 1]


# ============================================================================= find_data_dir


def test_find_data_dir_missing_folder(tmp_path):
    folder = tmp_path / "no-such-folder"
    with pytest.raises(DataError) as info:
        find_data_dir(folder)
    msg = str(info.value)
    assert str(folder) in msg and "does not exist" in msg
    for name in NAMES:
        assert name in msg


def test_find_data_dir_a_file_is_not_a_folder(tmp_path):
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(DataError, match="does not exist"):
        find_data_dir(path)


@pytest.mark.parametrize("missing", NAMES)
def test_find_data_dir_names_the_missing_file(tmp_path, missing):
    folder = make_idx_folder(tmp_path / "small")
    (folder / f"{missing}.gz").unlink()
    with pytest.raises(DataError) as info:
        find_data_dir(folder)
    msg = str(info.value)
    assert f"lacks {missing} (plain or .gz)" in msg
    assert str(folder) in msg


def test_find_data_dir_plain_and_gz_files_count(tmp_path):
    folder = make_idx_folder(tmp_path / "small", gz=False)
    assert find_data_dir(folder) == folder


def test_find_data_dir_honours_env(tmp_path, monkeypatch):
    folder = make_idx_folder(tmp_path / "from-env", n_train=12, n_test=4)
    monkeypatch.setenv("MNIST_CNN_DATA", str(folder))
    assert find_data_dir() == folder
    assert len(load_mnist(verify=False).train_images) == 12


def test_find_data_dir_env_folder_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("MNIST_CNN_DATA", str(tmp_path / "gone"))
    with pytest.raises(DataError, match="gone does not exist"):
        find_data_dir(download=True)  # an explicit folder is never replaced by a download


def test_find_data_dir_explicit_beats_env(tmp_path, monkeypatch):
    explicit = make_idx_folder(tmp_path / "explicit")
    monkeypatch.setenv("MNIST_CNN_DATA", str(tmp_path / "elsewhere"))
    assert find_data_dir(explicit) == explicit


def test_find_data_dir_no_download_and_empty_cache(tmp_path):
    cache = tmp_path / "empty-cache"
    with pytest.raises(DataError) as info:
        find_data_dir(cache_dir=cache, download=False)
    msg = str(info.value)
    assert str(cache) in msg
    assert "--data-dir" in msg and "MNIST_CNN_DATA" in msg
    assert "train-images-idx3-ubyte" in msg


def test_find_data_dir_uses_a_full_cache_without_downloading(tmp_path, monkeypatch):
    cache = make_idx_folder(tmp_path / "cache-full")
    monkeypatch.setattr(data, "download_mnist", lambda *a, **k: pytest.fail("must not download"))
    assert find_data_dir(cache_dir=cache) == cache


def test_default_cache_dir(tmp_path, monkeypatch):
    assert default_cache_dir() == tmp_path / "cache"  # set by conftest's autouse fixture
    monkeypatch.delenv("MNIST_CNN_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "mnist-cnn"


def test_find_data_dir_default_cache_is_mnist_cnn_cache(tmp_path):
    cache = make_idx_folder(tmp_path / "cache")  # where MNIST_CNN_CACHE points
    assert find_data_dir(download=False) == cache


# ============================================================================= download_mnist


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder; also /half/NAME (half of NAME with the full Content-Length, then closes)
    and /chunked-cut/NAME (chunked encoding, cut off mid-stream). Records every path asked for."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.server.requests.append(self.path)
        for prefix in ("/half/", "/chunked-cut/"):
            if self.path.startswith(prefix):
                body = (Path(self.directory) / "good" / self.path[len(prefix) :]).read_bytes()
                self.send_response(200)
                if prefix == "/half/":
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body[: len(body) // 2])
                else:
                    self.protocol_version = "HTTP/1.1"
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    part = body[: len(body) // 2]
                    self.wfile.write(b"%x\r\n" % len(part) + part + b"\r\n" + b"%x\r\n" % len(body) + b"xx")
                self.wfile.flush()
                self.close_connection = True
                return
        super().do_GET()


@dataclass
class Server:
    root: Path
    base: str
    requests: list = field(default_factory=list)

    def mirror(self, sub: str) -> str:
        return f"{self.base}/{sub}/"

    def asked(self, sub: str) -> list[str]:
        return [p.rsplit("/", 1)[1] for p in self.requests if p.startswith(f"/{sub}/")]


@pytest.fixture
def server(tmp_path, mnist_dir):
    """A local HTTP server: /good/ serves the real files, other folders are made by the tests."""
    root = tmp_path / "www"
    (root / "good").mkdir(parents=True)
    for name in NAMES:
        (root / "good" / f"{name}.gz").symlink_to(mnist_dir / f"{name}.gz")
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(root)))
    httpd.requests = []
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield Server(root, f"http://127.0.0.1:{httpd.server_address[1]}", httpd.requests)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


@pytest.fixture
def closed_port_url():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/mnist/"  # nothing listens: connection refused


def assert_real_files_in(cache: Path, mnist_dir: Path) -> None:
    assert cache_entries(cache) == sorted(f"{name}.gz" for name in NAMES)  # no .part left over
    for name in NAMES:
        assert (cache / f"{name}.gz").read_bytes() == (mnist_dir / f"{name}.gz").read_bytes()


def test_download_skips_a_404_mirror(tmp_path, server, mnist_dir):
    cache = tmp_path / "dl-cache"
    assert download_mnist(cache, [server.mirror("missing"), server.mirror("good")], timeout=10) == cache
    assert_real_files_in(cache, mnist_dir)
    assert server.asked("missing") == [f"{name}.gz" for name in NAMES]
    assert server.asked("good") == [f"{name}.gz" for name in NAMES]
    ds = load_mnist(cache_dir=cache, download=False)
    assert ds.source == str(cache)
    assert ds.train_images.shape == (60000, 28, 28) and ds.test_labels.shape == (10000,)


def _serve_bad(server: Server, kind: str, mnist_dir: Path) -> str:
    """A mirror folder whose train-labels file is bad in the given way (other files: 404)."""
    folder = server.root / kind
    folder.mkdir()
    target = folder / "train-labels-idx1-ubyte.gz"
    real = (mnist_dir / "train-labels-idx1-ubyte.gz").read_bytes()
    if kind == "truncated":
        target.write_bytes(real[: len(real) // 2])
    elif kind == "other-idx":  # a well-formed IDX labels file, just not MNIST's
        write_idx(target, np.zeros(60000, np.uint8))
    elif kind == "not-gzip":
        target.write_bytes(b"<html>not found</html>")
    elif kind == "garbage-after-gzip-header":
        target.write_bytes(corrupt_gzip())
    return server.mirror(kind)


@pytest.mark.parametrize("kind", ["truncated", "other-idx", "not-gzip", "garbage-after-gzip-header"])
def test_download_skips_a_mirror_with_corrupt_bytes(tmp_path, server, mnist_dir, kind):
    cache = tmp_path / "dl-cache"
    download_mnist(cache, [_serve_bad(server, kind, mnist_dir), server.mirror("good")], timeout=10)
    assert_real_files_in(cache, mnist_dir)
    assert "train-labels-idx1-ubyte.gz" in server.asked(kind)
    assert "train-labels-idx1-ubyte.gz" in server.asked("good")


def test_download_all_mirrors_bad(tmp_path, server, mnist_dir, closed_port_url):
    cache = tmp_path / "dl-cache"
    bad = server.root / "corrupt"
    bad.mkdir()
    for name in NAMES:
        real = (mnist_dir / f"{name}.gz").read_bytes()
        (bad / f"{name}.gz").write_bytes(real[: len(real) // 3])
    mirrors = [server.mirror("missing"), closed_port_url, server.mirror("corrupt")]
    with pytest.raises(DataError) as info:
        download_mnist(cache, mirrors, timeout=10)
    msg = str(info.value)
    assert "could not download train-images-idx3-ubyte.gz from any mirror" in msg
    for mirror in mirrors:
        assert mirror + "train-images-idx3-ubyte.gz" in msg
    assert "404" in msg
    assert "--data-dir" in msg and "MNIST_CNN_DATA" in msg
    assert cache_entries(cache) == []  # nothing that looks like MNIST, no .part file


def test_download_mirror_without_trailing_slash(tmp_path, server, mnist_dir):
    cache = tmp_path / "dl-cache"
    download_mnist(cache, [server.mirror("good").rstrip("/")], timeout=10)
    assert_real_files_in(cache, mnist_dir)


def test_download_interrupted_by_server_leaves_nothing(tmp_path, server):
    cache = tmp_path / "dl-cache"
    with pytest.raises(DataError) as info:
        download_mnist(cache, [server.mirror("half")], timeout=10)
    assert server.mirror("half") + "train-images-idx3-ubyte.gz" in str(info.value)
    assert "corrupt gzip data" in str(info.value)  # urllib returns the short body; the check catches it
    assert cache_entries(cache) == []


def test_download_interrupted_chunked_leaves_nothing(tmp_path, server):
    cache = tmp_path / "dl-cache"
    with pytest.raises((DataError, http.client.HTTPException)):
        download_mnist(cache, [server.mirror("chunked-cut")], timeout=10)
    assert cache_entries(cache) == []


def test_download_interrupted_chunked_falls_back_to_next_mirror(tmp_path, server, mnist_dir):
    cache = tmp_path / "dl-cache"
    download_mnist(cache, [server.mirror("chunked-cut"), server.mirror("good")], timeout=10)
    assert_real_files_in(cache, mnist_dir)


class _FakeResponse:
    def __init__(self, body: bytes, fail_after: int | None = None):
        self.body, self.pos, self.fail_after = body, 0, fail_after

    def read(self, n: int) -> bytes:
        if self.fail_after is not None and self.pos >= self.fail_after:
            raise ConnectionResetError("connection reset by peer")
        end = self.pos + n if self.fail_after is None else min(self.pos + n, self.fail_after)
        chunk, self.pos = self.body[self.pos : end], end
        return chunk

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_download_interrupted_by_opener_leaves_nothing(tmp_path, mnist_dir):
    cache = tmp_path / "dl-cache"
    calls = []

    def opener(url, timeout):
        calls.append(url)
        body = (mnist_dir / url.rsplit("/", 1)[1]).read_bytes()
        return _FakeResponse(body, fail_after=len(body) // 2)

    with pytest.raises(DataError, match="connection reset by peer") as info:
        download_mnist(cache, ["http://127.0.0.1:9/a/", "http://127.0.0.1:9/b/"], opener=opener)
    assert calls == [
        "http://127.0.0.1:9/a/train-images-idx3-ubyte.gz",
        "http://127.0.0.1:9/b/train-images-idx3-ubyte.gz",
    ]
    assert "http://127.0.0.1:9/b/train-images-idx3-ubyte.gz" in str(info.value)
    assert cache_entries(cache) == []


def test_download_refuses_an_oversized_response(tmp_path):
    cache = tmp_path / "dl-cache"

    def opener(url, timeout):
        return _FakeResponse(b"\x00" * (data._MAX_DOWNLOAD_BYTES + 1))

    with pytest.raises(DataError, match="larger than"):
        download_mnist(cache, ["http://127.0.0.1:9/"], opener=opener)
    assert cache_entries(cache) == []


def test_download_passes_the_timeout_to_the_opener(tmp_path, mnist_dir):
    seen = []

    def opener(url, timeout):
        seen.append(timeout)
        return _FakeResponse((mnist_dir / url.rsplit("/", 1)[1]).read_bytes())

    download_mnist(tmp_path / "dl-cache", ["http://127.0.0.1:9/"], timeout=7.5, opener=opener)
    assert seen == [7.5] * 4


def test_download_keeps_verified_cached_files(tmp_path, server, mnist_dir):
    cache = tmp_path / "dl-cache"
    cache.mkdir()
    shutil.copy(mnist_dir / "train-images-idx3-ubyte.gz", cache)
    # a re-compressed copy: different gzip bytes (no MD5 match), same content (SHA-256 match)
    content = gzip.decompress((mnist_dir / "t10k-labels-idx1-ubyte.gz").read_bytes())
    recompressed = gzip.compress(content, compresslevel=1, mtime=12345)
    (cache / "t10k-labels-idx1-ubyte.gz").write_bytes(recompressed)
    download_mnist(cache, [server.mirror("good")], timeout=10)
    assert server.asked("good") == ["train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz"]
    assert (cache / "t10k-labels-idx1-ubyte.gz").read_bytes() == recompressed  # kept as it was


def test_download_with_everything_cached_opens_nothing(tmp_path, mnist_dir):
    cache = tmp_path / "dl-cache"
    cache.mkdir()
    for name in NAMES:
        shutil.copy(mnist_dir / f"{name}.gz", cache)
    calls = []
    assert download_mnist(cache, ["http://127.0.0.1:9/"], opener=lambda url, timeout: calls.append(url)) == cache
    assert calls == []


@pytest.mark.parametrize("corruption", ["not-gzip", "truncated", "other-content", "garbage-after-gzip-header"])
def test_download_replaces_a_corrupt_cached_file(tmp_path, server, mnist_dir, corruption):
    cache = tmp_path / "dl-cache"
    cache.mkdir()
    for name in NAMES:
        shutil.copy(mnist_dir / f"{name}.gz", cache)
    target = cache / "t10k-labels-idx1-ubyte.gz"
    real = target.read_bytes()
    if corruption == "not-gzip":
        target.write_bytes(b"\x00\x00\x08\x01garbage")
    elif corruption == "truncated":
        target.write_bytes(real[: len(real) // 2])
    elif corruption == "other-content":
        write_idx(target, np.zeros(10000, np.uint8))
    else:
        target.write_bytes(corrupt_gzip())
    download_mnist(cache, [server.mirror("good")], timeout=10)
    assert server.asked("good") == ["t10k-labels-idx1-ubyte.gz"]
    assert_real_files_in(cache, mnist_dir)


def test_find_data_dir_downloads_into_the_cache(tmp_path, server, mnist_dir):
    cache = tmp_path / "dl-cache"
    mirrors = [server.mirror("missing"), server.mirror("good")]
    assert find_data_dir(cache_dir=cache, mirrors=mirrors) == cache
    assert_real_files_in(cache, mnist_dir)
    asked = len(server.requests)
    # Now everything is there: load_mnist reads the cache and downloads nothing more.
    ds = load_mnist(cache_dir=cache, mirrors=mirrors)
    assert len(server.requests) == asked
    assert ds.source == str(cache) and len(ds.test_images) == 10000


def test_find_data_dir_completes_a_partial_cache(tmp_path, server, mnist_dir):
    cache = tmp_path / "dl-cache"
    cache.mkdir()
    shutil.copy(mnist_dir / "t10k-labels-idx1-ubyte.gz", cache)
    assert find_data_dir(cache_dir=cache, mirrors=[server.mirror("good")]) == cache
    assert "t10k-labels-idx1-ubyte.gz" not in server.asked("good")
    assert_real_files_in(cache, mnist_dir)


def test_download_uses_the_module_mirrors_by_default(tmp_path, server, mnist_dir, monkeypatch):
    monkeypatch.setattr(data, "MIRRORS", (server.mirror("good"),))
    cache = tmp_path / "dl-cache"
    assert load_mnist(cache_dir=cache).source == str(cache)
    assert_real_files_in(cache, mnist_dir)


# ============================================================================= validation split


@pytest.mark.parametrize(
    "value, expected",
    [("5000", 5000), ("0.3", 0.3), (5000, 5000), (0.25, 0.25), ("0", 0), ("1", 1), ("5000.0", 5000), (" 12 ", 12)],
)
def test_parse_val_split(value, expected):
    got = parse_val_split(value)
    assert got == expected
    assert type(got) is type(expected)


@pytest.mark.parametrize("value", ["abc", "", "-1", "-0.5", "1.5", "12.5", "nan", None, "5k"])
def test_parse_val_split_rejects(value):
    with pytest.raises(ValueError, match="validation split must be") as info:
        parse_val_split(value)
    assert repr(value) in str(info.value)


def test_parse_val_split_rejects_infinity():
    with pytest.raises(ValueError):
        parse_val_split("inf")


def test_split_is_deterministic_and_seeded():
    a_train, a_val = split_validation(1000, 100, seed=1)
    b_train, b_val = split_validation(1000, 100, seed=1)
    c_train, c_val = split_validation(1000, 100, seed=2)
    assert torch.equal(a_train, b_train) and torch.equal(a_val, b_val)
    assert not torch.equal(a_val, c_val)


@pytest.mark.parametrize("n, val_split, n_val", [(1000, 100, 100), (1000, "250", 250), (1001, 0.5, 500), (50, 0, 0)])
def test_split_is_a_sorted_partition(n, val_split, n_val):
    train, val = split_validation(n, val_split, seed=7)
    assert len(val) == n_val and len(train) == n - n_val
    assert train.dtype == torch.int64 and val.dtype == torch.int64
    assert torch.equal(train, train.sort().values) and torch.equal(val, val.sort().values)
    assert set(train.tolist()).isdisjoint(val.tolist())
    assert sorted(train.tolist() + val.tolist()) == list(range(n))


def test_split_fraction_of_full_training_set():
    train, val = split_validation(60000, "0.3", seed=0)
    assert len(val) == 18000 and len(train) == 42000
    assert len(set(val.tolist())) == 18000


@pytest.mark.parametrize("val_split", [100, "100", 500])
def test_split_refuses_to_leave_nothing_to_train_on(val_split):
    with pytest.raises(ValueError, match="leaves nothing to train on") as info:
        split_validation(100, val_split, seed=0)
    assert "the set has 100" in str(info.value)


def test_split_bad_string_is_value_error():
    with pytest.raises(ValueError, match="validation split must be"):
        split_validation(100, "ten", seed=0)
