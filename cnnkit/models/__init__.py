"""The model zoo: the notes' case studies and CIFAR-10 patterns, each a spec string.

    >>> cnnkit.models.names()[:3]
    ['alexnet', 'alexnet_original', 'cifar10']
    >>> net = cnnkit.models.get("vgg16")            # 138,357,544 params, 553 MB of float32
    >>> cnnkit.models.spec("resnet18", input_size=64)   # the spec only, no weights

``num_classes`` and ``input_size`` default to the model's own (1000 classes at 224x224x3
for ImageNet models; LeNet-5 32x32x1, CIFAR nets 32x32x3, 10 classes).
``input_size`` is an int (square), an (H, W) pair, or the notes' 'WxH' / 'WxHxD'.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass
from functools import partial
from typing import Any, Mapping

from ..layers.geometry import format_volume
from ..notation import SpecError, as_input_shape, build
from .cifar import cifar10, cifar10_conv, cifar10_linear, cifar10_pool2, cifar10_simple, pattern
from .classic import alexnet, alexnet_original, lenet5, vgg, zfnet
from .modern import googlenet, resnet

# an int (square), (H, W), (C, H, W), 'WxH' or 'WxHxD'; None: the model's own
InputSize = int | tuple[int, ...] | list[int] | str | None

_ZOO = {
    "lenet5": (lenet5, "32x32x1", 10),
    "alexnet": (alexnet, "224x224x3", 1000),
    "alexnet_original": (alexnet_original, "227x227x3", 1000),
    "zfnet": (zfnet, "224x224x3", 1000),
    "googlenet": (googlenet, "224x224x3", 1000),
    "cifar10": (cifar10, "32x32x3", 10),
    "cifar10_linear": (cifar10_linear, "32x32x3", 10),
    "cifar10_conv": (cifar10_conv, "32x32x3", 10),
    "cifar10_simple": (cifar10_simple, "32x32x3", 10),
    "cifar10_pool2": (cifar10_pool2, "32x32x3", 10),
}
for _d in (11, 13, 16, 19):
    _ZOO[f"vgg{_d}"] = (partial(vgg, _d), "224x224x3", 1000)
    _ZOO[f"vgg{_d}_bn"] = (partial(vgg, _d, True), "224x224x3", 1000)
for _d in (18, 34, 50):
    _ZOO[f"resnet{_d}"] = (partial(resnet, _d), "224x224x3", 1000)

# Published parameter counts (torchvision / Caffe), asserted by the tests.
PUBLISHED_PARAMS = {
    "vgg16": 138_357_544, "resnet18": 11_689_512, "resnet50": 25_557_032,
    "alexnet": 61_100_840, "googlenet": 6_624_904,
}


def names() -> list[str]:
    """Every model name, sorted."""
    return sorted(_ZOO)


def canonical(name: str) -> str | None:
    """The zoo's name for 'VGG-16', 'resnet_18', 'AlexNet-original'...; None if unknown."""
    key = str(name).lower().replace("-", "_")
    for candidate in (key, key.replace("_", ""), key.replace("_", "", 1)):
        if candidate in _ZOO:
            return candidate
    return None


def _key(name: str) -> str:
    key = canonical(name)
    if key is None:
        raise unknown(name)
    return key


def unknown(name: str) -> SpecError:
    """The error for a name the zoo lacks: the nearest names, then the whole zoo."""
    key = str(name).lower().replace("-", "_")
    stem = re.match(r"[a-z]*", key)
    near = [n for n in names() if stem and stem.group(0) and n.startswith(stem.group(0))]
    near = near or difflib.get_close_matches(key, names(), n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(near)}? " if near else ""
    return SpecError(f"unknown model {str(name)!r}: {hint}the zoo has {', '.join(names())} (cnnkit models lists "
                     "them with their sizes); or write a spec, e.g. 'INPUT[32x32x3] -> CONV3-16 -> RELU -> FC10'",
                     "", 0)


def _volume(input_size: InputSize, default: str) -> str:
    depth = default.split("x")[2]
    if input_size is None:
        return default
    if isinstance(input_size, int):
        return f"{input_size}x{input_size}x{depth}"
    if isinstance(input_size, (tuple, list)):
        if len(input_size) == 2:
            H, W = input_size
            return f"{W}x{H}x{depth}"
        return format_volume(as_input_shape(input_size, "input_size"))  # (C, H, W), cnnkit's per-sample order
    text = str(input_size).lower()
    parts = text.split("x")
    if len(parts) == 2:
        return f"{text}x{depth}"
    if len(parts) == 3:
        return text
    raise SpecError(f"input_size: expected an int, (H, W), (C, H, W), 'WxH' or 'WxHxD', got {input_size!r}", "", 0)


def spec(name: str, num_classes: int | None = None, input_size: InputSize = None) -> str:
    """The spec string of a zoo model (no weights are allocated)."""
    fn, default_input, default_classes = _ZOO[_key(name)]
    return fn(num_classes=num_classes or default_classes, input_size=_volume(input_size, default_input))


def get(name: str, num_classes: int | None = None, input_size: InputSize = None,
        weights: str | os.PathLike | Mapping[str, Any] | None = None) -> Any:  # a Sequential, as build's
    """Build a zoo model: a cnnkit Sequential with ``input_shape`` (C, H, W) and ``name`` set.

    ``weights``: a PyTorch state dict file (.pth/.pt or .safetensors, torchvision's key
    names or cnnkit's) loaded with ``cnnkit.load_torch_weights``; no torch needed."""
    net = build(spec(name, num_classes, input_size))
    net.name = _key(name)
    if weights is not None:
        # imported here: the zoo builds on the engine, interop builds on both
        from ..interop import load_torch_weights

        load_torch_weights(net, weights)
    return net


@dataclass
class ModelInfo:
    """One zoo entry as ``cnnkit models`` lists it."""
    name: str
    params: int
    input: str          # the notes' W x H x D
    classes: int
    about: str          # the first line of its docstring


def info(name: str) -> ModelInfo:
    """Parameter count (from a dry build: nothing allocated), input volume, classes and
    one line about a zoo model."""
    from ..layers import engine  # the zoo's specs need the engine only to be counted

    key = _key(name)
    fn, default_input, classes = _ZOO[key]
    with engine(allocate=False):
        params = build(spec(key)).num_params()
    target = fn.func if isinstance(fn, partial) else fn
    paragraph = " ".join((target.__doc__ or "").strip().split("\n\n")[0].split())
    about = re.split(r"(?<!al)\.\s", paragraph + " ")[0].rstrip(". ")   # its first sentence ("et al." is not an end)
    return ModelInfo(key, params, default_input, classes, about)


__all__ = ["get", "names", "spec", "info", "ModelInfo", "unknown", "pattern", "PUBLISHED_PARAMS", "lenet5", "alexnet", "alexnet_original",
           "zfnet", "vgg", "googlenet", "resnet", "cifar10"]
