"""Initial weights: He initialisation from the engine's seeded generator."""

from __future__ import annotations

import math

import numpy as np

from .runtime import runtime

_rng = np.random.default_rng()


def manual_seed(seed: int) -> None:
    """Seed the generator that initialises new layers' weights (and unseeded dropout)."""
    global _rng
    _rng = np.random.default_rng(seed)


def default_rng() -> np.random.Generator:
    """The generator that new layers draw their initial weights from."""
    return _rng


def fan_in_std(fan_in: int) -> float:
    """He initialisation: std = sqrt(2 / fan_in), right for ReLU networks."""
    return math.sqrt(2.0 / fan_in)


def he_normal(shape: tuple[int, ...], fan_in: int) -> np.ndarray:
    """float32 weights ~ N(0, 2 / fan_in)."""
    if not runtime.options.allocate:
        return constant(shape, 0.0)
    return default_rng().standard_normal(shape, dtype=np.float32) * np.float32(fan_in_std(fan_in))


def constant(shape: tuple[int, ...] | int, value: float) -> np.ndarray:
    """A float32 array full of value; in a dry build (``engine(allocate=False)``) a
    read-only view of one number with that shape, which costs no memory."""
    if not runtime.options.allocate:
        return np.broadcast_to(np.float32(value), shape if isinstance(shape, tuple) else (shape,))
    return np.full(shape, value, dtype=np.float32)
