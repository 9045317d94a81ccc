"""Elementwise layers: ReLU and inverted dropout. They keep the input's shape."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..errors import ShapeError
from .base import Layer
from .init import default_rng
from .runtime import runtime


class ReLU(Layer):
    """max(0, x), elementwise; any shape (N, ...). Gradient passes where x > 0."""

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = self._check_input(x, (2, 3, 4))
        out = np.empty_like(x)  # keeps x's memory layout (channels-last stays so)
        mask = np.empty_like(x, dtype=bool) if self.training else None

        def relu(x: np.ndarray, out: np.ndarray, mask: np.ndarray | None) -> None:
            np.maximum(x, 0, out=out)
            if mask is not None:
                np.greater(out, 0, out=mask)

        runtime.by_images(relu, x, out, mask)
        return self._save(mask, out)

    def backward(self, dout: np.ndarray) -> np.ndarray | None:
        mask = self._take_cache(dout)
        dx = np.empty_like(mask, dtype=np.result_type(dout))
        runtime.by_images(lambda d, m, dx: np.multiply(d, m, out=dx), dout, mask, dx)
        return dx

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
