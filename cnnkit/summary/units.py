"""Counts and sizes as the notes write them: 3.2M activations, 93MB, 4GB budgets."""

from __future__ import annotations

import math
import re

from ..errors import CnnkitError


class SummaryError(CnnkitError, ValueError):
    """A summary or memory request that cannot be answered (unknown input size, bad budget)."""


def human(n: float, digits: int = 2) -> str:
    """The notes' short counts: exact below 10,000, else `digits` significant figures
    with K/M/G (150528 -> 150K, 3211264 -> 3.2M, 802816 -> 800K)."""
    n = int(n)
    if n < 10_000:
        return str(n)
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            v = n / scale
            v = round(v, digits - 1 - int(math.floor(math.log10(v))))
            return (f"{v:g}" if v < 10 ** digits else str(int(round(v)))) + unit
    return str(n)


def human_bytes(b: float) -> str:
    """Bytes in KB/MB/GB (powers of 1024, as the notes divide)."""
    for unit, scale in (("GB", 1024 ** 3), ("MB", 1024 ** 2), ("KB", 1024)):
        if b >= scale:
            return f"{b / scale:.1f} {unit}"
    return f"{int(b)} B"


def parse_bytes(text: str) -> int:
    """'4GB' / '512 MB' / '1.5G' -> bytes (powers of 1024)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]?)i?b?\s*", str(text), re.I)
    if not m:
        raise SummaryError(f"expected a size like 4GB or 512MB, got {text!r}")
    return int(float(m.group(1)) * 1024 ** "_kmgt".index(m.group(2).lower() or "_"))
