"""The safetensors format read and written with NumPy alone (no ``safetensors`` package).

A file is an 8-byte little-endian header length n, n bytes of JSON
(``{name: {"dtype": "F32", "shape": [...], "data_offsets": [begin, end]}, "__metadata__": {...}}``)
and the raw little-endian tensor bytes. Nothing in it can run code; every size the header
claims is checked against the bytes that are really there before an array is made.
"""

from __future__ import annotations

import json
import math
import os
import struct

import numpy as np

from ..files import atomic_write
from .errors import WeightsError
from .files import read_bytes

DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2",
          "I8": "i1", "U8": "u1", "BOOL": "?", "BF16": "<u2"}
_NAMES = {np.dtype(v): k for k, v in DTYPES.items() if k != "BF16"}
MAX_HEADER = 100 * 2**20  # the reference implementation's own limit


def bfloat16_to_float32(bits: np.ndarray) -> np.ndarray:
    """bfloat16 stored as uint16 -> float32 (bfloat16 is the top half of a float32)."""
    return (bits.astype("<u4") << 16).view("<f4")


def parse(data: bytes, path: str = "<bytes>") -> dict[str, np.ndarray]:
    """name -> array (a copy, native byte order) from the bytes of a safetensors file."""
    what = "a safetensors file (8-byte header length, JSON header, tensor bytes)"
    if len(data) < 8:
        raise WeightsError(f"{path}: {len(data)} bytes is too short to be {what}")
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8 or n > MAX_HEADER:
        raise WeightsError(f"{path}: the header claims {n} bytes but {len(data) - 8} follow; the file is "
                           f"truncated or not {what}")
    try:
        header = json.loads(data[8:8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise WeightsError(f"{path}: the header is not JSON; expected {what}") from None
    if not isinstance(header, dict):
        raise WeightsError(f"{path}: the header is not a JSON object; expected {what}")
    body = memoryview(data)[8 + n:]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = info["dtype"], [int(d) for d in info["shape"]], info["data_offsets"]
            begin, end = int(begin), int(end)
        except (TypeError, KeyError, ValueError):
            raise WeightsError(f"{path}: tensor {name!r}: expected dtype, shape and data_offsets, got {info!r}") from None
        if dtype not in DTYPES:
            raise WeightsError(f"{path}: tensor {name!r}: dtype {dtype!r} is not one of {sorted(DTYPES)}")
        itemsize = np.dtype(DTYPES[dtype]).itemsize
        if min(shape, default=0) < 0 or not 0 <= begin <= end <= len(body) or end - begin != math.prod(shape) * itemsize:
            raise WeightsError(f"{path}: tensor {name!r}: shape {shape} of {dtype} needs "
                               f"{math.prod(shape) * itemsize} bytes, offsets [{begin}, {end}] of the "
                               f"{len(body)} data bytes don't hold them (truncated or corrupt)")
        a = np.frombuffer(body[begin:end], dtype=DTYPES[dtype]).reshape(shape)
        a = bfloat16_to_float32(a) if dtype == "BF16" else a.astype(a.dtype.newbyteorder("="))
        out[name] = a
    return out


def load(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """name -> array from a .safetensors file (NumPy only)."""
    return parse(read_bytes(path, "a safetensors file"), os.fspath(path))


def dumps(tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> bytes:
    """The bytes of a safetensors file holding tensors (C order, little-endian)."""
    header: dict = {"__metadata__": dict(metadata)} if metadata else {}
    chunks, offset = [], 0
    for name, a in tensors.items():
        a = np.asarray(a)
        if a.dtype not in _NAMES:
            raise WeightsError(f"safetensors: tensor {name!r} has dtype {a.dtype}, expected one of "
                               f"{sorted(str(d) for d in _NAMES)}")
        raw = np.asarray(a, dtype=a.dtype.newbyteorder("<")).tobytes(order="C")
        header[name] = {"dtype": _NAMES[a.dtype], "shape": list(a.shape), "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the format pads the header so tensor data is 8-byte aligned
    return struct.pack("<Q", len(text)) + text + b"".join(chunks)


def save(path: str | os.PathLike, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> None:
    """Write tensors to a .safetensors file, atomically."""
    atomic_write(path, dumps(tensors, metadata))
