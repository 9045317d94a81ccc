"""Geometry of sliding windows (notes: "Spatial arrangement"): the output-size formula,
hyperparameter pairs, shape checks, and the base of every layer that slides an F x F
window (CONV, locally-connected, POOL).

    W2 = (W1 - F + 2P)/S + 1      (F replaced by dilation*(F-1)+1 for a dilated filter)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ShapeError
from .base import Layer

ROUNDINGS = ("exact", "floor", "ceil")

Pair = tuple[int, int]


def pair(value: Any, what: str, owner: str) -> Pair:
    """An int or an (h, w) pair of ints, as (h, w)."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value), int(value)
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value
    ):
        return int(value[0]), int(value[1])
    raise ShapeError(f"{owner}: {what} must be an int or an (h, w) pair of ints, got {value!r}")


def whole(value: Any, what: str, owner: str, minimum: int = 1) -> int:
    """value as an int >= minimum (a size, a count); anything else is a ShapeError naming it."""
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
        raise ShapeError(f"{owner}: {what} must be an int >= {minimum}, got {value!r}")
    if value < minimum:
        raise ShapeError(f"{owner}: {what} must be >= {minimum}, got {value}")
    return int(value)


def flag(value: Any, what: str, owner: str) -> bool:
    """value as a bool (True/False, not a string such as 'no'), else a ShapeError naming it."""
    if not isinstance(value, (bool, np.bool_)):
        raise ShapeError(f"{owner}: {what} must be True or False, got {value!r}")
    return bool(value)


def real(value: Any, what: str, owner: str, low: float | None = None, high: float | None = None) -> float:
    """value as a finite float within [low, high] (a hyperparameter), else a ShapeError naming it."""
    if not isinstance(value, (int, float, np.integer, np.floating)) or isinstance(value, bool) \
            or not np.isfinite(value) or (low is not None and value < low) or (high is not None and value > high):
        bounds = "" if low is None and high is None else f" in [{low}, {high}]" if high is not None else f" >= {low}"
        raise ShapeError(f"{owner}: {what} must be a finite number{bounds}, got {value!r}")
    return float(value)


def plain(hw: Pair) -> int | list[int]:
    """(3, 3) -> 3, for configs that read like the constructor call."""
    return hw[0] if hw[0] == hw[1] else list(hw)


def format_volume(shape: tuple[int, ...]) -> str:
    """(3, 224, 224) -> '224x224x3' (the notes' W x H x D); (10,) -> '10'."""
    if len(shape) == 3:
        D, H, W = shape
        return f"{W}x{H}x{D}"
    return "x".join(str(d) for d in shape)


def output_size(W: int, F: int, S: int, P: int, dilation: int = 1, rounding: str = "exact",
                owner: object = "layer", axis: str = "W") -> int:
    """The notes' W2 = (W - F + 2P)/S + 1, with F replaced by dilation*(F-1)+1.

    rounding='exact' refuses a non-integer result (the notes' 4.5 case), 'floor'
    drops what the last window can't reach (PyTorch, Caffe CONV), 'ceil' adds a
    partial last window that starts inside the input (Caffe POOL, PyTorch ceil_mode).
    owner (a layer, or its name) is named in errors; it is only formatted for one.
    """
    F_eff = dilation * (F - 1) + 1
    span = W - F_eff + 2 * P
    formula = f"(W - F + 2P)/S + 1 = ({W} - {F_eff} + {2 * P})/{S} + 1"
    if F_eff != F:
        formula += f"  (F = dilation*(F-1)+1 = {F_eff})"
    if span < 0:
        raise ShapeError(
            f"{_name(owner)}: the filter ({F_eff} along {axis}) is larger than the padded input "
            f"({W} + 2*{P} = {W + 2 * P}); {formula} < 1"
        )
    if span % S == 0 or rounding == "floor":
        return span // S + 1
    if rounding == "ceil":
        out = -(-span // S) + 1
        if (out - 1) * S >= W + P:  # the last window must start inside the input or left pad
            out -= 1
        return out
    raise ShapeError(
        f"{_name(owner)}: output {axis} {formula} = {span / S + 1:g} is not an integer, so the "
        f"neurons don't tile the input neatly. {_fix_hint(W, F_eff, S, P)}, or pass rounding='floor' "
        f"to drop the last {span % S} pixel(s)"
    )


def _name(owner: object) -> str:
    return owner if isinstance(owner, str) else repr(owner)


def _fix_hint(W: int, F_eff: int, S: int, P: int) -> str:
    """The nearest padding, else the nearest larger input size, that makes the division exact."""
    for P_fix in range(P + 1, P + S):
        if (W - F_eff + 2 * P_fix) % S == 0:
            return f"Use P = {P_fix}"
    W_fix = next(w for w in range(W + 1, W + S + 1) if (w - F_eff + 2 * P) % S == 0)
    return f"Use an input of {W_fix} (or change F, S, P)"


def extra_right(W: int, F: int, S: int, P: int, out: int, dilation: int = 1) -> int:
    """Padding needed past the right edge so that ``out`` windows fit (ceil mode)."""
    return max(0, (out - 1) * S + dilation * (F - 1) + 1 - (W + 2 * P))


def check_chw(layer: Layer, in_shape: tuple[int, ...], channels: int | None) -> tuple[int, int, int]:
    """Validate a per-sample (C, H, W) shape for output_shape."""
    if len(in_shape) != 3:
        raise ShapeError(f"{layer!r}: expected a (C, H, W) input volume, got {tuple(in_shape)}")
    if channels is not None and in_shape[0] != channels:
        raise ShapeError(f"{layer!r}: expected {channels} input channels (depth D1), got {in_shape[0]}")
    C, H, W = (int(d) for d in in_shape)
    return C, H, W


@dataclass(frozen=True)
class Window:
    """One windowed layer on one input size: everything its kernels need to know.

    C, H, W: the input volume (depth, height, width); F, S, P, dilation: (h, w) pairs;
    out: (H2, W2); extra: (bottom, right) cells past the padding that ceil-mode windows
    need; K, groups: the filters (CONV; K = C for pools)."""

    C: int
    H: int
    W: int
    F: Pair
    S: Pair
    P: Pair
    dilation: Pair
    out: Pair
    extra: Pair = (0, 0)
    K: int = 0
    groups: int = 1

    @property
    def padded(self) -> Pair:
        """(Hp, Wp): the input's size with P on both sides (and ceil mode's extra)."""
        return (self.H + 2 * self.P[0] + self.extra[0], self.W + 2 * self.P[1] + self.extra[1])

    @property
    def full_padding(self) -> Pair:
        """The padding that turns a stride-1 CONV's backward into a full convolution of dY
        with the flipped filters: dilation*(F-1) - P (negative: not a convolution)."""
        return (self.dilation[0] * (self.F[0] - 1) - self.P[0], self.dilation[1] * (self.F[1] - 1) - self.P[1])

    @property
    def tiles(self) -> bool:
        """Do the windows tile the padded input exactly, without overlap or remainder?"""
        return self.F == self.S and self.dilation == (1, 1) and self.padded == (
            self.F[0] * self.out[0], self.F[1] * self.out[1])


class WindowedLayer(Layer, register=False):
    """Shared hyperparameters of layers that slide an F x F window: F, S, P, dilation."""

    def __init__(self, kernel_size: Any, stride: Any, padding: Any, dilation: Any, rounding: str,
                 roundings: tuple[str, ...] = ("exact", "floor")) -> None:
        super().__init__()
        name = type(self).__name__
        self.kernel_size = pair(kernel_size, "kernel_size", name)
        self.stride = pair(stride if stride is not None else kernel_size, "stride", name)
        self.padding = pair(padding, "padding", name)
        self.dilation = pair(dilation, "dilation", name)
        if min(self.kernel_size) < 1 or min(self.stride) < 1 or min(self.dilation) < 1 or min(self.padding) < 0:
            raise ShapeError(
                f"{name}: need kernel_size, stride, dilation >= 1 and padding >= 0, got F={self.kernel_size}, "
                f"S={self.stride}, P={self.padding}, dilation={self.dilation}"
            )
        if rounding not in roundings:
            raise ShapeError(f"{name}: rounding must be one of {roundings}, got {rounding!r}")
        self.rounding = rounding

    def out_hw(self, H: int, W: int) -> Pair:
        """(H2, W2) by the notes' formula, checked."""
        (Fh, Fw), (Sh, Sw), (Ph, Pw), (Dh, Dw) = self.kernel_size, self.stride, self.padding, self.dilation
        return (output_size(H, Fh, Sh, Ph, Dh, self.rounding, self, "H"),
                output_size(W, Fw, Sw, Pw, Dw, self.rounding, self, "W"))

    def window(self, in_shape: tuple[int, ...], K: int = 0, groups: int = 1) -> Window:
        """The geometry of this layer on a (C, H, W) or (N, C, H, W) input."""
        C, H, W = (int(d) for d in in_shape[-3:])
        out = self.out_hw(H, W)
        F, S, P, D = self.kernel_size, self.stride, self.padding, self.dilation
        extra = (extra_right(H, F[0], S[0], P[0], out[0], D[0]), extra_right(W, F[1], S[1], P[1], out[1], D[1]))
        return Window(C, H, W, F, S, P, D, out, extra, K or C, groups)

    def window_config(self) -> dict[str, Any]:
        return dict(kernel_size=plain(self.kernel_size), stride=plain(self.stride), padding=plain(self.padding))
