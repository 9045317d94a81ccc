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
        return a_in, 4 * a_in, 3 * a_in          # keeps x_hat

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = self._check_input(x, 4, self.num_features)
        gamma, beta = _per_channel(self.params["weight"]), _per_channel(self.params["bias"])
        if not self.training:
            mean, var = self.buffers["running_mean"], self.buffers["running_var"]
            inv_std = 1.0 / np.sqrt(var + self.eps)
            return self._save(None, (x - _per_channel(mean)) * _per_channel(inv_std * self.params["weight"]) + beta)
        m = x.shape[0] * x.shape[2] * x.shape[3]
        if m < 2:
            raise ShapeError(f"{self!r}: train mode needs more than one value per channel (N*H*W >= 2), got input {x.shape}")
        mean = x.mean(axis=(0, 2, 3))
        centered = x - _per_channel(mean)
        var = np.mean(centered * centered, axis=(0, 2, 3))
        inv_std = (1.0 / np.sqrt(var + self.eps)).astype(x.dtype)
        x_hat = centered * _per_channel(inv_std)
        mom = self.momentum
        for key, batch_value in (("running_mean", mean), ("running_var", var * m / (m - 1))):
            running = self.buffers[key]
            self.buffers[key] = ((1 - mom) * running + mom * batch_value).astype(running.dtype)
        return self._save((x_hat, inv_std), x_hat * gamma + beta)

    def backward(self, dout: np.ndarray) -> np.ndarray | None:
        x_hat, inv_std = self._take_cache(dout)
        axes = (0, 2, 3)
        dbeta = dout.sum(axis=axes).astype(self.params["bias"].dtype)
        dgamma = (dout * x_hat).sum(axis=axes).astype(self.params["weight"].dtype)
        self._set_grad("bias", dbeta)
        self._set_grad("weight", dgamma)
        # dx = gamma/sigma * (dy - mean(dy) - x_hat * mean(dy * x_hat)), means over (N, H, W)
        m = dout.shape[0] * dout.shape[2] * dout.shape[3]
        mean_dy = _per_channel(dbeta / m)
        mean_dy_xhat = _per_channel(dgamma / m)
        scale = _per_channel(self.params["weight"] * inv_std)
        return scale * (dout - mean_dy - x_hat * mean_dy_xhat)

    def config(self) -> dict[str, Any]:
        return dict(type="BatchNorm2D", num_features=self.num_features, eps=self.eps, momentum=self.momentum)


def _per_channel(v: np.ndarray) -> np.ndarray:
    """(D,) -> (1, D, 1, 1) so it broadcasts over an NCHW volume."""
    return v.reshape(1, -1, 1, 1)
