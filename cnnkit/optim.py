"""Parameter updates (CS231n notes, "Neural Networks 3", section "Parameter updates").

An optimizer holds a network and, per parameter (keyed by its qualified name), the
arrays its rule keeps (velocity, caches, moments). ``step()`` reads
``net.params_and_grads()`` afresh each call and changes every parameter IN PLACE, so
arrays keep their identity; a parameter whose gradient is None is skipped.

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
from .layers.layout import copy_like

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
        for name, p, g in self.net.params_and_grads():
            if g is None:
                continue
            if g.shape != p.shape:
                raise ShapeError(
                    f"{type(self).__name__}: gradient of '{name}' has shape {g.shape}, "
                    f"the parameter has shape {p.shape}"
                )
            if self.weight_decay:
                g = g + self.weight_decay * p  # a new array: the layer's grads stay as backward left them
            self._update(p, g, self.state.setdefault(name, {}))

    def _update(self, p: np.ndarray, g: np.ndarray, state: dict[str, np.ndarray]) -> None:
        raise NotImplementedError

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

    def _update(self, p, g, state):
        if self.momentum:
            v = state.get("velocity")
            if v is None:
                v = state["velocity"] = g.astype(p.dtype, copy=True)  # PyTorch starts v at the first gradient
            else:
                v *= self.momentum
                v += g
            g = g + self.momentum * v if self.nesterov else v
        p -= self.lr * g


class Adagrad(Optimizer):
    """Adagrad: cache += g**2; p -= lr * g / (sqrt(cache) + eps)."""

    hyper_names = ("lr", "eps", "weight_decay")

    def __init__(self, net, lr: float = 0.01, eps: float = 1e-10, weight_decay: float = 0.0) -> None:
        super().__init__(net, lr, weight_decay)
        self.eps = _check_hyper("Adagrad", "eps", eps)

    def _update(self, p, g, state):
        cache = state.setdefault("cache", np.zeros_like(p))
        cache += g * g
        p -= self.lr * g / (np.sqrt(cache) + self.eps)


class RMSProp(Optimizer):
    """RMSProp: cache = alpha*cache + (1-alpha)*g**2; p -= lr * g / (sqrt(cache) + eps).

    alpha is the notes' decay_rate (PyTorch's name kept)."""

    hyper_names = ("lr", "alpha", "eps", "weight_decay")

    def __init__(self, net, lr: float = 0.01, alpha: float = 0.99, eps: float = 1e-8,
                 weight_decay: float = 0.0) -> None:
        super().__init__(net, lr, weight_decay)
        self.alpha = _check_hyper("RMSProp", "alpha", alpha, below=1.0)
        self.eps = _check_hyper("RMSProp", "eps", eps)

    def _update(self, p, g, state):
        cache = state.setdefault("cache", np.zeros_like(p))
        cache *= self.alpha
        cache += (1 - self.alpha) * g * g
        p -= self.lr * g / (np.sqrt(cache) + self.eps)


class Adam(Optimizer):
    """Adam with bias correction: m, v moments; p -= lr * m_hat / (sqrt(v_hat) + eps)."""

    hyper_names = ("lr", "betas", "eps", "weight_decay")

    def __init__(self, net, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0) -> None:
        super().__init__(net, lr, weight_decay)
        if len(betas) != 2:
            raise ShapeError(f"Adam: betas must be a pair (beta1, beta2), got {betas!r}")
        self.betas = tuple(_check_hyper("Adam", f"betas[{i}]", b, below=1.0)
                           for i, b in enumerate(betas))
        self.eps = _check_hyper("Adam", "eps", eps)

    def _update(self, p, g, state):
        beta1, beta2 = self.betas
        m = state.setdefault("m", np.zeros_like(p))
        v = state.setdefault("v", np.zeros_like(p))
        # per-parameter count: a parameter skipped (grad None) keeps its own bias correction
        t = state["step"] = np.asarray(int(state.get("step", 0)) + 1, dtype=np.int64)
        m *= beta1
        m += (1 - beta1) * g
        v *= beta2
        v += (1 - beta2) * g * g
        # PyTorch's arrangement of the bias corrections, so results agree to rounding
        step_size = self.lr / (1 - beta1 ** int(t))
        denom = np.sqrt(v) / math.sqrt(1 - beta2 ** int(t)) + self.eps
        p -= step_size * (m / denom)


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
