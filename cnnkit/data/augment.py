"""Data augmentation on NCHW batches, and per-channel normalisation fitted on the training set."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from .dataset import DataError


def random_crop(x: np.ndarray, pad: int, rng: np.random.Generator) -> np.ndarray:
    """(N, C, H, W) -> (N, C, H, W): zero-pad P on each side, then crop each image at a random offset."""
    if pad < 0:
        raise DataError(f"random_crop: pad must be >= 0, got {pad}")
    if pad == 0:
        return x.copy()
    N, C, H, W = x.shape
    padded = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    # size=(N,), not N: N comes from x.shape (Any to mypy), and an Any size selects numpy's scalar overload
    dy = rng.integers(0, 2 * pad + 1, size=(N,))
    dx = rng.integers(0, 2 * pad + 1, size=(N,))
    rows = (dy[:, None] + np.arange(H))[:, None, :, None]       # (N, 1, H, 1)
    cols = (dx[:, None] + np.arange(W))[:, None, None, :]       # (N, 1, 1, W)
    return padded[np.arange(N)[:, None, None, None], np.arange(C)[None, :, None, None], rows, cols]


def random_flip(x: np.ndarray, rng: np.random.Generator, p: float = 0.5) -> np.ndarray:
    """(N, C, H, W) -> (N, C, H, W): each image mirrored left-right with probability p."""
    flip = rng.random(len(x)) < p
    out = x.copy()
    out[flip] = x[flip, :, :, ::-1]
    return out


def augment(x: np.ndarray, rng: np.random.Generator, pad: int = 4, flip: bool = True) -> np.ndarray:
    """(N, C, H, W) -> (N, C, H, W): random_crop with pad, then random_flip if flip."""
    x = random_crop(x, pad, rng)
    return random_flip(x, rng) if flip else x


class Normalize:
    """Per-channel (x - mean) / std on (N, C, H, W); mean and std come from the training set only."""

    def __init__(self, mean: ArrayLike, std: ArrayLike) -> None:
        self.mean = np.asarray(mean, dtype=np.float32).reshape(-1)
        self.std = np.asarray(std, dtype=np.float32).reshape(-1)
        if self.mean.shape != self.std.shape or not np.all(self.std > 0):
            raise DataError(f"Normalize: mean and std need one value per channel, std > 0; "
                            f"got mean {self.mean.tolist()}, std {self.std.tolist()}")

    @classmethod
    def fit(cls, X: np.ndarray, eps: float = 1e-6) -> Normalize:
        """Training images (N, C, H, W) -> Normalize with their per-channel mean and std."""
        # one channel at a time, float64 sums: no float64 copy of a whole data set
        mean = [X[:, c].mean(dtype=np.float64) for c in range(X.shape[1])]
        std = [np.sqrt(np.square(X[:, c] - np.float32(m)).mean(dtype=np.float64))
               for c, m in enumerate(mean)]
        return cls(mean, np.maximum(std, eps))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """(N, C, H, W) -> (N, C, H, W) float32."""
        if x.ndim != 4 or x.shape[1] != len(self.mean):
            raise DataError(f"Normalize: expected (N, {len(self.mean)}, H, W), got {x.shape}")
        return ((x - self.mean[:, None, None]) / self.std[:, None, None]).astype(np.float32, copy=False)

    def to_dict(self) -> dict[str, list[float]]:
        """{'mean': [...], 'std': [...]} as plain floats, for checkpoint metadata."""
        return {"mean": [float(v) for v in self.mean], "std": [float(v) for v in self.std]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Normalize:
        """Inverse of to_dict."""
        try:
            return cls(d["mean"], d["std"])
        except (KeyError, TypeError):
            raise DataError(f"Normalize.from_dict: expected {{'mean': [...], 'std': [...]}}, "
                            f"got {d!r}") from None

    def __repr__(self) -> str:
        return f"Normalize(mean={self.to_dict()['mean']}, std={self.to_dict()['std']})"
