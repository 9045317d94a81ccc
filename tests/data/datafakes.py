"""Tiny data sets in the exact on-disk formats, and a loopback HTTP server that serves them."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import struct
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

CIFAR_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
               "truck"]


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


# --- CIFAR-10 as Python 2 + NumPy 1 wrote it ---------------------------------------

def py2_pickle(obj) -> bytes:
    """obj -> pickle protocol 2 as Python 2's cPickle wrote the CIFAR batches (str = BINSTRING)."""
    return b"\x80\x02" + _py2(obj) + b"."


def _py2(obj) -> bytes:
    if obj is None:
        return b"N"
    if isinstance(obj, bool):
        return b"\x88" if obj else b"\x89"
    if isinstance(obj, int):
        if 0 <= obj < 256:
            return b"K" + bytes([obj])
        if 0 <= obj < 65536:
            return b"M" + struct.pack("<H", obj)
        return b"J" + struct.pack("<i", obj)
    if isinstance(obj, str):
        obj = obj.encode("latin1")
    if isinstance(obj, bytes):
        return (b"U" + bytes([len(obj)]) if len(obj) < 256 else b"T" + struct.pack("<I", len(obj))) + obj
    if isinstance(obj, tuple):
        return b"(" + b"".join(_py2(v) for v in obj) + b"t"
    if isinstance(obj, list):
        return b"](" + b"".join(_py2(v) for v in obj) + b"e"
    if isinstance(obj, dict):
        return b"}(" + b"".join(_py2(k) + _py2(v) for k, v in obj.items()) + b"u"
    if isinstance(obj, np.ndarray):  # numpy 1.x ndarray.__reduce__ with a Python 2 str buffer
        dtype = (b"cnumpy\ndtype\n" + _py2((obj.dtype.str[1:], 0, 1)) + b"R"
                 + _py2((3, obj.dtype.str[0], None, None, None, -1, -1, 0)) + b"b")
        return (b"cnumpy.core.multiarray\n_reconstruct\n" + b"cnumpy\nndarray\n" + _py2((0,))
                + _py2(b"b") + b"\x87R" + b"(" + _py2(1) + _py2(obj.shape) + dtype + b"\x89"
                + _py2(obj.tobytes()) + b"tb")
    raise TypeError(type(obj))


def cifar_files(per_batch: int = 2, n_test: int = 3, seed: int = 0) -> dict[str, bytes]:
    """The seven files of cifar-10-batches-py, with per_batch images in each training batch."""
    rng = np.random.default_rng(seed)
    files = {"batches.meta": py2_pickle({"num_cases_per_batch": per_batch,
                                         "label_names": CIFAR_NAMES, "num_vis": 3072})}
    for name, n in [*((f"data_batch_{i}", per_batch) for i in range(1, 6)), ("test_batch", n_test)]:
        files[name] = py2_pickle({
            "batch_label": f"{name} of tiny", "labels": [int(v) for v in rng.integers(0, 10, n)],
            "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            "filenames": [f"img_{i}.png" for i in range(n)]})
    return files


def tar_gz(files: dict[str, bytes], folder: str = "cifar-10-batches-py") -> bytes:
    """files -> a .tar.gz holding them under folder/."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"{folder}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


# --- MNIST-style IDX -------------------------------------------------------------

def idx_bytes(array: np.ndarray) -> bytes:
    """uint8 array -> IDX: magic 0x0000 08 <ndim>, big-endian dims, the bytes."""
    array = np.asarray(array, np.uint8)
    return (struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
            + array.tobytes())


def idx_files(n_train: int = 6, n_test: int = 4, seed: int = 0) -> dict[str, bytes]:
    """The four gzipped MNIST files, with n_train / n_test random 28x28 images."""
    rng = np.random.default_rng(seed)
    files = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        files[f"{prefix}-images-idx3-ubyte.gz"] = gzip.compress(
            idx_bytes(rng.integers(0, 256, (n, 28, 28))), mtime=0)
        files[f"{prefix}-labels-idx1-ubyte.gz"] = gzip.compress(
            idx_bytes(rng.integers(0, 10, n)), mtime=0)
    return files


def write(folder: Path, files: dict[str, bytes]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


# --- loopback server --------------------------------------------------------------

@contextlib.contextmanager
def serve(files: dict[str, bytes]):
    """Serve {url path: body} on 127.0.0.1; yields (base URL, list of requested paths)."""
    requests: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            requests.append(self.path)
            body = files.get(self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
