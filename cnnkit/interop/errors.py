"""The one error the interoperability loaders raise: it names the file and what is wrong."""

from __future__ import annotations

from ..errors import CnnkitError


class WeightsError(CnnkitError, ValueError):
    """A weights file or state dict that cannot be read, written or matched to a network."""
