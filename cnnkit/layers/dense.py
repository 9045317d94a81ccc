"""FC (fully-connected) and Flatten (notes: "Fully-connected layer")."""

from __future__ import annotations

import math

import numpy as np

from ..errors import ShapeError
from . import threads
from .base import Layer, default_rng
from .windows import fan_in_std


class FC(Layer):
    """Fully-connected layer: every output neuron sees every input number.

    Input (N, D) or (N, C, H, W), flattened in C, H, W order like PyTorch -> (N, out_features).
    Parameters ``weight`` (out_features, in_features) and ``bias`` (out_features,).
    On 32x32x3 input one neuron has 3,072 weights; on 200x200x3, 120,000.

    Args:
        in_features: the numbers each neuron sees, D (C*H*W for a volume).
        out_features: the number of neurons (K class scores for the last FC).
        bias: whether to learn a bias per neuron.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        if self.in_features < 1 or self.out_features < 1:
            raise ShapeError(f"FC: in_features and out_features must be >= 1, got {in_features}, {out_features}")
        shape = (self.out_features, self.in_features)
        self.params["weight"] = default_rng().standard_normal(shape, dtype=np.float32) * np.float32(fan_in_std(self.in_features))
        if bias:
            self.params["bias"] = np.zeros(self.out_features, dtype=np.float32)

    def output_shape(self, in_shape):
        if math.prod(in_shape) != self.in_features:
            raise ShapeError(f"{self!r}: expected {self.in_features} input numbers per example, got "
                             f"{'x'.join(map(str, in_shape))} = {math.prod(in_shape)}")
        return (self.out_features,)

    def forward(self, x):
        x = self._check_input(x, (2, 4))
        rows = x.reshape(x.shape[0], -1)
        if rows.shape[1] != self.in_features:
            raise ShapeError(f"{self!r}: expected {self.in_features} input numbers per example, got "
                             f"{rows.shape[1]} from input of shape {x.shape}")
        w = self.params["weight"]
        out = np.empty((rows.shape[0], self.out_features), dtype=np.result_type(rows, w))
        # Each thread (see threads.py) takes a share of the neurons, and so reads only its
        # share of the weights: for FC the weights are the big operand.
        _by_share(self.out_features, lambda f: np.matmul(rows, w[f].T, out=out[:, f]))
        if "bias" in self.params:
            out += self.params["bias"]
        return self._save((rows, x.shape), out)

    def backward(self, dout):
        rows, x_shape = self._take_cache(dout)
        w = self.params["weight"]
        dw = np.empty(w.shape, dtype=np.result_type(dout, rows))
        _by_share(self.out_features, lambda f: np.matmul(dout[:, f].T, rows, out=dw[f]))
        self.grads["weight"] = dw.astype(w.dtype, copy=False)
        if "bias" in self.params:
            self.grads["bias"] = dout.sum(axis=0).astype(self.params["bias"].dtype)
        if not self.input_grad:
            return None
        dx = np.empty(rows.shape, dtype=np.result_type(dout, w))
        _by_share(self.in_features, lambda d: np.matmul(dout, w[:, d], out=dx[:, d]))
        return dx.reshape(x_shape)

    def config(self):
        return dict(type="FC", in_features=self.in_features, out_features=self.out_features,
                    bias="bias" in self.params)


def _by_share(size: int, gemm) -> None:
    """gemm(slice) for contiguous slices of range(size), one per cnnkit thread."""
    threads.run_shares(lambda share: gemm(slice(share.start, share.stop)), range(size))


class Flatten(Layer):
    """(N, C, H, W) -> (N, C*H*W), in PyTorch's C, H, W order."""

    def output_shape(self, in_shape):
        return (math.prod(in_shape),)

    def forward(self, x):
        x = self._check_input(x, (2, 3, 4))
        return self._save(x.shape, x.reshape(x.shape[0], -1))

    def backward(self, dout):
        return dout.reshape(self._take_cache(dout))
