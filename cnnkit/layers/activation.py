"""Elementwise layers: ReLU and inverted dropout. They keep the input's shape."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..errors import ShapeError
from .base import Layer
from .init import default_rng
from .layout import memory_order, memory_view
from .runtime import runtime

#: the row length relu_into reads memory in
RELU_ROW = 256
_ZERO_ROWS: dict[tuple[int, np.dtype], np.ndarray] = {}


def _zeros(n: int, dtype: np.dtype) -> np.ndarray:
    key = (n, np.dtype(dtype))
    if key not in _ZERO_ROWS:
        _ZERO_ROWS[key] = np.zeros(n, dtype)
    return _ZERO_ROWS[key]


def relu_into(x: np.ndarray, out: np.ndarray) -> np.ndarray:
    """out = max(0, x) (out may be x). NumPy's maximum against the scalar 0 runs 2-3x
    slower than against a row of zeros broadcast along a contiguous last axis, so where x
    and out are laid out alike their memory is read as rows: of RELU_ROW numbers where it
    is one run, else along the axis that is contiguous in memory (a volume's channels)."""
    if x.strides == out.strides and x.ndim:
        flat_x, flat_out = memory_view(x), memory_view(out)
        if flat_x is not None and flat_out is not None:
            whole = flat_x.size - flat_x.size % RELU_ROW
            if whole:
                np.maximum(flat_x[:whole].reshape(-1, RELU_ROW), _zeros(RELU_ROW, x.dtype),
                           out=flat_out[:whole].reshape(-1, RELU_ROW))
            if whole < flat_x.size:
                np.maximum(flat_x[whole:], 0, out=flat_out[whole:])
            return out
        order = memory_order(x)
        inner = order[-1]
        if x.strides[inner] == x.itemsize and x.shape[inner] >= 32:
            np.maximum(x.transpose(order), _zeros(x.shape[inner], x.dtype), out=out.transpose(order))
            return out
    return np.maximum(x, 0, out=out)


def positive(y: np.ndarray) -> np.ndarray:
    """The ReLU's mask y > 0 of its output y, in y's memory layout (threads share it)."""
    mask = np.empty_like(y, dtype=bool)
    runtime.by_images(lambda y, m: np.greater(y, 0, out=m), y, mask)
    return mask


def add_relu(a: np.ndarray, b: np.ndarray, relu: bool, keep_mask: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """(a + b, then max(0, .) if relu; with keep_mask also the ReLU's mask out > 0), a new
    array laid out as a. Where a and b lie alike in memory the compiled loops make it one
    pass, shared between the threads; otherwise NumPy's passes (the same numbers)."""
    from .kernels import compiled  # here: the kernels import this module

    loops = compiled.loops()
    if loops is not None and a.shape == b.shape and a.dtype == b.dtype and _alike(a, b):
        flat_a, flat_b = memory_view(a), memory_view(b)
        if flat_a is not None and flat_b is not None:
            out = np.empty_like(a)
            mask = np.empty_like(a, dtype=bool) if keep_mask else None
            flat_out, flat_mask = memory_view(out), memory_view(mask) if mask is not None else None
            if flat_out is not None and _alike(out, a) and (mask is None or (flat_mask is not None and _alike(mask, a))):
                none = np.empty(0, dtype=bool)
                runtime.by_share(flat_out.size, lambda s: loops.add_relu(
                    flat_a[s], flat_b[s], flat_out[s], relu, none if flat_mask is None else flat_mask[s]))
                return out, mask
    out = a + b
    if relu:
        relu_into(out, out)
    return out, positive(out) if keep_mask else None


def _alike(a: np.ndarray, b: np.ndarray) -> bool:
    """Do a and b put each element at the same place in their memory (counted in elements)?"""
    return all(sa // a.itemsize == sb // b.itemsize for sa, sb, n in zip(a.strides, b.strides, a.shape) if n > 1)


def masked(dout: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The ReLU's backward: dY where the mask holds, 0 elsewhere (a new array, laid out as
    the mask)."""
    dx = np.empty_like(mask, dtype=np.result_type(dout))
    runtime.by_images(lambda d, m, dx: np.multiply(d, m, out=dx), dout, mask, dx)
    return dx


class ReLU(Layer):
    """max(0, x), elementwise; any shape (N, ...). Gradient passes where x > 0."""

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = self._check_input(x, (2, 3, 4))
        out = np.empty_like(x)  # keeps x's memory layout (channels-last stays so)
        mask = np.empty_like(x, dtype=bool) if self.training else None

        def relu(x: np.ndarray, out: np.ndarray, mask: np.ndarray | None) -> None:
            relu_into(x, out)
            if mask is not None:
                np.greater(out, 0, out=mask)

        runtime.by_images(relu, x, out, mask)
        return self._save(mask, out)

    def backward(self, dout: np.ndarray) -> np.ndarray | None:
        return masked(dout, self._take_cache(dout))

    def memory_use(self, in_shape: tuple[int, ...], batch: int, itemsize: int) -> tuple[int, int, int]:
        a = batch * math.prod(in_shape) * itemsize
        mask = a // itemsize                     # one byte per number
        return mask, mask + a, 2 * a


class Dropout(Layer):
    """Inverted dropout: in train mode zero each unit with probability p and scale the
    rest by 1/(1-p), so eval mode is the identity. Any shape (N, ...).

    Args:
        p: the probability of dropping a unit (0 <= p < 1).
        seed: makes the masks reproducible; without it masks come from cnnkit's seeded
            generator (``cnnkit.manual_seed``).
    """

    def __init__(self, p: float = 0.5, seed: int | None = None):
        super().__init__()
        if not isinstance(p, (int, float, np.integer, np.floating)) or isinstance(p, bool) or not 0 <= p < 1:
            raise ShapeError(f"Dropout: p must be in [0, 1), got {p!r}")
        if seed is not None and (not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0):
            raise ShapeError(f"Dropout: seed must be None or an int >= 0, got {seed!r}")
        self.p, self.seed = float(p), seed
        # a dry build (engine(allocate=False)) draws nothing from the seeded generator
        drawn = default_rng().integers(2**63) if runtime.options.allocate else 0
        self.rng = np.random.default_rng(seed if seed is not None else drawn)

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = self._check_input(x, (2, 3, 4))
        if not self.training:
            return self._save(None, x)
        keep = (self.rng.random(x.shape, dtype=np.float32) >= self.p).astype(x.dtype) / x.dtype.type(1 - self.p)
        return self._save(keep, x * keep)

    def backward(self, dout: np.ndarray) -> np.ndarray | None:
        return dout * self._take_cache(dout)

    def memory_use(self, in_shape: tuple[int, ...], batch: int, itemsize: int) -> tuple[int, int, int]:
        a = batch * math.prod(in_shape) * itemsize
        keep = a if self.training else 0         # the scaled mask
        return keep, 2 * a + a // itemsize + a, 2 * a

    def config(self) -> dict[str, Any]:
        return dict(type="Dropout", p=self.p, seed=self.seed)
