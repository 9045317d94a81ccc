"""FC (fully-connected) and Flatten (notes: "Fully-connected layer")."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..errors import ShapeError
from .base import Layer
from .geometry import flag, whole
from .init import constant, he_normal
from .runtime import runtime


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
        self.in_features = whole(in_features, "in_features", "FC")
        self.out_features = whole(out_features, "out_features", "FC")
        bias = flag(bias, "bias", "FC")
        self.params["weight"] = he_normal((self.out_features, self.in_features), fan_in=self.in_features)
        if bias:
            self.params["bias"] = constant(self.out_features, 0.0)

    def output_shape(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        if math.prod(in_shape) != self.in_features:
            raise ShapeError(f"{self!r}: expected {self.in_features} input numbers per example, got "
                             f"{'x'.join(map(str, in_shape))} = {math.prod(in_shape)}")
        return (self.out_features,)

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = self._check_input(x, (2, 4))
        rows = x.reshape(x.shape[0], -1)
        if rows.shape[1] != self.in_features:
            raise ShapeError(f"{self!r}: expected {self.in_features} input numbers per example, got "
                             f"{rows.shape[1]} from input of shape {x.shape}")
        w = self.params["weight"]
        out = np.empty((rows.shape[0], self.out_features), dtype=np.result_type(rows, w))
        # Each of the engine's threads takes a share of the neurons, and so reads only its
        # share of the weights: for FC the weights are the big operand.
        runtime.by_share(self.out_features, lambda f: np.matmul(rows, w[f].T, out=out[:, f]))
        if "bias" in self.params:
            out += self.params["bias"]
        return self._save((rows, x.shape), out)

    def backward(self, dout: np.ndarray) -> np.ndarray | None:
        rows, x_shape = self._take_cache(dout)
        w = self.params["weight"]
        dw = self._grad_buffer("weight", np.result_type(dout, rows))    # last step's dW, overwritten
        runtime.by_share(self.out_features, lambda f: np.matmul(dout[:, f].T, rows, out=dw[f]))
        self._set_grad("weight", dw)
        if "bias" in self.params:
            self._set_grad("bias", dout.sum(axis=0))
        if not self.input_grad:
            return None
        dx = np.empty(rows.shape, dtype=np.result_type(dout, w))
        runtime.by_share(self.in_features, lambda d: np.matmul(dout, w[:, d], out=dx[:, d]))
        return dx.reshape(x_shape)

    def memory_use(self, in_shape: tuple[int, ...], batch: int, itemsize: int) -> tuple[int, int, int]:
        """Keeps its input rows (a view of an (N, D) input, a copy of a channels-last
        volume); backward writes dW over the last step's gradient (counted with the
        parameters)."""
        a_in, a_out = batch * math.prod(in_shape) * itemsize, batch * self.out_features * itemsize
        rows = a_in if len(in_shape) == 3 else 0
        return rows, rows + a_out, a_out + a_in

    def config(self) -> dict[str, Any]:
        return dict(type="FC", in_features=self.in_features, out_features=self.out_features,
                    bias="bias" in self.params)


class Flatten(Layer):
    """(N, C, H, W) -> (N, C*H*W), in PyTorch's C, H, W order."""

    def output_shape(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        return (math.prod(in_shape),)

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = self._check_input(x, (2, 3, 4))
        return self._save(x.shape, x.reshape(x.shape[0], -1))

    def backward(self, dout: np.ndarray) -> np.ndarray | None:
        return dout.reshape(self._take_cache(dout))

    def memory_use(self, in_shape: tuple[int, ...], batch: int, itemsize: int) -> tuple[int, int, int]:
        a_in = batch * math.prod(in_shape) * itemsize
        return 0, a_in, a_in
