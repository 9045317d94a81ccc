"""cnnkit: the CS231n ConvNet notes, made real on NumPy.

The map of the package:

* engine (``cnnkit.layers``): Conv2D, LocallyConnected2D, MaxPool2D, AvgPool2D,
  L2Pool2D, GlobalAvgPool2D, ReLU, Dropout, Flatten, FC, LRN, BatchNorm2D,
  Sequential, Residual, Concat, softmax_loss, svm_loss; ``gradcheck``.
* errors (``cnnkit.errors``): CnnkitError, ShapeError, StateError.
"""

from .errors import CnnkitError, ShapeError, StateError
from .gradcheck import gradcheck
from .layers import (
    FC, LRN, AvgPool2D, BatchNorm2D, Concat, Conv2D, Dropout, Flatten, GlobalAvgPool2D,
    L2Pool2D, Layer, LocallyConnected2D, MaxPool2D, ReLU, Residual, Sequential, from_config,
    manual_seed, output_size, softmax_loss, svm_loss,
)

__version__ = "0.1.0"

__all__ = [
    "Layer", "Conv2D", "LocallyConnected2D", "MaxPool2D", "AvgPool2D", "L2Pool2D", "GlobalAvgPool2D",
    "ReLU", "Dropout", "Flatten", "FC", "LRN", "BatchNorm2D", "Sequential", "Residual", "Concat",
    "softmax_loss", "svm_loss", "gradcheck", "from_config", "manual_seed", "output_size",
    "CnnkitError", "ShapeError", "StateError",
]
