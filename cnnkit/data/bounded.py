"""Reads whose size is known before they are made: a file, a gzip stream or a tar member
is read up to a cap that follows from its format, and refused, naming it, when it holds
more. A 40 kB .gz can expand to 40 MB and a tar header can claim any size, so the cap is
checked against what is declared before memory is spent, then enforced while reading."""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path
from typing import IO, cast

from .dataset import DataError


def format_bytes(n: int) -> str:
    """1234567 -> '1.2 MB' (decimal units, as file managers show sizes)."""
    for unit, scale in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def memory_limit(fraction: float) -> int:
    """fraction of this machine's physical memory in bytes (of 16 GiB where it cannot be read)."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 16 << 30
    return int(fraction * total)


def read_capped(f: IO[bytes], cap: int, source: str) -> bytes:
    """All of f if it holds at most cap bytes; DataError naming source otherwise."""
    try:
        data = f.read(cap + 1)  # one byte past the cap tells "exactly cap" from "more"
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{source}: cannot read ({e})") from None
    if len(data) > cap:
        raise DataError(f"{source}: holds more than {format_bytes(cap)}, the most this file can be; refused")
    return data


def read_file_capped(path: Path, cap: int) -> bytes:
    """The bytes of a plain file of at most cap bytes (its size is checked before reading)."""
    try:
        size = os.stat(path).st_size
        if size > cap:
            raise DataError(f"{path}: {format_bytes(size)}, more than the {format_bytes(cap)} "
                            "this file can be; refused")
        with open(path, "rb") as f:
            return read_capped(f, cap, str(path))
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None


def open_maybe_gzip(path: Path) -> IO[bytes]:
    """path opened for reading, decompressed on the fly when it ends in .gz."""
    try:
        return cast(IO[bytes], gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb"))
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
