"""Tiling arithmetic for filter and activation pictures (notes: "Visualizing what ConvNets
learn": the first-layer filters of AlexNet, the activation volumes of a VGG net).

NumPy only: the live demo draws these arrays in the browser, the PNG plots hand them to
matplotlib. Tile k of a grid with ``cols`` columns sits at row ``k // cols``, column
``k % cols``; its top-left pixel is at ``(row * (h + pad), col * (w + pad))``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from ..errors import CnnkitError


class VizError(CnnkitError, ValueError):
    """An array that cannot be drawn as tiles (wrong rank, nothing to draw)."""


class FilterTiles(NamedTuple):
    """Filters ready to tile: images (N, h, w) grey or (N, h, w, 3) RGB in [0, 1], the grid's
    column count, and a note saying what was left out ('' when everything is shown)."""

    images: np.ndarray
    cols: int
    note: str


def grid_shape(n: int, cols: int | None = None) -> tuple[int, int]:
    """(rows, cols) for n tiles; cols defaults to ceil(sqrt(n)), the squarest grid."""
    if n < 1:
        raise VizError(f"grid_shape: need at least one tile, got {n}")
    cols = max(1, min(n, cols if cols else math.ceil(math.sqrt(n))))
    return math.ceil(n / cols), cols


def tile_origin(k: int, cols: int, h: int, w: int, pad: int = 1) -> tuple[int, int]:
    """Top-left pixel (y, x) of tile k in a grid of cols columns of h x w tiles, pad apart."""
    return (k // cols) * (h + pad), (k % cols) * (w + pad)


def tile(images: np.ndarray, cols: int | None = None, pad: int = 1, fill: float = 1.0) -> np.ndarray:
    """Lay images (N, h, w) or (N, h, w, 3) out in a grid -> (rows*(h+pad)-pad, cols*(w+pad)-pad[, 3]).

    Tile k holds images[k] exactly (see tile_origin); the gaps and unused cells are fill.
    """
    images = np.asarray(images)
    if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] != 3):
        raise VizError(f"tile: expected images (N, h, w) or (N, h, w, 3), got shape {images.shape}")
    n, h, w = images.shape[:3]
    rows, cols = grid_shape(n, cols)
    out = np.full((rows * (h + pad) - pad, cols * (w + pad) - pad) + images.shape[3:], fill,
                  dtype=np.result_type(images.dtype, np.float32))
    for k in range(n):
        y, x = tile_origin(k, cols, h, w, pad)
        out[y:y + h, x:x + w] = images[k]
    return out


def normalize_each(a: np.ndarray) -> np.ndarray:
    """Scale each a[k] to [0, 1] by its own min and max -> float32, same shape; a constant
    a[k] becomes 0.5 (mid grey) rather than a division by zero."""
    a = np.asarray(a, dtype=np.float32)
    flat = a.reshape(len(a), -1)
    lo, hi = flat.min(axis=1, keepdims=True), flat.max(axis=1, keepdims=True)
    span = hi - lo
    out = np.where(span > 0, (flat - lo) / np.where(span > 0, span, 1), 0.5)
    return out.reshape(a.shape).astype(np.float32)


def filter_tiles(weight: np.ndarray, max_filters: int | None = None, max_channels: int = 16,
                 rgb: bool | None = None) -> FilterTiles:
    """A CONV weight (K, C, Fh, Fw) -> tiles to draw.

    RGB (C == 3 and rgb not False, the first layer of an image net): one colour tile per
    filter, (K, Fh, Fw, 3), normalised per filter, as the notes' 96 AlexNet filters.
    Otherwise one grey tile per (filter, input channel): row k of the grid is filter k,
    column c its slice on input channel c, normalised per filter; at most max_filters rows
    and max_channels columns, and the note says what was cut. max_filters defaults to 96
    (the notes' AlexNet figure) for one tile per filter, 32 rows for the per-channel grid.
    """
    w = np.asarray(weight, dtype=np.float32)
    if w.ndim != 4:
        raise VizError(f"filter_tiles: expected a CONV weight (K, C, Fh, Fw), got shape {w.shape}")
    K, C, Fh, Fw = w.shape
    rgb = C == 3 if rgb is None else rgb and C == 3
    if max_filters is None:
        max_filters = 96 if rgb or C == 1 else 32
    k = min(K, max_filters)
    if rgb or C == 1:
        images = normalize_each(w[:k])
        images = images.transpose(0, 2, 3, 1) if rgb else images[:, 0]
        note = f"first {k} of {K} filters" if k < K else ""
        return FilterTiles(images, grid_shape(k)[1], note)
    c = min(C, max_channels)
    images = normalize_each(w[:k, :c])  # per filter, over the channels shown
    cut = [f"{k} of {K} filters" if k < K else "", f"{c} of {C} input channels" if c < C else ""]
    note = "showing " + " x ".join(x for x in cut if x) if any(cut) else ""
    return FilterTiles(images.reshape(k * c, Fh, Fw), c, note)


def to_uint8(a: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> uint8 0..255 (clipped), for PNGs and the browser's canvas."""
    return (np.clip(np.asarray(a, dtype=np.float32), 0, 1) * 255 + 0.5).astype(np.uint8)
