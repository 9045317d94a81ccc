"""POOL layers (notes: "Pooling Layer"): max, average and L2 over F x F windows, stride S.

Each depth slice is pooled independently: (N, D, H1, W1) -> (N, D, H2, W2) with
W2 = (W1 - F + 2P)/S + 1 (P is rarely used; max pads with -inf, average with zeros).
Every pool is computed as a loop over the F*F window offsets, each a view of a block of
images, so no window copy is made. Non-overlapping windows that tile the input (F = S,
the common 2x2 case) take the fast path: the input is reshaped into tiles (N, H2, F,
W2, F, D) with no padding copy, and backward writes each input once instead of zeroing
and accumulating. Overlapping windows (F=3, S=2) read strided slices. Max pooling
records its switches (the argmax offset per output) and backward routes each gradient
only there. Blocks of images are cache-sized and shared between cnnkit's threads.
"""

from __future__ import annotations

import numpy as np

from ..errors import ShapeError
from . import threads
from .base import Layer
from .conv import _check_chw, _Windowed
from .windows import ROUNDINGS, contiguous_nhwc, extra_pad, nchw, nhwc, pad_nhwc, window_slice


class _Pool2D(_Windowed):
    """Shared window arithmetic of the pools; subclasses define how windows combine."""

    pad_value = 0.0

    def __init__(self, kernel_size, stride=None, padding=0, rounding: str = "exact"):
        super().__init__(kernel_size, stride, padding, 1, rounding, ROUNDINGS)
        if any(2 * p > f for p, f in zip(self.padding, self.kernel_size)):
            raise ShapeError(f"{type(self).__name__}: padding {self.padding} must be at most half the window {self.kernel_size}")

    def output_shape(self, in_shape):
        C, H, W = _check_chw(self, in_shape, None)
        return (C, *self._out_hw(H, W))

    def _padded(self, x):
        """x as padded, contiguous NHWC (one copy at most; none for a CONV's output), plus
        the output size. Every pass below then walks memory in order."""
        N, C, H, W = x.shape
        out_hw = self._out_hw(H, W)
        extra = extra_pad(H, W, self.kernel_size, self.stride, self.padding, out_hw, (1, 1))
        if self.padding == (0, 0) and extra == (0, 0):
            return contiguous_nhwc(x), out_hw
        return pad_nhwc(nhwc(x), self.padding, extra, self.pad_value), out_hw

    def _tiles(self, padded_shape, out_hw) -> bool:
        """Do the windows tile the (padded) input exactly, without overlap or remainder?"""
        return self.kernel_size == self.stride and padded_shape[1:3] == tuple(
            f * o for f, o in zip(self.kernel_size, out_hw))

    def _windows(self, a, out_hw):
        """(offset index k, the cell at offset k of every window: (N, Ho, Wo, C)) for each
        of the F*F offsets, as views of padded NHWC a. The fast path: windows that tile a
        exactly are read through the reshape (N, Ho, Fh, Wo, Fw, C), whose [:, :, i, :, j]
        is offset (i, j) of every tile; other windows through strided slices."""
        Fh, Fw = self.kernel_size
        if self._tiles(a.shape, out_hw):
            N, _, _, C = a.shape
            tiles = a.reshape(N, out_hw[0], Fh, out_hw[1], Fw, C)     # a view: a is contiguous
            for i in range(Fh):
                for j in range(Fw):
                    yield i * Fw + j, tiles[:, :, i, :, j]
            return
        for i in range(Fh):
            for j in range(Fw):
                yield i * Fw + j, a[window_slice((i, j), self.stride, out_hw)]

    def _window_sum(self, xp, out_hw):
        """Sum over each window: (N, Ho, Wo, C)."""
        total = np.empty((xp.shape[0], *out_hw, xp.shape[3]), dtype=xp.dtype)

        def add_up(xp, total):
            for k, cells in self._windows(xp, total.shape[1:3]):
                if k == 0:
                    total[...] = cells
                else:
                    total += cells

        threads.by_images(add_up, xp, total)
        return total

    def _window_sum_backward(self, d, x_shape, out_hw):
        """Adjoint of _window_sum: every input in a window receives that window's gradient
        (written once per input when the windows tile it, else accumulated)."""
        N, C, H, W = x_shape
        padded = _padded_shape(x_shape, self, out_hw)
        tiles = self._tiles(padded, out_hw)
        dxp = np.empty(padded, dtype=d.dtype) if tiles else np.zeros(padded, dtype=d.dtype)

        def spread(dxp, d):
            for _, cells in self._windows(dxp, out_hw):
                if tiles:
                    cells[...] = d
                else:
                    cells += d

        threads.by_images(spread, dxp, d)
        Ph, Pw = self.padding
        return nchw(dxp[:, Ph:Ph + H, Pw:Pw + W, :])

    def config(self):
        return dict(type=type(self).__name__, **self._window_config(), rounding=self.rounding)


def _padded_shape(x_shape, layer, out_hw):
    N, C, H, W = x_shape
    eh, ew = extra_pad(H, W, layer.kernel_size, layer.stride, layer.padding, out_hw, (1, 1))
    Ph, Pw = layer.padding
    return (N, H + 2 * Ph + eh, W + 2 * Pw + ew, C)


class MaxPool2D(_Pool2D):
    """MAX pooling: each output is the largest of its F x F window (F=2, S=2 keeps 25%).

    Input (N, D, H1, W1) -> (N, D, H2, W2) with W2 = (W1 - F + 2P)/S + 1. Ties go to
    the first maximum, as in PyTorch.

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

    pad_value = -np.inf

    def forward(self, x):
        x = self._check_input(x, 4)
        xp, out_hw = self._padded(x)
        N, C = x.shape[:2]
        out = np.empty((N, *out_hw, C), dtype=x.dtype)
        # the smallest integer type that numbers every cell of a window (uint8 to 16x16)
        kind = np.min_scalar_type(self.kernel_size[0] * self.kernel_size[1] - 1)
        switches = np.empty(out.shape, kind) if self.training else None
        threads.by_images(self._max, xp, out, switches)
        return self._save((switches, x.shape, out_hw), nchw(out))

    def _max(self, xp, out, switches):
        """Window maxima of images xp into out, and their offsets into switches."""
        if switches is not None:
            switches[...] = 0
            beats, marked = np.empty(out.shape, bool), np.empty(out.shape, switches.dtype)
        for k, window in self._windows(xp, out.shape[1:3]):
            if k == 0:
                out[...] = window
                continue
            if switches is not None:
                # Strictly greater, so ties keep the first maximum; k only grows, so the
                # switch is the last offset that beat everything before it.
                np.greater(window, out, out=beats)
                np.multiply(beats, switches.dtype.type(k), out=marked)
                np.maximum(switches, marked, out=switches)
            np.maximum(out, window, out=out)

    def backward(self, dout):
        switches, x_shape, out_hw = self._take_cache(dout)
        d = contiguous_nhwc(dout)
        N, C, H, W = x_shape
        padded = _padded_shape(x_shape, self, out_hw)
        # Windows that tile the input exactly write each input once: no zeroing, no adds.
        tiles = self._tiles(padded, out_hw)
        dxp = np.empty(padded, dtype=dout.dtype) if tiles else np.zeros(padded, dtype=dout.dtype)
        threads.by_images(self._route, dxp, d, switches)
        Ph, Pw = self.padding
        return nchw(dxp[:, Ph:Ph + H, Pw:Pw + W, :])

    def _route(self, dxp, d, switches):
        """Send each output gradient d to the input its switch recorded, for images dxp."""
        tiles = self._tiles(dxp.shape, d.shape[1:3])
        routed, chosen = np.empty(d.shape, dtype=d.dtype), np.empty(d.shape, dtype=bool)
        for k, cells in self._windows(dxp, d.shape[1:3]):
            np.equal(switches, k, out=chosen)
            if tiles:
                np.multiply(d, chosen, out=cells)
            else:
                np.multiply(d, chosen, out=routed)
                cells += routed


class AvgPool2D(_Pool2D):
    """Average pooling: the mean of each F x F window.

    Input (N, D, H1, W1) -> (N, D, H2, W2) with W2 = (W1 - F + 2P)/S + 1. Zero padding
    counts in the mean (PyTorch's count_include_pad=True); the extra cells of a
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

    def forward(self, x):
        x = self._check_input(x, 4)
        xp, out_hw = self._padded(x)
        divisor = self._divisor(x.shape, out_hw, x.dtype)
        out = self._window_sum(xp, out_hw) / divisor
        return self._save((x.shape, out_hw, divisor), nchw(out))

    def backward(self, dout):
        x_shape, out_hw, divisor = self._take_cache(dout)
        return self._window_sum_backward(nhwc(dout) / divisor, x_shape, out_hw)

    def _divisor(self, x_shape, out_hw, dtype):
        """Cells per window that lie in the input or its zero padding: (Ho, Wo, 1)."""
        N, C, H, W = x_shape
        Ph, Pw = self.padding
        inside = np.zeros(_padded_shape((1, 1, H, W), self, out_hw), dtype=dtype)
        inside[:, :H + 2 * Ph, :W + 2 * Pw, :] = 1
        return self._window_sum(inside, out_hw)[0]


class L2Pool2D(_Pool2D):
    """L2-norm pooling: sqrt of the sum of squares of each F x F window (PyTorch LPPool2d, p=2).

    Input (N, D, H1, W1) -> (N, D, H2, W2) with W2 = (W1 - F)/S + 1 (no padding).

    Args:
        kernel_size: F, the spatial extent of each window; int or (Fh, Fw).
        stride: S, the step between windows; defaults to F; int or (Sh, Sw).
        rounding: 'exact' (default), 'floor' or 'ceil', as for MaxPool2D.
    """

    def __init__(self, kernel_size, stride=None, rounding: str = "exact"):
        super().__init__(kernel_size, stride, 0, rounding)

    def forward(self, x):
        x = self._check_input(x, 4)
        xp, out_hw = self._padded(x)
        out = np.sqrt(self._window_sum(xp * xp, out_hw))
        return self._save((x, out, out_hw), nchw(out))

    def backward(self, dout):
        x, out, out_hw = self._take_cache(dout)
        # d sqrt(s) / ds = 1 / (2 sqrt(s)); d s / dx = 2x.  A window of zeros has gradient 0.
        with np.errstate(divide="ignore", invalid="ignore"):
            ds = np.where(out > 0, nhwc(dout) / (2 * out), 0)
        return 2 * x * self._window_sum_backward(ds, x.shape, out_hw)

    def config(self):
        cfg = super().config()
        del cfg["padding"]
        return cfg


class GlobalAvgPool2D(Layer):
    """Global average pooling (GoogLeNet, ResNet): (N, D, H, W) -> (N, D, 1, 1)."""

    def output_shape(self, in_shape):
        C, H, W = _check_chw(self, in_shape, None)
        return (C, 1, 1)

    def forward(self, x):
        x = self._check_input(x, 4)
        return self._save(x.shape, x.mean(axis=(2, 3), keepdims=True))

    def backward(self, dout):
        N, C, H, W = self._take_cache(dout)
        return np.broadcast_to(dout / (H * W), (N, C, H, W)).copy()

