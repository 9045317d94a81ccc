"""Whole-file reads with one clear error (atomic writes: cnnkit.files)."""

from __future__ import annotations

import os

from .errors import WeightsError


def read_bytes(path: str | os.PathLike, what: str, error: type[Exception] = WeightsError) -> bytes:
    """The bytes of path; a missing or unreadable file is one ``error`` naming it and ``what``."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise error(f"{path}: cannot read {what}: {e.strerror or e}") from None
