"""Parameter updates (CS231n notes, "Neural Networks 3", section "Parameter updates").

An optimizer holds a network and, per parameter (keyed by its qualified name), the
arrays its rule keeps (velocity, caches, moments). ``step()`` reads
``net.params_and_grads()`` afresh each call and changes every parameter IN PLACE, so
arrays keep their identity; a parameter whose gradient is None is skipped.

The update runs in cache-sized chunks of each parameter's rows, shared between the
engine's threads, so a rule's temporaries (``lr * g``, ``g * g``) stay one chunk large.
Adam's dozen operations per chunk run as one compiled pass where numba is installed
(cnnkit[fast]): the same operations in the same order, so the same numbers.

The rules follow ``torch.optim`` exactly, including where weight decay enters: L2 decay
adds ``weight_decay * p`` to the gradient before the rule sees it.

``state_dict()`` gives ``(arrays, hyper)``: arrays named ``"<param name>.<slot>"``
(slot names have no dots, so the split on the last dot is unambiguous) and plain JSON
data with the optimizer type, its hyperparameters and the step count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import CnnkitError, ShapeError, StateError
from .layers.kernels import compiled
from .layers.layout import copy_like
from .layers.runtime import runtime

_OPTIMIZERS: dict[str, type["Optimizer"]] = {}


def _check_hyper(owner: str, name: str, value: float, below: float = math.inf) -> float:
    """A finite float >= 0 (and < below, for decay rates that must stay under 1)."""
    value = float(value)
    if not (math.isfinite(value) and 0 <= value and value < below):
        bound = "a finite number >= 0" if below == math.inf else f"in [0, {below})"
        raise ShapeError(f"{owner}: {name} must be {bound}, got {value!r}")
    return value


class Optimizer:
    """Base class: subclasses name their hyperparameters and implement ``_update``."""

    hyper_names: tuple[str, ...] = ("lr", "weight_decay")
    #: chunk-sized temporaries the rule's _update holds at once (lr * g, sqrt(cache), ...)
    rule_temporaries = 1

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _OPTIMIZERS[cls.__name__] = cls

    def __init__(self, net, lr: float, weight_decay: float = 0.0) -> None:
        if not hasattr(net, "params_and_grads"):
            raise StateError(
                f"{type(self).__name__}: expected a network with params_and_grads(), "
                f"got {type(net).__name__}"
            )
        self.net = net
        self.lr = _check_hyper(type(self).__name__, "lr", lr)
        self.weight_decay = _check_hyper(type(self).__name__, "weight_decay", weight_decay)
        self.steps = 0  # completed step() calls; schedules read it
        self.state: dict[str, dict[str, np.ndarray]] = {}

    def step(self) -> None:
        """Apply one update to every parameter that has a gradient."""
        self.steps += 1
        work: list[tuple[Any, ...]] = []
        for name, p, g in self.net.params_and_grads():
            if g is None:
                continue
            if g.shape != p.shape:
                raise ShapeError(
                    f"{type(self).__name__}: gradient of '{name}' has shape {g.shape}, "
                    f"the parameter has shape {p.shape}"
                )
            state = self.state.setdefault(name, {})
            for slot in self.slots():
                if slot not in state:
                    state[slot] = np.zeros_like(p)      # in p's memory order (order='K')
            counts = self._count(state)
            slots = {s: state[s] for s in self.slots()}
            work += [(p, g, slots, counts, rows) for rows in _chunks(p)]
        # The rule's temporaries (lr * g, g * g, ...) are one chunk's size, not the
        # parameter's (a VGG FC weight is 411 MB, a chunk stays in cache); the engine's
        # threads share the chunks.
        runtime.run_shares(self._update_chunks, work)

    def _update_chunks(self, work: list[tuple[Any, ...]]) -> None:
        for p, g, slots, counts, rows in work:
            if self._update_compiled(p[rows], g[rows], {s: a[rows] for s, a in slots.items()}, counts):
                continue
            g_rows = g[rows]
            if self.weight_decay:
                g_rows = g_rows + self.weight_decay * p[rows]   # the layer's grads stay as backward left them
            self._update(p[rows], g_rows, {s: a[rows] for s, a in slots.items()}, counts)

    def slots(self) -> tuple[str, ...]:
        """The arrays this rule keeps per parameter, each shaped like it (zeros at first)."""
        return ()

    def chunk_temporaries(self) -> int:
        """The most chunk-sized temporaries the update holds at once (the memory model's
        figure): the rule's own, and weight decay's g + weight_decay * p."""
        return self.rule_temporaries + (1 if self.weight_decay else 0)

    def update_bytes(self, shape: tuple[int, ...], itemsize: int) -> int:
        """Bytes of the temporaries an update of a parameter of this shape holds at its worst."""
        return self.chunk_temporaries() * chunk_bytes(shape, itemsize)

    def _count(self, state: dict[str, np.ndarray]) -> Any:
        """Once per parameter and step, before its chunks: the rule's per-step scalars."""
        return None

    def _update(self, p: np.ndarray, g: np.ndarray, slots: dict[str, np.ndarray], counts: Any) -> None:
        """The rule on one chunk of rows: p, g and the slots are views, changed in place."""
        raise NotImplementedError

    def _update_compiled(self, p: np.ndarray, g: np.ndarray, slots: dict[str, np.ndarray], counts: Any) -> bool:
        """The rule (weight decay included) on one chunk by a compiled loop, if this rule
        has one and it runs (cnnkit[fast]); False: _update's NumPy operations do it."""
        return False

    def hyperparameters(self) -> dict[str, Any]:
        """The constructor's hyperparameters as plain JSON data."""
        out = {}
        for k in self.hyper_names:
            v = getattr(self, k)
            out[k] = list(v) if isinstance(v, tuple) else v
        return out

    def state_dict(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """(arrays by "<param>.<slot>", plain data: type, hyperparameters, steps)."""
        arrays = {f"{name}.{slot}": arr for name, slots in self.state.items() for slot, arr in slots.items()}
        hyper = {"type": type(self).__name__, **self.hyperparameters(), "steps": self.steps}
        return arrays, hyper

    def load_state_dict(self, arrays: dict[str, np.ndarray], hyper: dict[str, Any]) -> None:
        """Restore what state_dict() returned, checking names and shapes against the net."""
        owner = type(self).__name__
        if hyper.get("type", owner) != owner:
            raise StateError(f"{owner}.load_state_dict: the state is for a {hyper['type']}, not a {owner}")
        params = {name: p for name, p, _ in self.net.params_and_grads()}
        state: dict[str, dict[str, np.ndarray]] = {}
        for key, value in arrays.items():
            name, _, slot = key.rpartition(".")
            if name not in params:
                raise StateError(f"{owner}.load_state_dict: '{key}' is for a parameter '{name}' the network lacks")
            p = params[name]
            value = np.asarray(value)
            # per-parameter counters (Adam's 'step') are scalars; moments match the parameter
            if value.ndim and value.shape != p.shape:
                raise ShapeError(f"{owner}.load_state_dict: '{key}' has shape {value.shape}, expected {p.shape}")
            dtype = p.dtype if value.ndim else value.dtype
            state.setdefault(name, {})[slot] = copy_like(p, value) if value.ndim else value.astype(dtype, copy=True)
        for k in self.hyper_names:
            if k in hyper:
                v = hyper[k]
                setattr(self, k, tuple(v) if isinstance(getattr(self, k), tuple) else v)
        self.steps = int(hyper.get("steps", 0))
        self.state = state

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self.hyperparameters().items())
        return f"{type(self).__name__}({inner})"


#: bytes of one parameter's rows per update chunk: well inside L2, large enough that the
#: NumPy calls per chunk cost little
CHUNK_BYTES = 1 << 20


def _chunk_rows(shape: tuple[int, ...], itemsize: int) -> int:
    row_bytes = math.prod(shape[1:]) * itemsize
    return max(1, CHUNK_BYTES // max(1, row_bytes))


def _flat(a: np.ndarray) -> np.ndarray | None:
    """a as a 1-D view in its memory order (channels-last filters included), or None if
    its memory has gaps; arrays of equal strides line up element by element."""
    order = sorted(range(a.ndim), key=lambda axis: -abs(a.strides[axis]))
    t = a.transpose(order)
    return t.reshape(-1) if t.flags.c_contiguous and a.flags.writeable else None


def _layout(a: np.ndarray) -> tuple[int, ...]:
    """The strides that matter: those of axes longer than 1 (a 1x1 filter's are arbitrary)."""
    return tuple(stride for stride, n in zip(a.strides, a.shape) if n > 1)


def _chunks(p: np.ndarray) -> list[Any]:
    """Slices of p's first axis of about CHUNK_BYTES each (a view in any memory order)."""
    if p.ndim == 0:
        return [...]
    rows = _chunk_rows(p.shape, p.itemsize)
    return [slice(i, i + rows) for i in range(0, len(p), rows)]


def chunk_bytes(shape: tuple[int, ...], itemsize: int) -> int:
    """Bytes of the largest update chunk of a parameter of this shape."""
    rows = min(shape[0], _chunk_rows(shape, itemsize)) if shape else 1
    return rows * math.prod(shape[1:]) * itemsize


class SGD(Optimizer):
    """Vanilla, momentum (v = mu*v + g; p -= lr*v) or Nesterov (p -= lr*(g + mu*v)) SGD."""

    hyper_names = ("lr", "momentum", "nesterov", "weight_decay")

    def __init__(self, net, lr: float = 0.01, momentum: float = 0.0, nesterov: bool = False,
                 weight_decay: float = 0.0) -> None:
        super().__init__(net, lr, weight_decay)
        self.momentum = _check_hyper("SGD", "momentum", momentum)
        self.nesterov = bool(nesterov)
        if self.nesterov and self.momentum == 0:
            raise ShapeError("SGD: nesterov=True needs momentum > 0")

    def slots(self):
        return ("velocity",) if self.momentum else ()

    def chunk_temporaries(self):
        return super().chunk_temporaries() + (1 if self.nesterov else 0)    # g + mu * v

    def _update(self, p, g, slots, counts):
        if self.momentum:
            v = slots["velocity"]
            v *= self.momentum     # from zeros: the first step's v is g exactly, as PyTorch starts it
            v += g
            g = g + self.momentum * v if self.nesterov else v
        p -= self.lr * g


class Adagrad(Optimizer):
    """Adagrad: cache += g**2; p -= lr * g / (sqrt(cache) + eps)."""

    hyper_names = ("lr", "eps", "weight_decay")
    rule_temporaries = 3

    def __init__(self, net, lr: float = 0.01, eps: float = 1e-10, weight_decay: float = 0.0) -> None:
        super().__init__(net, lr, weight_decay)
        self.eps = _check_hyper("Adagrad", "eps", eps)

    def slots(self):
        return ("cache",)

    def _update(self, p, g, slots, counts):
        cache = slots["cache"]
        cache += g * g
        p -= self.lr * g / (np.sqrt(cache) + self.eps)


class RMSProp(Optimizer):
    """RMSProp: cache = alpha*cache + (1-alpha)*g**2; p -= lr * g / (sqrt(cache) + eps).

    alpha is the notes' decay_rate (PyTorch's name kept)."""

    hyper_names = ("lr", "alpha", "eps", "weight_decay")
    rule_temporaries = 3

    def __init__(self, net, lr: float = 0.01, alpha: float = 0.99, eps: float = 1e-8,
                 weight_decay: float = 0.0) -> None:
        super().__init__(net, lr, weight_decay)
        self.alpha = _check_hyper("RMSProp", "alpha", alpha, below=1.0)
        self.eps = _check_hyper("RMSProp", "eps", eps)

    def slots(self):
        return ("cache",)

    def _update(self, p, g, slots, counts):
        cache = slots["cache"]
        cache *= self.alpha
        cache += (1 - self.alpha) * g * g
        p -= self.lr * g / (np.sqrt(cache) + self.eps)


class Adam(Optimizer):
    """Adam with bias correction: m, v moments; p -= lr * m_hat / (sqrt(v_hat) + eps)."""

    hyper_names = ("lr", "betas", "eps", "weight_decay")
    rule_temporaries = 3

    def __init__(self, net, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0) -> None:
        super().__init__(net, lr, weight_decay)
        if len(betas) != 2:
            raise ShapeError(f"Adam: betas must be a pair (beta1, beta2), got {betas!r}")
        self.betas = tuple(_check_hyper("Adam", f"betas[{i}]", b, below=1.0)
                           for i, b in enumerate(betas))
        self.eps = _check_hyper("Adam", "eps", eps)

    def slots(self):
        return ("m", "v")

    def _count(self, state):
        # per-parameter count: a parameter skipped (grad None) keeps its own bias correction
        t = int(state.get("step", 0)) + 1
        state["step"] = np.asarray(t, dtype=np.int64)
        # PyTorch's arrangement of the bias corrections, so results agree to rounding
        beta1, beta2 = self.betas
        return self.lr / (1 - beta1 ** t), math.sqrt(1 - beta2 ** t)

    def _update(self, p, g, slots, counts):
        beta1, beta2 = self.betas
        step_size, v_correction = counts
        m, v = slots["m"], slots["v"]
        m *= beta1
        m += (1 - beta1) * g
        v *= beta2
        v += (1 - beta2) * g * g
        denom = np.sqrt(v) / v_correction + self.eps
        p -= step_size * (m / denom)

    def _update_compiled(self, p, g, slots, counts):
        loops = compiled.loops()
        arrays = (p, g, slots["m"], slots["v"])
        flat = [_flat(a) for a in arrays]
        if loops is None or any(f is None for f in flat) or len({_layout(a) for a in arrays}) > 1:
            return False
        one = p.dtype.type
        beta1, beta2 = self.betas
        step_size, v_correction = counts
        loops.adam(*flat, one(beta1), one(beta2), one(1 - beta1), one(1 - beta2), one(step_size), one(v_correction),
                   one(self.eps), one(self.weight_decay))
        return True


def optimizer_from_state(net, arrays: dict[str, np.ndarray], hyper: dict[str, Any]) -> Optimizer:
    """Build the optimizer that state_dict() described, for net, with its state restored."""
    kind = hyper.get("type") if isinstance(hyper, dict) else None
    if kind not in _OPTIMIZERS:
        raise StateError(f"optimizer_from_state: unknown optimizer type {kind!r}; known: {sorted(_OPTIMIZERS)}")
    cls = _OPTIMIZERS[kind]
    kwargs = {k: hyper[k] for k in cls.hyper_names if k in hyper}
    opt = cls(net, **kwargs)
    opt.load_state_dict(arrays, hyper)
    return opt


# --- the update rules by name: what the trainer, the CLI and the summary offer ------------------


@dataclass(frozen=True)
class UpdateRule:
    """An update rule as users name it ('momentum'): the optimizer class with the settings
    that make it that rule, its default learning rate and the arrays it keeps per
    parameter (the notes' "x3 or more" parameter memory)."""

    name: str
    optimizer: type[Optimizer]
    lr: float
    slots: tuple[str, ...]
    settings: dict[str, Any] = field(default_factory=dict)
    uses_momentum: bool = False

    def create(self, net: Any, lr: float | None = None, momentum: float = 0.9,
               weight_decay: float = 0.0) -> Optimizer:
        """This rule's optimizer for net (momentum only where the rule has one)."""
        kwargs = dict(self.settings, lr=self.lr if lr is None else lr, weight_decay=weight_decay)
        if self.uses_momentum:
            kwargs["momentum"] = momentum
        return self.optimizer(net, **kwargs)


RULES: dict[str, UpdateRule] = {rule.name: rule for rule in (
    UpdateRule("sgd", SGD, lr=0.01, slots=()),
    UpdateRule("momentum", SGD, lr=0.01, slots=("velocity",), uses_momentum=True),
    UpdateRule("nesterov", SGD, lr=0.01, slots=("velocity",), settings={"nesterov": True}, uses_momentum=True),
    UpdateRule("adagrad", Adagrad, lr=0.01, slots=("cache",)),
    UpdateRule("rmsprop", RMSProp, lr=1e-3, slots=("cache",)),
    UpdateRule("adam", Adam, lr=1e-3, slots=("m", "v")),
)}


def rule(name: str) -> UpdateRule:
    """The update rule called name ('sgd', 'momentum', 'nesterov', 'adagrad', 'rmsprop', 'adam')."""
    key = str(name).lower()
    if key not in RULES:
        raise CnnkitError(f"unknown optimizer {name!r}; choose one of {', '.join(RULES)}")
    return RULES[key]


def create(name: str, net: Any, lr: float | None = None, momentum: float = 0.9,
           weight_decay: float = 0.0) -> Optimizer:
    """An optimizer by rule name: ``optim.create('momentum', net, lr=0.01)``."""
    return rule(name).create(net, lr, momentum, weight_decay)
