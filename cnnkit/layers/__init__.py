"""The engine: every layer of the notes, each with its forward and backward together."""

from .activation import Dropout, ReLU
from .base import Layer, default_rng, from_config, manual_seed
from .containers import Concat, Residual, Sequential
from .conv import Conv2D, LocallyConnected2D
from .dense import FC, Flatten
from .loss import softmax_loss, svm_loss
from .norm import LRN, BatchNorm2D
from .pool import AvgPool2D, GlobalAvgPool2D, L2Pool2D, MaxPool2D
from .threads import get_num_threads, set_num_threads
from .windows import output_size

__all__ = [
    "Layer", "Conv2D", "LocallyConnected2D", "MaxPool2D", "AvgPool2D", "L2Pool2D", "GlobalAvgPool2D",
    "ReLU", "Dropout", "Flatten", "FC", "LRN", "BatchNorm2D", "Sequential", "Residual", "Concat",
    "softmax_loss", "svm_loss", "from_config", "manual_seed", "default_rng", "output_size",
    "set_num_threads", "get_num_threads",
]
