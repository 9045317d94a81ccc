"""The old name of ``cnnkit.notation`` (the model language), kept so existing imports work."""

from .notation import *  # noqa: F401,F403
from .notation import __all__  # noqa: F401
