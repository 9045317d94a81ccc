"""Errors cnnkit raises: each names the layer or file and says what was expected."""


class CnnkitError(Exception):
    """Base class of every error cnnkit raises on purpose."""


class ShapeError(CnnkitError, ValueError):
    """An input, gradient or hyperparameter whose shape does not fit the layer."""


class StateError(CnnkitError, RuntimeError):
    """A call made out of order, e.g. backward before forward."""
