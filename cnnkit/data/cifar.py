"""CIFAR-10, python version: six pickled batches read by an unpickler that cannot run code.

The official batches were written by Python 2 with NumPy, so ``b'data'`` is a pickled
ndarray. The unpickler resolves no global except the names that spell a plain ndarray
(and ``_codecs.encode``, Python 3's way to spell bytes in old protocols), and maps those
to inert stand-ins here that only copy bytes into an array. Every other global
(``os.system``, ``builtins.eval``, ...) raises DataError before anything is called.
"""

from __future__ import annotations

import functools
import io
import tarfile
import zlib
from pathlib import Path
from typing import Any, Callable, Mapping, NoReturn

import numpy as np

from .bounded import format_bytes, read_capped, read_file_capped
from .dataset import DataError, Dataset, hold_out_last, make_split
from .download import base_url, cache_dir, ensure_files
from .restricted import RestrictedUnpickler, walk

URL = "https://www.cs.toronto.edu/~kriz/"
ARCHIVE = "cifar-10-python.tar.gz"
CHECKSUMS = {ARCHIVE: "c58f30108f718f92721af3b95e74349a"}
FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_BATCH = "test_batch"
META = "batches.meta"
BATCH_BYTES = 32 << 20      # a batch is 31.0 MB: 10,000 x 3,072 pixels, labels and file names
META_BYTES = 1 << 16        # batches.meta is 158 bytes
ARCHIVE_BYTES = 256 << 20   # the unpacked tar stream is 186 MB
# what an array may hold: CIFAR stores pixels as uint8; labels are plain lists of ints
_DTYPES = {"u1": np.uint8, "i1": np.int8, "<i4": np.int32, "<i8": np.int64}


# --- restricted unpickling ------------------------------------------------------

class _NdarrayTag:
    """Stands for numpy.ndarray, which _reconstruct must be handed."""


class _Dtype:
    """Stand-in for numpy.dtype(spec, align, copy): remembers an allowed spec, nothing more."""

    def __init__(self, spec, align=False, copy=True):
        spec = spec.decode("ascii", "replace") if isinstance(spec, bytes) else str(spec)
        self.spec = spec

    def __setstate__(self, state):
        # state = (version, byteorder, subarray, names, fields, elsize, alignment, flags)
        order = state[1].decode("ascii", "replace") if isinstance(state[1], bytes) else state[1]
        spec = self.spec if order in ("|", "=") or self.spec[0] in "<>" else order + self.spec
        if spec not in _DTYPES or any(s is not None for s in state[2:5]):
            raise DataError(f"pickled array of type {spec!r} is not plain integers")
        self.spec = spec


class _Array:
    """Stand-in for numpy.core.multiarray._reconstruct(ndarray, shape, dtype): BUILD fills .array."""

    def __init__(self, cls, shape=(0,), typecode=b"b"):
        if not isinstance(cls, _NdarrayTag):
            raise DataError("pickle reconstructs an array of a type other than numpy.ndarray")
        self.array = None

    def __setstate__(self, state):
        # state = ([version,] shape, dtype, is_fortran, raw bytes)
        _, shape, dtype, fortran, raw = state if len(state) == 5 else (None, *state)
        if not isinstance(dtype, _Dtype) or dtype.spec not in _DTYPES:
            raise DataError("pickled array has no plain integer dtype")
        if not (isinstance(shape, tuple) and all(isinstance(d, int) and d >= 0 for d in shape)):
            raise DataError(f"pickled array has a bad shape {shape!r}")
        if not isinstance(raw, (bytes, bytearray)):
            raise DataError("pickled array data is not raw bytes")
        dtype = np.dtype(_DTYPES[dtype.spec])
        if len(raw) != int(np.prod(shape)) * dtype.itemsize:
            raise DataError(f"pickled array of shape {shape} has {len(raw)} bytes of data")
        self.array = np.frombuffer(raw, dtype=dtype).reshape(shape, order="F" if fortran else "C")


def _latin1(text, encoding="latin1"):
    """Stand-in for _codecs.encode: Python 3 writes bytes this way in protocols 0 to 2."""
    if not isinstance(text, str) or encoding != "latin1":
        raise DataError("pickle calls _codecs.encode other than to spell bytes")
    return text.encode("latin1")


_ALLOWED: dict[tuple[str, str], Callable[..., Any]] = {
    ("_codecs", "encode"): _latin1,
    ("numpy.core.multiarray", "_reconstruct"): _Array,
    ("numpy._core.multiarray", "_reconstruct"): _Array,
    ("numpy", "ndarray"): _NdarrayTag,
    ("numpy", "dtype"): _Dtype,
}


class CifarUnpickler(RestrictedUnpickler):
    """Unpickles plain data (dict, list, tuple, bytes, str, int, ...) and integer ndarrays only."""

    allowed = _ALLOWED

    def resolve(self, target: Any) -> Any:
        # a fresh object per reference: a BUILD aimed at it changes that copy, not this module
        return _NdarrayTag() if target is _NdarrayTag else functools.partial(target)

    def refuse_global(self, module: str, name: str) -> Exception:
        return DataError(f"pickle refers to {module}.{name}; only plain data is accepted")

    def persistent_load(self, pid: Any) -> NoReturn:
        raise DataError("pickle uses persistent ids; only plain data is accepted")


def safe_unpickle(data: bytes, source: str) -> object:
    """Bytes of a pickle -> plain data, with stand-in arrays turned into np.ndarray.

    Shared objects stay shared, and a structure that would expand beyond the pickle's
    own size (references nested on references) is refused (``restricted.walk``)."""
    try:
        return walk(CifarUnpickler(io.BytesIO(data), encoding="bytes").load(), _leaf, len(data), DataError)
    except DataError as e:
        raise DataError(f"{source}: {e}") from None
    except Exception as e:  # a truncated or garbled pickle raises many kinds of error
        raise DataError(f"{source}: not a readable pickle ({type(e).__name__}: {e})") from None


def _leaf(obj: Any) -> Any:
    """An _Array stand-in -> its ndarray; the other stand-ins mean nothing outside an array."""
    if isinstance(obj, _Array):
        if obj.array is None:
            raise DataError("pickled array has no data")
        return obj.array
    if isinstance(obj, (_NdarrayTag, _Dtype, functools.partial)):
        raise DataError("pickle holds a bare numpy name, expected plain data and arrays")
    return obj


# --- the data set ----------------------------------------------------------------

def read_batch(data: bytes, source: str) -> tuple[np.ndarray, np.ndarray]:
    """One pickled batch -> uint8 images (N, 3, 32, 32), int64 labels (N,)."""
    batch = safe_unpickle(data, source)
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise DataError(f"{source}: expected a dict with b'data' and b'labels'")
    labels, pixels = batch[b"labels"], batch[b"data"]
    if not isinstance(labels, list) or not all(type(v) is int and 0 <= v <= 9 for v in labels):
        raise DataError(f"{source}: b'labels' must be a list of integers 0..9")
    pixels = np.frombuffer(pixels, np.uint8) if isinstance(pixels, bytes) else pixels
    if not isinstance(pixels, np.ndarray) or pixels.dtype != np.uint8 \
            or pixels.size != len(labels) * 3072:
        raise DataError(f"{source}: expected b'data' uint8 of shape ({len(labels)}, 3072), "
                        f"got {getattr(pixels, 'dtype', type(pixels).__name__)} {np.shape(pixels)}")
    return pixels.reshape(-1, 3, 32, 32), np.array(labels, dtype=np.int64)


def read_names(data: bytes, source: str) -> list[str]:
    """batches.meta -> the ten class names."""
    meta = safe_unpickle(data, source)
    names = meta.get(b"label_names") if isinstance(meta, dict) else None
    if not isinstance(names, list) or len(names) != 10:
        raise DataError(f"{source}: expected b'label_names', a list of 10 names")
    return [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names]


def _cap(name: str) -> int:
    """The most bytes one file of the archive may hold: a batch is 30 MB, the names file tiny."""
    return META_BYTES if name == META else BATCH_BYTES


def _members(path: Path) -> Mapping[str, bytes]:
    """Bytes of the batch files, from a folder (or its cifar-10-batches-py) or from the .tar.gz.

    Every file is read up to its cap (``_cap``), checked against its size (on disk, or as
    its tar header declares it) before reading; the archive's whole stream up to
    ARCHIVE_BYTES, so a member that claims gigabytes is refused instead of skipped."""
    wanted = [*TRAIN_BATCHES, TEST_BATCH, META]
    if path.is_dir():
        folder = path / FOLDER if (path / FOLDER).is_dir() else path
        missing = [n for n in wanted if not (folder / n).is_file()]
        if missing:
            raise DataError(f"{folder}: missing CIFAR-10 files {', '.join(missing)}")
        return {n: read_file_capped(folder / n, _cap(n)) for n in wanted}
    found: dict[str, bytes] = {}
    try:
        # one forward pass: seeking back in a .gz would decompress it again per file
        with tarfile.open(path, "r:gz") as tar:
            for member in tar:
                if member.offset_data + member.size > ARCHIVE_BYTES:
                    raise DataError(f"{path}: member {member.name} ends past {format_bytes(ARCHIVE_BYTES)} of "
                                    "archive; the CIFAR-10 archive is 180 MB unpacked; refused")
                parent, _, name = member.name.removeprefix("./").rpartition("/")
                if parent == FOLDER and name in wanted and member.isfile():
                    source = f"{path}:{member.name}"
                    if member.size > _cap(name):
                        raise DataError(f"{source}: declares {format_bytes(member.size)}, more than the "
                                        f"{format_bytes(_cap(name))} this file can be; refused")
                    data = tar.extractfile(member)
                    assert data is not None  # extractfile gives None only for members that are not files
                    found[name] = read_capped(data, _cap(name), source)
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: not a readable CIFAR-10 tar.gz ({e})") from None
    missing = [n for n in wanted if n not in found]
    if missing:
        raise DataError(f"{path}: archive lacks {', '.join(f'{FOLDER}/{n}' for n in missing)}")
    return found


def load_cifar10(path: str | Path | None = None, root: str | Path | None = None,
                 download: bool = True, val_fraction: float = 0.1, mirror: str | None = None,
                 checksums: Mapping[str, str] | None = None) -> Dataset:
    """Dataset 'cifar10': X (N, 3, 32, 32); val is the last val_fraction of the 50,000 train images.

    path: a folder or the tar.gz (never downloaded). Otherwise root (default the cache)
    holds cifar-10-batches-py or the archive, which is downloaded when missing.
    """
    if path is not None:
        source = Path(path)
        if not source.exists():
            raise DataError(f"cifar10: {source} does not exist")
    else:
        folder = Path(root) if root is not None else cache_dir() / "cifar10"
        source = folder / FOLDER
        if not (source / META).is_file():
            fetched = ensure_files(folder, checksums or CHECKSUMS, base_url("cifar10", URL, mirror),
                                   download, "cifar10")
            source = fetched[ARCHIVE]
    files = _members(source)
    classes = read_names(files[META], f"{source}/{META}")
    parts = [read_batch(files[n], f"{source}/{n}") for n in TRAIN_BATCHES]
    train = make_split(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    train, val = hold_out_last(train, val_fraction)
    test = make_split(*read_batch(files[TEST_BATCH], f"{source}/{TEST_BATCH}"))
    return Dataset("cifar10", classes, train, val, test)
