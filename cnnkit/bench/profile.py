"""Where one training step's time goes: forward and backward milliseconds per layer.

``profile_step(net, X, y)`` times every layer's forward and backward inside SGD steps (the
fastest step of ``steps``, as the suite takes each side's best), by wrapping each layer
object's ``forward``/``backward`` (and the one-pass ``forward_relu``/``forward_fused``) for a
step and removing the wrappers afterwards. The wrappers are marked as timers, so the
step fuses what it fuses unprofiled (containers._fused_run): a BN -> RELU pass is timed
on the batch norm's row and the ReLU's row shows nothing. A RES or CAT block's row is its
own work (the sum or the join), its branches' time being on their rows; the Python of
nested Sequentials, the loss and the update make the last row. The rows add up to the
profiled step; steps without the wrappers alternate with it, so the timers' overhead shows.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .flops import layer_flops, no_input_grad

OTHER = "(loss, update, Sequential loops)"
#: the layers' one-pass forwards (containers._fused_run calls them), timed as their forward
FUSED_FORWARDS = ("forward_relu", "forward_fused")


@dataclass
class ProfileRow:
    """One layer's forward and backward ms in the profiled step, and its flops."""

    name: str
    kind: str
    out_shape: tuple[int, ...]
    forward_ms: float
    backward_ms: float
    flops: int = 0               # of its forward and backward (CONV and FC layers)

    @property
    def total_ms(self) -> float:
        return self.forward_ms + self.backward_ms


@dataclass
class Profile:
    """Per-layer rows, the profiled step's ms and the fastest unwrapped step's."""

    rows: list[ProfileRow]
    step_ms: float
    unprofiled_ms: float
    batch: int
    steps: int
    spec: str = ""
    notes: dict[str, Any] = field(default_factory=dict)

    def format(self) -> str:
        """The table: layer, type, output, forward, backward, total ms, share of the step, GFLOP/s."""
        width = max([len(r.name) for r in self.rows] + [8])
        lines = [f"one SGD step, batch {self.batch}: {self.step_ms:.2f} ms profiled (the fastest of {self.steps}), "
                 f"{self.unprofiled_ms:.2f} ms without the timers",
                 f"{'layer':<{width}} {'type':<16} {'output':<14} {'fwd ms':>9} {'bwd ms':>9} {'total':>9} "
                 f"{'%step':>6} {'GFLOP/s':>8}"]
        for r in self.rows:
            out = "x".join(map(str, r.out_shape))
            flops = r.flops
            rate = f"{flops / r.total_ms / 1e6:8.1f}" if flops and r.total_ms > 0 else f"{'-':>8}"
            share = 100 * r.total_ms / self.step_ms if self.step_ms else 0.0
            lines.append(f"{r.name:<{width}} {r.kind:<16} {out:<14} {r.forward_ms:>9.2f} {r.backward_ms:>9.2f} "
                         f"{r.total_ms:>9.2f} {share:>6.1f} {rate}")
        if any(r.kind == "ReLU" and r.total_ms == 0 for r in self.rows):
            lines.append("(a ReLU at 0.00 ran inside the one-pass CONV, BN or RES -> RELU of the row before it)")
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return dict(batch=self.batch, steps=self.steps, step_ms=self.step_ms, unprofiled_ms=self.unprofiled_ms,
                    spec=self.spec, rows=[dict(name=r.name, type=r.kind, output=list(r.out_shape),
                                               forward_ms=r.forward_ms, backward_ms=r.backward_ms,
                                               flops=r.flops) for r in self.rows])


class _Timers:
    """Self times per layer object: a call's time minus the timed calls inside it."""

    def __init__(self) -> None:
        self.stack: list[float] = []          # time of the timed calls inside the open ones
        self.step: dict[tuple[int, str], float] = {}

    def wrap(self, layer: Any, method: str, counts_as: str | None = None) -> None:
        """Time layer.method, on the layer's counts_as row (default: method)."""
        inner: Callable[..., Any] = getattr(layer, method)
        key = (id(layer), counts_as or method)

        def timed(*args: Any) -> Any:
            self.stack.append(0.0)
            t0 = time.perf_counter()
            try:
                return inner(*args)
            finally:
                elapsed = time.perf_counter() - t0
                children = self.stack.pop()
                self.step[key] = self.step.get(key, 0.0) + elapsed - children
                if self.stack:
                    self.stack[-1] += elapsed

        timed.timing_only = True  # type: ignore[attr-defined]  # containers._fused_run: still the class's method
        setattr(layer, method, timed)


def profile_step(net: Any, X: np.ndarray, y: np.ndarray, steps: int = 5, warmup: int = 1,
                 lr: float = 1e-3) -> Profile:
    """Profile SGD steps of net on (X (N, C, H, W), y (N,)): the fastest of ``steps``
    timed steps, its forward and backward ms per layer in forward order (the rows add up
    to it). Each profiled step alternates with one without the timers, so both see the
    same machine; the fastest of those is ``unprofiled_ms``."""
    from .cases import train_step_functions
    step = train_step_functions(net, X, y, lr)
    net.train()
    timers = _Timers()
    inner = list({id(layer): layer for layer in net.layers() if layer is not net}.values())   # each object once
    plain, profiled = [], []
    try:
        for _ in range(warmup + steps):
            t0 = time.perf_counter()
            step()
            plain.append(time.perf_counter() - t0)
            for layer in inner:
                timers.wrap(layer, "forward")
                timers.wrap(layer, "backward")
                for one_pass in FUSED_FORWARDS:
                    if hasattr(layer, one_pass):
                        timers.wrap(layer, one_pass, counts_as="forward")
            timers.step = {}
            t0 = time.perf_counter()
            try:
                step()
            finally:
                for layer in inner:   # the class's methods again
                    for method in ("forward", "backward", *FUSED_FORWARDS):
                        vars(layer).pop(method, None)
            profiled.append((time.perf_counter() - t0, timers.step))
    finally:
        timers.step = {}
    total, best = min(profiled[warmup:], key=lambda p: p[0])

    rows, listed, first = [], set(), no_input_grad(net)
    for name, layer, in_shape, out_shape, _ in net.walk(tuple(X.shape[1:])):
        listed.add(id(layer))
        f = layer_flops(layer, in_shape, X.shape[0])
        rows.append(ProfileRow(name, type(layer).__name__, tuple(out_shape), 1e3 * best.get((id(layer), "forward"), 0.0),
                               1e3 * best.get((id(layer), "backward"), 0.0), (2 if layer is first else 3) * f))
    # the rest of the step: the loss, the update and the unlisted containers' Python
    rest = total - sum(v for (i, _), v in best.items() if i in listed)
    rows.append(ProfileRow(OTHER, "-", (), 1e3 * rest, 0.0))
    return Profile(rows, 1e3 * total, 1e3 * min(plain[warmup:]), X.shape[0], steps)
