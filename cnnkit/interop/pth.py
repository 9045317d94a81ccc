"""PyTorch's ``torch.save`` zip format, read and written without torch and without running code.

A ``.pth``/``.pt`` file (PyTorch >= 1.6) is a zip archive ``<name>/data.pkl``,
``<name>/data/<key>`` (one raw storage each), ``<name>/byteorder`` and ``<name>/version``.
``data.pkl`` is a pickle, and unpickling an arbitrary pickle runs arbitrary code. The
reader here unpickles with an allow-list, like torch's ``weights_only=True``: the only
globals it resolves are the tensor rebuild functions (``torch._utils._rebuild_tensor_v2``,
``_rebuild_tensor``, ``_rebuild_parameter``), the storage types (``torch.FloatStorage``...)
and ``collections.OrderedDict``, each mapped to a NumPy stand-in; any other global (a
``__reduce__`` payload's ``os.system``, a model class) is refused before anything is called.
Every storage's size is checked against its zip entry, and every tensor's size, offset and
strides against its storage, before memory is spent. The unpickler and the walk that
turns its result into plain data (shared objects converted once, a structure that would
expand beyond the pickle's own size refused) are ``cnnkit.data.restricted``'s, shared
with the CIFAR-10 reader; the allow-list here is this reader's own.

The writer emits the same layout with a hand-written protocol-2 pickle, which
``torch.load(weights_only=True)`` reads.
"""

from __future__ import annotations

import collections
import io
import math
import os
import struct
import zipfile
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np

from ..data.restricted import RestrictedUnpickler, walk
from ..files import atomic_write
from .errors import WeightsError
from .files import read_bytes
from .safetensors_io import bfloat16_to_float32

# torch storage type -> NumPy dtype ('bf16' is converted to float32 after reading)
STORAGES = {"FloatStorage": "f4", "DoubleStorage": "f8", "HalfStorage": "f2", "BFloat16Storage": "bf16",
            "LongStorage": "i8", "IntStorage": "i4", "ShortStorage": "i2", "CharStorage": "i1",
            "ByteStorage": "u1", "BoolStorage": "?"}
_STORAGE_OF = {np.dtype(v): k for k, v in STORAGES.items() if v != "bf16"}
_DEFLATE_MAX_RATIO = 1032  # deflate cannot expand more than this: a larger claim is corrupt


class _StorageType:
    """What the pickle names as torch.FloatStorage...: only a dtype, never called."""

    def __init__(self, name: str):
        self.name, self.dtype = name, STORAGES[name]


class _Storage:
    __slots__ = ("array",)

    def __init__(self, array: np.ndarray):
        self.array = array


class _Tensor:
    """A rebuilt tensor; slots only, so a pickle's BUILD cannot set anything on it."""
    __slots__ = ("array",)

    def __init__(self, array: np.ndarray):
        self.array = array


def _ints(value: object, what: str) -> tuple[int, ...]:
    if not isinstance(value, tuple) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise WeightsError(f"tensor {what} must be a tuple of ints, got {value!r}")
    return value


def _rebuild_tensor_v2(storage: object, storage_offset: object, size: object, stride: object,
                       requires_grad: object = False, backward_hooks: object = None,
                       metadata: object = None) -> _Tensor:
    """torch._utils._rebuild_tensor_v2's stand-in: a strided view of the storage, copied."""
    if not isinstance(storage, _Storage) or not isinstance(storage_offset, int):
        raise WeightsError(f"_rebuild_tensor_v2 expects (storage, offset, size, stride), got "
                           f"{type(storage).__name__}, {storage_offset!r}")
    size, stride = _ints(size, "size"), _ints(stride, "stride")
    flat = storage.array
    if len(size) != len(stride) or min(size, default=0) < 0 or min(stride, default=0) < 0:
        raise WeightsError(f"tensor size {size} and stride {stride} don't describe a tensor")
    if math.prod(size) == 0:
        return _Tensor(np.zeros(size, dtype=flat.dtype))
    last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride))
    if storage_offset < 0 or last >= flat.size:
        raise WeightsError(f"tensor of size {size}, stride {stride} at offset {storage_offset} reaches "
                           f"element {last} of a storage of {flat.size}")
    view = np.lib.stride_tricks.as_strided(flat[storage_offset:], size, [s * flat.itemsize for s in stride])
    return _Tensor(view.copy())


def _rebuild_tensor(storage: object, storage_offset: object, size: object, stride: object) -> _Tensor:
    return _rebuild_tensor_v2(storage, storage_offset, size, stride)


def _rebuild_parameter(data: object, requires_grad: object = False, backward_hooks: object = None) -> _Tensor:
    if not isinstance(data, _Tensor):
        raise WeightsError(f"_rebuild_parameter expects a tensor, got {type(data).__name__}")
    return data


ALLOWED = {("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
           ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
           ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
           ("collections", "OrderedDict"): collections.OrderedDict}
ALLOWED.update({("torch", name): _StorageType(name) for name in STORAGES})


class _Unpickler(RestrictedUnpickler):
    """Resolves only ALLOWED globals; storages come from the zip, checked against their entry."""

    allowed = ALLOWED

    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str, byteorder: str, path: str):
        super().__init__(io.BytesIO(data))
        self.archive, self.prefix, self.byteorder, self.path = archive, prefix, byteorder, path
        self.storages: dict[str, _Storage] = {}

    def refuse_global(self, module: str, name: str) -> Exception:
        return WeightsError(
            f"{self.path}: refused the global {module}.{name}: a weights file may name only PyTorch's "
            "tensor rebuild functions and storage types (like torch.load(weights_only=True)); nothing "
            "in it was run. If it holds a whole model, save model.state_dict() instead")

    def persistent_load(self, pid: Any) -> Any:  # a _Storage; the base (NoReturn) refuses every id
        if (not isinstance(pid, tuple) or len(pid) != 5 or pid[0] != "storage"
                or not isinstance(pid[1], _StorageType) or not isinstance(pid[2], str)
                or not isinstance(pid[4], int) or pid[4] < 0):
            raise WeightsError(f"{self.path}: unexpected persistent id {pid!r}; expected "
                               "('storage', <storage type>, key, location, numel)")
        kind, key, numel = pid[1], pid[2], pid[4]
        if key in self.storages:
            return self.storages[key]
        entry = f"{self.prefix}/data/{key}"
        try:
            info = self.archive.getinfo(entry)
        except KeyError:
            raise WeightsError(f"{self.path}: storage {key!r} is missing (no zip entry {entry})") from None
        dtype = np.dtype("<u2" if kind.dtype == "bf16" else kind.dtype).newbyteorder(
            "<" if self.byteorder == "little" else ">")
        if info.file_size != numel * dtype.itemsize:
            raise WeightsError(f"{self.path}: storage {key!r} claims {numel} x {kind.name} = "
                               f"{numel * dtype.itemsize} bytes but its entry holds {info.file_size}")
        if info.compress_type != zipfile.ZIP_STORED and info.file_size > _DEFLATE_MAX_RATIO * max(info.compress_size, 1):
            raise WeightsError(f"{self.path}: entry {entry} claims to expand {info.compress_size} -> "
                               f"{info.file_size} bytes, more than compression can: the file is corrupt")
        array = np.frombuffer(self.archive.read(entry), dtype=dtype)  # read-only; tensors copy out of it
        if kind.dtype == "bf16":
            array = bfloat16_to_float32(array)
        elif not dtype.isnative:
            array = array.astype(dtype.newbyteorder("="))
        self.storages[key] = storage = _Storage(array)
        return storage


def _leaf(path: str) -> Callable[[object], Any]:
    """walk's leaf for a state dict: tensors become arrays, plain scalars pass, nothing else does."""
    def leaf(obj: object) -> Any:
        if isinstance(obj, _Tensor):
            return obj.array
        if obj is None or isinstance(obj, (int, float, str, bool)):
            return obj
        raise WeightsError(f"{path}: holds a {type(obj).__name__}, expected a dict of tensors")
    return leaf


def parse(data: bytes, path: str = "<bytes>") -> Any:
    """The object a torch.save zip archive holds (dicts, with tensors as NumPy arrays)."""
    if data[:2] == b"\x80\x02" or data[:1] == b"\x8a":
        raise WeightsError(f"{path}: PyTorch's legacy (pre-1.6) format is not read; re-save it with "
                           "torch.save(state_dict, path) in PyTorch >= 1.6")
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        names = archive.namelist()
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise WeightsError(f"{path}: not a PyTorch zip archive ({e}); the file is truncated or corrupt") from None
    pickles = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pickles) != 1:
        raise WeightsError(f"{path}: expected one <name>/data.pkl in the zip archive, found {pickles or 'none'}")
    prefix = pickles[0].split("/")[0]
    try:
        byteorder = (archive.read(f"{prefix}/byteorder").decode().strip()
                     if f"{prefix}/byteorder" in names else "little")
        if byteorder not in ("little", "big"):
            raise WeightsError(f"{path}: byteorder is {byteorder!r}, expected 'little' or 'big'")
        pkl = archive.read(pickles[0])
        # shared objects are converted once; more objects than the pickle's bytes means
        # references nested on references, refused (restricted.walk)
        obj = walk(_Unpickler(pkl, archive, prefix, byteorder, path).load(), _leaf(path), len(pkl),
                   lambda message: WeightsError(f"{path}: data.pkl {message}"))
    except WeightsError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, zlib.error) as e:
        raise WeightsError(f"{path}: the zip archive is truncated or corrupt ({e})") from None
    except Exception as e:  # noqa: BLE001 - a corrupt pickle raises any of a dozen types; none may escape raw
        raise WeightsError(f"{path}: data.pkl is not a PyTorch state dict pickle ({type(e).__name__}: {e})") from None
    return obj


def load(path: str | os.PathLike) -> Any:
    """The object in a .pth/.pt file written by torch.save, tensors as arrays, no torch needed."""
    return parse(read_bytes(path, "a PyTorch weights file"), os.fspath(path))


# --- writing -------------------------------------------------------------------

def _int(v: int) -> bytes:
    if 0 <= v < 256:
        return b"K" + bytes([v])
    if 0 <= v < 65536:
        return b"M" + struct.pack("<H", v)
    if -2**31 <= v < 2**31:
        return b"J" + struct.pack("<i", v)
    raw = v.to_bytes((v.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw


def _str(s: str) -> bytes:
    raw = s.encode("utf-8")
    return b"X" + struct.pack("<I", len(raw)) + raw


def _tuple(items: tuple[int, ...]) -> bytes:
    return b"(" + b"".join(_int(i) for i in items) + b"t" if items else b")"


def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def dumps(tensors: dict[str, np.ndarray], name: str = "archive") -> bytes:
    """The bytes of a torch.save archive of a dict of tensors (what torch.save(state_dict) writes)."""
    pkl = bytearray(b"\x80\x02}(")  # PROTO 2, EMPTY_DICT, MARK
    entries = []
    for i, (key, a) in enumerate(tensors.items()):
        a = np.asarray(a)
        if a.dtype not in _STORAGE_OF:
            raise WeightsError(f"save: tensor {key!r} has dtype {a.dtype}, which PyTorch has no storage for")
        a = np.asarray(a, dtype=a.dtype.newbyteorder("<"), order="C")  # keeps 0-d arrays 0-d
        strides = tuple(s // a.itemsize for s in a.strides) if a.size else tuple(
            math.prod(a.shape[j + 1:]) for j in range(a.ndim))
        pkl += _str(key) + _global("torch._utils", "_rebuild_tensor_v2") + b"(("
        pkl += _str("storage") + _global("torch", _STORAGE_OF[np.dtype(a.dtype.newbyteorder("="))])
        pkl += _str(str(i)) + _str("cpu") + _int(a.size) + b"tQ"  # TUPLE, BINPERSID
        pkl += _int(0) + _tuple(a.shape) + _tuple(strides) + b"\x89"  # NEWFALSE: requires_grad
        pkl += _global("collections", "OrderedDict") + b")Rt" + b"R"  # hooks = OrderedDict(); REDUCE
        entries.append((f"{name}/data/{i}", a.tobytes()))
    pkl += b"u."  # SETITEMS, STOP
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        z.writestr(f"{name}/data.pkl", bytes(pkl))
        z.writestr(f"{name}/byteorder", "little")
        for entry, raw in entries:
            z.writestr(entry, raw)
        z.writestr(f"{name}/version", "3\n")
    return buf.getvalue()


def save(path: str | os.PathLike, tensors: dict[str, np.ndarray]) -> None:
    """Write a dict of arrays as a .pth file that torch.load reads (weights_only=True), atomically."""
    stem = os.path.splitext(os.path.basename(os.fspath(path)))[0] or "archive"
    atomic_write(path, dumps(tensors, "".join(c if c.isalnum() or c in "_-" else "_" for c in stem)))
