"""Numerical gradient checking (the CS231n way): centered differences in float64."""

from __future__ import annotations

import copy

import numpy as np

from .errors import ShapeError
from .layers.base import Layer


def gradcheck(layer: Layer, x: np.ndarray, eps: float = 1e-5, max_checks: int = 64,
              seed: int = 0) -> float:
    """Max relative error between analytic and numerical gradients of ``layer`` at ``x``.

    Checks the input and every parameter. The layer is copied and run in float64, in
    train mode; the scalar checked is sum(out * R) for a fixed random R. At most
    ``max_checks`` entries per array are perturbed (chosen at random), each with
    (f(v + eps) - f(v - eps)) / 2eps. Relative error: |a - n| / max(|a| + |n|, 1e-3 * G), with G
    the largest analytic gradient of the layer: a gradient that is truly zero (a conv bias
    before batch norm) then can't read as 100% error when rounding noise meets an analytic 1e-17.
    """
    if not isinstance(layer, Layer):
        raise ShapeError(f"gradcheck: expected a cnnkit layer, got {type(layer).__name__}")
    net = copy.deepcopy(layer).astype(np.float64).train()
    x = np.array(x, dtype=np.float64)
    rng = np.random.default_rng(seed)
    # Layers with their own randomness (dropout) must draw the same masks every call.
    rngs = [(l, copy.deepcopy(l.rng.bit_generator.state)) for l in net.layers() if hasattr(l, "rng")]
    states = {name: copy.deepcopy(l.buffers) for name, l in _named_layers(net)}

    def run(inp: np.ndarray) -> np.ndarray:
        for l, state in rngs:
            l.rng.bit_generator.state = copy.deepcopy(state)
        for name, l in _named_layers(net):  # batch norm's running stats must not drift
            l.buffers = copy.deepcopy(states[name])
        return net.forward(inp)

    out = run(x)
    R = rng.standard_normal(out.shape)
    dx = net.backward(R)
    analytic: list[tuple[str, np.ndarray, np.ndarray]] = []
    for name, value, grad in [("input", x, dx), *net.params_and_grads()]:
        if grad is None:
            raise ShapeError(f"gradcheck: no gradient for '{name}' after backward")
        analytic.append((name, value, grad))
    floor = 1e-3 * max(max(float(np.abs(g).max(initial=0)) for _, _, g in analytic), 1e-8)
    worst = 0.0
    for _, array, grad in analytic:
        grad = np.array(grad, dtype=np.float64)
        picks = rng.choice(array.size, size=min(max_checks, array.size), replace=False)
        for i in picks:
            at = np.unravel_index(i, array.shape)   # indexes the array itself, whatever its memory order
            old = array[at]
            array[at] = old + eps
            plus = np.sum(run(x) * R)
            array[at] = old - eps
            minus = np.sum(run(x) * R)
            array[at] = old
            numeric = (plus - minus) / (2 * eps)
            a = float(grad[at])
            worst = max(worst, abs(a - numeric) / max(abs(a) + abs(numeric), floor))
    return float(worst)


def _named_layers(net: Layer) -> list[tuple[str, Layer]]:
    return [(str(i), l) for i, l in enumerate(net.layers())]
