"""Learning-rate schedules (CS231n notes, "Neural Networks 3", "Annealing the learning rate").

Convention: a schedule is a plain object with ``lr_at(t)``, where ``t`` is the number
of optimizer steps already taken (0 for the first update). Every length a schedule
takes (``step_size``, ``t_max``, ``warmup``) counts the same steps; for per-epoch decay,
multiply epochs by the batches per epoch. ``lr_at(t)`` equals the lr a PyTorch
scheduler reports after ``t`` calls to ``scheduler.step()``.

Before each update, ``schedule.apply(optimizer)`` sets ``optimizer.lr`` to
``lr_at(optimizer.steps)``. Schedules hold no state, so ``config()`` and
``schedule_from_config`` are enough to save and restore them.
"""

from __future__ import annotations

import math
from numbers import Integral
from typing import TYPE_CHECKING, Any

from .errors import ShapeError

if TYPE_CHECKING:
    from .optim import Optimizer

_SCHEDULES: dict[str, type["Schedule"]] = {}


def _check_count(owner: str, name: str, value: Any, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < low:
        raise ShapeError(f"{owner}: {name} must be an int >= {low}, got {value!r}")
    return int(value)


def _check_lr(owner: str, name: str, value: Any) -> float:
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ShapeError(f"{owner}: {name} must be a finite number >= 0, got {value!r}")
    return value


class Schedule:
    """Base class: subclasses implement ``_lr(t)`` and ``config()``."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _SCHEDULES[cls.__name__] = cls

    def lr_at(self, t: int) -> float:
        """The learning rate for the update after t steps have been taken."""
        return self._lr(_check_count(type(self).__name__, "t (steps taken)", t, low=0))

    def apply(self, optimizer: Optimizer) -> float:
        """Set optimizer.lr for its next step and return it."""
        optimizer.lr = self.lr_at(optimizer.steps)
        return optimizer.lr

    def _lr(self, t: int) -> float:
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        return {"type": type(self).__name__}

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "type")
        return f"{type(self).__name__}({inner})"


class Constant(Schedule):
    """lr at every step."""

    def __init__(self, lr: float) -> None:
        self.lr = _check_lr("Constant", "lr", lr)

    def _lr(self, t: int) -> float:
        return self.lr

    def config(self) -> dict[str, Any]:
        return {"type": "Constant", "lr": self.lr}


class StepDecay(Schedule):
    """lr * gamma ** (t // step_size): drop by gamma every step_size steps."""

    def __init__(self, lr: float, step_size: int, gamma: float = 0.1) -> None:
        self.lr = _check_lr("StepDecay", "lr", lr)
        self.step_size = _check_count("StepDecay", "step_size", step_size)
        self.gamma = _check_lr("StepDecay", "gamma", gamma)

    def _lr(self, t: int) -> float:
        return self.lr * self.gamma ** (t // self.step_size)

    def config(self) -> dict[str, Any]:
        return {"type": "StepDecay", "lr": self.lr, "step_size": self.step_size, "gamma": self.gamma}


class CosineAnnealing(Schedule):
    """eta_min + (lr - eta_min) * (1 + cos(pi * t / t_max)) / 2, then eta_min after t_max."""

    def __init__(self, lr: float, t_max: int, eta_min: float = 0.0) -> None:
        self.lr = _check_lr("CosineAnnealing", "lr", lr)
        self.t_max = _check_count("CosineAnnealing", "t_max", t_max)
        self.eta_min = _check_lr("CosineAnnealing", "eta_min", eta_min)

    def _lr(self, t: int) -> float:
        # held at eta_min past t_max (PyTorch's curve would climb back up: a restart nobody asked for)
        t = min(t, self.t_max)
        return self.eta_min + (self.lr - self.eta_min) * (1 + math.cos(math.pi * t / self.t_max)) / 2

    def config(self) -> dict[str, Any]:
        return {"type": "CosineAnnealing", "lr": self.lr, "t_max": self.t_max, "eta_min": self.eta_min}


class LinearWarmup(Schedule):
    """Ramp linearly from start_factor * then.lr_at(0) up to it over warmup steps, then follow then."""

    def __init__(self, then: Schedule, warmup: int, start_factor: float = 0.0) -> None:
        if not isinstance(then, Schedule):
            raise ShapeError(f"LinearWarmup: then must be a Schedule, got {type(then).__name__}")
        self.then = then
        self.warmup = _check_count("LinearWarmup", "warmup", warmup, low=0)
        self.start_factor = _check_lr("LinearWarmup", "start_factor", start_factor)

    def _lr(self, t: int) -> float:
        if t >= self.warmup:
            # the schedule after warmup starts from its own t = 0
            return self.then.lr_at(t - self.warmup)
        factor = self.start_factor + (1 - self.start_factor) * t / self.warmup
        return self.then.lr_at(0) * factor

    def config(self) -> dict[str, Any]:
        return {"type": "LinearWarmup", "then": self.then.config(), "warmup": self.warmup,
                "start_factor": self.start_factor}


def schedule_from_config(config: dict[str, Any]) -> Schedule:
    """Rebuild a schedule from ``schedule.config()``."""
    if not isinstance(config, dict) or config.get("type") not in _SCHEDULES:
        raise ShapeError(f"schedule_from_config: expected a dict with a 'type' in {sorted(_SCHEDULES)}, got {config!r}")
    kwargs = {k: v for k, v in config.items() if k != "type"}
    if "then" in kwargs:
        kwargs["then"] = schedule_from_config(kwargs["then"])
    return _SCHEDULES[config["type"]](**kwargs)
