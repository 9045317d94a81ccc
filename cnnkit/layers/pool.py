"""POOL layers (notes: "Pooling Layer"): max, average and L2 over F x F windows, stride S.

Each depth slice is pooled independently: (N, D, H1, W1) -> (N, D, H2, W2) with
W2 = (W1 - F + 2P)/S + 1 (P is rarely used; max pads with -inf, average with zeros).
Every pool is computed as a loop over the F*F window offsets, each a strided slice of the
whole batch, so overlapping (F=3, S=2) and non-overlapping windows cost the same and no
window copy is made. Max pooling records its switches (the argmax offset per output)
and backward routes each gradient only there.
"""

from __future__ import annotations

import numpy as np

from ..errors import ShapeError
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

    def _offsets(self, out_hw):
        """(offset index, slice) for each of the F*F positions inside a window."""
        Fh, Fw = self.kernel_size
        for i in range(Fh):
            for j in range(Fw):
                yield i * Fw + j, window_slice((i, j), self.stride, out_hw)

    def _window_sum(self, xp, out_hw):
        """Sum over each window: (N, Ho, Wo, C)."""
        total = None
        for _, sl in self._offsets(out_hw):
            if total is None:
                total = xp[sl].copy()
            else:
                total += xp[sl]
        return total

    def _window_sum_backward(self, d, x_shape, out_hw):
        """Adjoint of _window_sum: every input in a window receives that window's gradient."""
        N, C, H, W = x_shape
        dxp = np.zeros(_padded_shape(x_shape, self, out_hw), dtype=d.dtype)
        for _, sl in self._offsets(out_hw):
            dxp[sl] += d
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

    Input (N, D, H1, W1) -> (N, D, H2, W2). stride defaults to F. rounding='ceil'
    matches Caffe and PyTorch's ceil_mode. Ties go to the first maximum, as in PyTorch.
    """

    pad_value = -np.inf

    def forward(self, x):
        x = self._check_input(x, 4)
        xp, out_hw = self._padded(x)
        out = switches = None
        for k, sl in self._offsets(out_hw):
            window = xp[sl]
            if out is None:
                out = window.copy()
                if self.training:
                    # the smallest integer type that numbers every cell of a window (uint8 to 16x16)
                    kind = np.min_scalar_type(self.kernel_size[0] * self.kernel_size[1] - 1)
                    switches = np.zeros(out.shape, kind)
                    beats, marked = np.empty(out.shape, bool), np.empty(out.shape, kind)
                continue
            if switches is not None:
                # Strictly greater, so ties keep the first maximum; k only grows, so the
                # switch is the last offset that beat everything before it.
                np.greater(window, out, out=beats)
                np.multiply(beats, switches.dtype.type(k), out=marked)
                np.maximum(switches, marked, out=switches)
            np.maximum(out, window, out=out)
        return self._save((switches, x.shape, out_hw), nchw(out))

    def backward(self, dout):
        switches, x_shape, out_hw = self._take_cache(dout)
        d = contiguous_nhwc(dout)
        N, C, H, W = x_shape
        padded = _padded_shape(x_shape, self, out_hw)
        # Non-overlapping windows that tile the input exactly write each input once.
        tiles = self.kernel_size == self.stride and padded[1:3] == tuple(f * o for f, o in zip(self.stride, out_hw))
        dxp = np.empty(padded, dtype=dout.dtype) if tiles else np.zeros(padded, dtype=dout.dtype)
        routed, chosen = np.empty(d.shape, dtype=dout.dtype), np.empty(d.shape, dtype=bool)
        for k, sl in self._offsets(out_hw):
            np.equal(switches, k, out=chosen)
            if tiles:
                np.multiply(d, chosen, out=dxp[sl])
            else:
                np.multiply(d, chosen, out=routed)
                dxp[sl] += routed
        Ph, Pw = self.padding
        return nchw(dxp[:, Ph:Ph + H, Pw:Pw + W, :])


class AvgPool2D(_Pool2D):
    """Average pooling: the mean of each F x F window.

    Input (N, D, H1, W1) -> (N, D, H2, W2). Zero padding counts in the mean (PyTorch's
    count_include_pad=True); the extra cells of a ceil-mode window do not.
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

    Input (N, D, H1, W1) -> (N, D, H2, W2).
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

