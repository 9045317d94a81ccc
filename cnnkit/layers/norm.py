"""Normalization layers (notes: "Normalization Layer"): LRN across channels, batch norm."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..errors import ShapeError
from . import kernels
from .base import Layer
from .geometry import check_chw, real, whole
from .init import constant
from .layout import contiguous_nhwc, nchw
from .runtime import runtime


def _channel_window_sum(a: np.ndarray, before: int, after: int) -> np.ndarray:
    """s[:, c] = sum of a[:, c - before : c + after + 1] along channels, zero outside."""
    C = a.shape[1]
    csum = np.zeros((a.shape[0], C + 1, *a.shape[2:]), dtype=a.dtype)
    np.cumsum(a, axis=1, out=csum[:, 1:])
    hi = np.minimum(np.arange(C) + after + 1, C)
    lo = np.maximum(np.arange(C) - before, 0)
    return csum[:, hi] - csum[:, lo]


class LRN(Layer):
    """Local response normalization across channels (AlexNet; PyTorch's formula):

    b_c = a_c / (k + alpha/n * sum_{c' = c - n//2}^{c + (n-1)//2} a_{c'}^2) ^ beta

    Input (N, D, H, W) -> same shape.

    Args:
        size: n, the number of neighbouring channels (depth slices) in the sum.
        alpha, beta, k: the constants of the formula (AlexNet: n=5, alpha=1e-4,
            beta=0.75, k=2).
    """

    def __init__(self, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0):
        super().__init__()
        self.size = whole(size, "size", "LRN")
        self.alpha, self.beta, self.k = real(alpha, "alpha", "LRN"), real(beta, "beta", "LRN"), real(k, "k", "LRN")

    def forward(self, x: np.ndarray) -> np.ndarray:
        return self._forward_by("lrn", self._check_input(x, 4))   # ChannelWindowSums below, or the reference loops

    def backward(self, dout: np.ndarray) -> np.ndarray | None:
        return self._backward_by(dout)[0]

    def memory_use(self, in_shape: tuple[int, ...], batch: int, itemsize: int) -> tuple[int, int, int]:
        a_in = batch * math.prod(in_shape) * itemsize
        return 3 * a_in, 5 * a_in, 6 * a_in      # keeps x, the scale and the output

    def config(self) -> dict[str, Any]:
        return dict(type="LRN", size=self.size, alpha=self.alpha, beta=self.beta, k=self.k)


class ChannelWindowSums:
    """LRN with the sum over each channel window from one cumulative sum along depth."""

    name = "channel-window-sums"

    def forward(self, layer: LRN, x: np.ndarray) -> tuple[np.ndarray, Any]:
        n = layer.size
        scale = layer.k + layer.alpha / n * _channel_window_sum(x * x, n // 2, (n - 1) // 2)
        out = x * scale ** -layer.beta
        return out, (x, scale, out)

    def backward(self, layer: LRN, saved: Any, dout: np.ndarray) -> tuple[np.ndarray, dict]:
        x, scale, out = saved
        n = layer.size
        # b_c depends on a_c' for every c' in c's window; the transpose window is mirrored.
        t = dout * out / scale
        dx = dout * scale ** -layer.beta
        dx -= (2 * layer.alpha * layer.beta / n) * x * _channel_window_sum(t, (n - 1) // 2, n // 2)
        return dx, {}


kernels.register("lrn", ChannelWindowSums())


class BatchNorm2D(Layer):
    """Batch normalization per channel (ResNet): y = gamma * (x - mean) / sqrt(var + eps) + beta.

    Input (N, D, H, W) -> same shape. Train mode uses the batch's statistics over
    (N, H, W) and updates ``running_mean``/``running_var`` (unbiased) with ``momentum``
    as PyTorch does; eval mode uses the running statistics. Parameters ``weight`` (gamma)
    and ``bias`` (beta), shape (D,).

    Args:
        num_features: D, the depth of the input volume (one mean and variance per slice).
        eps: added to the variance before the square root.
        momentum: running = (1 - momentum) * running + momentum * batch statistic.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        self.num_features = whole(num_features, "num_features", "BatchNorm2D")
        self.eps = real(eps, "eps", "BatchNorm2D", low=0.0)
        self.momentum = real(momentum, "momentum", "BatchNorm2D", low=0.0, high=1.0)
        self.params["weight"] = constant(self.num_features, 1.0)
        self.params["bias"] = constant(self.num_features, 0.0)
        self.buffers["running_mean"] = constant(self.num_features, 0.0)
        self.buffers["running_var"] = constant(self.num_features, 1.0)

    def output_shape(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        return check_chw(self, in_shape, self.num_features)

    def memory_use(self, in_shape: tuple[int, ...], batch: int, itemsize: int) -> tuple[int, int, int]:
        a_in = batch * math.prod(in_shape) * itemsize
        if _compiled() is not None:
            # keeps x itself (and recomputes a fused ReLU's mask); forward makes the output,
            # backward dX
            return a_in, a_in, a_in
        # keeps x - mean (and, fused with a ReLU, that ReLU's mask: on the ReLU's account);
        # forward makes it and the output, backward dX; the passes' other temporaries are
        # a few blocks of rows per thread
        blocks = 3 * runtime.options.threads * runtime.options.image_block_bytes
        return a_in, 2 * a_in + blocks, a_in + blocks

    def forward(self, x: np.ndarray) -> np.ndarray:
        return self._normalize(x, relu=False)

    def forward_relu(self, x: np.ndarray) -> np.ndarray:
        """This batch norm, then max(0, .), in the same pass (Sequential calls it for a
        BN -> RELU pair, see containers._fused_run); it keeps the ReLU's mask, and its
        backward applies it before its own chain rule."""
        return self._normalize(x, relu=True)

    def _normalize(self, x: np.ndarray, relu: bool) -> np.ndarray:
        x = self._check_input(x, 4, self.num_features)
        rows = _rows(x)                                          # (N*H*W, D): one row per position
        loops = _compiled()
        if self.training:
            m = rows.shape[0]
            if m < 2:
                raise ShapeError(f"{self!r}: train mode needs more than one value per channel (N*H*W >= 2), "
                                 f"got input {x.shape}")
            if loops is not None:
                shift, offset, var = _statistics(rows, loops)
                kept = rows
            else:
                kept, shift, offset, var = _centred(rows)        # x - shift, and the statistics
            mean = shift + offset
            mom = self.momentum
            for key, batch_value in (("running_mean", mean), ("running_var", var * m / (m - 1))):
                running = self.buffers[key]
                self.buffers[key] = ((1 - mom) * running + mom * batch_value).astype(running.dtype)
        else:
            mean, var = self.buffers["running_mean"], self.buffers["running_var"]
            kept, shift, offset = rows, np.zeros(self.num_features), mean
        inv_std = 1.0 / np.sqrt(var + self.eps)
        # y = gamma (x - mean) / sigma + beta = a s + b per channel, s = x - shift, the
        # float32 shift near the mean (train) or 0 (eval), offset = mean - shift
        a = self.params["weight"] * inv_std
        b = self.params["bias"] - a * offset
        a32, b32, shift32 = a.astype(x.dtype), b.astype(x.dtype), shift.astype(x.dtype)
        out = np.empty_like(rows)
        mask = np.empty(rows.shape, dtype=bool) if relu and self.training and loops is None else None

        def affine(s: np.ndarray, o: np.ndarray, keep: np.ndarray | None) -> None:
            if loops is not None:
                return loops.affine(s, shift32, a32, b32, relu, o)
            np.multiply(s, a32, out=o)
            o += b32
            if relu:   # o * (o > 0): NumPy's multiply and compare run faster than its maximum
                o *= np.greater(o, 0, out=keep)

        runtime.by_images(affine, kept, out, mask)
        # the compiled loops keep x and the shift, NumPy's s = x - shift (shift None); last,
        # the fused ReLU: None, its mask, or True (the loops compute y > 0 again from x)
        fused_relu = (mask if mask is not None else True) if relu else None
        cache = (kept, shift32 if loops is not None else None, offset.astype(x.dtype), inv_std.astype(x.dtype),
                 a32, b32, fused_relu)
        return self._save(cache, _volume(out, x.shape))

    def backward(self, dout: np.ndarray) -> np.ndarray | None:
        """dgamma = sum dY x_hat, dbeta = sum dY, and
        dX = gamma/sigma * (dY - mean(dY) - x_hat * mean(dY x_hat)), means over (N, H, W),
        from s = x - shift (x_hat = (s - offset)/sigma), dY first masked by the fused
        ReLU's y > 0."""
        kept, shift, offset, inv_std, a, b, fused_relu = self._take_cache(dout)
        relu, mask = fused_relu is not None, fused_relu if isinstance(fused_relu, np.ndarray) else None
        d = _rows(dout)
        m = d.shape[0]
        dx = np.empty_like(d)
        loops = _compiled() if shift is not None else None
        if loops is not None and not d.flags.c_contiguous:
            # a Concat's slice of channels: the compiled loops read rows with gaps 4x slower
            # (not vectorised) than a copy of them costs (the same numbers either way)
            d = np.ascontiguousarray(d)

        def sums(dy: np.ndarray, s: np.ndarray, keep: np.ndarray | None, masked: np.ndarray) -> np.ndarray:
            if loops is not None:
                return loops.gradient_sums(dy, s, shift, a, b, relu)
            if keep is not None:                                 # dY where y > 0, into dx
                dy = np.multiply(dy, keep, out=masked)
            ones = np.ones(len(dy), dtype=dy.dtype)
            return np.stack([ones @ dy, np.einsum("ij,ij->j", dy, s)]).astype(np.float64)

        dbeta, dy_s = np.sum(runtime.by_images(sums, d, kept, mask, dx), axis=0)
        dgamma = inv_std * (dy_s - offset * dbeta)
        self._set_grad("bias", dbeta.astype(self.params["bias"].dtype))
        self._set_grad("weight", dgamma.astype(self.params["weight"].dtype))
        # dX = a dY' + q s + r per channel, a = gamma/sigma, dY' = dY (masked)
        q = (-a * inv_std * dgamma / m).astype(d.dtype)
        r = (a * (inv_std * dgamma * offset - dbeta) / m).astype(d.dtype)

        def chain(dy: np.ndarray, s: np.ndarray, out: np.ndarray) -> None:
            if loops is not None:
                return loops.input_gradient(dy, s, shift, a, b, relu, a, q, r, out)
            np.multiply(dy, a, out=out)
            out += np.multiply(s, q)
            out += r

        runtime.by_images(chain, d if mask is None else dx, kept, dx)
        return _volume(dx, dout.shape)

    def config(self) -> dict[str, Any]:
        return dict(type="BatchNorm2D", num_features=self.num_features, eps=self.eps, momentum=self.momentum)


def _compiled() -> Any:
    """The compiled batch-norm loops in force (None: NumPy's passes)."""
    return kernels.compiled.loops()


def _statistics(rows: np.ndarray, loops: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(shift, offset, variance) per column in one read of rows by the compiled loops:
    sums of s = x - x[0] and s^2 in float64 (the first row is near the mean, so nothing
    cancels), shift the float32 mean, offset = mean - shift what that rounding missed."""
    m = rows.shape[0]
    first = np.array(rows[0])
    s1, s2 = np.sum(runtime.by_images(lambda r: loops.statistics(r, first), rows), axis=0) / m
    mean = first + s1
    shift = mean.astype(rows.dtype).astype(np.float64)
    return shift, mean - shift, np.maximum(s2 - s1 * s1, 0.0)


def _centred(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(s = rows - shift, shift, offset, variance) per column, two reads of rows: shift is
    the float32 mean from the blocks' column sums, offset = mean(s) what that rounding
    missed (so the mean is shift + offset), the variance mean(s^2) - offset^2 (in float64
    from float32 block sums, of numbers centred already)."""
    m = rows.shape[0]

    def column_sums(r: np.ndarray) -> np.ndarray:
        return (np.ones(len(r), dtype=r.dtype) @ r).astype(np.float64)   # a BLAS matrix-vector product

    shift = (np.sum(runtime.by_images(column_sums, rows), axis=0) / m).astype(rows.dtype)
    centred = np.empty_like(rows)

    def centre(r: np.ndarray, s: np.ndarray) -> np.ndarray:
        np.subtract(r, shift, out=s)
        return np.stack([np.ones(len(s), dtype=s.dtype) @ s, np.einsum("ij,ij->j", s, s)]).astype(np.float64)

    s1, s2 = np.sum(runtime.by_images(centre, rows, centred), axis=0)
    offset = s1 / m
    return centred, shift.astype(np.float64), offset, np.maximum(s2 / m - offset * offset, 0.0)


def _rows(x: np.ndarray) -> np.ndarray:
    """NCHW x as the (N*H*W, D) matrix of its channels-last memory: a view wherever the
    positions are evenly spaced rows (a contiguous volume, or a Concat's slice of channels,
    whose rows are the whole join's), a copy otherwise."""
    N, D, H, W = x.shape
    sN, sC, sH, sW = x.strides
    even = (sC == x.itemsize and (H == 1 or sH == W * sW) and (N == 1 or sN == H * W * sW) and sW >= D * sC)
    if even and N * H * W > 0:
        return np.lib.stride_tricks.as_strided(x, (N * H * W, D), (sW, sC), writeable=False)
    return contiguous_nhwc(x).reshape(-1, D)


def _volume(rows: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """(N*H*W, D) rows back as the NCHW volume (N, D, H, W), a view of channels-last memory."""
    N, D, H, W = shape
    return nchw(rows.reshape(N, H, W, D))
