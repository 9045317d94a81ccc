"""Check a spec against the notes' sizing rules ("Layer Sizing Patterns") and warn,
quoting the rule. Shapes are computed from the AST alone: no weights are allocated."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .build import as_input_shape, format_volume
from .errors import SpecError
from .parser import Atom, Block, Group, Item, Spec, parse

# a per-sample shape; the linter passes None on once a layer no longer fits (nothing after it is checked)
Shape = tuple[int, ...]

RULES = {
    "input-div2": "The input layer (that contains the image) should be divisible by 2 many times "
                  "(32, 64, 96, 224, 384, 512).",
    "conv-preserve": "CONV layers should use stride S = 1 and zero-pad so they don't alter the spatial "
                     "size: F=3 -> P=1, F=5 -> P=2, in general P = (F - 1)/2.",
    "small-filters": "CONV layers should use small filters (3x3 or at most 5x5); bigger filters "
                     "(such as 7x7) are usually only seen on the very first CONV layer.",
    "pool-size": "It is very uncommon to see receptive field sizes for max pooling larger than 3 "
                 "(F=2, S=2, or F=3, S=2), because the pooling is then too lossy.",
    "tiling": "Every layer's receptive fields must tile its input: (W - F + 2P)/S + 1 must be an "
              "integer, else pixels are dropped or the sizes don't fit.",
}


@dataclass
class LintWarning:
    """One broken rule: the rule's id, the layer text and position, and the details."""
    rule: str
    layer: str
    pos: int
    message: str

    @property
    def quote(self) -> str:
        return RULES[self.rule]

    def __str__(self) -> str:
        where = f"{self.layer} (column {self.pos + 1})" if self.layer else "INPUT"
        return f"{where}: {self.message}\n    rule [{self.rule}]: {self.quote}"


def lint(spec: str | Spec, input_shape: str | Iterable[int] | None = None) -> list[LintWarning]:
    """Warnings for a spec; raises SpecError only if it does not parse."""
    tree = spec if isinstance(spec, Spec) else parse(spec)
    shape = tree.input_shape
    if input_shape is not None:
        shape = as_input_shape(input_shape)
    if shape is None:
        raise SpecError("lint needs an input volume: start the spec with INPUT[WxHxD]", tree.text, 0)
    linter = _Linter()
    linter.chain(tree.items, shape)
    warnings = linter.warnings
    if len(shape) == 3:
        downs = max(1, linter.downsamples)
        need = 2 ** downs
        bad = [d for d in shape[1:] if d % need]
        if bad:
            warnings.insert(0, LintWarning(
                "input-div2", "", tree.input_pos,
                f"input {format_volume(shape)} is not divisible by 2^{downs} = {need} (the net halves "
                f"its size {linter.downsamples} time(s))"))
    return warnings


class _Linter:
    def __init__(self) -> None:
        self.warnings: list[LintWarning] = []
        self.convs = 0
        self.downsamples = 0
        self.broken = False

    def warn(self, rule: str, a: Atom, msg: str) -> None:
        self.warnings.append(LintWarning(rule, a.text, a.pos, msg))

    def chain(self, items: list[Item], shape: Shape | None) -> Shape | None:
        for item in items:
            for _ in range(item.repeat):
                if shape is None:
                    return None
                if isinstance(item, Group):
                    shape = self.chain(item.items, shape)
                elif isinstance(item, Block):
                    shape = self.block(item, shape)
                else:
                    shape = self.atom(item, shape)
        return shape

    def block(self, b: Block, shape: Shape) -> Shape | None:
        # Downsampling counts along one path: the deepest branch, not their sum.
        start, counts, outs = self.downsamples, [], []
        for p in b.parts:
            self.downsamples = start
            outs.append(self.chain(p, shape))
            counts.append(self.downsamples)
        self.downsamples = max(counts, default=start)
        shapes = [o for o in outs if o is not None]
        if len(shapes) < len(outs):
            return None
        if b.kind == "SEQ":
            return shapes[0]
        if b.kind == "RES":
            return shapes[0]
        return (sum(o[0] for o in shapes), *shapes[0][1:])

    def atom(self, a: Atom, shape: Shape) -> Shape | None:
        k = a.kind
        if k == "FC":
            assert a.K is not None  # the parser gives every FC its K
            return (a.K,)
        if k == "FLATTEN":
            n = 1
            for d in shape:
                n *= d
            return (n,)
        if len(shape) != 3:
            return shape
        C, H, W = shape
        if k == "GAP":
            return (C, 1, 1)
        if k not in ("CONV", "LC", "POOL", "AVGPOOL", "L2POOL"):
            return shape
        F = a.F
        assert F is not None  # the parser reads F for every windowed layer
        depth = a.K if k in ("CONV", "LC") else C
        assert depth is not None  # ... and K for CONV and LC
        dil = a.dilation or (1, 1)
        if k in ("CONV", "LC"):
            S = a.stride or (1, 1)
            P = a.padding or tuple(d * (f - 1) // 2 for f, d in zip(F, dil))
        else:
            S = a.stride or F
            P = a.padding or (0, 0)
        if min(F) < 1 or min(S) < 1 or min(dil) < 1:
            return None   # not a layer at all: build says so (cnnkit lint builds the spec too)
        out, said = [], set()
        for axis, size, f, s, p, d in (("H", H, F[0], S[0], P[0], dil[0]), ("W", W, F[1], S[1], P[1], dil[1])):
            fe = d * (f - 1) + 1
            span = size - fe + 2 * p
            if span < 0:
                self.warn("tiling", a, f"the {fe}x{fe} window is larger than the padded input {size} + 2*{p}")
                return None
            if span % s:
                rounding = a.rounding or "exact"
                lost = max(0, span % s - p)   # the uncovered end is padding first
                floor = (f"drops the last {lost} input pixel(s)" if lost else
                         f"leaves the last {span % s} padding pixel(s) unread (no input lost)")
                what = {"exact": "does not build", "floor": floor,
                        "ceil": "adds a partial window at the border"}[rounding]
                if (size, fe, s, p) not in said:
                    said.add((size, fe, s, p))
                    self.warn("tiling", a, f"output {axis} = ({size} - {fe} + {2 * p})/{s} + 1 = "
                                           f"{span / s + 1:g} is not an integer: {what}")
                n = -(-span // s) + 1 if rounding == "ceil" else span // s + 1
            else:
                n = span // s + 1
            out.append(n)
        if k in ("CONV", "LC"):
            self.convs += 1
            if max(F) > 5 and self.convs > 1:
                self.warn("small-filters", a, f"a {F[0]}x{F[1]} filter past the first CONV layer")
            if S == (1, 1) and (out[0], out[1]) != (H, W):
                self.warn("conv-preserve", a, f"stride 1 but {W}x{H} -> {out[1]}x{out[0]}; "
                                              f"use P = (F - 1)/2 = {_pad_hint(F, dil)}")
        elif k == "POOL" and max(F) > 3:
            self.warn("pool-size", a, f"max pooling with F = {_size(F)} > 3")
        if max(S) > 1 and (out[0] < H or out[1] < W):
            self.downsamples += 1
        return (depth, out[0], out[1])


def _size(F: tuple[int, ...]) -> str:
    return str(F[0]) if F[0] == F[1] else f"{F[0]}x{F[1]}"


def _pad_hint(F: tuple[int, int], dil: tuple[int, int]) -> str:
    spans = [d * (f - 1) for f, d in zip(F, dil)]
    if any(s % 2 for s in spans):
        return "not an integer for an even filter (use an odd F)"
    return _size(tuple(s // 2 for s in spans))
