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
        # keeps its input (x_hat is recomputed per block in backward); forward makes the
        # output, backward dX; the passes' temporaries are a few blocks of rows per thread
        blocks = 3 * runtime.options.threads * runtime.options.image_block_bytes
        return a_in, a_in + blocks, a_in + blocks

    def forward(self, x: np.ndarray) -> np.ndarray:
        return self._normalize(x, relu=False)

    def forward_relu(self, x: np.ndarray) -> np.ndarray:
        """This batch norm, then max(0, .), in the same pass (Sequential calls it for a
        BN -> RELU pair, see containers._fused_run); backward then applies the ReLU's
        mask, recomputed from the kept input, before its own chain rule."""
        return self._normalize(x, relu=True)

    def _normalize(self, x: np.ndarray, relu: bool) -> np.ndarray:
        x = self._check_input(x, 4, self.num_features)
        rows = _rows(x)                                          # (N*H*W, D): one row per position
        if self.training:
            m = rows.shape[0]
            if m < 2:
                raise ShapeError(f"{self!r}: train mode needs more than one value per channel (N*H*W >= 2), "
                                 f"got input {x.shape}")
            mean, var = _batch_statistics(rows)                  # float64
            mom = self.momentum
            for key, batch_value in (("running_mean", mean), ("running_var", var * m / (m - 1))):
                running = self.buffers[key]
                self.buffers[key] = ((1 - mom) * running + mom * batch_value).astype(running.dtype)
        else:
            mean, var = self.buffers["running_mean"], self.buffers["running_var"]
        inv_std = 1.0 / np.sqrt(var + self.eps)
        # y = gamma * (x - mean) / sigma + beta = a x + b, per channel
        a = self.params["weight"] * inv_std
        a, b = a.astype(x.dtype), (self.params["bias"] - mean * a).astype(x.dtype)
        out = np.empty_like(rows)

        def affine(r: np.ndarray, o: np.ndarray) -> None:
            np.multiply(r, a, out=o)
            o += b
            if relu:
                np.maximum(o, 0, out=o)

        runtime.by_images(affine, rows, out)
        return self._save((rows, mean.astype(x.dtype), inv_std.astype(x.dtype), a, b, relu), _volume(out, x.shape))

    def backward(self, dout: np.ndarray) -> np.ndarray | None:
        """dgamma = sum dY x_hat, dbeta = sum dY, and
        dX = gamma/sigma * (dY - mean(dY) - x_hat * mean(dY x_hat)), means over (N, H, W),
        with x_hat = (x - mean)/sigma recomputed block by block from the kept input (dY
        first masked by the fused ReLU's y > 0)."""
        rows, mean, inv_std, a, b, relu = self._take_cache(dout)
        d = _rows(dout)
        m = d.shape[0]
        dx = np.empty_like(d)

        def sums(dy: np.ndarray, x: np.ndarray, masked: np.ndarray) -> np.ndarray:
            if relu:                                             # dY where y = a x + b > 0, into dx
                y = np.multiply(x, a)
                y += b
                np.multiply(dy, y > 0, out=masked)
                dy = masked
            ones = np.ones(len(dy), dtype=dy.dtype)
            return np.stack([ones @ dy, np.einsum("ij,ij->j", dy, x - mean)]).astype(np.float64)

        dbeta, dy_dx = np.sum(runtime.by_images(sums, d, rows, dx), axis=0)
        dgamma = dy_dx * inv_std
        self._set_grad("bias", dbeta.astype(self.params["bias"].dtype))
        self._set_grad("weight", dgamma.astype(self.params["weight"].dtype))
        # dX = a dY' + q (x - mean) + r with a = gamma/sigma, dY' = dY (masked), per channel
        q = (-a * inv_std * dgamma / m).astype(d.dtype)
        r = (-a * dbeta / m).astype(d.dtype)

        def chain(dy: np.ndarray, x: np.ndarray, out: np.ndarray) -> None:
            np.multiply(dy, a, out=out)
            centred = np.subtract(x, mean)
            centred *= q
            out += centred
            out += r

        runtime.by_images(chain, dx if relu else d, rows, dx)
        return _volume(dx, dout.shape)

    def config(self) -> dict[str, Any]:
        return dict(type="BatchNorm2D", num_features=self.num_features, eps=self.eps, momentum=self.momentum)


def _batch_statistics(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (biased) variance of each column of rows in one read of memory: each
    cache-sized block is centred on its own mean, and the blocks' counts, means and
    sums of squared deviations are combined exactly (Chan et al.), in float64."""

    def moments(r: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
        ones = np.ones(len(r), dtype=r.dtype)                    # column sums as BLAS matrix-vector products
        shift = (ones @ r) / r.dtype.type(len(r))
        centred = r - shift
        s1 = (ones @ centred).astype(np.float64)                 # corrects the float32 mean
        s2 = np.einsum("ij,ij->j", centred, centred).astype(np.float64)
        return len(r), shift + s1 / len(r), s2 - s1 * s1 / len(r)

    parts = runtime.by_images(moments, rows)
    counts = np.array([n for n, _, _ in parts], dtype=np.float64)[:, None]
    means = np.array([mu for _, mu, _ in parts])
    mean = (counts * means).sum(axis=0) / counts.sum()
    m2 = sum(part[2] for part in parts) + (counts * (means - mean) ** 2).sum(axis=0)
    return mean, m2 / counts.sum()


def _rows(x: np.ndarray) -> np.ndarray:
    """NCHW x as the (N*H*W, D) matrix of its channels-last memory (copied only if x
    does not live channels-last)."""
    return contiguous_nhwc(x).reshape(-1, x.shape[1])


def _volume(rows: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """(N*H*W, D) rows back as the NCHW volume (N, D, H, W), a view of channels-last memory."""
    N, D, H, W = shape
    return nchw(rows.reshape(N, H, W, D))
