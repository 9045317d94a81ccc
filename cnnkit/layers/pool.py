"""POOL layers (notes: "Pooling Layer"): max, average and L2 over F x F windows, stride S.

Each depth slice is pooled independently: (N, D, H1, W1) -> (N, D, H2, W2) with
W2 = (W1 - F + 2P)/S + 1 (P is rarely used; max pads with -inf, average with zeros).
Max pooling records its switches (the argmax offset per output) and backward routes
each gradient only there. The fast kernel (WindowOffsets, below) loops over the F*F
offsets inside a window, each a view of a block of images, so no window is copied.
"""

from __future__ import annotations

import math
from typing import Any, Iterator

import numpy as np

from ..errors import ShapeError
from . import kernels
from .base import Layer
from .geometry import ROUNDINGS, Window, WindowedLayer, check_chw
from .im2col import window_slice
from .layout import contiguous_nhwc, nchw, nhwc, pad_nhwc
from .runtime import runtime


class _Pool2D(WindowedLayer):
    """Shared window arithmetic of the pools; ``mode`` says how windows combine."""

    mode = "max"
    pad_value = 0.0

    def __init__(self, kernel_size: Any, stride: Any = None, padding: Any = 0, rounding: str = "exact") -> None:
        super().__init__(kernel_size, stride, padding, 1, rounding, ROUNDINGS)
        if any(2 * p > f for p, f in zip(self.padding, self.kernel_size)):
            raise ShapeError(f"{type(self).__name__}: padding {self.padding} must be at most half the window {self.kernel_size}")

    def output_shape(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        C, H, W = check_chw(self, in_shape, None)
        return (C, *self.out_hw(H, W))

    def forward(self, x: np.ndarray) -> np.ndarray:
        return self._forward_by("pool", self._check_input(x, 4))   # WindowOffsets below, or the reference loops

    def backward(self, dout: np.ndarray) -> np.ndarray | None:
        return self._backward_by(dout)[0]

    def memory_use(self, in_shape: tuple[int, ...], batch: int, itemsize: int) -> tuple[int, int, int]:
        a_in = batch * math.prod(in_shape) * itemsize
        a_out = batch * math.prod(self.output_shape(in_shape)) * itemsize
        cache = a_in + a_out if self.mode == "l2" else 0     # L2 keeps x and its output
        return cache, 2 * a_out + a_in, 2 * a_out + a_in

    def config(self) -> dict[str, Any]:
        return dict(type=type(self).__name__, **self.window_config(), rounding=self.rounding)


class MaxPool2D(_Pool2D):
    """MAX pooling: each output is the largest of its F x F window (F=2, S=2 keeps 25%).

    Shape: input (N, D, H1, W1) -> (N, D, H2, W2), W2 = (W1 - F + 2P)/S + 1. Ties go
    to the first maximum, as in PyTorch.

    Args:
        kernel_size: F, the spatial extent of each window; int or (Fh, Fw).
        stride: S, the step between windows; defaults to F (non-overlapping); int or
            (Sh, Sw). The notes' usual choices: F=2, S=2 and the overlapping F=3, S=2.
        padding: P, cells added around each side of the input (at most F/2), filled
            with -inf; int or pair.
        rounding: 'exact' (default) refuses sizes where (W1 - F + 2P)/S + 1 is not an
            integer; 'floor' drops the inputs the last window can't reach; 'ceil' adds a
            partial last window (Caffe pooling, PyTorch's ceil_mode=True).
    """

    mode = "max"
    pad_value = -np.inf

    def memory_use(self, in_shape: tuple[int, ...], batch: int, itemsize: int) -> tuple[int, int, int]:
        """Keeps 1-byte switches; per block of images (the engine's image_block_bytes of
        input) forward makes comparison masks (2 bytes per output), backward a routed
        gradient and a mask (itemsize + 1 bytes)."""
        C, H, W = in_shape
        e, n = itemsize, batch
        a_in, a_out = n * C * H * W * e, n * math.prod(self.output_shape(in_shape)) * e
        switches = a_out // e
        Ph, Pw = self.padding
        padded = n * (H + 2 * Ph + 1) * (W + 2 * Pw + 1) * C * e if (Ph or Pw or self.rounding == "ceil") else 0
        block_out = min(n, max(1, runtime.options.image_block_bytes // (H * W * C * e))) * (a_out // e // n)
        return switches, padded + a_out + switches + 2 * block_out, a_out + a_in + (e + 1) * block_out


class AvgPool2D(_Pool2D):
    """Average pooling: the mean of each F x F window.

    Shape: input (N, D, H1, W1) -> (N, D, H2, W2), W2 = (W1 - F + 2P)/S + 1. Zero
    padding counts in the mean (PyTorch's count_include_pad=True); the extra cells of a
    ceil-mode window do not.

    Args:
        kernel_size: F, the spatial extent of each window; int or (Fh, Fw).
        stride: S, the step between windows; defaults to F (non-overlapping); int or
            (Sh, Sw). The notes' usual choices: F=2, S=2 and the overlapping F=3, S=2.
        padding: P, cells added around each side of the input (at most F/2), zeros
            that count in the mean; int or pair.
        rounding: 'exact' (default) refuses sizes where (W1 - F + 2P)/S + 1 is not an
            integer; 'floor' drops the inputs the last window can't reach; 'ceil' adds a
            partial last window (Caffe pooling, PyTorch's ceil_mode=True).
    """

    mode = "avg"


class L2Pool2D(_Pool2D):
    """L2-norm pooling: sqrt of the sum of squares of each F x F window (PyTorch LPPool2d, p=2).

    Shape: input (N, D, H1, W1) -> (N, D, H2, W2), W2 = (W1 - F)/S + 1 (no padding).

    Args:
        kernel_size: F, the spatial extent of each window; int or (Fh, Fw).
        stride: S, the step between windows; defaults to F; int or (Sh, Sw).
        rounding: 'exact' (default), 'floor' or 'ceil', as for MaxPool2D.
    """

    mode = "l2"

    def __init__(self, kernel_size: Any, stride: Any = None, rounding: str = "exact") -> None:
        super().__init__(kernel_size, stride, 0, rounding)

    def config(self) -> dict[str, Any]:
        cfg = super().config()
        del cfg["padding"]
        return cfg


class GlobalAvgPool2D(Layer):
    """Global average pooling (GoogLeNet, ResNet): (N, D, H, W) -> (N, D, 1, 1)."""

    def output_shape(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        C, H, W = check_chw(self, in_shape, None)
        return (C, 1, 1)

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = self._check_input(x, 4)
        return self._save(x.shape, x.mean(axis=(2, 3), keepdims=True))

    def backward(self, dout: np.ndarray) -> np.ndarray | None:
        N, C, H, W = self._take_cache(dout)
        return np.broadcast_to(dout / (H * W), (N, C, H, W)).copy()

    def memory_use(self, in_shape: tuple[int, ...], batch: int, itemsize: int) -> tuple[int, int, int]:
        a_in, a_out = batch * math.prod(in_shape) * itemsize, batch * in_shape[0] * itemsize
        return 0, a_out, a_out + a_in


class WindowOffsets:
    """Pools as a loop over the F*F offsets of a window, each a view of the padded NHWC
    input, in cache-sized blocks of images shared between the engine's threads. Windows
    that tile the input exactly (F = S, the usual 2x2) are read through the reshape
    (N, H2, F, W2, F, D), with no padding copy, and backward writes each input once. With
    the compiled loops (cnnkit[fast]) max pooling and its routing are one pass per block
    instead, the same numbers."""

    name = "window-offsets"

    def forward(self, layer: _Pool2D, x: np.ndarray) -> tuple[np.ndarray, Any]:
        w = layer.window(x.shape)
        xp = self._padded(x, w, layer.pad_value)
        if layer.mode == "max":
            N, C = x.shape[:2]
            out = np.empty((N, *w.out, C), dtype=x.dtype)
            # the smallest integer type that numbers every cell of a window (uint8 to 16x16)
            switches = np.empty(out.shape, np.min_scalar_type(w.F[0] * w.F[1] - 1)) if layer.training else None
            runtime.by_images(lambda xp, out, sw: self._max(xp, out, sw, w), xp, out, switches)
            return nchw(out), (w, x.shape, switches)
        if layer.mode == "avg":
            divisor = self._divisor(w, x.dtype)
            return nchw(self._window_sum(xp, w) / divisor), (w, x.shape, divisor)
        out = np.sqrt(self._window_sum(xp * xp, w))                       # L2
        return nchw(out), (w, x, out)

    def backward(self, layer: _Pool2D, saved: Any, dout: np.ndarray) -> tuple[np.ndarray, dict]:
        if layer.mode == "max":
            w, x_shape, switches = saved
            d = contiguous_nhwc(dout)
            dxp = self._empty_dx(w, x_shape[0], dout.dtype)
            runtime.by_images(lambda dxp, d, sw: self._route(dxp, d, sw, w), dxp, d, switches)
            return self._unpad(dxp, w), {}
        if layer.mode == "avg":
            w, x_shape, divisor = saved
            return self._window_sum_backward(nhwc(dout) / divisor, w, x_shape[0]), {}
        w, x, out = saved
        # d sqrt(s) / ds = 1 / (2 sqrt(s)); d s / dx = 2x.  A window of zeros has gradient 0.
        with np.errstate(divide="ignore", invalid="ignore"):
            ds = np.where(out > 0, nhwc(dout) / (2 * out), 0)
        return 2 * x * self._window_sum_backward(ds, w, x.shape[0]), {}

    # --- the loops over window offsets ------------------------------------------------
    @staticmethod
    def _padded(x: np.ndarray, w: Window, value: float) -> np.ndarray:
        """x as padded, contiguous NHWC (one copy at most; none for a CONV's output)."""
        if w.P == (0, 0) and w.extra == (0, 0):
            return contiguous_nhwc(x)
        return pad_nhwc(nhwc(x), w.P, w.extra, value)

    @staticmethod
    def _windows(a: np.ndarray, w: Window) -> Iterator[tuple[int, np.ndarray]]:
        """(offset index k, the cell at offset k of every window: (n, Ho, Wo, C)) for each
        of the F*F offsets, as views of padded NHWC a (a block of images)."""
        Fh, Fw = w.F
        if w.tiles:
            tiles = a.reshape(a.shape[0], w.out[0], Fh, w.out[1], Fw, a.shape[3])   # a view: a is contiguous
            for i in range(Fh):
                for j in range(Fw):
                    yield i * Fw + j, tiles[:, :, i, :, j]
            return
        for i in range(Fh):
            for j in range(Fw):
                yield i * Fw + j, a[window_slice((i, j), w.S, w.out)]

    def _max(self, xp: np.ndarray, out: np.ndarray, switches: np.ndarray | None, w: Window) -> None:
        """Window maxima of images xp into out, and their offsets into switches."""
        loops = kernels.compiled.loops()
        if loops is not None and w.dilation == (1, 1):       # one pass, the same numbers
            if switches is None:
                loops.max_pool(xp, out, *w.F, *w.S)
            else:
                loops.max_pool_switches(xp, out, switches, *w.F, *w.S)
            return
        if switches is not None:
            switches[...] = 0
            beats, marked = np.empty(out.shape, bool), np.empty(out.shape, switches.dtype)
        for k, cells in self._windows(xp, w):
            if k == 0:
                out[...] = cells
                continue
            if switches is not None:
                # Strictly greater, so ties keep the first maximum; k only grows, so the
                # switch is the last offset that beat everything before it.
                np.greater(cells, out, out=beats)
                np.multiply(beats, switches.dtype.type(k), out=marked)
                np.maximum(switches, marked, out=switches)
            np.maximum(out, cells, out=out)

    def _route(self, dxp: np.ndarray, d: np.ndarray, switches: np.ndarray, w: Window) -> None:
        """Send each output gradient d to the input its switch recorded."""
        loops = kernels.compiled.loops()
        if loops is not None and w.dilation == (1, 1):       # one pass per offset, the same sums
            loops.max_pool_route(dxp, d, switches, *w.F, *w.S, w.tiles)
            return
        routed, chosen = np.empty(d.shape, dtype=d.dtype), np.empty(d.shape, dtype=bool)
        for k, cells in self._windows(dxp, w):
            np.equal(switches, k, out=chosen)
            if w.tiles:
                np.multiply(d, chosen, out=cells)       # tiles: each input written once
            else:
                np.multiply(d, chosen, out=routed)
                cells += routed

    def _window_sum(self, xp: np.ndarray, w: Window) -> np.ndarray:
        """Sum over each window: (N, Ho, Wo, C)."""
        total = np.empty((xp.shape[0], *w.out, xp.shape[3]), dtype=xp.dtype)

        def add_up(xp: np.ndarray, total: np.ndarray) -> None:
            for k, cells in self._windows(xp, w):
                if k == 0:
                    total[...] = cells
                else:
                    total += cells

        runtime.by_images(add_up, xp, total)
        return total

    def _window_sum_backward(self, d: np.ndarray, w: Window, N: int) -> np.ndarray:
        """Adjoint of _window_sum: every input in a window receives that window's gradient
        (written once per input when the windows tile it, else accumulated)."""
        dxp = self._empty_dx(w, N, d.dtype)

        def spread(dxp: np.ndarray, d: np.ndarray) -> None:
            for _, cells in self._windows(dxp, w):
                if w.tiles:
                    cells[...] = d
                else:
                    cells += d

        runtime.by_images(spread, dxp, d)
        return self._unpad(dxp, w)

    @staticmethod
    def _empty_dx(w: Window, N: int, dtype: Any) -> np.ndarray:
        # Windows that tile the input exactly write each input once: no zeroing, no adds.
        shape = (N, *w.padded, w.C)
        return np.empty(shape, dtype=dtype) if w.tiles else np.zeros(shape, dtype=dtype)

    @staticmethod
    def _unpad(dxp: np.ndarray, w: Window) -> np.ndarray:
        (Ph, Pw) = w.P
        return nchw(dxp[:, Ph:Ph + w.H, Pw:Pw + w.W, :])

    def _divisor(self, w: Window, dtype: Any) -> np.ndarray:
        """Cells per window that lie in the input or its zero padding: (Ho, Wo, 1)."""
        inside = np.zeros((1, *w.padded, 1), dtype=dtype)
        inside[:, :w.H + 2 * w.P[0], :w.W + 2 * w.P[1], :] = 1
        one = Window(1, w.H, w.W, w.F, w.S, w.P, w.dilation, w.out, w.extra, 1)
        return self._window_sum(inside, one)[0]


kernels.register("pool", WindowOffsets())
