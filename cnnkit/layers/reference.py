"""The reference strategy: the notes' definitions as plain loops over output positions,
slow and obviously right, forward AND backward, for CONV, pools, LRN and
locally-connected layers.

Select it with ``cnnkit.use_reference()`` or ``with cnnkit.engine(strategy="reference")``;
the tests hold every fast kernel equal to it on the same cases. Shapes are NCHW.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import kernels
from .geometry import Pair, Window

# --- CONV: V[n, d, y, x] = sum(X[n, window(y, x)] * W_d) + b_d ------------------------------


def _receptive_field(xp: np.ndarray, i: int, j: int, F: Pair, S: Pair, dilation: Pair) -> tuple[slice, slice]:
    """Rows and columns of padded xp that output (i, j) sees."""
    (Fh, Fw), (Sh, Sw), (Dh, Dw) = F, S, dilation
    return (slice(i * Sh, i * Sh + Dh * (Fh - 1) + 1, Dh), slice(j * Sw, j * Sw + Dw * (Fw - 1) + 1, Dw))


def conv2d(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, stride: Pair = (1, 1), padding: Pair = (0, 0),
           dilation: Pair = (1, 1), groups: int = 1) -> np.ndarray:
    """The notes' CONV, one output position at a time: (N, C, H, W) -> (N, K, H2, W2)
    (floor rounding)."""
    xp = np.pad(x, ((0, 0), (0, 0), (padding[0], padding[0]), (padding[1], padding[1])))
    K, _, Fh, Fw = w.shape
    H2 = (xp.shape[2] - dilation[0] * (Fh - 1) - 1) // stride[0] + 1
    W2 = (xp.shape[3] - dilation[1] * (Fw - 1) - 1) // stride[1] + 1
    return _conv_padded(xp, w, b, stride, dilation, groups, (H2, W2))


def _conv_padded(xp: np.ndarray, w: np.ndarray, b: np.ndarray | None, S: Pair, dilation: Pair, groups: int,
                 out: Pair) -> np.ndarray:
    N, K, Cg = xp.shape[0], w.shape[0], w.shape[1]
    Kg = K // groups
    V = np.zeros((N, K, *out), dtype=np.result_type(xp, w))
    for g in range(groups):
        filters, channels = slice(g * Kg, (g + 1) * Kg), slice(g * Cg, (g + 1) * Cg)
        for i in range(out[0]):
            for j in range(out[1]):
                rows, cols = _receptive_field(xp, i, j, w.shape[2:], S, dilation)
                field = xp[:, channels, rows, cols]                                 # (N, Cg, Fh, Fw)
                V[:, filters, i, j] = np.tensordot(field, w[filters], axes=([1, 2, 3], [1, 2, 3]))
    if b is not None:
        V += b[None, :, None, None]
    return V


def conv2d_backward(xp: np.ndarray, w: np.ndarray, dout: np.ndarray, S: Pair, dilation: Pair,
                    groups: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(dX padded, dW, db) of _conv_padded: each output's gradient flows back to the
    receptive field it saw (dX) and to the filter that saw it (dW)."""
    K, Cg = w.shape[:2]
    Kg = K // groups
    dxp, dw = np.zeros(xp.shape, dtype=dout.dtype), np.zeros(w.shape, dtype=dout.dtype)
    for g in range(groups):
        filters, channels = slice(g * Kg, (g + 1) * Kg), slice(g * Cg, (g + 1) * Cg)
        for i in range(dout.shape[2]):
            for j in range(dout.shape[3]):
                rows, cols = _receptive_field(xp, i, j, w.shape[2:], S, dilation)
                d = dout[:, filters, i, j]                                          # (N, Kg)
                dw[filters] += np.tensordot(d, xp[:, channels, rows, cols], axes=(0, 0))
                dxp[:, channels, rows, cols] += np.tensordot(d, w[filters], axes=(1, 0))
    return dxp, dw, dout.sum(axis=(0, 2, 3))


class ReferenceConv:
    """CONV by the loops above (the ConvLowering interface)."""

    name = "reference"

    def why_not(self, w: Window) -> str | None:
        return None

    def pad(self, x: np.ndarray, w: Window) -> np.ndarray:
        (Ph, Pw) = w.P
        return np.pad(x, ((0, 0), (0, 0), (Ph, Ph), (Pw, Pw)))

    def fuses_add(self, w: Window) -> bool:
        return False

    def forward(self, xp: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, w: Window,
                scale: np.ndarray | None = None, relu: bool = False) -> np.ndarray:
        out = _conv_padded(xp, weight, None, w.S, w.dilation, w.groups, w.out)
        if scale is not None:
            out = out * scale.reshape(1, -1, 1, 1)
        if bias is not None:
            out = out + bias.reshape(1, -1, 1, 1)
        return np.maximum(out, 0) if relu else out

    def backward(self, xp: np.ndarray, dout: np.ndarray, weight: np.ndarray, has_bias: bool, w: Window,
                 input_grad: bool) -> tuple[np.ndarray | None, np.ndarray, np.ndarray | None]:
        dxp, dw, db = conv2d_backward(xp, weight, dout, w.S, w.dilation, w.groups)
        (Ph, Pw) = w.P
        dx = dxp[:, :, Ph:Ph + w.H, Pw:Pw + w.W] if input_grad else None
        return dx, dw, db if has_bias else None

    def memory(self, w: Window, n: int, e: int) -> kernels.Cost:
        xp = n * w.C * (w.H + 2 * w.P[0]) * (w.W + 2 * w.P[1]) * e
        a_in, a_out = n * w.C * w.H * w.W * e, n * w.K * w.out[0] * w.out[1] * e
        return xp, xp + a_out, 2 * xp + a_in

    def workspace(self, w: Window, n: int, e: int) -> int:
        return 0


# --- POOL: each output combines the cells of its window -----------------------------------


def _window_cells(w: Window, i: int, j: int) -> tuple[slice, slice, int]:
    """The input cells of output (i, j)'s window (clipped to the input) and how many cells
    of the window lie in the input or its zero padding (the mean's divisor)."""
    (Fh, Fw), (Sh, Sw), (Ph, Pw) = w.F, w.S, w.P
    r0, c0 = i * Sh - Ph, j * Sw - Pw
    r1, c1 = r0 + Fh, c0 + Fw
    inside = (min(r1, w.H + Ph) - max(r0, -Ph)) * (min(c1, w.W + Pw) - max(c0, -Pw))
    return slice(max(r0, 0), min(r1, w.H)), slice(max(c0, 0), min(c1, w.W)), inside


def pool2d(x: np.ndarray, w: Window, mode: str) -> np.ndarray:
    """Max, average (zero padding counted, ceil-mode overhang not) or L2 of each window."""
    N, C = x.shape[:2]
    out = np.zeros((N, C, *w.out), dtype=x.dtype)
    for i in range(w.out[0]):
        for j in range(w.out[1]):
            rows, cols, inside = _window_cells(w, i, j)
            cells = x[:, :, rows, cols]
            if mode == "max":
                out[:, :, i, j] = cells.max(axis=(2, 3))
            elif mode == "avg":
                out[:, :, i, j] = cells.sum(axis=(2, 3)) / inside
            else:
                out[:, :, i, j] = np.sqrt((cells * cells).sum(axis=(2, 3)))
    return out


def pool2d_backward(x: np.ndarray, out: np.ndarray, dout: np.ndarray, w: Window, mode: str) -> np.ndarray:
    """Max: each gradient to the first maximum of its window (the switch); average: shared
    by the window's cells; L2: d sqrt(s) = x / sqrt(s) per cell (0 for a window of zeros)."""
    N, C = x.shape[:2]
    dx = np.zeros(x.shape, dtype=dout.dtype)
    for i in range(w.out[0]):
        for j in range(w.out[1]):
            rows, cols, inside = _window_cells(w, i, j)
            cells, d = x[:, :, rows, cols], dout[:, :, i, j][:, :, None, None]
            if mode == "max":
                flat = cells.reshape(N, C, -1)
                first = np.zeros_like(flat)
                np.put_along_axis(first, flat.argmax(axis=2)[..., None], 1, axis=2)
                dx[:, :, rows, cols] += d * first.reshape(cells.shape)
            elif mode == "avg":
                dx[:, :, rows, cols] += d / inside
            else:
                norm = out[:, :, i, j][:, :, None, None]
                with np.errstate(divide="ignore", invalid="ignore"):
                    dx[:, :, rows, cols] += np.where(norm > 0, d * cells / norm, 0)
    return dx


def max_pool2d(x: np.ndarray, F: int, S: int) -> np.ndarray:
    """Each output is the max of its F x F window (no padding, floor rounding)."""
    H2, W2 = (x.shape[2] - F) // S + 1, (x.shape[3] - F) // S + 1
    return pool2d(x, Window(x.shape[1], x.shape[2], x.shape[3], (F, F), (S, S), (0, 0), (1, 1), (H2, W2)), "max")


class ReferencePool:
    name = "reference"

    def forward(self, layer: Any, x: np.ndarray) -> tuple[np.ndarray, Any]:
        w = layer.window(x.shape)
        out = pool2d(x, w, layer.mode)
        return out, (x, out, w)

    def backward(self, layer: Any, saved: Any, dout: np.ndarray) -> tuple[np.ndarray, dict]:
        x, out, w = saved
        return pool2d_backward(x, out, dout, w, layer.mode), {}


# --- LRN: b_c = a_c / (k + alpha/n * sum_{c' near c} a_c'^2)^beta ----------------------------


def _neighbours(c: int, C: int, n: int) -> range:
    return range(max(0, c - n // 2), min(C, c + (n - 1) // 2 + 1))


class ReferenceLRN:
    name = "reference"

    def forward(self, layer: Any, a: np.ndarray) -> tuple[np.ndarray, Any]:
        C, n = a.shape[1], layer.size
        scale = np.empty_like(a)
        for c in range(C):
            scale[:, c] = layer.k + layer.alpha / n * sum(a[:, j] ** 2 for j in _neighbours(c, C, n))
        return a / scale ** layer.beta, (a, scale)

    def backward(self, layer: Any, saved: Any, dout: np.ndarray) -> tuple[np.ndarray, dict]:
        """db_c/da_j = [c = j] scale_c^-beta - beta a_c scale_c^(-beta-1) (alpha/n) 2 a_j."""
        a, scale = saved
        C, n, beta = a.shape[1], layer.size, layer.beta
        da = np.zeros_like(dout)
        for c in range(C):
            da[:, c] += dout[:, c] * scale[:, c] ** -beta
            for j in _neighbours(c, C, n):
                da[:, j] -= dout[:, c] * beta * a[:, c] * scale[:, c] ** (-beta - 1) * (layer.alpha / n) * 2 * a[:, j]
        return da, {}


# --- locally connected: a CONV with a filter bank of its own at every position ------------------


class ReferenceLocallyConnected:
    name = "reference"

    def forward(self, layer: Any, x: np.ndarray) -> tuple[np.ndarray, Any]:
        (Ph, Pw), weight = layer.padding, layer.params["weight"]
        xp = np.pad(x, ((0, 0), (0, 0), (Ph, Ph), (Pw, Pw)))
        H2, W2, K = weight.shape[:3]
        out = np.zeros((x.shape[0], K, H2, W2), dtype=np.result_type(x, weight))
        for i in range(H2):
            for j in range(W2):
                rows, cols = _receptive_field(xp, i, j, layer.kernel_size, layer.stride, (1, 1))
                out[:, :, i, j] = np.tensordot(xp[:, :, rows, cols], weight[i, j], axes=([1, 2, 3], [1, 2, 3]))
        if "bias" in layer.params:
            out += layer.params["bias"]
        return out, xp

    def backward(self, layer: Any, xp: np.ndarray, dout: np.ndarray) -> tuple[np.ndarray, dict]:
        (Ph, Pw), weight = layer.padding, layer.params["weight"]
        dxp, dw = np.zeros(xp.shape, dtype=dout.dtype), np.zeros(weight.shape, dtype=dout.dtype)
        for i in range(weight.shape[0]):
            for j in range(weight.shape[1]):
                rows, cols = _receptive_field(xp, i, j, layer.kernel_size, layer.stride, (1, 1))
                d = dout[:, :, i, j]                                               # (N, K)
                dw[i, j] = np.tensordot(d, xp[:, :, rows, cols], axes=(0, 0))
                dxp[:, :, rows, cols] += np.tensordot(d, weight[i, j], axes=(1, 0))
        grads = {"weight": dw}
        if "bias" in layer.params:
            grads["bias"] = dout.sum(axis=0)
        H, W = xp.shape[2] - 2 * Ph, xp.shape[3] - 2 * Pw
        return dxp[:, :, Ph:Ph + H, Pw:Pw + W], grads


kernels.register("conv", ReferenceConv())
kernels.register("pool", ReferencePool())
kernels.register("lrn", ReferenceLRN())
kernels.register("locally_connected", ReferenceLocallyConnected())
