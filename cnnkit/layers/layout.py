"""Memory layout: activations are logically NCHW but live channels-last (NHWC) in memory.

A layer returns ``out_nhwc.transpose(0, 3, 1, 2)``, a free view, and the next layer's
``x.transpose(0, 2, 3, 1)`` is contiguous again. In NHWC a receptive field is (F, F, D)
contiguous runs of depth columns, so im2col is one strided copy and the GEMM reads rows
that the notes' ``X_col`` has as columns.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from .runtime import runtime


def nhwc(x: np.ndarray) -> np.ndarray:
    """NCHW -> NHWC view (contiguous when the data lives channels-last)."""
    return x.transpose(0, 2, 3, 1)


def nchw(x: np.ndarray) -> np.ndarray:
    """NHWC -> NCHW view."""
    return x.transpose(0, 3, 1, 2)


def copy_images(target: np.ndarray, source: np.ndarray) -> None:
    """target[...] = source, shared by image between the engine's threads when it is big:
    a copy that changes the layout (NCHW to NHWC) is slow enough to be worth two cores.
    NumPy makes that one number at a time; the compiled loops (cnnkit[fast]), 8 x 8 blocks
    in vector registers (2.8x faster for a 64x32x32x32 float32 batch on one core)."""
    assign = _transposer(target, source)
    if runtime.options.threads == 1 or source.nbytes < runtime.options.copy_share_bytes:
        assign(target, source)
        return

    def copy(images: range) -> None:   # a share of a range is a range
        assign(target[images.start:images.stop], source[images.start:images.stop])

    runtime.run_shares(copy, range(source.shape[0]))


def _assign(target: np.ndarray, source: np.ndarray) -> None:
    target[...] = source


def _transposer(target: np.ndarray, source: np.ndarray) -> Callable[[np.ndarray, np.ndarray], None]:
    """How to copy NHWC-shaped source into target: by the compiled 8 x 8 transposes where
    it is an NCHW batch's view (columns contiguous) going channels-last (channels
    contiguous) in float32, with the loops there; else by NumPy."""
    from .kernels import jit  # here: the kernels import this module
    if (runtime.options.compiled and target.ndim == source.ndim == 4 and target.dtype == source.dtype == np.float32
            and target.strides[3] == 4 and source.strides[2] == 4 and source.strides[3] != 4
            and target.shape == source.shape and min(source.shape[2:]) >= 8 and jit.available()):
        return lambda target, source: jit.channels_last(nchw(source), target)
    return _assign


def memory_order(a: np.ndarray) -> list[int]:
    """a's axes from the outermost in memory to the innermost (NHWC for a channels-last
    NCHW volume: [0, 2, 3, 1])."""
    return sorted(range(a.ndim), key=lambda axis: -abs(a.strides[axis]))


def memory_view(a: np.ndarray) -> np.ndarray | None:
    """a's memory as one 1-D view in memory order (a channels-last NCHW volume is one
    contiguous run), or None where a is not a single contiguous run."""
    t = a.transpose(memory_order(a))
    return t.reshape(-1) if t.flags.c_contiguous else None


def channels_last_filters(weight: np.ndarray) -> np.ndarray:
    """(K, C, Fh, Fw) filters held in (K, Fh, Fw, C) memory: W_row (K, Fh*Fw*C), the
    lowerings' filters as rows, is then a free reshape instead of a copy per call. A
    read-only stand-in (a dry build) is returned as it is."""
    if not weight.flags.writeable or weight.ndim != 4:
        return weight
    return np.ascontiguousarray(weight.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)


def copy_like(target: np.ndarray, value: np.ndarray) -> np.ndarray:
    """A new array of target's dtype and memory order (channels-last filters stay so)
    holding value's numbers."""
    out = np.empty_like(target) if target.flags.writeable else np.empty(target.shape, target.dtype)
    out[...] = value
    return out


def pad_nhwc(x: np.ndarray, P: tuple[int, int], extra: tuple[int, int] = (0, 0),
             value: float = 0.0) -> np.ndarray:
    """Zero-pad (or value-pad) the spatial axes of an NHWC array: P on both sides, extra
    on the bottom/right (ceil mode)."""
    (ph, pw), (eh, ew) = P, extra
    if ph == pw == eh == ew == 0:
        return x
    N, H, W, C = x.shape
    xp = np.empty((N, H + 2 * ph + eh, W + 2 * pw + ew, C), dtype=x.dtype)
    # Only the border is filled: writing the whole array first would double its traffic.
    xp[:, :ph] = value
    xp[:, ph + H:] = value
    xp[:, ph:ph + H, :pw] = value
    xp[:, ph:ph + H, pw + W:] = value
    copy_images(xp[:, ph:ph + H, pw:pw + W, :], x)
    return xp


def lives_nchw(x: np.ndarray) -> bool:
    """Is NCHW x laid out channels-first in memory (as a user passes a batch), rather than
    channels-last (as cnnkit's layers leave it)? False where the two coincide (1x1 images)."""
    return bool(x.flags.c_contiguous and not nhwc(x).flags.c_contiguous)


def contiguous_nhwc(x: np.ndarray) -> np.ndarray:
    """The NHWC view of NCHW x, copied to contiguous memory only if it isn't already."""
    x_nhwc = nhwc(x)
    if x_nhwc.flags.c_contiguous:
        return x_nhwc
    out = np.empty(x_nhwc.shape, dtype=x.dtype)
    copy_images(out, x_nhwc)
    return out


def padded_nhwc(x: np.ndarray, P: tuple[int, int]) -> np.ndarray:
    """NCHW x as a contiguous, zero-padded NHWC array, in one copy (none when x is a
    CONV's output and P = 0)."""
    return pad_nhwc(nhwc(x), P) if P != (0, 0) else contiguous_nhwc(x)


def pad_nchw(x: np.ndarray, P: tuple[int, int], spare: int = 0) -> np.ndarray:
    """x zero-padded, contiguous NCHW, with `spare` zeros allocated past its end. Only the
    border is zeroed, and the copy is shared between threads when it is big (copy_images)."""
    N, C, H, W = x.shape
    (ph, pw), shape = P, (N, C, H + 2 * P[0], W + 2 * P[1])
    flat = np.empty(math.prod(shape) + spare, dtype=x.dtype)
    flat[math.prod(shape):] = 0
    xp = flat[:math.prod(shape)].reshape(shape)
    xp[:, :, :ph] = 0
    xp[:, :, ph + H:] = 0
    xp[:, :, ph:ph + H, :pw] = 0
    xp[:, :, ph:ph + H, pw + W:] = 0
    copy_images(xp[:, :, ph:ph + H, pw:pw + W], x)
    return xp
