"""cnnkit: the CS231n ConvNet notes, made real on NumPy.

The map of the package:

* engine (``cnnkit.layers``): Conv2D, LocallyConnected2D, MaxPool2D, AvgPool2D,
  L2Pool2D, GlobalAvgPool2D, ReLU, Dropout, Flatten, FC, LRN, BatchNorm2D,
  Sequential, Residual, Concat, softmax_loss, svm_loss; ``gradcheck``; ``from_config``.
* how the engine computes (``cnnkit.layers.runtime``, ``cnnkit.layers.kernels``):
  ``engine(threads=2, strategy='reference', ...)`` for a with-block, ``set_num_threads``,
  ``use_reference()`` (the notes' loops, forward and backward).
* the model language (``cnnkit.notation``; ``cnnkit.spec`` is its old name): ``build(spec)``,
  ``to_spec(net)`` (also ``net.spec``), ``lint(spec)``.
* the zoo (``cnnkit.models``): ``models.get(name)``, ``models.names()``.
* the summary (``cnnkit.summary``): the notes' table and memory estimates.
* pictures of filters and activations (``cnnkit.viz``); the live training page (``cnnkit.demo``,
  ``cnnkit demo``).
* interoperability: ``cnnkit.onnx.export`` / ``cnnkit.onnx.load`` (ONNX), ``load_torch_weights``
  / ``save_torch_weights`` (PyTorch and torchvision state dicts, read without torch).
* data-parallel training over MPI (``cnnkit.parallel``; ``mpiexec -n 4 cnnkit train``).
* FC -> CONV (``cnnkit.convert``): ``convolutionalize(net)``, ``slide(net, image)`` (dense evaluation).
* training (``cnnkit.optim``, ``cnnkit.schedules``, ``cnnkit.checkpoint``,
  ``cnnkit.data``, ``cnnkit.train``) and the ``cnnkit`` command (``cnnkit.cli``).
* errors (``cnnkit.errors``): CnnkitError, ShapeError, StateError.
"""

from . import data, models, onnx, train, viz
from .convert import convolutionalize, slide
from .errors import CnnkitError, ShapeError, StateError
from .gradcheck import gradcheck
from .interop import load_torch_weights, save_torch_weights
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
    "build", "to_spec", "lint", "summary", "models", "data", "train", "convolutionalize", "slide", "viz", "onnx",
    "load_torch_weights", "save_torch_weights",
    "CnnkitError", "ShapeError", "StateError", "SpecError",
]
