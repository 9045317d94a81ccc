"""Write a network back as a spec string: build(to_spec(net)) has net's config()."""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from .build import as_input_shape, format_volume
from .errors import SpecError

if TYPE_CHECKING:  # the engine imports this module (Layer.spec); only the checker needs Layer here
    from ..layers import Layer

Config = dict[str, Any]  # a layer's config(): {'type': ..., settings...}

_BN_DEFAULTS = dict(eps=1e-5, momentum=0.1)
_LRN_DEFAULTS = dict(alpha=1e-4, beta=0.75, k=2.0)


def to_spec(net: Layer, input_shape: str | Iterable[int] | None = None) -> str:
    """The spec of a network (a Sequential or a single layer), starting with INPUT[WxHxD].

    input_shape is per sample ((C, H, W) or 'WxHxD'); without it the net's own
    ``input_shape`` (set by build and the zoo) is used, or (D,) when it starts with FC."""
    if input_shape is not None:
        input_shape = as_input_shape(input_shape)
    shape = input_shape or getattr(net, "input_shape", None) or _flat_input(net)
    if shape is None:
        raise SpecError(f"to_spec: the input volume of {type(net).__name__} is unknown; pass "
                        "input_shape=(C, H, W)", "", 0)
    body = chain_text(net.config())
    head = f"INPUT[{format_volume(tuple(shape))}]"
    return f"{head} -> {body}" if body else head


def layer_text(cfg: Config) -> str:
    """One layer config as a token, e.g. {'type': 'Conv2D', ...} -> 'CONV3-64'."""
    kind = cfg["type"]
    writer = _WRITERS.get(kind)
    if writer is None:
        raise SpecError(f"to_spec: the model language has no notation for {kind}", "", 0)
    return writer(cfg)


def chain_text(cfg: Config) -> str:
    """A top-level Sequential's children as a chain; other layers as one token."""
    if cfg["type"] == "Sequential":
        return " -> ".join(compress([layer_text(c) for c in cfg["layers"]]))
    return layer_text(cfg)


def _part(cfg: Config) -> str:
    """A RES body or CAT branch: a Sequential of != 1 layers is written as its chain."""
    if cfg["type"] == "Sequential" and len(cfg["layers"]) != 1:
        return chain_text(cfg)
    return layer_text(cfg)


def compress(tokens: list[str]) -> list[str]:
    """Fold runs of a repeated sub-chain into [a -> b]*N, longest cover first, nested."""
    out: list[str] = []
    i, n = 0, len(tokens)
    at: dict[str, list[int]] = {}
    for j, t in enumerate(tokens):
        at.setdefault(t, []).append(j)
    while i < n:
        best = (1, 1)
        # a run of period L needs tokens[i + L] == tokens[i]: only those L are tried, so a
        # chain of distinct layers takes linear time, not cubic
        same = at[tokens[i]]
        first = bisect.bisect_right(same, i)
        last = bisect.bisect_right(same, i + (n - i) // 2)
        for L in (j - i for j in same[first:last]):
            k = 1
            while tokens[i + k * L:i + (k + 1) * L] == tokens[i:i + L]:
                k += 1
            if k > 1 and L * k > best[0] * best[1]:
                best = (L, k)
        L, k = best
        if k > 1:
            out.append("[" + " -> ".join(compress(tokens[i:i + L])) + f"]*{k}")
        else:
            out.append(tokens[i])
        i += L * k
    return out


def _hw(v: Any) -> tuple[int, int]:
    if isinstance(v, (list, tuple)):
        return int(v[0]), int(v[1])
    return int(v), int(v)


def _size(hw: tuple[int, int]) -> str:
    return str(hw[0]) if hw[0] == hw[1] else f"{hw[0]}x{hw[1]}"


def _extras(cfg: Config, defaults: Config) -> str:
    diff = {k: cfg[k] for k, d in defaults.items() if k in cfg and cfg[k] != d}
    return "(" + ", ".join(f"{k}={v!r}" for k, v in diff.items()) + ")" if diff else ""


def _windowed(name: str, cfg: Config, default_stride: Callable[[tuple[int, int]], tuple[int, int]],
              default_pad: Callable[[tuple[int, int], tuple[int, int]], tuple[int, ...] | None]) -> str:
    F = _hw(cfg["kernel_size"])
    S = _hw(cfg.get("stride", default_stride(F)))
    P = _hw(cfg.get("padding", 0))
    text = f"{name}{_size(F)}"
    if "out_channels" in cfg:
        text += f"-{cfg['out_channels']}"
    if S != default_stride(F):
        text += f"/{_size(S)}"
    dil = _hw(cfg.get("dilation", 1))
    if P != default_pad(F, dil):
        text += f"p{_size(P)}"
    if dil != (1, 1):
        text += f"d{_size(dil)}"
    if cfg.get("groups", 1) != 1:
        text += f"g{cfg['groups']}"
    if cfg.get("bias", True) is False:
        text += "nb"
    if cfg.get("rounding", "exact") != "exact":
        text += cfg["rounding"]
    return text


def _same(F: tuple[int, int], dil: tuple[int, int]) -> tuple[int, ...] | None:
    spans = [d * (f - 1) for f, d in zip(F, dil)]
    return tuple(s // 2 for s in spans) if all(s % 2 == 0 for s in spans) else None


def _conv(cfg: Config) -> str:
    return _windowed("CONV", cfg, lambda F: (1, 1), _same)


def _lc(cfg: Config) -> str:
    return _windowed("LC", cfg, lambda F: (1, 1), _same)


def _pool(name: str) -> Callable[[Config], str]:
    return lambda cfg: _windowed(name, cfg, lambda F: F, lambda F, d: (0, 0))


def _fc(cfg: Config) -> str:
    return f"FC{cfg['out_features']}" + ("" if cfg.get("bias", True) else "nb")


def _lrn(cfg: Config) -> str:
    size = cfg.get("size", 5)
    return "NORM" + (str(size) if size != 5 else "") + _extras(cfg, _LRN_DEFAULTS)


def _bn(cfg: Config) -> str:
    return "BN" + _extras(cfg, _BN_DEFAULTS)


def _dropout(cfg: Config) -> str:
    p = cfg.get("p", 0.5)
    text = repr(float(p))
    if "e" in text:                      # the notation has no exponents: 1e-05 -> 0.00001
        text = f"{float(p):.20f}".rstrip("0")
    return "DROPOUT" + (text if p != 0.5 else "") + _extras(cfg, {"seed": None})


def _residual(cfg: Config) -> str:
    body = _part(cfg["body"])
    if cfg.get("shortcut") is not None:
        return f"RES[{body} | {_part(cfg['shortcut'])}]"
    return f"RES[{body}]"


def _concat(cfg: Config) -> str:
    return "CAT[" + " | ".join(_part(b) for b in cfg["branches"]) + "]"


def _seq(cfg: Config) -> str:
    return "SEQ[" + chain_text(cfg) + "]"


_WRITERS: dict[str, Callable[[Config], str]] = {
    "Conv2D": _conv, "LocallyConnected2D": _lc, "MaxPool2D": _pool("POOL"),
    "AvgPool2D": _pool("AVGPOOL"), "L2Pool2D": _pool("L2POOL"),
    "GlobalAvgPool2D": lambda c: "GAP", "ReLU": lambda c: "RELU", "Flatten": lambda c: "FLATTEN",
    "FC": _fc, "LRN": _lrn, "BatchNorm2D": _bn, "Dropout": _dropout,
    "Residual": _residual, "Concat": _concat, "Sequential": _seq,
}


def _flat_input(net: Layer) -> tuple[int] | None:
    from ..layers import FC  # the engine is complete by the time a net exists

    first = net
    while first.children():
        first = first.children()[0]
    if type(first) is FC:  # the registry lets no other layer class be named FC
        return (first.in_features,)
    return None
