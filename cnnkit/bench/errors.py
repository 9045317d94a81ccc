"""The error the suite raises: a bad argument or a network it cannot twin, in one line."""

from ..errors import CnnkitError


class BenchError(CnnkitError, ValueError):
    """A benchmark argument out of range, an unknown section or model, a layer without a
    PyTorch twin."""
