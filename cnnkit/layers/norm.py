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
        # keeps x_hat; forward makes x_hat and the output, backward dX; the passes' other
        # temporaries are one block of rows per thread
        return a_in, 2 * a_in, a_in + 3 * runtime.options.threads * runtime.options.image_block_bytes

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = self._check_input(x, 4, self.num_features)
        rows = _rows(x)                                          # (N*H*W, D): one row per position
        gamma, beta = self.params["weight"], self.params["bias"]
        out = np.empty_like(rows)
        if not self.training:
            mean, var = self.buffers["running_mean"], self.buffers["running_var"]
            scale = (gamma / np.sqrt(var + self.eps)).astype(x.dtype)
            shift = (beta - mean * scale).astype(x.dtype)
            runtime.by_images(lambda r, o: np.add(np.multiply(r, scale, out=o), shift, out=o), rows, out)
            return self._save(None, _volume(out, x.shape))
        m = rows.shape[0]
        if m < 2:
            raise ShapeError(f"{self!r}: train mode needs more than one value per channel (N*H*W >= 2), got input {x.shape}")
        mean = (_block_sums(lambda r: r.sum(axis=0), rows) / m).astype(x.dtype)
        x_hat = np.empty_like(rows)

        def center(r: np.ndarray, xh: np.ndarray) -> np.ndarray:   # x - mean, and its squares' sum
            np.subtract(r, mean, out=xh)
            return np.einsum("ij,ij->j", xh, xh)

        var = _block_sums(center, rows, x_hat) / m               # the two-pass variance
        inv_std = (1.0 / np.sqrt(var + self.eps)).astype(x.dtype)

        def normalize(xh: np.ndarray, o: np.ndarray) -> None:   # x_hat, then gamma * x_hat + beta
            xh *= inv_std
            np.add(np.multiply(xh, gamma, out=o), beta, out=o)

        runtime.by_images(normalize, x_hat, out)
        mom = self.momentum
        for key, batch_value in (("running_mean", mean), ("running_var", var * m / (m - 1))):
            running = self.buffers[key]
            self.buffers[key] = ((1 - mom) * running + mom * batch_value).astype(running.dtype)
        return self._save((x_hat, inv_std), _volume(out, x.shape))

    def backward(self, dout: np.ndarray) -> np.ndarray | None:
        x_hat, inv_std = self._take_cache(dout)
        d = _rows(dout)
        m = d.shape[0]
        dbeta = _block_sums(lambda dy: dy.sum(axis=0), d)
        dgamma = _block_sums(lambda dy, xh: np.einsum("ij,ij->j", dy, xh), d, x_hat)
        self._set_grad("bias", dbeta.astype(self.params["bias"].dtype))
        self._set_grad("weight", dgamma.astype(self.params["weight"].dtype))
        # dx = gamma/sigma * (dy - mean(dy) - x_hat * mean(dy * x_hat)), means over (N, H, W)
        scale = (self.params["weight"] * inv_std).astype(d.dtype)
        mean_dy = (dbeta / m).astype(d.dtype)
        mean_dy_xhat = (dgamma / m).astype(d.dtype)
        dx = np.empty_like(d)

        def chain(dy: np.ndarray, xh: np.ndarray, out: np.ndarray) -> None:
            np.multiply(xh, mean_dy_xhat, out=out)
            np.subtract(dy, out, out=out)
            out -= mean_dy
            out *= scale

        runtime.by_images(chain, d, x_hat, dx)
        return _volume(dx, dout.shape)

    def config(self) -> dict[str, Any]:
        return dict(type="BatchNorm2D", num_features=self.num_features, eps=self.eps, momentum=self.momentum)


def _block_sums(part: Any, *arrays: np.ndarray) -> np.ndarray:
    """The sum of part(*blocks) over cache-sized blocks of rows shared between threads:
    each block's sum in the input's precision, their total in float64."""
    sums: list[np.ndarray] = []
    runtime.by_images(lambda *blocks: sums.append(part(*blocks).astype(np.float64)), *arrays)
    return np.sum(sums, axis=0)


def _rows(x: np.ndarray) -> np.ndarray:
    """NCHW x as the (N*H*W, D) matrix of its channels-last memory (copied only if x
    does not live channels-last)."""
    return contiguous_nhwc(x).reshape(-1, x.shape[1])


def _volume(rows: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """(N*H*W, D) rows back as the NCHW volume (N, D, H, W), a view of channels-last memory."""
    N, D, H, W = shape
    return nchw(rows.reshape(N, H, W, D))
