"""What a network computes on one image: its activation volumes layer by layer, its CONV
filters and its top-k classes (notes: "Visualizing what ConvNets learn", and the figure of
a VGG net's activations from the raw image to the class scores).

NumPy only. Functions that run the net switch it to eval mode and back, so they must not
run while another thread trains the same net.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import numpy as np

from ..layers import Conv2D, Layer, Sequential, format_volume
from .tiles import VizError


class Volume(NamedTuple):
    """One layer's output for one image: qualified name ('3'), the layer in the notes'
    notation ('CONV3-64'), shape (C, H, W) or (D,), and the values (float32, that shape)."""

    name: str
    layer: str
    shape: tuple[int, ...]
    data: np.ndarray

    @property
    def label(self) -> str:
        """The notes' caption: 'CONV3-64 [224x224x64]'."""
        return f"{self.layer} [{volume_text(self.shape)}]"


def volume_text(shape: tuple[int, ...]) -> str:
    """(C, H, W) -> 'WxHxC' (the notes' W x H x D); (D,) -> '1x1xD', as the notes write FC outputs."""
    return format_volume(shape) if len(shape) == 3 else "1x1x" + "x".join(str(d) for d in shape)


def layer_text(layer: Layer, input_shape: tuple[int, ...], limit: int = 20) -> str:
    """A layer in the notes' notation ('CONV3-64', 'POOL2', 'RES[...]'), cut to limit characters."""
    from .. import to_spec

    text = to_spec(layer, input_shape=tuple(input_shape)).split(" -> ", 1)[-1]
    return text if len(text) <= limit else text[:limit - 3] + "..."


def named_layers(net: Layer, prefix: str = "") -> Iterator[tuple[str, Layer]]:
    """(qualified name, layer) for every leaf layer, depth first in forward order ('4.body.0')."""
    children = net.named_children()
    if not children:
        yield prefix.rstrip("."), net
    for name, child in children:
        yield from named_layers(child, prefix + name + ".")


def conv_layers(net: Layer) -> list[tuple[str, Conv2D]]:
    """The network's Conv2D layers with their qualified names, first layer first."""
    return [(n, layer) for n, layer in named_layers(net) if isinstance(layer, Conv2D)]


def layer_volumes(net: Layer, image: np.ndarray, normalization: dict | None = None) -> list[Volume]:
    """One image (C, H, W) -> the volume after each top-level layer of net, in order.

    The image is normalised as in training (a checkpoint's {'mean', 'std'}) and sent through
    the net in eval mode; the net's mode is restored. The last volume is the class scores.
    """
    from ..train import normalize

    x = np.asarray(image, dtype=np.float32)
    if x.ndim != 3:
        raise VizError(f"layer_volumes: expected one image (C, H, W), got shape {x.shape}")
    steps = net.named_children() if isinstance(net, Sequential) else [("", net)]
    was_training = net.training
    net.eval()
    try:
        out = normalize(x[None], normalization)
        shape = tuple(x.shape)
        volumes = []
        for name, layer in steps:
            text = layer_text(layer, shape)
            out = layer.forward(out)
            shape = tuple(out.shape[1:])
            volumes.append(Volume(name, text, shape, np.array(out[0], dtype=np.float32)))
        return volumes
    finally:
        net.train(was_training)


def softmax(scores: np.ndarray) -> np.ndarray:
    """Class scores (..., K) -> probabilities (..., K), the softmax classifier's."""
    s = np.asarray(scores, dtype=np.float64)
    e = np.exp(s - s.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def top_k(scores: np.ndarray, classes: list[str], k: int = 5) -> list[tuple[str, float]]:
    """One image's class scores (K,) -> the k most probable (class, softmax probability), best first."""
    p = softmax(np.asarray(scores).reshape(-1))
    if len(p) != len(classes):
        raise VizError(f"top_k: {len(p)} scores but {len(classes)} class names")
    order = np.argsort(-p, kind="stable")[:max(1, k)]
    return [(str(classes[j]), float(p[j])) for j in order]


def image_hwc(image: np.ndarray) -> np.ndarray:
    """An image (C, H, W) in [0, 1] -> (H, W) grey or (H, W, 3) RGB for drawing."""
    x = np.clip(np.asarray(image, dtype=np.float32), 0, 1)
    if x.ndim != 3:
        raise VizError(f"expected one image (C, H, W), got shape {x.shape}")
    if x.shape[0] == 3:
        return x.transpose(1, 2, 0)
    return x[0] if x.shape[0] == 1 else x.mean(axis=0)
