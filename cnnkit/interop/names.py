"""torchvision's state-dict key names for the zoo's networks, derived from their structure.

cnnkit names every array by its path in the network (``4.body.0.weight``); torchvision by
its modules (``layer1.0.conv1.weight``). The mapping below is built by name from the
layout each torchvision model has, never by zipping two key lists in order (cnnkit lists
all parameters before all buffers, PyTorch goes module by module):

* AlexNet, VGG (``features.N`` / ``classifier.N``): cnnkit's flat Sequential has
  torchvision's feature indices; the classifier starts at the first FC (AlexNet: at the
  dropout just before it), so ``classifier.N`` is counted from there.
* ResNet (``conv1``, ``bn1``, ``layerS.B.convK`` / ``bnK``, ``layerS.B.downsample.{0,1}``,
  ``fc``): every RES block is one torchvision block; a stage is a run of blocks with the
  same output depth; inside a block the convs and batch norms are numbered in order.
* GoogLeNet (``convK.conv`` / ``convK.bn``, ``inception3a.branchB[.U].conv``, ``fc``):
  a BasicConv2d is CONV -> BN (-> RELU); a branch of one unit has no index, otherwise
  units (a BasicConv2d or a pool) are numbered as in its nn.Sequential.
"""

from __future__ import annotations

from ..errors import CnnkitError
from ..layers import (
    FC,
    BatchNorm2D,
    Concat,
    Conv2D,
    Dropout,
    Layer,
    ReLU,
    Residual,
    Sequential,
)
from .errors import WeightsError

INCEPTIONS = ("3a", "3b", "4a", "4b", "4c", "4d", "4e", "5a", "5b")


def _stateful(layer: Layer) -> bool:
    return bool(layer.params or layer.buffers)


def _keys(layer: Layer, prefix: str, torch_prefix: str) -> dict[str, str]:
    """cnnkit key -> torch key for one leaf layer's own arrays."""
    return {f"{prefix}{k}": f"{torch_prefix}.{k}" for k in (*layer.params, *layer.buffers)}


def _leaf(layer: Layer, where: str) -> Layer:
    if layer.children():
        raise WeightsError(f"{where}: a {type(layer).__name__} here has no torchvision counterpart")
    return layer


def _features_classifier(net: Sequential) -> dict[str, str]:
    children = net.named_children()
    first_fc = next((i for i, (_, c) in enumerate(children) if isinstance(c, FC)), len(children))
    start = first_fc - 1 if first_fc > 0 and isinstance(children[first_fc - 1][1], Dropout) else first_fc
    out = {}
    for i, (name, child) in enumerate(children):
        if _stateful(_leaf(child, f"layer {name}")):
            out.update(_keys(child, f"{name}.", f"features.{i}" if i < start else f"classifier.{i - start}"))
    return out


def _block(block: Residual, prefix: str, torch_prefix: str) -> dict[str, str]:
    out, counts = {}, {Conv2D: 0, BatchNorm2D: 0}
    for name, layer in block.body.named_children():
        kind = type(_leaf(layer, f"{prefix}body.{name}"))
        if kind in counts:
            counts[kind] += 1
            short = "conv" if kind is Conv2D else "bn"
            out.update(_keys(layer, f"{prefix}body.{name}.", f"{torch_prefix}.{short}{counts[kind]}"))
        elif _stateful(layer):
            raise WeightsError(f"{prefix}body.{name}: a {kind.__name__} has no place in a torchvision ResNet block")
    if block.shortcut is not None:
        shortcut = block.shortcut.named_children() if isinstance(block.shortcut, Sequential) else [("", block.shortcut)]
        for name, layer in shortcut:
            if _stateful(_leaf(layer, f"{prefix}shortcut")):
                sub = f"{prefix}shortcut.{name}." if name else f"{prefix}shortcut."
                out.update(_keys(layer, sub, f"{torch_prefix}.downsample.{name or 0}"))
    return out


def _block_depth(block: Residual) -> int:
    convs = [l for l in block.body.layers() if isinstance(l, Conv2D)]
    return convs[-1].out_channels if convs else -1


def _resnet(net: Sequential) -> dict[str, str]:
    out, stage, index, depth = {}, 0, 0, None
    stem = {Conv2D: "conv1", BatchNorm2D: "bn1"}
    for name, child in net.named_children():
        if isinstance(child, Residual):
            d = _block_depth(child)
            if d != depth:
                stage, index, depth = stage + 1, 0, d
            out.update(_block(child, f"{name}.", f"layer{stage}.{index}"))
            index += 1
        elif isinstance(child, FC):
            out.update(_keys(child, f"{name}.", "fc"))
        elif type(child) in stem and stage == 0:
            out.update(_keys(child, f"{name}.", stem.pop(type(child))))
        elif _stateful(_leaf(child, f"layer {name}")):
            raise WeightsError(f"layer {name}: a {type(child).__name__} has no place in a torchvision ResNet")
    return out


def _units(layers: list[tuple[str, Layer]]) -> list[list[tuple[str, Layer]]]:
    """Split a branch into torchvision modules: CONV (+ BN + RELU) is one BasicConv2d; others alone."""
    units: list[list[tuple[str, Layer]]] = []
    for name, layer in layers:
        if units and isinstance(units[-1][0][1], Conv2D) and isinstance(layer, (BatchNorm2D, ReLU)):
            units[-1].append((name, layer))
        else:
            units.append([(name, layer)])
    return units


def _basic_conv(unit: list[tuple[str, Layer]], prefix: str, torch_prefix: str) -> dict[str, str]:
    out = {}
    for name, layer in unit:
        short = {Conv2D: "conv", BatchNorm2D: "bn"}.get(type(layer))
        if short is not None:
            out.update(_keys(layer, f"{prefix}{name}.", f"{torch_prefix}.{short}"))
        elif _stateful(layer):
            raise WeightsError(f"{prefix}{name}: a {type(layer).__name__} has no place in a BasicConv2d")
    return out


def _googlenet(net: Sequential) -> dict[str, str]:
    out, stem, modules = {}, 0, 0
    children = net.named_children()
    for unit in _units(children):
        name, first = unit[0]
        if isinstance(first, Conv2D):
            stem += 1
            out.update(_basic_conv(unit, "", f"conv{stem}"))
        elif isinstance(first, Concat):
            if modules >= len(INCEPTIONS):
                raise WeightsError(f"layer {name}: torchvision's GoogLeNet has {len(INCEPTIONS)} Inception modules")
            module = f"inception{INCEPTIONS[modules]}"
            modules += 1
            for b, (bname, branch) in enumerate(first.named_children(), start=1):
                inner = branch.named_children() if isinstance(branch, Sequential) else [("", branch)]
                units = _units(inner)
                for u, bunit in enumerate(units):
                    torch_prefix = f"{module}.branch{b}" + (f".{u}" if len(units) > 1 else "")
                    out.update(_basic_conv(bunit, f"{name}.{bname}.", torch_prefix))
        elif isinstance(first, FC):
            out.update(_keys(first, f"{name}.", "fc"))
        elif _stateful(_leaf(first, f"layer {name}")):
            raise WeightsError(f"layer {name}: a {type(first).__name__} has no place in torchvision's GoogLeNet")
    return out


def torchvision_names(net: Layer) -> dict[str, str]:
    """cnnkit state_dict key -> torchvision key for a zoo network (AlexNet, VGG, ResNet, GoogLeNet).

    The layout is recognised from the structure: Inception modules (CAT) -> GoogLeNet,
    residual blocks (RES) -> ResNet, otherwise features/classifier (AlexNet, VGG)."""
    if not isinstance(net, Sequential):
        raise WeightsError(f"torchvision names: expected a cnnkit Sequential network, got {type(net).__name__}")
    kinds = {type(c) for c in net.children()}
    try:
        if Concat in kinds:
            mapping = _googlenet(net)
        elif Residual in kinds:
            mapping = _resnet(net)
        else:
            mapping = _features_classifier(net)
    except CnnkitError as e:
        name = getattr(net, "name", None)
        raise WeightsError(f"{name or 'network'}: no torchvision names: {e}") from None
    missing = [k for k in net.state_dict() if k not in mapping]
    if missing:  # every array must have a name, or the two layouts disagree
        raise WeightsError(f"torchvision names: no torchvision name for {missing[0]!r}")
    return mapping
