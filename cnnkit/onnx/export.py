"""cnnkit network -> ONNX graph (inference: batch norm's running statistics, dropout off).

Each layer becomes the ONNX operator of the same definition: Conv (groups, dilation,
padding), MaxPool / AveragePool (ceil_mode from ``rounding='ceil'``), LpPool (p=2),
GlobalAveragePool, LRN, BatchNormalization, Gemm (after a Flatten when the input is a
volume, as FC flattens it), Relu, Dropout, Flatten; Residual is an Add of its two paths
and Concat a Concat along depth. The batch axis is dynamic (``N``). Initializers carry
cnnkit's state_dict names, nodes the layer's path, so ``cnnkit.onnx.load`` gives back the
same network. LocallyConnected2D has no ONNX operator and is refused by name.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import CnnkitError
from ..files import atomic_write
from ..layers import (
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
)
from .errors import OnnxError, require_onnx

DEFAULT_OPSET = 18
INPUT, OUTPUT = "input", "scores"
FLATTEN_SUFFIX = ":flatten"  # the Flatten an FC does itself; load folds it back into the FC

if TYPE_CHECKING:  # onnx is an optional extra, imported when a model is written
    from onnx import ModelProto, NodeProto, TensorProto


class _Graph:
    """Nodes and initializers collected while walking the network."""

    def __init__(self, helper: ModuleType, numpy_helper: ModuleType, opset: int) -> None:
        self.helper, self.numpy_helper, self.opset = helper, numpy_helper, opset
        self.nodes: list[NodeProto] = []
        self.initializers: list[TensorProto] = []
        self._count = 0

    def value(self, path: str, op: str) -> str:
        self._count += 1
        return f"{path or 'net'}/{op}_{self._count}"

    def const(self, name: str, array: np.ndarray) -> str:
        self.initializers.append(self.numpy_helper.from_array(np.asarray(array), name))
        return name

    def node(self, op: str, inputs: list[str], path: str, name: str | None = None, **attrs: Any) -> str:
        out = self.value(path, op)
        self.nodes.append(self.helper.make_node(op, inputs, [out], name=name or f"{path}:{op}", **attrs))
        return out


def _pads(layer: Conv2D | MaxPool2D | AvgPool2D) -> list[int]:
    (ph, pw) = layer.padding
    return [ph, pw, ph, pw]


def _emit(g: _Graph, layer: Layer, x: str, shape: tuple[int, ...], path: str) -> str:
    """Append layer's nodes reading value x (per-sample shape); returns the output value."""
    where = f"layer {path or '(network)'} {layer!r}"
    p = (path + ".") if path else ""
    if isinstance(layer, Sequential):
        for name, child in layer.named_children():
            x = _emit(g, child, x, shape, p + name)
            shape = tuple(child.output_shape(shape))
        return x
    if isinstance(layer, Residual):
        body = _emit(g, layer.body, x, shape, p + "body")
        skip = _emit(g, layer.shortcut, x, shape, p + "shortcut") if layer.shortcut is not None else x
        return g.node("Add", [body, skip], path)
    if isinstance(layer, Concat):
        outs = [_emit(g, b, x, shape, p + n) for n, b in layer.named_children()]
        return g.node("Concat", outs, path, axis=1)
    if isinstance(layer, LocallyConnected2D):
        raise OnnxError(f"{where}: a locally-connected layer has no ONNX operator (ONNX has no "
                        "unshared-weights convolution); replace it with a Conv2D to export")
    params = {k: g.const(p + k, v) for k, v in layer.params.items()}
    if isinstance(layer, Conv2D):
        inputs = [x, params["weight"]] + ([params["bias"]] if "bias" in params else [])
        return g.node("Conv", inputs, path, kernel_shape=list(layer.kernel_size), strides=list(layer.stride),
                      pads=_pads(layer), dilations=list(layer.dilation), group=layer.groups)
    if isinstance(layer, MaxPool2D):
        return g.node("MaxPool", [x], path, kernel_shape=list(layer.kernel_size), strides=list(layer.stride),
                      pads=_pads(layer), ceil_mode=int(layer.rounding == "ceil"))
    if isinstance(layer, AvgPool2D):
        # cnnkit counts the zero padding in the mean but not a ceil window's overhang, as
        # count_include_pad=1 does in onnxruntime and PyTorch
        return g.node("AveragePool", [x], path, kernel_shape=list(layer.kernel_size), strides=list(layer.stride),
                      pads=_pads(layer), count_include_pad=1, ceil_mode=int(layer.rounding == "ceil"))
    if isinstance(layer, L2Pool2D):
        attrs: dict[str, Any] = {"kernel_shape": list(layer.kernel_size), "strides": list(layer.stride), "p": 2}
        if layer.rounding == "ceil":
            if g.opset < 18:
                raise OnnxError(f"{where}: LpPool has ceil_mode from opset 18; export with opset >= 18")
            attrs["ceil_mode"] = 1
        return g.node("LpPool", [x], path, **attrs)
    if isinstance(layer, GlobalAvgPool2D):
        return g.node("GlobalAveragePool", [x], path)
    if isinstance(layer, LRN):
        if layer.size % 2 == 0:
            raise OnnxError(f"{where}: ONNX's LRN centres an even window ({layer.size}) one channel later than "
                            "cnnkit and PyTorch; only odd sizes export exactly")
        return g.node("LRN", [x], path, size=layer.size, alpha=layer.alpha, beta=layer.beta, bias=layer.k)
    if isinstance(layer, BatchNorm2D):
        inputs = [x, params["weight"], params["bias"], g.const(p + "running_mean", layer.buffers["running_mean"]),
                  g.const(p + "running_var", layer.buffers["running_var"])]
        # ONNX's momentum weighs the running value: running = m * running + (1 - m) * batch
        return g.node("BatchNormalization", inputs, path, epsilon=layer.eps, momentum=1.0 - layer.momentum)
    if isinstance(layer, FC):
        if len(shape) != 1:
            x = g.node("Flatten", [x], path, name=f"{path}{FLATTEN_SUFFIX}", axis=1)
        inputs = [x, params["weight"]] + ([params["bias"]] if "bias" in params else [])
        return g.node("Gemm", inputs, path, transB=1)
    if isinstance(layer, Flatten):
        return g.node("Flatten", [x], path, axis=1)
    if isinstance(layer, ReLU):
        return g.node("Relu", [x], path)
    if isinstance(layer, Dropout):
        return g.node("Dropout", [x, g.const(p + "ratio", np.array(layer.p, np.float32))], path)
    raise OnnxError(f"{where}: no ONNX operator for a {type(layer).__name__}")


def to_onnx(net: Layer, input_shape: Sequence[int] | None = None, opset: int = DEFAULT_OPSET) -> ModelProto:
    """The onnx.ModelProto of net, for per-sample input_shape (C, H, W) (default net.input_shape);
    input ``input`` (N, C, H, W) with a dynamic N, output ``scores``. Checked with
    onnx.checker.check_model(full_check=True)."""
    onnx = require_onnx()
    from onnx import helper, numpy_helper

    if input_shape is None:
        input_shape = getattr(net, "input_shape", None)
    if input_shape is None:
        raise OnnxError("export: the network has no input_shape; pass input_shape=(C, H, W)")
    shape = tuple(int(d) for d in input_shape)
    try:
        out_shape = tuple(net.output_shape(shape))
    except CnnkitError as e:
        raise OnnxError(f"export: the network does not take input {shape}: {e}") from None
    if not 11 <= opset <= onnx.defs.onnx_opset_version():
        raise OnnxError(f"export: opset must be 11..{onnx.defs.onnx_opset_version()}, got {opset}")
    dtypes = {v.dtype for v in net.state_dict().values()} or {np.dtype(np.float32)}
    if dtypes != {np.dtype(np.float32)}:
        raise OnnxError(f"export: the network holds {sorted(map(str, dtypes))} arrays; ONNX export is "
                        "float32 (net.astype(np.float32) first)")
    g = _Graph(helper, numpy_helper, opset)
    out = _emit(g, net, INPUT, shape, "")
    g.nodes.append(helper.make_node("Identity", [out], [OUTPUT], name="output"))
    f32 = onnx.TensorProto.FLOAT
    graph = helper.make_graph(
        g.nodes, getattr(net, "name", None) or "cnnkit",
        [helper.make_tensor_value_info(INPUT, f32, ["N", *shape])],
        [helper.make_tensor_value_info(OUTPUT, f32, ["N", *out_shape])], g.initializers)
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="cnnkit",
                              ir_version=helper.find_min_ir_version_for(opsets))
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as e:  # a bug here, not the user's: say which check
        raise OnnxError(f"export: the ONNX graph fails onnx.checker: {str(e).splitlines()[0]}") from None
    return model


def export(net: Layer, path: str | os.PathLike, input_shape: Sequence[int] | None = None,
           opset: int = DEFAULT_OPSET) -> None:
    """Write net as an ONNX file (atomically) for per-sample input_shape (C, H, W).

    Input ``input`` (N, C, H, W) float32 with a dynamic batch N, output ``scores``
    (N, ...); inference semantics (eval mode). The notes' layers map one to one onto ONNX
    operators; see this module's docstring."""
    model = to_onnx(net, input_shape, opset)
    atomic_write(path, model.SerializeToString())
