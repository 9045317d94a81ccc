"""What a spec may ask for, checked before anything is spent.

The notation's own limits (``MAX_SPEC_CHARS``, ``MAX_NUMBER_DIGITS``, ``MAX_DEPTH``,
``MAX_LAYERS``) are checked by the parser, from the text and the parse tree alone:
``[[[RELU]*1000]*1000]*1000`` is refused by counting, never by expanding it. A network's
memory is checked by ``build`` on a dry build of it (``engine(allocate=False)``: shapes
and counts, no weights) against ``memory_limit()``: half the physical memory unless
``CNNKIT_MAX_MEMORY`` (e.g. ``8GB``) or ``build(..., max_bytes=...)`` says otherwise.
"""

from __future__ import annotations

import math
import os
from typing import Any

from .errors import SpecError

#: longest spec text (characters); the zoo's longest, GoogLeNet, has about 3,000
MAX_SPEC_CHARS = 100_000
#: digits of one number in a spec (9: every value below 10^9, so no product of a
#: layer's few numbers overflows what NumPy can index)
MAX_NUMBER_DIGITS = 9
#: nesting of [ ], RES[ ], CAT[ ], SEQ[ ] (the zoo nests 2 deep)
MAX_DEPTH = 64
#: layers a spec may expand to, repeats multiplied out (ResNet-50 has about 180)
MAX_LAYERS = 10_000
#: the environment variable that overrides the memory limit, e.g. CNNKIT_MAX_MEMORY=8GB
MEMORY_ENV = "CNNKIT_MAX_MEMORY"
#: the share of physical memory a network (and one image through it) may take by default
MEMORY_FRACTION = 0.5


class LimitError(SpecError):
    """A spec or network that asks for more than a limit allows; the message gives the figure."""


def memory_limit() -> tuple[int, str]:
    """(bytes, where the figure comes from): CNNKIT_MAX_MEMORY if set, else half the
    physical memory (of 16 GB where the OS does not say)."""
    text = os.environ.get(MEMORY_ENV)
    if text:
        from ..summary.units import SummaryError, parse_bytes  # the units live with the summary

        try:
            return parse_bytes(text), f"{MEMORY_ENV}={text}"
        except SummaryError:
            raise LimitError(f"{MEMORY_ENV}={text!r}: expected a size like 8GB or 512MB", "", 0) from None
    from ..data.bounded import memory_limit as share_of_memory  # one reading of physical memory for cnnkit

    total = share_of_memory(1.0)
    return int(total * MEMORY_FRACTION), f"half of the {_bytes(total)} of physical memory"


def network_cost(net: Any, input_shape: tuple[int, ...], itemsize: int = 4) -> tuple[int, int, int]:
    """(parameter and buffer bytes, one image's forward bytes, parameter count) of a
    network, from its shapes alone (a dry build has them): what building it and running
    one image through it take at least."""
    count = net.num_params()
    stored = sum(math.prod(a.shape) for layer in net.layers() for store in (layer.params, layer.buffers)
                 for a in store.values()) * itemsize
    cost = net.memory_cost(tuple(input_shape), 1, itemsize)
    image = math.prod(input_shape) * itemsize    # the image itself, even before any layer
    return stored, max(cost.infer_peak + cost.workspace, image), count


def check_network(net: Any, input_shape: tuple[int, ...], max_bytes: int | None = None, what: str = "") -> None:
    """Refuse (LimitError, with the figures) a network whose parameters plus one image's
    forward pass exceed max_bytes (default: memory_limit())."""
    if max_bytes is None:
        limit, source = memory_limit()
    else:
        limit, source = int(max_bytes), f"max_bytes={max_bytes}"
    stored, forward, count = network_cost(net, input_shape)
    if stored + forward <= limit:
        return
    head = f"{what}: " if what else ""
    raise LimitError(
        f"{head}this network needs {_bytes(stored + forward)}: {count:,} parameters ({_bytes(stored)} with "
        f"buffers) + {_bytes(forward)} for one image's forward pass, over the limit of {_bytes(limit)} "
        f"({source}); set {MEMORY_ENV} (e.g. {MEMORY_ENV}=64GB) or pass max_bytes= to allow more, or size it "
        "with cnnkit summary, which allocates nothing", "", 0)


def _bytes(b: float) -> str:
    from ..summary.units import human_bytes  # the units live with the summary

    return human_bytes(b)
