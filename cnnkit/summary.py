"""The notes' VGG table for any network, and what training it costs in memory
(notes: "Case studies: VGGNet in detail", "Computational Considerations").

``summary(net_or_spec, input_shape)`` lists, per layer, the output volume, its
activations (the notes' "memory", e.g. 224*224*64=3.2M) and its weights with the formula
((3*3*64)*128 = 73,728), then the totals. ``training_memory`` estimates the peak of one
training step from the notes' three sources, modelled on what cnnkit's layers really
keep (e.g. CONV caches its im2col matrix); ``measure_training_peak`` checks it with
tracemalloc. ``streaming_forward`` is the notes' test-time trick: only the current
layer's input and output are alive.
"""

from __future__ import annotations

import math
import re
import tracemalloc
from dataclasses import dataclass, field

import numpy as np

from .errors import CnnkitError
from .layers.conv import release_workspace
from .layers.threads import num_threads
from .spec import build, format_volume, parse_volume
from .spec.write import layer_text

# Elementwise layers the notes' table folds into the layer before (in place in their
# accounting); summary() hides them unless all_layers=True.
FOLDED = ("ReLU", "Dropout", "Flatten")
OPTIMIZER_SLOTS = {"sgd": 0, "momentum": 1, "nesterov": 1, "adagrad": 1, "rmsprop": 1, "adam": 2}
VGG16_PARAMS = 138_357_544


class SummaryError(CnnkitError, ValueError):
    """A summary or memory request that cannot be answered (unknown input size, bad budget)."""


def human(n: float, digits: int = 2) -> str:
    """The notes' short counts: exact below 10,000, else `digits` significant figures
    with K/M/G (150528 -> 150K, 3211264 -> 3.2M, 802816 -> 800K)."""
    n = int(n)
    if n < 10_000:
        return str(n)
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            v = n / scale
            v = round(v, digits - 1 - int(math.floor(math.log10(v))))
            return (f"{v:g}" if v < 10 ** digits else str(int(round(v)))) + unit
    return str(n)


def human_bytes(b: float) -> str:
    """Bytes in KB/MB/GB (powers of 1024, as the notes divide)."""
    for unit, scale in (("GB", 1024 ** 3), ("MB", 1024 ** 2), ("KB", 1024)):
        if b >= scale:
            return f"{b / scale:.1f} {unit}"
    return f"{int(b)} B"


def parse_bytes(text: str) -> int:
    """'4GB' / '512 MB' / '1.5G' -> bytes (powers of 1024)."""
    m = re.fullmatch(r"\s*([\d.]+)\s*([kmgt]?)i?b?\s*", str(text), re.I)
    if not m:
        raise SummaryError(f"expected a size like 4GB or 512MB, got {text!r}")
    return int(float(m.group(1)) * 1024 ** "_kmgt".index(m.group(2).lower() or "_"))


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
        fmt = lambda cells: "  ".join(c.ljust(w) if i < 4 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
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


def walk(net, in_shape: tuple, prefix: str = "", depth: int = 0):
    """(qualified name, layer, input shape, output shape, depth) for every leaf and block,
    in forward order; RES/CAT blocks come after their insides (their output is the sum / join)."""
    kind = type(net).__name__
    if kind == "Sequential":
        shape = in_shape
        for name, child in net.named_children():
            yield from walk(child, shape, prefix + name + ".", depth)
            shape = tuple(child.output_shape(shape))
        return
    if kind in ("Residual", "Concat"):
        for name, child in net.named_children():
            yield from walk(child, in_shape, prefix + name + ".", depth + 1)
        yield prefix.rstrip("."), net, in_shape, tuple(net.output_shape(in_shape)), depth
        return
    yield prefix.rstrip("."), net, in_shape, tuple(net.output_shape(in_shape)), depth


def _weights(layer, in_shape) -> tuple[int, str]:
    kind = type(layer).__name__
    w = layer.params.get("weight")
    if w is None:
        return 0, ""
    if kind == "Conv2D":
        K, Cg, Fh, Fw = w.shape
        return w.size, f"({Fh}*{Fw}*{Cg})*{K}"
    if kind == "LocallyConnected2D":
        H2, W2, K, C, Fh, Fw = w.shape
        return w.size, f"({Fh}*{Fw}*{C})*{K}*({W2}*{H2})"
    if kind == "FC":
        ins = "*".join(str(d) for d in (reversed(in_shape) if len(in_shape) == 3 else in_shape))
        return w.size, f"{ins}*{w.shape[0]}"
    return w.size, ""


def _net_and_shape(net_or_spec, input_shape):
    if isinstance(net_or_spec, str):
        net = build(net_or_spec, input_shape)
        return net, net.input_shape
    net = net_or_spec
    if isinstance(input_shape, str):
        input_shape = parse_volume(input_shape)
    shape = tuple(input_shape) if input_shape is not None else getattr(net, "input_shape", None)
    if shape is None:
        raise SummaryError("summary: pass input_shape=(C, H, W) (or 'WxHxD') for this network")
    return net, shape


def summary(net_or_spec, input_shape=None, batch: int = 1, optimizer: str = "sgd",
            dtype: str = "float32", all_layers: bool = False) -> Summary:
    """The notes' table for a network or a spec string, with a training-memory estimate
    for ``batch`` images and ``optimizer`` (sgd / momentum / adam)."""
    net, shape = _net_and_shape(net_or_spec, input_shape)
    rows = [Row("", "INPUT", "Input", tuple(shape), 0, "", 0)]
    hidden = 0
    for name, layer, ins, outs, depth in walk(net, tuple(shape)):
        kind = type(layer).__name__
        if kind in FOLDED and not all_layers:
            hidden += 1
            continue
        if kind == "Residual":
            text = "RES (add)"
        elif kind == "Concat":
            text = "CAT (join)"
        else:
            text = layer_text(layer.config())
        own = sum(p.size for p in layer.params.values()) if kind not in ("Residual", "Concat", "Sequential") else 0
        w, formula = _weights(layer, ins)
        rows.append(Row(name, text, kind, outs, w, formula, own, depth))
    s = Summary(rows, hidden, dtype, batch)
    s.memory = training_memory(net, shape, batch, optimizer, dtype)
    if s.total_params == VGG16_PARAMS and tuple(shape) == (3, 224, 224):
        s.remarks.append(
            f"Note: the notes print 'TOTAL memory: 24M * 4 bytes ~= 93MB / image'; the sum of their own rows "
            f"is {human(s.total_activations, 3)} ({s.total_activations:,}), ~{human_bytes(s.forward_bytes)} forward, "
            f"~{human_bytes(s.forward_backward_bytes)} with backward: the notes' total is not the sum of "
            f"their rows, the figure above is.")
    return s


# --- memory -------------------------------------------------------------------

@dataclass
class MemoryEstimate:
    """Peak bytes of one training step, by the notes' three sources:
    1. activations (what forward keeps for backward) and, at the worst layer, the
       gradients and workspace alive on top of them; 2. parameters, their gradients and
    the optimizer's slots; 3. the rest: the input batch."""
    batch: int
    optimizer: str
    itemsize: int
    activations: int     # what forward keeps for backward (caches), for the whole batch
    workspace: int       # activation gradients, im2col blocks, padding, temporaries at the worst layer
    params: int          # parameters
    param_grads: int     # their gradients
    slots: int           # optimizer state (momentum velocity, Adam's m and v)
    input: int           # the input batch (and labels)

    @property
    def total(self) -> int:
        return self.activations + self.workspace + self.params + self.param_grads + self.slots + self.input

    def __str__(self) -> str:
        slots = OPTIMIZER_SLOTS.get(self.optimizer, 0)
        rows = [
            ("1. activations kept for backward (cnnkit's caches)", self.activations),
            ("   + gradients and workspace at the worst layer (im2col, padding)", self.workspace),
            (f"2. parameters x (1 + gradient + {slots} optimizer slot{'s' if slots != 1 else ''})",
             self.params + self.param_grads + self.slots),
            ("3. the input batch", self.input),
            ("peak of one training step", self.total),
        ]
        width = max(len(r[0]) for r in rows)
        lines = [f"Training memory, batch {self.batch}, {self.optimizer} (forward + backward + update):"]
        lines += [f"  {label.ljust(width)}  {human_bytes(b):>10}" for label, b in rows]
        return "\n".join(lines)


def _leaf_costs(layer, ins, outs, n: int, e: int) -> tuple[int, int, int]:
    """(cache, forward transient, backward transient) in bytes for one leaf layer on a batch
    of n, read off cnnkit's code: what _save keeps and which arrays forward/backward make.
    Backward also makes the new weight gradient twice over (the GEMM's result, then its
    reshaped copy) while the previous step's gradient is still alive.

    A layer may state its own costs with ``memory_cost(in_shape, batch, itemsize) ->
    (cache, forward transient, backward transient)``; then this model is not used."""
    own = getattr(layer, "memory_cost", None)
    if callable(own):   # a layer that states its own costs is believed
        return tuple(int(v) for v in own(tuple(ins), n, e))
    cache, fwd, back = _leaf_costs_acts(layer, ins, outs, n, e)
    w = layer.params.get("weight")
    if w is None or w.ndim < 2:
        return cache, fwd, back
    # FC: dW is written in place, while the old gradient is alive: one weight-sized array.
    # CONV: W_row, dW_row and the GEMM's result (or dW's reshaped copy, or the flipped
    # filters of a stride-1 dX) at once: three weight-sized arrays beyond the gradient.
    copies = 3 if type(layer).__name__ == "Conv2D" else 1
    return cache, fwd, back + copies * w.size * e


def _leaf_costs_acts(layer, ins, outs, n: int, e: int) -> tuple[int, int, int]:
    kind = type(layer).__name__
    a_in, a_out = n * math.prod(ins) * e, n * math.prod(outs) * e
    if kind == "Conv2D":
        # cnnkit's CONV keeps the zero-padded input and lowers im2col in blocks of about
        # BLOCK_BYTES (two alive at once), so X_col never holds the whole batch.
        C, H, W = ins
        (Fh, Fw), (Sh, Sw), (Ph, Pw) = layer.kernel_size, layer.stride, layer.padding
        Dh, Dw = layer.dilation
        K, H2, W2 = outs
        # X_col blocks go to a scratch buffer kept between calls (counted once, in
        # _scratch_bytes); what is listed here is allocated per call.
        xp = n * (H + 2 * Ph) * (W + 2 * Pw) * C * e
        block = _block_bytes(n, H2, W2 * Fh * Fw * C * e)
        channels_first = getattr(layer, "_channels_first", lambda: False)()
        if channels_first:
            # Image-like input (1-4 channels) lowered NCHW in runs of Wp = W + 2P numbers per
            # output row: the GEMM writes an (N, H2, Wp, K) result that the output views,
            # backward pads dY the same way and adds dX_col blocks (BLOCK_BYTES) into dX.
            Wp = W + 2 * Pw
            wide_out = n * H2 * Wp * K * e
            back_block = _block_bytes(n, H2, Wp * Fh * Fw * C * e)
            return xp, xp + wide_out, a_out + wide_out + xp + back_block
        one_by_one = (Fh, Fw) == (1, 1) and (Sh, Sw) == (1, 1)
        if one_by_one:
            block = 0
        wrows = layer.params["weight"].size * e   # W_row: the filters reshaped into rows, a copy
        fwd = xp + a_out * (2 if layer.groups > 1 else 1) + wrows
        full = (Dh * (Fh - 1) - Ph, Dw * (Fw - 1) - Pw)
        if (Sh, Sw) == (1, 1) and min(full) >= 0:   # backward as a convolution with flipped filters
            dpad = n * (H2 + 2 * full[0]) * (W2 + 2 * full[1]) * K * e
            x_rows = 0 if one_by_one else _block_bytes(n, H, W * C * e, W * Fh * Fw * K * e)  # unpadded input rows
            back = dpad + x_rows + a_in
        else:                                        # dX_col blocks scattered by col2im
            back = xp + block
        # dY arrives channels-last from the layer after (RELU and BN keep the layout), so
        # making it a contiguous NHWC array is free.
        return xp, fwd, a_out + back
    if kind == "LocallyConnected2D":
        C, H, W = ins
        Fh, Fw = layer.kernel_size
        K, H2, W2 = outs
        cols = n * H2 * W2 * Fh * Fw * C * e
        return cols, 2 * cols + 2 * a_out, a_out + 2 * cols + a_in
    if kind == "ReLU":
        mask = a_in // e
        return mask, mask + a_out, 2 * a_out
    if kind == "Dropout":
        keep = a_in if layer.training else 0
        return keep, 2 * a_in + a_in // e + a_out, 2 * a_out
    if kind == "MaxPool2D":
        sw = a_out // e
        C, H, W = ins
        Ph, Pw = layer.padding
        padded = n * (H + 2 * Ph + 1) * (W + 2 * Pw + 1) * C * e if (Ph or Pw or layer.rounding == "ceil") else 0
        # per block of images (threads.IMAGE_BLOCK_BYTES of input): forward's comparison
        # masks (2 bytes per output), backward's routed gradient and mask (e + 1 bytes)
        from .layers.threads import IMAGE_BLOCK_BYTES
        per_image_out = a_out // e // n
        block_out = min(n, max(1, IMAGE_BLOCK_BYTES // (H * W * C * e))) * per_image_out
        return sw, padded + a_out + sw + 2 * block_out, a_out + a_in + (e + 1) * block_out
    if kind in ("AvgPool2D", "L2Pool2D"):
        cache = a_in + a_out if kind == "L2Pool2D" else 0
        return cache, 2 * a_out + a_in, 2 * a_out + a_in
    if kind == "GlobalAvgPool2D":
        return 0, a_out, a_out + a_in
    if kind == "BatchNorm2D":
        return a_in, 4 * a_in, 3 * a_in
    if kind == "LRN":
        return 3 * a_in, 5 * a_in, 6 * a_in
    if kind == "FC":
        rows = a_in if len(ins) == 3 else 0   # a (N, D) input is cached as a view
        return rows, rows + a_out, a_out + a_in
    if kind == "Flatten":
        return 0, a_in, a_in
    return 0, a_in + a_out, a_in + a_out


def _block_bytes(n: int, rows: int, row_bytes: int, lowered_row_bytes: int | None = None) -> int:
    """Bytes of the largest block of `rows` output rows per image as cnnkit's CONV cuts
    them (by the size of their X_col rows, lowered_row_bytes), at row_bytes per row."""
    from .layers.conv import _blocks
    blocks = _blocks(n, rows, lowered_row_bytes or row_bytes)
    return max((n1 - n0) * (h1 - h0) for n0, n1, h0, h1 in blocks) * row_bytes


def _scratch_bytes(net, in_shape, n: int, e: int) -> int:
    """The im2col scratch buffer CONV keeps between calls: as big as the largest block
    any CONV of the network lowers (its input, or at stride 1 its dY for backward)."""
    need = 0
    for layer, ins in _leaves_with_inputs(net, tuple(in_shape)):
        if type(layer).__name__ != "Conv2D" or layer.kernel_size == (1, 1) == layer.stride:
            continue
        C, H, W = ins
        K, H2, W2 = layer.output_shape(ins)
        (Fh, Fw) = layer.kernel_size
        channels_first = getattr(layer, "_channels_first", lambda: False)()
        Wp = W + 2 * layer.padding[1]
        need = max(need, _block_bytes(n, H2, (Wp if channels_first else W2) * Fh * Fw * C * e))
        if layer.stride == (1, 1) and not channels_first:
            need = max(need, _block_bytes(n, H, W * Fh * Fw * K * e))
    return need


def _leaves_with_inputs(net, in_shape):
    """(layer, per-sample input shape) for every leaf layer, in order."""
    kind = type(net).__name__
    if kind == "Sequential":
        for child in net.children():
            yield from _leaves_with_inputs(child, in_shape)
            in_shape = tuple(child.output_shape(in_shape))
    elif kind in ("Residual", "Concat"):
        for child in net.children():
            yield from _leaves_with_inputs(child, in_shape)
    else:
        yield net, in_shape


def _simulate(net, in_shape, n: int, e: int):
    """Walk the network: (total cache bytes, worst transient over layers, extra alive
    alongside that transient) for a batch of n."""
    kind = type(net).__name__
    if kind == "Sequential":
        total, worst, shape = 0, 0, tuple(in_shape)
        for child in net.children():
            c, w = _simulate(child, shape, n, e)
            total += c
            worst = max(worst, w)
            shape = tuple(child.output_shape(shape))
        return total, worst
    if kind in ("Residual", "Concat"):
        a_in = n * math.prod(in_shape) * e
        out = n * math.prod(net.output_shape(in_shape)) * e
        total, worst = 0, 0
        for child in net.children():
            c, w = _simulate(child, in_shape, n, e)
            total += c
            worst = max(worst, w + a_in + (out if kind == "Concat" else 0))  # the block input stays alive
        worst = max(worst, a_in + 3 * out)
        return total, worst
    outs = tuple(net.output_shape(in_shape))
    cache, fwd, back = _leaf_costs(net, in_shape, outs, n, e)
    return cache, max(fwd, back)


def training_memory(net_or_spec, input_shape=None, batch: int = 1, optimizer: str = "sgd",
                    dtype: str = "float32") -> MemoryEstimate:
    """Estimated peak bytes of one training step (forward, backward, optimizer update).

    Notes' three sources: activations and their gradients (cnnkit keeps per layer what its
    backward reads: CONV its im2col rows, RELU a 1-byte mask, POOL 1-byte switches, BN
    x_hat); parameters x (1 + gradient + optimizer slots: sgd 0, momentum 1, adam 2);
    the rest: the input batch and the im2col / padding workspace of the worst layer."""
    net, shape = _net_and_shape(net_or_spec, input_shape)
    e = np.dtype(dtype).itemsize
    optimizer = optimizer.lower()
    if optimizer not in OPTIMIZER_SLOTS:
        raise SummaryError(f"optimizer must be one of {sorted(OPTIMIZER_SLOTS)}, got {optimizer!r}")
    slots = OPTIMIZER_SLOTS[optimizer]
    P = net.num_params() * e
    biggest = max((p.size for _, p in net.named_parameters()), default=0) * e

    caches, worst = _simulate(net, shape, batch, e)
    update_tmp = biggest * (3 if slots == 2 else 1)   # p -= lr * g makes one temporary; Adam a few
    x = batch * math.prod(shape) * e + batch * 8      # images and int64 labels
    scratch = _scratch_bytes(net, shape, batch, e)
    return MemoryEstimate(batch, optimizer, e, activations=caches, workspace=max(worst, update_tmp) + scratch,
                          params=P, param_grads=P, slots=slots * P, input=x)


def largest_batch(net_or_spec, budget_bytes: int, input_shape=None, optimizer: str = "sgd",
                  dtype: str = "float32") -> int:
    """The largest batch whose estimated training peak fits in budget_bytes (0 if none)."""
    net, shape = _net_and_shape(net_or_spec, input_shape)
    fits = lambda n: training_memory(net, shape, n, optimizer, dtype).total <= budget_bytes
    if not fits(1):
        return 0
    lo, hi = 1, 2
    while fits(hi):
        lo, hi = hi, hi * 2
        if hi > 1 << 24:
            return lo
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def measure_training_peak(net, x: np.ndarray, y: np.ndarray, optimizer: str = "sgd",
                          lr: float = 1e-3) -> int:
    """tracemalloc's peak (bytes) over one steady-state training step of net on (x, y):
    forward, softmax loss, backward, optimizer update. A warm-up step runs first so
    gradients and optimizer slots exist, as they do in training; everything alive
    (parameters included) is counted."""
    from . import optim
    from .layers import softmax_loss
    opt = {"sgd": lambda: optim.SGD(net, lr=lr), "momentum": lambda: optim.SGD(net, lr=lr, momentum=0.9),
           "adam": lambda: optim.Adam(net, lr=lr)}[optimizer]()
    net.train()

    def step():
        out = net.forward(x)
        _, dout = softmax_loss(out, y)
        del out
        net.backward(dout)
        del dout
        opt.step()

    # Trace from the warm-up step on, so arrays it makes and the measured step frees
    # (caches, gradients) are counted exactly; what existed before (parameters, buffers,
    # the batch) is alive throughout and added by hand.
    before = sum(a.nbytes for layer in net.layers() for store in (layer.params, layer.buffers)
                 for a in store.values()) + x.nbytes + y.nbytes
    release_workspace()  # so the step below allocates CONV's scratch where it is counted
    was_tracing = tracemalloc.is_tracing()
    if not was_tracing:
        tracemalloc.start()
    with num_threads(1):  # the estimate models one thread (one scratch buffer)
        step()
        tracemalloc.reset_peak()
        step()
    peak = tracemalloc.get_traced_memory()[1]
    if not was_tracing:
        tracemalloc.stop()
    return before + peak


def streaming_forward(net, x: np.ndarray) -> np.ndarray:
    """Inference that keeps only the current layer's input and output (the notes'
    test-time trick): eval mode, so no layer caches anything, and each activation is
    dropped as soon as the next one exists."""
    net.eval()
    layers = list(net.children()) if type(net).__name__ == "Sequential" else [net]
    for layer in layers:
        x = layer.forward(x)   # rebinding frees the previous activation
    return x


def inference_bound(net, input_shape=None, batch: int = 1, dtype: str = "float32") -> int:
    """What streaming_forward may hold at once, in bytes: parameters + the worst layer's
    input and output (two adjacent activations) + its workspace (padding, im2col blocks),
    + inside RES/CAT blocks the block input (and finished branches) kept for the join."""
    net, shape = _net_and_shape(net, input_shape)
    e = np.dtype(dtype).itemsize

    def worst(layer, ins, held):
        kind = type(layer).__name__
        outs = tuple(layer.output_shape(ins))
        a_in, a_out = batch * math.prod(ins) * e, batch * math.prod(outs) * e
        if kind == "Sequential":
            w, s = 0, ins
            for child in layer.children():
                w = max(w, worst(child, s, held))
                s = tuple(child.output_shape(s))
            return w
        if kind in ("Residual", "Concat"):
            w, done = 0, 0
            for child in layer.children():
                w = max(w, worst(child, ins, held + a_in + done))
                done += batch * math.prod(child.output_shape(ins)) * e
            return max(w, held + a_in + done + a_out)
        _, fwd, _ = _leaf_costs(layer, ins, outs, batch, e)
        return held + a_in + fwd

    return net.num_params() * e + worst(net, tuple(shape), 0) + _scratch_bytes(net, shape, batch, e)


def measure_inference_peak(net, x: np.ndarray) -> int:
    """Parameters plus tracemalloc's peak over streaming_forward(net, x), in bytes."""
    net.eval()
    release_workspace()  # so CONV's scratch is allocated where it is counted
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    with num_threads(1):
        out = streaming_forward(net, x)
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    del out
    return net.num_params() * np.dtype(x.dtype).itemsize + x.nbytes + peak
