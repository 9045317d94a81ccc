"""The PyTorch side of the suite: any cnnkit network rebuilt in plain torch.nn, cnnkit's weights copied in.

``torch_twin(net)`` walks the tree (Sequential, Residual, Concat and the layers inside)
and makes the same architecture from torch.nn modules, so the zoo's AlexNet, VGG,
GoogLeNet and ResNets are compared without torchvision, and both sides compute the same
function from the same numbers (``check_twin`` measures that once per net). ReLUs are
in place as in torchvision's models, which matters for PyTorch's memory.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import BenchError


def _modules() -> tuple[Any, Any]:
    import torch
    from torch import nn
    return torch, nn


def _residual_class() -> Any:
    torch, nn = _modules()

    class Residual(nn.Module):  # type: ignore[name-defined]  # torch is imported here, not at the top
        """y = body(x) + shortcut(x), the identity shortcut when there is none."""

        def __init__(self, body: Any, shortcut: Any = None) -> None:
            super().__init__()
            self.body, self.shortcut = body, shortcut

        def forward(self, x: Any) -> Any:
            return self.body(x) + (x if self.shortcut is None else self.shortcut(x))

    class Concat(nn.Module):  # type: ignore[name-defined]
        """Branches on the same input, joined along depth (Inception)."""

        def __init__(self, *branches: Any) -> None:
            super().__init__()
            self.branches = nn.ModuleList(branches)

        def forward(self, x: Any) -> Any:
            return torch.cat([b(x) for b in self.branches], dim=1)

    return Residual, Concat


def _copy(module: Any, layer: Any) -> Any:
    """cnnkit's params and buffers into the torch module's (same names, same shapes)."""
    torch, _ = _modules()
    with torch.no_grad():
        for store in (layer.params, layer.buffers):
            for key, value in store.items():
                target = getattr(module, key)
                if tuple(target.shape) != value.shape:
                    raise BenchError(f"torch twin of {layer!r}: '{key}' has shape {value.shape}, "
                                     f"torch.nn expects {tuple(target.shape)}")
                target.copy_(torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32)))
    return module


def _twin(layer: Any, Residual: Any, Concat: Any, first: bool) -> Any:
    _, nn = _modules()
    kind = type(layer).__name__
    if kind == "Sequential":
        kids = layer.children()
        return nn.Sequential(*[_twin(c, Residual, Concat, first and i == 0) for i, c in enumerate(kids)])
    if kind == "Residual":
        shortcut = None if layer.shortcut is None else _twin(layer.shortcut, Residual, Concat, False)
        return Residual(_twin(layer.body, Residual, Concat, False), shortcut)
    if kind == "Concat":
        return Concat(*[_twin(b, Residual, Concat, False) for b in layer.children()])
    if kind == "Conv2D":
        m = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
                      layer.dilation, layer.groups, bias="bias" in layer.params)
        return _copy(m, layer)
    if kind == "FC":
        linear = _copy(nn.Linear(layer.in_features, layer.out_features, bias="bias" in layer.params), layer)
        return nn.Sequential(nn.Flatten(), linear)   # cnnkit's FC flattens a volume itself
    if kind == "BatchNorm2D":
        return _copy(nn.BatchNorm2d(layer.num_features, layer.eps, layer.momentum), layer)
    if kind == "ReLU":
        # in place as torchvision's models (never on the network's own input)
        return nn.ReLU(inplace=not first)
    if kind == "MaxPool2D":
        return nn.MaxPool2d(layer.kernel_size, layer.stride, layer.padding, ceil_mode=layer.rounding == "ceil")
    if kind == "AvgPool2D":
        return nn.AvgPool2d(layer.kernel_size, layer.stride, layer.padding, ceil_mode=layer.rounding == "ceil",
                            count_include_pad=True)
    if kind == "L2Pool2D":
        return nn.LPPool2d(2, layer.kernel_size, layer.stride, ceil_mode=layer.rounding == "ceil")
    if kind == "GlobalAvgPool2D":
        return nn.AdaptiveAvgPool2d(1)
    if kind == "Dropout":
        return nn.Dropout(layer.p)
    if kind == "Flatten":
        return nn.Flatten()
    if kind == "LRN":
        return nn.LocalResponseNorm(layer.size, layer.alpha, layer.beta, layer.k)
    raise BenchError(f"no torch.nn twin for {layer!r}: the suite compares Conv2D, FC, BatchNorm2D, ReLU, "
                     "MaxPool2D, AvgPool2D, L2Pool2D, GlobalAvgPool2D, Dropout, Flatten, LRN, Sequential, "
                     "Residual and Concat")


def torch_twin(net: Any) -> Any:
    """The same network in plain torch.nn (float32), cnnkit's parameters and buffers
    copied in, in the same train/eval mode. Input and output as the cnnkit net's:
    (N, C, H, W) -> (N, K) for a classifier."""
    Residual, Concat = _residual_class()
    model = _twin(net, Residual, Concat, True)
    return model.train(net.training)


def check_twin(net: Any, model: Any, x: np.ndarray) -> float:
    """The largest difference between the cnnkit net's and its twin's outputs on x in
    eval mode (no dropout, running statistics), relative to the largest output; both
    nets are left in eval mode."""
    torch, _ = _modules()
    net.eval()
    model.eval()
    ours = net.forward(x)
    with torch.no_grad():
        theirs = model(torch.from_numpy(x)).numpy()
    if ours.shape != theirs.shape:
        raise BenchError(f"torch twin: output shape {theirs.shape}, cnnkit's {ours.shape}")
    scale = max(float(np.abs(theirs).max()), 1e-12)
    return float(np.abs(ours - theirs).max()) / scale
