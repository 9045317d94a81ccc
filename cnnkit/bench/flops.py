"""Floating-point operations of a layer or a network, as convnet-benchmarks counts them.

Only CONV, locally-connected and FC layers count, 2 flops per multiply-add: a CONV layer
is 2*K*(D1/groups)*Fh*Fw*H2*W2 per image (the notes' X_col . W_row^T), an FC layer
2*D*K. Backward costs two forwards (dW and dX), except that a network's first layer
computes no dX when the image needs no gradient (``input_grad = False``, PyTorch's input
that doesn't require grad).
"""

from __future__ import annotations

from typing import Any

WEIGHTED = ("Conv2D", "LocallyConnected2D", "FC")


def layer_flops(layer: Any, in_shape: tuple[int, ...], batch: int = 1) -> int:
    """Forward flops of one layer (not a container) on a batch of per-sample in_shape."""
    kind = type(layer).__name__
    if kind in ("Conv2D", "LocallyConnected2D"):
        K, H2, W2 = layer.output_shape(in_shape)
        Fh, Fw = layer.kernel_size
        groups = getattr(layer, "groups", 1)
        return 2 * batch * K * (layer.in_channels // groups) * Fh * Fw * H2 * W2
    if kind == "FC":
        return 2 * batch * layer.in_features * layer.out_features
    return 0


def net_flops(net: Any, in_shape: tuple[int, ...] | None = None, batch: int = 1, backward: bool = False) -> int:
    """Flops of a forward (backward=False) or a forward+backward of net on a batch; the
    per-sample in_shape defaults to the net's ``input_shape``."""
    shape = tuple(in_shape if in_shape is not None else net.input_shape)
    forward = sum(layer_flops(layer, lin, batch) for _, layer, lin, _, _ in net.walk(shape)
                  if type(layer).__name__ in WEIGHTED)
    if not backward:
        return forward
    total = 3 * forward
    first = no_input_grad(net)
    if first is not None:
        total -= layer_flops(first, shape, batch)   # no dX for the image
    return total


def no_input_grad(net: Any) -> Any:
    """The CONV/FC layer of net that computes no dX in backward (the first, when the
    net's ``input_grad`` is False), else None."""
    if net.input_grad:
        return None
    first = net
    while type(first).__name__ == "Sequential" and first.children():   # a Sequential passes input_grad to its first
        first = first.children()[0]
    return first if type(first).__name__ in WEIGHTED else None
