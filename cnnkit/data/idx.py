"""MNIST and Fashion-MNIST: four IDX files each (gzipped or not), parsed with NumPy."""

from __future__ import annotations

import math
import zlib
from pathlib import Path
from typing import Mapping

import numpy as np

from .bounded import format_bytes, open_maybe_gzip
from .dataset import DataError, Dataset, hold_out_last, make_split
from .download import base_url, cache_dir, ensure_files

IMAGES_MAGIC, LABELS_MAGIC = 0x00000803, 0x00000801   # unsigned bytes, 3 dims / 1 dim
SIDE = 28
MAX_IDX_BYTES = 1 << 28   # MNIST's largest file is 47 MB; a header that claims more is refused
PARTS = {  # split -> (images file, labels file)
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
SOURCES = {  # name -> (official base URL, MD5 of each .gz, class names)
    "mnist": (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        {"train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
         "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
         "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
         "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c"},
        [str(d) for d in range(10)],
    ),
    "fashion-mnist": (
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        {"train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
         "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
         "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
         "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310"},
        ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
         "Bag", "Ankle boot"],
    ),
}


def read_idx(path: Path, magic: int, max_bytes: int = MAX_IDX_BYTES) -> np.ndarray:
    """An IDX file of unsigned bytes (optionally .gz) -> uint8 array of the shape its header gives.

    The header alone fixes the file's size, so that size is checked against max_bytes
    (Python integers: no product of dimensions overflows) before the data is read, and
    the (decompressed) data is read up to exactly that size, never more."""
    try:
        with open_maybe_gzip(path) as f:
            head = f.read(4)
            if len(head) < 4 or int.from_bytes(head, "big") != magic:
                found = f"0x{int.from_bytes(head, 'big'):08x}" if len(head) == 4 else f"{len(head)} bytes"
                raise DataError(f"{path}: IDX magic number 0x{magic:08x} expected, found {found}")
            ndim = magic & 0xFF
            header = 4 + 4 * ndim
            dims = f.read(4 * ndim)
            if len(dims) < 4 * ndim:
                raise DataError(f"{path}: IDX header of {header} bytes expected, file has {4 + len(dims)}")
            shape = tuple(int.from_bytes(dims[i:i + 4], "big") for i in range(0, 4 * ndim, 4))
            size = header + math.prod(shape)
            if size > max_bytes:
                raise DataError(f"{path}: IDX header declares shape {shape}, {format_bytes(size)}; more than "
                                f"the {format_bytes(max_bytes)} an IDX file may be here; refused")
            if path.suffix != ".gz" and path.stat().st_size != size:
                raise DataError(f"{path}: {size} bytes expected for shape {shape}, file has {path.stat().st_size}")
            body = f.read(size - header + 1)    # one byte more shows a file longer than its header says
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: cannot read ({e})") from None
    if header + len(body) > size:
        raise DataError(f"{path}: holds more than the {size} bytes its header declares for shape {shape}; "
                        "refused")
    if header + len(body) != size:
        raise DataError(f"{path}: {size} bytes expected for shape {shape}, file has {header + len(body)}")
    return np.frombuffer(body, np.uint8).reshape(shape)


def read_part(images: Path, labels: Path) -> tuple[np.ndarray, np.ndarray]:
    """An images and a labels IDX file -> uint8 (N, 1, 28, 28), int64 (N,)."""
    X, y = read_idx(images, IMAGES_MAGIC), read_idx(labels, LABELS_MAGIC)
    if X.shape[1:] != (SIDE, SIDE):
        raise DataError(f"{images}: images of {SIDE}x{SIDE} expected, found {X.shape[1:]}")
    if len(X) != len(y):
        raise DataError(f"{labels}: {len(X)} labels expected (one per image), found {len(y)}")
    if y.size and y.max() > 9:
        raise DataError(f"{labels}: labels 0..9 expected, found {y.max()}")
    return X[:, None], y.astype(np.int64)


def _local(folder: Path, name: str) -> Path:
    """folder/name.gz, or folder/name when only the unpacked file is there."""
    return folder / name if not (folder / f"{name}.gz").is_file() and (folder / name).is_file() \
        else folder / f"{name}.gz"


def load_idx(name: str, path: str | Path | None = None, root: str | Path | None = None,
             download: bool = True, val_fraction: float = 0.1, mirror: str | None = None,
             checksums: Mapping[str, str] | None = None) -> Dataset:
    """Dataset 'mnist' or 'fashion-mnist': X (N, 1, 28, 28); val is the last val_fraction of train.

    path: a folder with the four files (never downloaded). Otherwise root (default the
    cache) holds them, and missing ones are downloaded.
    """
    official, md5s, classes = SOURCES[name]
    folder = Path(path) if path is not None else Path(root) if root is not None else cache_dir() / name
    if path is not None and not folder.is_dir():
        raise DataError(f"{name}: {folder} is not a folder")
    names = [f for pair in PARTS.values() for f in pair]
    files = {f: _local(folder, f) for f in names}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing and path is not None:
        raise DataError(f"{name}: missing {', '.join(missing)}")
    if missing:
        ensure_files(folder, checksums or md5s, base_url(name, official, mirror), download, name)
        files = {f: _local(folder, f) for f in names}
    train = make_split(*read_part(*(files[f] for f in PARTS["train"])))
    train, val = hold_out_last(train, val_fraction)
    test = make_split(*read_part(*(files[f] for f in PARTS["test"])))
    return Dataset(name, classes, train, val, test)
