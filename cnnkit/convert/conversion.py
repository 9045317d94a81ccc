"""FC -> CONV (notes: "Converting FC layers to CONV layers"): a trained net made fully convolutional.

An FC layer that looks at a D x H x W volume is a CONV with F = (H, W), S = 1, P = 0 whose
K filters are the FC's K rows of weights: the notes' 7x7x512 -> 4096 example becomes a
CONV with F = 7. Later FCs (on 1x1xK volumes) are 1x1 CONVs, Flatten disappears, and a
global average pool becomes an average pool of its training-time window. The new net
gives the same scores on the training size and, on a larger image, a map of scores, one
per window position, spaced by the net's total stride.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterable, Iterator
from typing import TypeGuard

import numpy as np

from ..errors import CnnkitError
from ..layers import (
    FC,
    AvgPool2D,
    Concat,
    Conv2D,
    Dropout,
    Flatten,
    GlobalAvgPool2D,
    Layer,
    LocallyConnected2D,
    ReLU,
    Residual,
    Sequential,
    default_rng,
    format_volume,
)
from ..layers.layout import copy_like


class ConvertError(CnnkitError, ValueError):
    """A network (or layer) that cannot be made fully convolutional, with the reason."""


# Layers that act on each number alone: they may sit between the flattening and the FC,
# where they see (K, 1, 1) volumes instead of (K,) vectors.
ELEMENTWISE = (ReLU, Dropout)


@contextlib.contextmanager
def _rng_untouched() -> Iterator[None]:
    """New layers draw initial weights we overwrite at once; leave the user's seeded stream as it was."""
    rng = default_rng()
    state = rng.bit_generator.state
    try:
        yield
    finally:
        rng.bit_generator.state = state


def _fc_as_conv(fc: FC, volume: tuple[int, int, int], where: str) -> Conv2D:
    """An FC that sees a (C, H, W) volume -> the CONV with F = (H, W), S = 1, P = 0 and its weights."""
    C, H, W = volume
    if fc.in_features != C * H * W:
        raise ConvertError(f"{where} {fc!r}: it takes {fc.in_features} numbers but sees a {format_volume(volume)} "
                           f"volume ({C * H * W} numbers) on this input")
    w = fc.params["weight"]
    with _rng_untouched():
        conv = Conv2D(C, fc.out_features, (H, W), stride=1, padding=0, bias="bias" in fc.params)
    # FC flattens (C, H, W) in C, H, W order, so row k of its weight is filter k laid out as
    # (C, H, W): a reshape, never a transpose. Conv2D's weight is (K, C, Fh, Fw).
    conv.params["weight"] = copy_like(conv.params["weight"], w.reshape(fc.out_features, C, H, W))
    if "bias" in fc.params:
        conv.params["bias"] = np.array(fc.params["bias"], copy=True)
    return conv


def _gap_as_pool(volume: tuple[int, int, int]) -> AvgPool2D:
    """Global average pooling of an H x W map -> an H x W average pool at stride 1, which slides."""
    _, H, W = volume
    return AvgPool2D((H, W), stride=1)


def _describe(where: str, layer: Layer) -> str:
    """'layer 3 (FC(in_features=...))'; a container by its type alone, to stay on one line."""
    what = type(layer).__name__ if layer.children() else repr(layer)
    return f"{where} ({what})" if where else what


def _refuse_inside(container: Layer, where: str) -> None:
    """Residual / Concat blocks are copied whole; refuse ones hiding a layer that cannot slide."""
    for inner in container.layers():
        if isinstance(inner, LocallyConnected2D):
            raise ConvertError(f"{_describe(where, container)}: it holds {inner!r}, a locally-connected layer "
                               f"whose weights are tied to each position of a {inner.input_size} input (not "
                               "shared), so it cannot slide over a larger image")
        if isinstance(inner, (FC, Flatten, GlobalAvgPool2D)):
            raise ConvertError(f"{_describe(where, container)}: it holds {inner!r} inside a branch; only FC, "
                               "Flatten and global pooling on the main path can be converted")


class ConvolutionalNet(Sequential, register=False):
    """What convolutionalize returns: a Sequential that also carries its training window
    ``input_shape`` (C, H, W) and ``total_stride`` (Sh, Sw), the spacing of its score map.

    Not in the layer registry: config() says "Sequential", so from_config, checkpoints and
    ``net.spec`` rebuild it as a plain Sequential of the same layers.
    """

    input_shape: tuple[int, int, int]
    total_stride: tuple[int, int]

    def __init__(self, *layers: Layer, input_shape: tuple[int, int, int], total_stride: tuple[int, int]) -> None:
        super().__init__(*layers)
        self.input_shape = input_shape
        self.total_stride = total_stride


def _volume(shape: tuple[int, ...]) -> tuple[int, int, int]:
    """A (C, H, W) shape typed as such; callers have checked it has three dimensions."""
    C, H, W = shape
    return C, H, W


class _Converter:
    """Walks a network once, tracking the training-time volume, and emits the converted layers."""

    def __init__(self) -> None:
        self.flat_from: tuple[int, int, int] | None = None  # the volume a (dropped) Flatten flattened
        self.after_fc = False  # past the first FC, a flat (D,) shape is really a (D, 1, 1) volume

    def convert(self, layer: Layer, shape: tuple[int, ...], where: str) -> tuple[Layer | None, tuple[int, ...]]:
        """(converted layer or None if it disappears, the original's output shape)."""
        out = layer.output_shape(shape)
        flat = len(shape) != 3
        if isinstance(layer, Sequential):
            kept = []
            for i, child in enumerate(layer.children()):
                new, shape = self.convert(child, shape, f"{where}.{i}" if where else f"layer {i}")
                if new is not None:
                    kept.append(new)
            return Sequential(*kept), shape
        if isinstance(layer, FC):
            volume = _volume(shape) if not flat else self.flat_from
            if volume is None and self.after_fc:
                volume = (int(shape[0]), 1, 1)
            if volume is None:
                raise ConvertError(f"{_describe(where, layer)}: its input is a flat vector of {shape[0]} numbers, "
                                   "not a W x H x D volume, so there is no spatial extent to slide over")
            self.flat_from, self.after_fc = None, True
            # what follows sees the (K, 1, 1) volume this CONV outputs
            return _fc_as_conv(layer, volume, where), out
        if isinstance(layer, Flatten):
            if not flat:
                self.flat_from = _volume(shape)
            return None, out
        if flat:
            if isinstance(layer, ELEMENTWISE):
                return copy.deepcopy(layer), out
            raise ConvertError(f"{_describe(where, layer)}: it comes after the volume was flattened (by Flatten "
                               "or an FC), where only elementwise layers (ReLU, Dropout) carry over to a volume")
        if isinstance(layer, GlobalAvgPool2D):
            return _gap_as_pool(_volume(shape)), out
        if isinstance(layer, LocallyConnected2D):
            raise ConvertError(f"{_describe(where, layer)}: a locally-connected layer has weights tied to each "
                               f"position of its {layer.input_size} input (not shared across positions), so it "
                               "cannot slide over a larger image; only shared-weight layers (CONV, POOL) convert")
        if isinstance(layer, (Residual, Concat)):
            _refuse_inside(layer, where)
        return copy.deepcopy(layer), out


def total_stride(net: Layer) -> tuple[int, int]:
    """The product of the strides along a network's path, (Sh, Sw): how far apart neighbouring
    windows of its score map are, in input pixels."""
    if isinstance(net, Sequential):
        sh, sw = 1, 1
        for child in net.children():
            h, w = total_stride(child)
            sh, sw = sh * h, sw * w
        return sh, sw
    if isinstance(net, (Residual, Concat)):
        return total_stride(net.children()[0])  # every path of a block has the same stride
    stride = getattr(net, "stride", (1, 1))
    if isinstance(stride, int):
        return stride, stride
    sh, sw = stride
    return sh, sw


def _check_volume(input_shape: Iterable[int] | None, what: str) -> tuple[int, int, int]:
    if input_shape is None:
        raise ConvertError(f"{what}: give input_shape (C, H, W), the training-time image size; this network "
                           "does not carry an input_shape")
    shape = tuple(int(d) for d in input_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ConvertError(f"{what}: input_shape must be a (C, H, W) image volume, got {shape}; "
                           "a network on flat vectors has no spatial input to slide over")
    return _volume(shape)


def convolutionalize(net: Layer, input_shape: tuple[int, int, int] | None = None) -> ConvolutionalNet:
    """A new, equivalent, fully convolutional network (notes: "Converting FC layers to CONV layers").

    net: a Sequential (any zoo model or trained net) taking (N, C, H, W) at ``input_shape``
    (C, H, W); default ``net.input_shape``. Returns a ConvolutionalNet (a Sequential) in eval
    mode that maps (N, C, H, W) -> (N, K, 1, 1) with the same scores and a larger
    (N, C, H', W') -> (N, K, Hm, Wm) map; it carries ``input_shape`` (the window) and
    ``total_stride`` (Sh, Sw). The first FC after a D x H x W volume becomes a CONV with
    F = (H, W), S = 1, P = 0, later FCs 1x1 CONVs, Flatten goes, GlobalAvgPool2D becomes
    AvgPool2D of its training window at stride 1; weights are reshaped copies, and the
    original net is not touched.
    """
    if not isinstance(net, Layer):
        raise ConvertError(f"convolutionalize: expected a cnnkit network, got {type(net).__name__}")
    shape = _check_volume(input_shape if input_shape is not None else getattr(net, "input_shape", None),
                          "convolutionalize")
    try:
        expected = net.output_shape(shape)
    except CnnkitError as exc:
        raise ConvertError(f"convolutionalize: the network does not take {format_volume(shape)} inputs: {exc}") from None
    top = net if isinstance(net, Sequential) else Sequential(net)
    converted, _ = _Converter().convert(top, shape, "")
    assert isinstance(converted, Sequential)  # a Sequential converts to a Sequential
    # Check what was built: the same scores as a 1x1 map at the window size, and one more
    # cell per total stride on a larger image (the map's spacing).
    got = converted.output_shape(shape)
    K = math.prod(expected)
    if len(expected) == 1 and got != (K, 1, 1) or len(expected) == 3 and got != expected:
        raise ConvertError(f"convolutionalize: the converted network outputs {got} on {shape}, expected "
                           f"{(K, 1, 1) if len(expected) == 1 else expected}; its last layers do not reduce the "
                           "window to one score vector")
    stride = total_stride(converted)
    C, H, W = shape
    try:
        bigger = converted.output_shape((C, H + stride[0], W + stride[1]))
    except CnnkitError as exc:
        raise ConvertError(f"convolutionalize: the converted network cannot take an input one stride "
                           f"{stride} larger than the window: {exc}") from None
    if bigger[1:] != (got[1] + 1, got[2] + 1):
        raise ConvertError(f"convolutionalize: the converted network maps {W + stride[1]}x{H + stride[0]} to "
                           f"{bigger[2]}x{bigger[1]} instead of {got[2] + 1}x{got[1] + 1}, so its total stride "
                           f"is not {stride}")
    new = ConvolutionalNet(*converted.children(), input_shape=shape, total_stride=stride)
    new.eval()
    return new


def is_converted(net: Layer) -> TypeGuard[ConvolutionalNet]:
    """Did convolutionalize build this network (it carries its window and total stride)?"""
    return isinstance(net, ConvolutionalNet)


__all__ = ["ConvertError", "ConvolutionalNet", "convolutionalize", "is_converted", "total_stride"]
