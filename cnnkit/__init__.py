"""cnnkit: the CS231n ConvNet notes, made real on NumPy.

The map of the package:

* engine (``cnnkit.layers``): Conv2D, LocallyConnected2D, MaxPool2D, AvgPool2D,
  L2Pool2D, GlobalAvgPool2D, ReLU, Dropout, Flatten, FC, LRN, BatchNorm2D,
  Sequential, Residual, Concat, softmax_loss, svm_loss; ``gradcheck``; ``from_config``;
  ``set_num_threads`` (CONV blocks on several threads).
* the model language (``cnnkit.notation``): ``build(spec)``, ``to_spec(net)`` (also
  ``net.spec``), ``lint(spec)``.
* the zoo (``cnnkit.models``): ``models.get(name)``, ``models.names()``.
* the summary (``cnnkit.summary``): the notes' table and memory estimates.
* training (``cnnkit.optim``, ``cnnkit.schedules``, ``cnnkit.checkpoint``,
  ``cnnkit.data``, ``cnnkit.train``) and the ``cnnkit`` command (``cnnkit.cli``).
* errors (``cnnkit.errors``): CnnkitError, ShapeError, StateError.
"""

from . import data, models, train
from .errors import CnnkitError, ShapeError, StateError
from .gradcheck import gradcheck
from .layers import (
    FC,
    LRN,
    AvgPool2D,
    BatchNorm2D,
    Concat,
    Conv2D,
    Dropout,
    Flatten,
    GlobalAvgPool2D,
    L2Pool2D,
    Layer,
    LocallyConnected2D,
    MaxPool2D,
    ReLU,
    Residual,
    Sequential,
    engine,
    from_config,
    get_num_threads,
    manual_seed,
    output_size,
    set_num_threads,
    softmax_loss,
    svm_loss,
    use_reference,
)
from .notation import SpecError, build, lint, to_spec
from .summary import summary

__version__ = "0.1.0"

__all__ = [
    "Layer", "Conv2D", "LocallyConnected2D", "MaxPool2D", "AvgPool2D", "L2Pool2D", "GlobalAvgPool2D",
    "ReLU", "Dropout", "Flatten", "FC", "LRN", "BatchNorm2D", "Sequential", "Residual", "Concat",
    "softmax_loss", "svm_loss", "gradcheck", "from_config", "manual_seed", "output_size",
    "set_num_threads", "get_num_threads", "engine", "use_reference",
    "build", "to_spec", "lint", "summary", "models", "data", "train",
    "CnnkitError", "ShapeError", "StateError", "SpecError",
]
