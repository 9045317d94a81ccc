"""Build a network from a spec: walk the chain with the per-sample shape, so every layer's
input depth (and FC's input size, LC's input size) is inferred, never written."""

from __future__ import annotations

import math
from collections.abc import Iterable
from types import ModuleType
from typing import TYPE_CHECKING, Any, NoReturn

import numpy as np

from ..errors import CnnkitError
from ..layers.geometry import format_volume
from .errors import SpecError, SpecShapeError
from .limits import MAX_NUMBER_DIGITS, check_network
from .parser import Atom, Block, Group, Item, Spec, parse

if TYPE_CHECKING:  # the engine is imported late (below); only the checker needs its types here
    from ..layers import Layer

Shape = tuple[int, ...]


def _layers() -> ModuleType:
    from .. import layers  # the engine; imported late so parsing works without it
    return layers


def parse_volume(text: str) -> tuple[int, ...]:
    """'224x224x3' (the notes' W x H x D) -> (3, 224, 224); '784' -> (784,)."""
    parts = str(text).strip().lower().split("x")
    if not all(p.isdigit() and len(p) <= MAX_NUMBER_DIGITS and int(p) >= 1 for p in parts) or len(parts) not in (1, 3):
        raise SpecError(f"a volume is W x H x D (the notes' order, e.g. 224x224x3) or a flat size (e.g. 784), "
                        f"sizes >= 1 of at most {MAX_NUMBER_DIGITS} digits, got {text!r}", "", 0)
    dims = [int(p) for p in parts]
    return (dims[2], dims[1], dims[0]) if len(dims) == 3 else (dims[0],)


def as_input_shape(value: str | Iterable[int], who: str = "input_shape") -> tuple[int, ...]:
    """A per-sample input shape: 'WxHxD' (the notes' order) or (C, H, W) / (D,) ints, like
    PyTorch. An obvious (H, W, C) or (N, C, H, W) is refused with the right form."""
    if isinstance(value, str):
        return parse_volume(value)
    try:
        dims = tuple(value)
    except TypeError:
        raise SpecError(f"{who}: expected (C, H, W), (D,) or 'WxHxD', got {value!r}", "", 0) from None
    if not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) for d in dims):
        raise SpecError(f"{who}: expected ints (C, H, W) or (D,), got {value!r}", "", 0)
    dims = tuple(int(d) for d in dims)
    if len(dims) == 4:
        raise SpecError(f"{who}: {dims} looks like a batch (N, C, H, W); the shape is per sample: "
                        f"pass (C, H, W) = {dims[1:]}", "", 0)
    if len(dims) == 3 and dims[2] in (1, 3, 4) and dims[0] > 4 and dims[1] > 4:
        C, H, W = dims[2], dims[0], dims[1]
        raise SpecError(f"{who}: {dims} looks like (H, W, C); cnnkit takes (C, H, W) like PyTorch: pass "
                        f"{(C, H, W)} (or the notes' '{W}x{H}x{C}'; for {dims[0]} channels write "
                        f"'{dims[2]}x{dims[1]}x{dims[0]}')", "", 0)
    if len(dims) not in (1, 3) or min(dims, default=0) < 1 or max(dims) >= 10 ** MAX_NUMBER_DIGITS:
        raise SpecError(f"{who}: expected (C, H, W) or (D,) of sizes from 1 to {10 ** MAX_NUMBER_DIGITS - 1:,}, "
                        f"got {value!r}", "", 0)
    return dims


def build(spec: str | Spec, input_shape: str | Iterable[int] | None = None, max_bytes: int | None = None) -> Any:
    """Turn a spec into a cnnkit Sequential; input_shape ((C, H, W) or 'WxHxD') replaces
    or supplies INPUT[...]. Raises SpecError (syntax) or SpecShapeError (sizes).

    A network whose parameters plus one image's forward pass would exceed max_bytes
    (default: cnnkit.notation.limits.memory_limit(), half the physical memory or
    CNNKIT_MAX_MEMORY) is refused (LimitError) after a dry build that spends nothing.
    Inside ``cnnkit.engine(allocate=False)`` the build is dry itself and not checked."""
    # typed Any, not Sequential: the net also carries input_shape (and, from the zoo, name),
    # attributes Sequential does not declare, and every caller reads them
    tree = spec if isinstance(spec, Spec) else parse(spec)
    shape = tree.input_shape
    if input_shape is not None:
        shape = as_input_shape(input_shape)
    if shape is None:
        raise SpecError("the spec needs an input volume: start it with INPUT[WxHxD] (e.g. INPUT[32x32x3]) "
                        "or pass input_shape", tree.text, 0)
    L = _layers()
    with L.engine() as current:
        real = current.allocate
    if real:
        # a dry layer may still draw from the seeded generator (Dropout takes its seed from
        # it): put it back, so manual_seed(s) -> build(spec) gives the weights it always gave
        state = L.default_rng().bit_generator.state
        with L.engine(allocate=False):
            dry = _assemble(tree, shape)
        L.default_rng().bit_generator.state = state
        check_network(dry, shape, max_bytes, _short(tree.text))
    return _assemble(tree, shape)


def _assemble(tree: Spec, shape: Shape) -> Any:
    layers, _ = _Builder(tree.text).chain(tree.items, shape)
    net = _layers().Sequential(*layers)
    net.input_shape = shape
    return net


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= 60 else text[:57] + "..."


def infer_shapes(spec: str | Spec, input_shape: str | Iterable[int] | None = None) -> tuple[Any, Shape]:
    """(net, per-sample output shape) for a spec."""
    net = build(spec, input_shape)
    return net, net.output_shape(net.input_shape)


class _Builder:
    def __init__(self, text: str) -> None:
        self.text = text

    def fail(self, message: str, pos: int, shape_error: bool = True) -> NoReturn:
        raise (SpecShapeError if shape_error else SpecError)(message, self.text, pos)

    def chain(self, items: list[Item], shape: Shape) -> tuple[list[Layer], Shape]:
        out: list[Layer] = []
        for item in items:
            for _ in range(item.repeat):
                if isinstance(item, Group):
                    layers, shape = self.chain(item.items, shape)
                    out.extend(layers)
                elif isinstance(item, Block):
                    layer, shape = self.block(item, shape)
                    out.append(layer)
                else:
                    layer, shape = self.atom(item, shape)
                    out.append(layer)
        return out, shape

    def part(self, items: list[Item], shape: Shape) -> tuple[Layer, Shape]:
        """A chain used as one layer (RES body, CAT branch): itself if one layer long."""
        layers, out = self.chain(items, shape)
        return (layers[0] if len(layers) == 1 else _layers().Sequential(*layers)), out

    def block(self, b: Block, shape: Shape) -> tuple[Layer, Shape]:
        L = _layers()
        name = b.kind
        if name == "SEQ":
            layers, out = self.chain(b.parts[0], shape)
            return L.Sequential(*layers), out
        parts = [self.part(p, shape) for p in b.parts]
        try:
            if name == "RES":
                layer = L.Residual(parts[0][0], parts[1][0] if len(parts) > 1 else None)
            else:
                layer = L.Concat(*[p[0] for p in parts])
            return layer, tuple(layer.output_shape(shape))
        except CnnkitError as exc:
            self.fail(f"{name}[...] on input {_vol(shape)}: {exc}", b.pos)

    def atom(self, a: Atom, shape: Shape) -> tuple[Layer, Shape]:
        L = _layers()
        kind = a.kind
        spatial = len(shape) == 3
        if kind in ("CONV", "LC", "POOL", "AVGPOOL", "L2POOL", "GAP", "NORM", "BN") and not spatial:
            self.fail(f"{a.text} needs a W x H x D volume as input, got the flat vector {_vol(shape)} "
                      "(it comes after an FC or FLATTEN)", a.pos)
        cls, kwargs = self._constructor(a, shape, L)
        inferred = sorted(set(a.kwargs) & set(kwargs) & _INFERRED)
        if inferred:
            self.fail(f"{a.text}: {inferred[0]} is inferred from the input {_vol(shape)} "
                      f"({inferred[0]}={kwargs[inferred[0]]!r}); leave it out", a.pos, shape_error=False)
        kwargs.update(a.kwargs)
        try:
            layer = cls(**kwargs)
        except TypeError as exc:
            self.fail(f"{a.text}: bad setting: {exc}", a.pos, shape_error=False)
        except CnnkitError as exc:
            self.fail(f"{a.text} on input {_vol(shape)}: {exc}", a.pos)
        except (ValueError, OverflowError, MemoryError) as exc:   # NumPy refusing a shape it cannot index
            self.fail(f"{a.text} on input {_vol(shape)}: too big to build ({exc})", a.pos)
        try:
            out = tuple(layer.output_shape(shape))
        except CnnkitError as exc:
            self.fail(f"{a.text} on input {_vol(shape)}: {exc}", a.pos)
        if a.volume is not None and tuple(a.volume) != out and not (len(a.volume) == 3 and a.volume[1:] == (1, 1) and out == (a.volume[0],)):
            self.fail(f"{a.text}: the listing says [{format_volume(a.volume)}] but the layer gives "
                      f"[{format_volume(out)}]", a.pos)
        return layer, out

    def _constructor(self, a: Atom, shape: Shape, L: ModuleType) -> tuple[type[Layer], dict[str, Any]]:
        kind = a.kind
        if kind in ("CONV", "LC"):
            assert a.F is not None  # the parser reads F for every windowed layer
            C, H, W = shape
            dil = a.dilation or (1, 1)
            pad = a.padding or self._same_padding(a, dil)
            kw: dict[str, Any] = dict(kernel_size=_plain(a.F), stride=_plain(a.stride or (1, 1)), padding=_plain(pad))
            if a.rounding:
                kw["rounding"] = a.rounding
            if not a.bias:
                kw["bias"] = False
            if kind == "LC":
                return L.LocallyConnected2D, dict(in_channels=C, out_channels=a.K, input_size=(H, W), **kw)
            if a.dilation:
                kw["dilation"] = _plain(dil)
            if a.groups is not None:
                kw["groups"] = a.groups
            return L.Conv2D, dict(in_channels=C, out_channels=a.K, **kw)
        if kind in ("POOL", "AVGPOOL", "L2POOL"):
            assert a.F is not None
            cls = {"POOL": L.MaxPool2D, "AVGPOOL": L.AvgPool2D, "L2POOL": L.L2Pool2D}[kind]
            kw = dict(kernel_size=_plain(a.F), stride=_plain(a.stride or a.F))
            if a.padding:
                kw["padding"] = _plain(a.padding)
            if a.rounding:
                kw["rounding"] = a.rounding
            return cls, kw
        if kind == "FC":
            kw = dict(in_features=math.prod(shape), out_features=a.K)
            if not a.bias:
                kw["bias"] = False
            return L.FC, kw
        if kind == "NORM":
            return L.LRN, ({"size": a.size} if a.size is not None else {})
        if kind == "BN":
            return L.BatchNorm2D, dict(num_features=shape[0])
        if kind == "DROPOUT":
            return L.Dropout, ({"p": a.p} if a.p is not None else {})
        return {"RELU": L.ReLU, "FLATTEN": L.Flatten, "GAP": L.GlobalAvgPool2D}[kind], {}

    def _same_padding(self, a: Atom, dil: tuple[int, int]) -> tuple[int, ...]:
        """The notes' size-preserving P = (F - 1)/2 (F counted with its dilation gaps)."""
        assert a.F is not None
        if min(a.F) < 1 or min(dil) < 1:
            return (0, 0)   # no window at all: the layer's own check names it
        pads = []
        for f, d in zip(a.F, dil):
            span = d * (f - 1)
            if span % 2:
                self.fail(f"{a.text}: the notes' size-preserving padding P = (F - 1)/2 = {span}/2 is not "
                          f"an integer for an even filter; write the padding, e.g. {a.text}p0", a.pos,
                          shape_error=False)
            pads.append(span // 2)
        return tuple(pads)


# constructor arguments the builder infers from the input; a keyword setting may not replace them
_INFERRED = {"in_channels", "in_features", "num_features", "input_size"}


def _plain(hw: Iterable[int]) -> int | tuple[int, ...]:
    hw = tuple(hw)
    return hw[0] if hw[0] == hw[1] else hw


def _vol(shape: Iterable[int]) -> str:
    return "[" + format_volume(tuple(shape)) + "]"
