"""What training and inference cost in memory (notes: "Computational Considerations").

The notes' three sources of memory: activations (what forward keeps for backward, and the
gradients and workspace alive at the worst layer), parameters (x (1 + gradient +
optimizer slots)), and the rest (the input batch). Each layer states its own part
(``layer.memory_cost``, next to the code it models, through the same kernel choice);
containers combine their children's; this module adds the sources up and checks the
estimate against tracemalloc.
"""

from __future__ import annotations

import math
import tracemalloc
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import optim
from ..layers import Sequential, engine, release_workspace, softmax_loss
from ..notation import as_input_shape, build
from .units import SummaryError, human_bytes


def net_and_shape(net_or_spec: Any, input_shape: Any = None) -> tuple[Any, tuple[int, ...]]:
    """(network, per-sample input shape) for a network, a zoo name ('vgg16') or a spec string.

    Names and specs are built dry (``engine(allocate=False)``): shapes and counts only, no
    weights, so sizing a net too big to build costs nothing."""
    if isinstance(net_or_spec, str):
        from .. import models  # the zoo builds on the summary's notation, not the reverse
        with engine(allocate=False):
            if models.canonical(net_or_spec) is not None:
                net = models.get(net_or_spec, input_size=input_shape)
            else:
                net = build(net_or_spec, input_shape)
        return net, net.input_shape
    net = net_or_spec
    if input_shape is not None:
        input_shape = as_input_shape(input_shape)
    shape = tuple(input_shape) if input_shape is not None else getattr(net, "input_shape", None)
    if shape is None:
        raise SummaryError("summary: pass input_shape=(C, H, W) (or 'WxHxD') for this network")
    return net, tuple(shape)


def optimizer_slots(optimizer: str) -> int:
    """Arrays the update rule keeps per parameter (sgd 0, momentum 1, adam 2)."""
    try:
        return len(optim.rule(optimizer).slots)
    except Exception:
        raise SummaryError(f"optimizer must be one of {sorted(optim.RULES)}, got {optimizer!r}") from None


@dataclass
class MemoryEstimate:
    """Peak bytes of one training step, by the notes' three sources."""
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
        slots = optimizer_slots(self.optimizer)
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


def training_memory(net_or_spec: Any, input_shape: Any = None, batch: int = 1, optimizer: str = "sgd",
                    dtype: str = "float32") -> MemoryEstimate:
    """Estimated peak bytes of one training step (forward, backward, optimizer update):
    the layers' caches, the worst layer's transient arrays plus the engine's workspace,
    parameters x (1 + gradient + optimizer slots), the input batch and labels."""
    net, shape = net_and_shape(net_or_spec, input_shape)
    e = np.dtype(dtype).itemsize
    optimizer = optimizer.lower()
    slots = optimizer_slots(optimizer)
    P = net.num_params() * e
    cost = net.memory_cost(shape, batch, e)
    update = optim.rule(optimizer).create(net)
    update_tmp = max((update.update_bytes(p.shape, e) for _, p in net.named_parameters()), default=0)
    x = batch * math.prod(shape) * e + batch * 8      # images and int64 labels
    return MemoryEstimate(batch, optimizer, e, activations=cost.cache,
                          workspace=max(cost.train_peak, update_tmp) + cost.workspace,
                          params=P, param_grads=P, slots=slots * P, input=x)


def largest_batch(net_or_spec: Any, budget_bytes: int, input_shape: Any = None, optimizer: str = "sgd",
                  dtype: str = "float32") -> int:
    """The largest batch whose estimated training peak fits in budget_bytes (0 if none)."""
    net, shape = net_and_shape(net_or_spec, input_shape)

    def fits(n: int) -> bool:
        return training_memory(net, shape, n, optimizer, dtype).total <= budget_bytes

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


def measure_training_peak(net: Any, x: np.ndarray, y: np.ndarray, optimizer: str = "sgd",
                          lr: float = 1e-3) -> int:
    """tracemalloc's peak (bytes) over one steady-state training step of net on (x, y):
    forward, softmax loss, backward, optimizer update. A warm-up step runs first so
    gradients and optimizer slots exist, as they do in training; everything alive
    (parameters included) is counted. (An untraced forward and backward before it
    compiles cnnkit[fast]'s loops, whose code is not the step's memory.)"""
    opt = optim.create(optimizer, net, lr=lr)
    net.train()

    def step() -> None:
        out = net.forward(x)
        _, dout = softmax_loss(out, y)
        del out
        net.backward(dout)
        del dout
        opt.step()

    # An untraced forward and backward first compiles what is compiled on first use
    # (cnnkit[fast]'s loops: the library's code, not the step's memory); its gradients
    # go, so that the warm-up step makes them again where they are counted.
    with engine(threads=1):
        out = net.forward(x)
        net.backward(softmax_loss(out, y)[1])
        del out
    for layer in net.layers():
        layer.grads.clear()
    # Trace from the warm-up step on, so arrays it makes and the measured step frees
    # (caches, gradients) are counted exactly; what existed before (parameters, buffers,
    # the batch) is alive throughout and added by hand.
    before = sum(a.nbytes for layer in net.layers() for store in (layer.params, layer.buffers)
                 for a in store.values()) + x.nbytes + y.nbytes
    release_workspace()  # so the step below allocates CONV's scratch where it is counted
    was_tracing = tracemalloc.is_tracing()
    if not was_tracing:
        tracemalloc.start()
    with engine(threads=1):  # the estimate models one thread (one scratch buffer)
        step()
        tracemalloc.reset_peak()
        step()
    peak = tracemalloc.get_traced_memory()[1]
    if not was_tracing:
        tracemalloc.stop()
    return before + peak


def streaming_forward(net: Any, x: np.ndarray) -> np.ndarray:
    """Inference that keeps only the current layer's input and output (the notes'
    test-time trick): eval mode, so no layer caches anything, and each activation is
    dropped as soon as the next one exists."""
    net.eval()
    for layer in net.children() if isinstance(net, Sequential) else [net]:
        x = layer.forward(x)   # rebinding frees the previous activation
    return x


def inference_bound(net: Any, input_shape: Any = None, batch: int = 1, dtype: str = "float32") -> int:
    """What streaming_forward may hold at once, in bytes: parameters + the worst layer's
    input and output (two adjacent activations) + its workspace (padding, im2col blocks),
    + inside RES/CAT blocks the block input (and finished branches) kept for the join."""
    net, shape = net_and_shape(net, input_shape)
    e = np.dtype(dtype).itemsize
    cost = net.memory_cost(shape, batch, e)
    return net.num_params() * e + cost.infer_peak + cost.workspace


def measure_inference_peak(net: Any, x: np.ndarray) -> int:
    """Parameters plus tracemalloc's peak over streaming_forward(net, x), in bytes."""
    net.eval()
    with engine(threads=1):
        streaming_forward(net, x[:1])   # compiles what the loops need first (cnnkit[fast]'s IR text is not the net's)
    release_workspace()  # so CONV's scratch is allocated where it is counted
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    with engine(threads=1):
        out = streaming_forward(net, x)
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    del out
    return net.num_params() * np.dtype(x.dtype).itemsize + x.nbytes + peak
