"""The engine: every layer of the notes, each with its forward and backward together.

* the contract (base): Layer, from_config, MemoryCost;
* the layers, by family: conv (Conv2D, LocallyConnected2D), pool, norm (LRN, BatchNorm2D),
  dense (FC, Flatten), activation (ReLU, Dropout), loss, containers (Sequential,
  Residual, Concat);
* the arithmetic they share: geometry (the output-size formula, windows), im2col, layout
  (NCHW / NHWC), init (He initialisation, manual_seed);
* how they compute: kernels (the CONV lowerings and the rule that picks one), reference
  (the notes' loops, forward and backward), runtime (threads, block sizes, strategy:
  ``engine(...)``).
"""

from . import kernels, reference  # noqa: E402  (after the layers: every kernel is registered)
from .activation import Dropout, ReLU
from .base import Layer, LoadResult, MemoryCost, from_config
from .containers import Concat, Residual, Sequential
from .conv import Conv2D, LocallyConnected2D
from .dense import FC, Flatten
from .geometry import format_volume, output_size
from .init import default_rng, manual_seed
from .loss import softmax_loss, svm_loss
from .norm import LRN, BatchNorm2D
from .pool import AvgPool2D, GlobalAvgPool2D, L2Pool2D, MaxPool2D
from .runtime import Options, engine, get_num_threads, release_workspace, set_num_threads, use_reference

__all__ = [
    "Layer", "Conv2D", "LocallyConnected2D", "MaxPool2D", "AvgPool2D", "L2Pool2D", "GlobalAvgPool2D",
    "ReLU", "Dropout", "Flatten", "FC", "LRN", "BatchNorm2D", "Sequential", "Residual", "Concat",
    "softmax_loss", "svm_loss", "from_config", "manual_seed", "default_rng", "output_size",
    "format_volume", "MemoryCost", "LoadResult",
    "set_num_threads", "get_num_threads", "engine", "use_reference", "release_workspace", "Options",
    "kernels", "reference",
]
