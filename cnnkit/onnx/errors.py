"""The error cnnkit.onnx raises: it names the file, node or layer and what was expected."""

from __future__ import annotations

from types import ModuleType

from ..errors import CnnkitError


class OnnxError(CnnkitError, ValueError):
    """An ONNX model cnnkit cannot write or read."""


def require_onnx() -> ModuleType:
    """The real ``onnx`` package, or one OnnxError saying how to install it."""
    try:
        import onnx
    except ImportError:
        raise OnnxError("ONNX export and import need the onnx package: pip install 'cnnkit[onnx]'") from None
    return onnx
