"""ONNX in and out: ``export(net, path, input_shape)`` and ``load(path)`` (needs cnnkit[onnx]).

    >>> cnnkit.onnx.export(cnnkit.models.get("resnet18"), "resnet18.onnx")
    >>> net = cnnkit.onnx.load("resnet18.onnx")        # a trainable cnnkit network

Inside this package ``import onnx`` is the real ``onnx`` package (imports are absolute).
"""

from .errors import OnnxError
from .export import export, to_onnx
from .load import from_onnx, load

__all__ = ["OnnxError", "export", "from_onnx", "load", "to_onnx"]
