"""The notes' VGG table for any network (notes: "Case studies: VGGNet in detail").

``summary(net_or_spec, input_shape)`` lists, per layer, the output volume, its
activations (the notes' "memory", e.g. 224*224*64=3.2M) and its weights with the formula
((3*3*64)*128 = 73,728), then the totals, and below them the training-memory estimate of
``cnnkit.summary.memory``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..layers import (
    FC,
    Concat,
    Conv2D,
    Dropout,
    Flatten,
    Layer,
    LocallyConnected2D,
    ReLU,
    Residual,
    Sequential,
    format_volume,
)
from ..notation.limits import memory_limit, network_cost
from ..notation.write import layer_text
from .memory import MemoryEstimate, net_and_shape, training_memory
from .units import human, human_bytes

# Elementwise layers the notes' table folds into the layer before (in place in their
# accounting); summary() hides them unless all_layers=True.
FOLDED = (ReLU, Dropout, Flatten)
VGG16_PARAMS = 138_357_544


@dataclass
class Row:
    """One line of the table: the layer's notation, output volume, activations, weights."""
    name: str           # qualified name in the network ('' for INPUT)
    layer: str          # notation, e.g. CONV3-64
    kind: str           # layer class name ('Input' for INPUT)
    shape: tuple        # per-sample output shape, (C, H, W) or (D,)
    weights: int        # weights without biases (the notes' column)
    formula: str        # the notes' formula, e.g. (3*3*3)*64
    params: int         # all learnable numbers of the layer (weights + biases, BN gamma/beta)
    depth: int = 0      # nesting level inside RES/CAT blocks

    @property
    def activations(self) -> int:
        return math.prod(self.shape)

    @property
    def volume(self) -> str:
        """[224x224x64], the notes' W x H x D; FC outputs read [1x1x4096]."""
        s = self.shape
        return f"[{format_volume(s)}]" if len(s) == 3 else f"[1x1x{s[0]}]"

    @property
    def memory(self) -> str:
        """224*224*64=3.2M as in the notes (FC: just 4096)."""
        if len(self.shape) == 3:
            D, H, W = self.shape
            return f"{W}*{H}*{D}={human(self.activations)}"
        return human(self.activations)

    @property
    def weights_text(self) -> str:
        """(3*3*64)*128 = 73,728 as in the notes; 0 for layers without weights."""
        if not self.formula:
            return f"{self.weights:,}"
        return f"{self.formula} = {self.weights:,}"

    def notes_line(self) -> str:
        """The row in the notes' own format."""
        return f"{self.layer}: {self.volume} memory: {self.memory} weights: {self.weights_text}"


@dataclass
class Summary:
    """The table plus totals; str() prints it."""
    rows: list[Row]
    hidden: int
    dtype: str = "float32"
    batch: int = 1
    memory: "MemoryEstimate | None" = None
    remarks: list[str] = field(default_factory=list)

    @property
    def itemsize(self) -> int:
        return np.dtype(self.dtype).itemsize

    @property
    def total_activations(self) -> int:
        """Sum of the listed rows' activations (INPUT included), as the notes total them."""
        return sum(r.activations for r in self.rows)

    @property
    def total_params(self) -> int:
        return sum(r.params for r in self.rows)

    @property
    def forward_bytes(self) -> int:
        return self.total_activations * self.itemsize

    @property
    def forward_backward_bytes(self) -> int:
        return 2 * self.forward_bytes

    def __str__(self) -> str:
        text = self.table()
        if self.memory is not None:
            text += "\n\n" + str(self.memory)
        return text

    def table(self) -> str:
        """The rows and the notes' totals, without the engine-specific training estimate."""
        head = ("layer", "output volume", "activations (memory)", "weights", "params")
        body = [("  " * r.depth + ("shortcut: " if ".shortcut" in f".{r.name}" else "") + r.layer, r.volume, r.memory, r.weights_text, f"{r.params:,}") for r in self.rows]
        widths = [max(len(x[i]) for x in [head] + body) for i in range(5)]

        def fmt(cells: Any) -> str:
            return "  ".join(c.ljust(w) if i < 4 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

        lines = [fmt(head), fmt(["-" * w for w in widths])] + [fmt(b) for b in body]
        lines.append(fmt(["-" * w for w in widths]))
        act, e = self.total_activations, self.itemsize
        lines.append(f"TOTAL activations: {human(act, 3)} ({act:,}) * {e} bytes ~= {human_bytes(act * e)} / image "
                     f"forward, ~{human_bytes(2 * act * e)} forward + backward")
        lines.append(f"TOTAL params: {human(self.total_params, 3)} ({self.total_params:,}) * {e} bytes ~= "
                     f"{human_bytes(self.total_params * e)}")
        if self.hidden:
            lines.append(f"({self.hidden} elementwise layers (RELU, DROPOUT, FLATTEN) folded into the rows above, "
                         "as in the notes; all_layers=True / --all lists them)")
        lines.extend(self.remarks)
        return "\n".join(lines)


def _weights(layer: Layer, in_shape: tuple[int, ...]) -> tuple[int, str]:
    """The weights (no biases) and the notes' formula for them: (3*3*64)*128."""
    w = layer.params.get("weight")
    if w is None:
        return 0, ""
    if isinstance(layer, Conv2D):
        K, Cg, Fh, Fw = w.shape
        return w.size, f"({Fh}*{Fw}*{Cg})*{K}"
    if isinstance(layer, LocallyConnected2D):
        H2, W2, K, C, Fh, Fw = w.shape
        return w.size, f"({Fh}*{Fw}*{C})*{K}*({W2}*{H2})"
    if isinstance(layer, FC):
        ins = "*".join(str(d) for d in (reversed(in_shape) if len(in_shape) == 3 else in_shape))
        return w.size, f"{ins}*{w.shape[0]}"
    return w.size, ""


def summary(net_or_spec: Any, input_shape: Any = None, batch: int = 1, optimizer: str = "sgd",
            dtype: str = "float32", all_layers: bool = False) -> Summary:
    """The notes' table for a network or a spec string, with a training-memory estimate
    for ``batch`` images and ``optimizer`` (sgd / momentum / adam ...)."""
    net, shape = net_and_shape(net_or_spec, input_shape)
    rows = [Row("", "INPUT", "Input", tuple(shape), 0, "", 0)]
    hidden = 0
    for name, layer, ins, outs, depth in net.walk(tuple(shape)):
        if isinstance(layer, FOLDED) and not all_layers:
            hidden += 1
            continue
        block = isinstance(layer, (Residual, Concat, Sequential))
        text = "RES (add)" if isinstance(layer, Residual) else "CAT (join)" if isinstance(layer, Concat) \
            else layer_text(layer.config())
        own = 0 if block else sum(p.size for p in layer.params.values())
        w, formula = _weights(layer, ins)
        rows.append(Row(name, text, type(layer).__name__, outs, w, formula, own, depth))
    s = Summary(rows, hidden, dtype, batch)
    s.memory = training_memory(net, shape, batch, optimizer, dtype)
    stored, forward, count = network_cost(net, tuple(shape))
    limit, source = memory_limit()
    if stored + forward > limit:
        s.remarks.append(f"Note: cnnkit.build refuses to build this network for real: it needs {human_bytes(stored + forward)} "
                         f"(parameters {human_bytes(stored)} + one image's forward pass {human_bytes(forward)}), over "
                         f"the limit of {human_bytes(limit)} ({source}; CNNKIT_MAX_MEMORY raises it).")
    if s.total_params == VGG16_PARAMS and tuple(shape) == (3, 224, 224):
        s.remarks.append(
            f"Note: the notes print 'TOTAL memory: 24M * 4 bytes ~= 93MB / image'; the sum of their own rows "
            f"is {human(s.total_activations, 3)} ({s.total_activations:,}), ~{human_bytes(s.forward_bytes)} forward, "
            f"~{human_bytes(s.forward_backward_bytes)} with backward: the notes' total is not the sum of "
            f"their rows, the figure above is.")
    return s
