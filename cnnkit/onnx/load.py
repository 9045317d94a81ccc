"""ONNX graph -> trainable cnnkit network (Sequential / Residual / Concat).

The operators of ``export.py`` map back onto cnnkit layers. The graph's data flow must be
what cnnkit's containers express: a chain, where a value that fans out is joined again by
one Add (-> Residual: body, shortcut) or Concat along depth (-> Concat, one branch per
input). Shape-only helper nodes (Constant, Identity, Shape, Gather, Unsqueeze, Squeeze,
Concat, Slice, Cast on shapes, e.g. ``x.view(x.size(0), -1)`` as PyTorch exports it) are
evaluated with the batch kept symbolic; a Reshape to (N, -1) then becomes Flatten, and one
that keeps the shape disappears. Every operator cnnkit has no layer for is listed, with
its node name, in one error. Nothing in an ONNX file runs code (it is a protobuf).
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any, NoReturn

import numpy as np

from ..errors import CnnkitError
from ..interop.files import read_bytes
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
    MaxPool2D,
    ReLU,
    Residual,
    Sequential,
)
from ..layers.layout import copy_like
from .errors import OnnxError, require_onnx
from .export import FLATTEN_SUFFIX

LAYER_OPS = {"Conv", "MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "LRN", "BatchNormalization",
             "Gemm", "Relu", "Dropout", "Flatten", "Reshape", "Identity", "Add", "Concat"}
LAYER_OPS.add("ReduceMean")
SHAPE_OPS = {"Constant", "Identity", "Shape", "Gather", "Unsqueeze", "Squeeze", "Concat", "Slice", "Cast",
             "Reshape"}
BATCH = "N"  # the symbolic batch size inside folded shapes

if TYPE_CHECKING:  # onnx is an optional extra, imported when a model is read
    from onnx import ModelProto, NodeProto, TensorProto


def _decimal(value: float | np.ndarray) -> float:
    """A float32 from the file as the shortest decimal that rounds to it (1e-4, not 9.9999997e-05)."""
    return float(str(np.float32(value)))


def _describe(node: NodeProto) -> str:
    return f"{node.op_type} (node {node.name or node.output[0]!r})"


class _Folder:
    """Constant values of the graph: initializers, Constant nodes and shape arithmetic.

    Shapes stay object arrays whose batch entry is the string 'N'."""

    def __init__(self, model: ModelProto, onnx: ModuleType, numpy_helper: ModuleType, path: str) -> None:
        self.onnx, self.nh, self.path = onnx, numpy_helper, path
        self.values: dict[str, np.ndarray] = {}
        for t in model.graph.initializer:
            self.values[t.name] = self._array(t)
        self.shapes: dict[str, list[int | str]] = {}  # value -> full shape with 'N' (from shape inference)

    def _array(self, tensor: TensorProto) -> np.ndarray:
        if tensor.data_location == self.onnx.TensorProto.EXTERNAL:
            raise OnnxError(f"{self.path}: tensor {tensor.name!r} keeps its data in an external file; "
                            "cnnkit reads only self-contained ONNX files (save with external data off)")
        try:
            return self.nh.to_array(tensor)
        except Exception as e:  # noqa: BLE001 - a corrupt tensor fails in many ways (dims vs size, type)
            raise OnnxError(f"{self.path}: tensor {tensor.name!r} is corrupt: {e}") from None

    def attr(self, node: NodeProto, name: str, default: Any = None) -> Any:
        """The value of node's attribute name (a str, an array for a tensor, ...), or default."""
        for a in node.attribute:
            if a.name == name:
                value = self.onnx.helper.get_attribute_value(a)
                if isinstance(value, bytes):
                    return value.decode()
                if a.type == self.onnx.AttributeProto.TENSOR:
                    return self._array(value)
                if a.type == self.onnx.AttributeProto.FLOAT:
                    return _decimal(value)
                return value
        return default

    def known(self, name: str) -> bool:
        return name == "" or name in self.values

    def fold(self, node: NodeProto) -> bool:
        """Evaluate node if all its inputs are constant (Shape: if its input's shape is known)."""
        op, ins = node.op_type, list(node.input)
        if op == "Shape":
            if ins[0] not in self.shapes:
                return False
            shape = self.shapes[ins[0]]
            start, end = self.attr(node, "start", 0), self.attr(node, "end", len(shape))
            self.values[node.output[0]] = np.array(shape[start:end], dtype=object)
            return True
        if op not in SHAPE_OPS or not all(self.known(i) for i in ins) or op == "Reshape":
            return False
        v = [self.values.get(i) for i in ins]  # None: an optional input left out ("")

        def need(k: int) -> np.ndarray:
            value = v[k] if k < len(v) else None
            if value is None:
                raise OnnxError(f"{self.path}: {_describe(node)}: its input {k} is missing")
            return value

        out: Any  # an array, or a scalar from Gather / Slice arithmetic
        if op == "Constant":
            out = self._constant(node)
        elif op in ("Identity", "Cast"):
            out = v[0]
        elif op == "Gather":
            out = np.take(need(0), need(1).astype(np.int64), axis=self.attr(node, "axis", 0))
        elif op in ("Unsqueeze", "Squeeze"):
            axes = v[1] if len(v) > 1 and v[1] is not None else self.attr(node, "axes")
            if op == "Unsqueeze":
                out = need(0)
                for a in sorted(int(x) % (np.ndim(out) + len(axes)) for x in axes):
                    out = np.expand_dims(out, a)
            else:
                out = np.squeeze(need(0), axis=None if axes is None else tuple(int(a) for a in axes))
        elif op == "Concat":
            out = np.concatenate([np.atleast_1d(need(k)).astype(object) for k in range(len(v))],
                                 axis=self.attr(node, "axis", 0))
        elif op == "Slice":
            starts, ends = (need(1), need(2)) if len(v) > 2 else (self.attr(node, "starts"), self.attr(node, "ends"))
            axes = v[3] if len(v) > 3 and v[3] is not None else self.attr(node, "axes", list(range(len(starts))))
            steps = v[4] if len(v) > 4 and v[4] is not None else [1] * len(starts)
            data = need(0)
            index = [slice(None)] * np.ndim(data)
            for s, e, a, st in zip(starts, ends, axes, steps):
                index[int(a)] = slice(int(s), int(min(max(e, -2**62), 2**62)), int(st))
            out = data[tuple(index)]
        else:
            return False
        self.values[node.output[0]] = np.asarray(out)
        return True

    def _constant(self, node: NodeProto) -> np.ndarray:
        for key in ("value", "value_float", "value_floats", "value_int", "value_ints"):
            value = self.attr(node, key)
            if value is not None:
                return np.asarray(value)
        raise OnnxError(f"{self.path}: {_describe(node)}: only tensor, float and int constants are read")


def _infer_shapes(model: ModelProto, onnx: ModuleType) -> dict[str, list[int | str]]:
    """value -> full shape ('N' for the batch / any symbolic dim) from ONNX shape inference."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - shapes are a help here (Shape folding), not a requirement
        return {}
    shapes: dict[str, list[int | str]] = {}
    for vi in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        t = vi.type.tensor_type
        if t.HasField("shape"):
            shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else BATCH for d in t.shape.dim]
    return shapes


def _one(layers: list[Layer]) -> Layer:
    """A path as the model language builds it: one layer stands alone, more form a Sequential."""
    return layers[0] if len(layers) == 1 else Sequential(*layers)


class _Builder:
    """Turns the data nodes into cnnkit layers, following the graph from its input."""

    def __init__(self, nodes: list[NodeProto], folder: _Folder, path: str) -> None:
        self.folder, self.path = folder, path
        self.nodes = nodes
        self.pos = {id(n): i for i, n in enumerate(nodes)}
        self.producer = {o: n for n in nodes for o in n.output}
        self.consumers: dict[str, list[NodeProto]] = {}
        for n in nodes:
            for i in self._data_inputs(n):
                self.consumers.setdefault(i, []).append(n)
        self.shapes: dict[str, tuple[int, ...]] = {}

    def _data_inputs(self, node: NodeProto) -> list[str]:
        return [i for i in node.input if i and not self.folder.known(i)]

    def fail(self, node: NodeProto, why: str) -> NoReturn:
        raise OnnxError(f"{self.path}: {_describe(node)}: {why}")

    def const(self, node: NodeProto, name: str, what: str) -> np.ndarray:
        if not self.folder.known(name) or name == "":
            self.fail(node, f"{what} must be a constant (an initializer), got the computed value {name!r}")
        return np.asarray(self.folder.values[name])

    # --- structure ----------------------------------------------------------
    def walk(self, cur: str, end: str, first: NodeProto | None = None) -> list[Layer]:
        """The layers from value cur to value end (first: the one consumer of cur to follow)."""
        layers: list[Layer] = []
        while cur != end:
            cs = [first] if first is not None else self.consumers.get(cur, [])
            first = None
            if not cs:
                raise OnnxError(f"{self.path}: value {cur!r} leads nowhere (it is not used and is not the output)")
            node = cs[0]
            if len(cs) == 1 and len(self._data_inputs(node)) == 1:
                made, out = self.layer(node, cur), node.output[0]
                shape = self.shapes[cur]
                for layer in made if isinstance(made, list) else [made] if made is not None else []:
                    layers.append(layer)
                    shape = tuple(layer.output_shape(shape))
                self.shapes[out], cur = shape, out
                continue
            join = self.join(cur, cs)
            branches: list[list[Layer]] = []
            for u in self._data_inputs(join):
                if u == cur:
                    branches.append([])
                    continue
                above = self.ancestors(u, cur)
                starts = [c for c in cs if id(c) in above]
                if len(starts) != 1:
                    self.fail(join, f"its input {u!r} is not a single path from {cur!r}; cnnkit joins "
                                    "only paths that split at one value (Residual, Concat)")
                branches.append(self.walk(cur, u, starts[0]))
            layers.append(self.joined(join, branches, cur))
            self.shapes[join.output[0]] = tuple(layers[-1].output_shape(self.shapes[cur]))
            cur = join.output[0]
        return layers

    def join(self, cur: str, cs: list[NodeProto]) -> NodeProto:
        """The first node where every path leaving cur meets again (its immediate post-dominator)."""
        pending = Counter(id(c) for c in cs)
        open_edges = len(cs)
        for node in self.nodes[min(self.pos[id(c)] for c in cs):]:
            if pending[id(node)] == 0:
                continue
            open_edges -= pending[id(node)]
            if open_edges == 0:
                if node.op_type not in ("Add", "Concat"):
                    self.fail(node, f"the paths leaving {cur!r} meet here; cnnkit joins them only with Add or Concat")
                return node
            for c in self.consumers.get(node.output[0], []):
                pending[id(c)] += 1
                open_edges += 1
        raise OnnxError(f"{self.path}: the paths leaving value {cur!r} never meet again; cnnkit networks "
                        "have one output")

    def ancestors(self, value: str, stop: str) -> set[int]:
        seen: set[int] = set()
        todo = [value]
        while todo:
            v = todo.pop()
            if v == stop or v not in self.producer:
                continue
            n = self.producer[v]
            if id(n) not in seen:
                seen.add(id(n))
                todo.extend(self._data_inputs(n))
        return seen

    def joined(self, node: NodeProto, branches: list[list[Layer]], cur: str) -> Layer:
        if node.op_type == "Add":
            if len(branches) != 2 or not any(branches):
                self.fail(node, "expected the sum of two paths, at least one of them with layers")
            body, skip = branches if branches[0] else branches[::-1]
            return Residual(_one(body), _one(skip) if skip else None)
        axis = self.folder.attr(node, "axis")
        if axis not in (1, -3):
            self.fail(node, f"cnnkit concatenates along depth (axis 1), got axis {axis}")
        return Concat(*[_one(b) for b in branches])

    # --- one node, one layer -----------------------------------------------------
    def layer(self, node: NodeProto, x: str) -> Layer | list[Layer] | None:
        """The cnnkit layer for a single-input data node (None: the node changes nothing)."""
        shape = self.shapes[x]
        op = node.op_type

        def attr(key: str, default: Any = None) -> Any:
            return self.folder.attr(node, key, default)
        try:
            if op in ("Identity",):
                return None
            if op == "Relu":
                return ReLU()
            if op == "Dropout":
                return self._dropout(node)
            if op == "GlobalAveragePool":
                return GlobalAvgPool2D()
            if op == "ReduceMean":
                return self._reduce_mean(node, shape)
            if op == "Flatten":
                if attr("axis", 1) != 1:
                    self.fail(node, f"cnnkit flattens after the batch axis (axis 1), got axis {attr('axis')}")
                nxt = self.consumers.get(node.output[0], [])
                if len(nxt) == 1 and nxt[0].op_type == "Gemm" and node.name == nxt[0].name.rsplit(":", 1)[0] + FLATTEN_SUFFIX:
                    return None  # the flattening an FC does itself (see export)
                return Flatten()
            if op == "Reshape":
                return self._reshape(node, shape)
            if op == "Conv":
                return self._conv(node, shape)
            if op in ("MaxPool", "AveragePool", "LpPool"):
                return self._pool(node, shape)
            if op == "LRN":
                size = attr("size")
                if size % 2 == 0:
                    self.fail(node, f"an even LRN size ({size}) centres its window differently from cnnkit's")
                return LRN(size, attr("alpha", 1e-4), attr("beta", 0.75), attr("bias", 1.0))
            if op == "BatchNormalization":
                return self._batch_norm(node, shape)
            if op == "Gemm":
                return self._gemm(node, shape)
        except CnnkitError as e:
            if isinstance(e, OnnxError):
                raise
            raise OnnxError(f"{self.path}: {_describe(node)}: {e}") from None
        self.fail(node, "cnnkit has no layer for it")

    def _reduce_mean(self, node: NodeProto, shape: tuple[int, ...]) -> Layer | list[Layer]:
        """A mean over H and W is global average pooling (PyTorch's dynamo exporter writes it so)."""
        ins = list(node.input)
        axes = self.const(node, ins[1], "the axes") if len(ins) > 1 and ins[1] else self.folder.attr(node, "axes")
        rank = len(shape) + 1
        if axes is None or len(shape) != 3 or sorted(int(a) % rank for a in np.ravel(axes)) != [2, 3]:
            self.fail(node, f"cnnkit averages over H and W only (axes 2, 3), got axes {axes}")
        if self.folder.attr(node, "keepdims", 1):
            return GlobalAvgPool2D()
        return [GlobalAvgPool2D(), Flatten()]

    def _dropout(self, node: NodeProto) -> Dropout:
        ins = list(node.input)
        p = _decimal(self.const(node, ins[1], "the ratio")) if len(ins) > 1 and ins[1] else self.folder.attr(node, "ratio", 0.5)
        if len(ins) > 2 and ins[2] and bool(self.const(node, ins[2], "training_mode")):
            self.fail(node, "training_mode must be false (cnnkit's Dropout follows the network's mode)")
        return Dropout(float(p))

    def _reshape(self, node: NodeProto, shape: tuple[int, ...]) -> Layer | None:
        target = list(self.const(node, node.input[1], "the target shape"))
        if self.folder.attr(node, "allowzero", 0) == 1 and 0 in target:
            self.fail(node, "allowzero=1 with a 0 in the shape is not a cnnkit layer")
        full = [BATCH, *shape]
        dims = [full[i] if (t == 0 and i < len(full)) else t for i, t in enumerate(target)]
        n = math.prod(shape)
        if len(dims) == 2 and dims[0] in (BATCH, -1) and dims[1] in (-1, n) and not (dims[0] == -1 and dims[1] == -1):
            return Flatten() if len(shape) != 1 else None
        if dims[0] in (BATCH, -1) and [d for d in dims[1:]] == list(shape):
            return None  # a reshape to the shape the value already has
        self.fail(node, f"reshapes {tuple(full)} to {tuple(dims)}; cnnkit reshapes only to (N, -1) (Flatten)")

    def _pairs(self, node: NodeProto, shape: tuple[int, ...], kernel: tuple[int, ...]
               ) -> tuple[tuple[int, ...], tuple[int, int], tuple[int, ...]]:
        """(strides, (pad_h, pad_w), dilations) of a Conv / pool node, refusing uneven padding."""
        def attr(key: str, default: Any = None) -> Any:
            return self.folder.attr(node, key, default)

        strides = tuple(attr("strides", [1, 1]))
        pads = list(attr("pads", [0, 0, 0, 0]))
        dilations = tuple(attr("dilations", [1, 1]))
        auto = attr("auto_pad", "NOTSET")
        if auto in ("SAME_UPPER", "SAME_LOWER"):
            pads = []
            for size, k, s, d in zip(shape[1:], kernel, strides, dilations):
                total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
                pads.append(total // 2)
            if any(((math.ceil(sz / s) - 1) * s + (k - 1) * d + 1 - sz) % 2 for sz, k, s, d in
                   zip(shape[1:], kernel, strides, dilations)):
                self.fail(node, f"auto_pad={auto} pads unevenly here; cnnkit pads both sides alike")
            pads = pads + pads
        elif auto == "VALID":
            pads = [0, 0, 0, 0]
        if len(kernel) != 2 or len(pads) != 4:
            self.fail(node, f"cnnkit's layers are 2-D, got kernel {kernel}")
        if pads[0] != pads[2] or pads[1] != pads[3]:
            self.fail(node, f"pads {pads} differ between the sides; cnnkit pads both sides alike")
        return strides, (pads[0], pads[1]), dilations

    def _rounding(self, shape: tuple[int, ...], kernel: tuple[int, ...], strides: tuple[int, ...],
                  padding: tuple[int, int], dilations: tuple[int, ...], ceil: bool) -> str:
        if ceil:
            return "ceil"
        exact = all((size + 2 * p - (d * (k - 1) + 1)) % s == 0
                    for size, k, s, p, d in zip(shape[1:], kernel, strides, padding, dilations))
        return "exact" if exact else "floor"

    def _conv(self, node: NodeProto, shape: tuple[int, ...]) -> Conv2D:
        ins = list(node.input)
        w = self.const(node, ins[1], "the weight")
        b = self.const(node, ins[2], "the bias") if len(ins) > 2 and ins[2] else None
        group = self.folder.attr(node, "group", 1)
        kernel = tuple(self.folder.attr(node, "kernel_shape", w.shape[2:]))
        strides, padding, dilations = self._pairs(node, shape, kernel)
        rounding = self._rounding(shape, kernel, strides, padding, dilations, False)
        layer = Conv2D(w.shape[1] * group, w.shape[0], kernel, strides, padding, dilations, group,
                       bias=b is not None, rounding=rounding)
        self._set(layer, node, weight=w, bias=b)
        return layer

    def _pool(self, node: NodeProto, shape: tuple[int, ...]) -> Layer:
        def attr(key: str, default: Any = None) -> Any:
            return self.folder.attr(node, key, default)

        kernel = tuple(attr("kernel_shape"))
        strides, padding, dilations = self._pairs(node, shape, kernel)
        if dilations != (1, 1):
            self.fail(node, f"dilated pooling ({dilations}) is not a cnnkit layer")
        ceil = bool(attr("ceil_mode", 0))
        rounding = self._rounding(shape, kernel, strides, padding, dilations, ceil)
        if node.op_type == "MaxPool":
            if len(node.output) > 1 and node.output[1]:
                self.fail(node, "the indices output (MaxPool's second) has no cnnkit counterpart")
            return MaxPool2D(kernel, strides, padding, rounding)
        if node.op_type == "LpPool":
            if attr("p", 2) != 2 or padding != (0, 0):
                self.fail(node, f"cnnkit has L2 pooling without padding (p=2, pads 0), got p={attr('p', 2)}, "
                                f"pads {padding}")
            return L2Pool2D(kernel, strides, rounding)
        include = attr("count_include_pad", 0)
        if padding != (0, 0) and not include:
            self.fail(node, "count_include_pad=0 with padding: cnnkit's AvgPool2D counts the padding in the mean")
        return AvgPool2D(kernel, strides, padding, rounding)

    def _batch_norm(self, node: NodeProto, shape: tuple[int, ...]) -> BatchNorm2D:
        ins = list(node.input)
        if self.folder.attr(node, "training_mode", 0):
            self.fail(node, "training_mode=1; cnnkit imports the inference form")
        scale, bias, mean, var = (self.const(node, i, what) for i, what in
                                  zip(ins[1:5], ("scale", "bias", "mean", "variance")))
        layer = BatchNorm2D(scale.shape[0], self.folder.attr(node, "epsilon", 1e-5),
                            _decimal(1.0 - self.folder.attr(node, "momentum", 0.9)))
        self._set(layer, node, weight=scale, bias=bias, running_mean=mean, running_var=var)
        return layer

    def _gemm(self, node: NodeProto, shape: tuple[int, ...]) -> FC:
        ins = list(node.input)

        def attr(key: str, default: Any = None) -> Any:
            return self.folder.attr(node, key, default)

        if attr("transA", 0):
            self.fail(node, "transA=1 (the input transposed) is not an FC layer")
        w = self.const(node, ins[1], "the weight")
        w = w if attr("transB", 0) else w.T
        b = self.const(node, ins[2], "the bias") if len(ins) > 2 and ins[2] else None
        w = w * np.float32(attr("alpha", 1.0))
        if b is not None:
            b = (b * np.float32(attr("beta", 1.0))).reshape(-1)
            if b.shape != (w.shape[0],):
                self.fail(node, f"bias of shape {b.shape} is not one per output ({w.shape[0]})")
        layer = FC(w.shape[1], w.shape[0], bias=b is not None)
        self._set(layer, node, weight=w, bias=b)
        return layer

    def _set(self, layer: Layer, node: NodeProto, **arrays: np.ndarray | None) -> None:
        for key, value in arrays.items():
            if value is None:
                continue
            store = layer.params if key in layer.params else layer.buffers
            if tuple(value.shape) != store[key].shape:
                self.fail(node, f"{key} has shape {tuple(value.shape)}, the layer needs {store[key].shape}")
            store[key] = copy_like(store[key], np.asarray(value, dtype=np.float32))


def _inline_external_data(model: ModelProto, onnx: ModuleType, path: str) -> None:
    """Read initializers kept in a side file (torch's dynamo exporter writes ``model.onnx.data``)
    into the model. Only a plain file name beside the model is read; offset and length are
    checked against that file and against the tensor's size before anything is read."""
    directory = os.path.dirname(os.path.abspath(path))
    for tensor in model.graph.initializer:
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in tensor.external_data}
        where = info.get("location", "")
        if not where or os.path.basename(where) != where or where in (".", ".."):
            raise OnnxError(f"{path}: tensor {tensor.name!r} points at {where!r}; cnnkit reads external data "
                            "only from a file beside the model")
        side = os.path.join(directory, where)
        try:
            offset, length = int(info.get("offset", 0)), info.get("length")
            itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
        except (ValueError, TypeError, KeyError):
            raise OnnxError(f"{path}: tensor {tensor.name!r} has an unreadable external data entry {info}") from None
        need = math.prod(tensor.dims) * itemsize
        length = need if length is None else int(length)
        size = os.path.getsize(side) if os.path.isfile(side) else -1
        if size < 0:
            raise OnnxError(f"{path}: tensor {tensor.name!r} keeps its data in {where}, which is missing")
        if length != need or offset < 0 or offset + length > size:
            raise OnnxError(f"{path}: tensor {tensor.name!r} needs {need} bytes at offset {offset} of {where} "
                            f"({size} bytes, entry length {length}): truncated or corrupt")
        with open(side, "rb") as f:
            f.seek(offset)
            tensor.raw_data = f.read(length)
        del tensor.external_data[:]
        tensor.data_location = onnx.TensorProto.DEFAULT


def from_onnx(model: ModelProto, path: str = "<model>", input_shape: Sequence[int] | None = None) -> Sequential:
    """A cnnkit Sequential (train mode, trainable) from an onnx.ModelProto; its
    ``input_shape`` (C, H, W) comes from the graph's input (or input_shape)."""
    onnx = require_onnx()
    from onnx import numpy_helper

    graph = model.graph
    for opset in model.opset_import:
        if opset.domain not in ("", "ai.onnx"):
            raise OnnxError(f"{path}: uses the operator set {opset.domain!r}; cnnkit reads only standard ONNX")
        if not 7 <= opset.version <= onnx.defs.onnx_opset_version():
            raise OnnxError(f"{path}: opset {opset.version}; cnnkit reads 7..{onnx.defs.onnx_opset_version()}")
    folder = _Folder(model, onnx, numpy_helper, path)
    inputs = [i for i in graph.input if i.name not in folder.values]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise OnnxError(f"{path}: expected one input and one output, got {len(inputs)} inputs "
                        f"({[i.name for i in inputs]}) and {len(graph.output)} outputs")
    x = inputs[0]
    dims = [d.dim_value if d.HasField("dim_value") else None for d in x.type.tensor_type.shape.dim]
    if input_shape is None:
        fixed = [d for d in dims[1:] if d is not None]
        if len(dims) not in (2, 4) or len(fixed) != len(dims) - 1:
            raise OnnxError(f"{path}: input {x.name!r} has shape {dims}; expected (N, C, H, W) with fixed "
                            "C, H, W (or pass input_shape)")
        input_shape = fixed
    shape = tuple(int(d) for d in input_shape)
    folder.shapes = _infer_shapes(model, onnx)
    folder.shapes[x.name] = [BATCH, *shape]
    data_nodes, unsupported = [], []
    for node in graph.node:
        if node.domain not in ("", "ai.onnx"):
            unsupported.append(node)
        elif folder.fold(node):
            continue
        elif node.op_type in LAYER_OPS:
            data_nodes.append(node)
        else:
            unsupported.append(node)
    if unsupported:
        listed = ", ".join(_describe(n) for n in unsupported)
        raise OnnxError(f"{path}: {len(unsupported)} operator(s) cnnkit has no layer for: {listed}")
    builder = _Builder(data_nodes, folder, path)
    builder.shapes[x.name] = shape
    layers = builder.walk(x.name, graph.output[0].name)
    net = Sequential(*layers)
    net.input_shape = shape
    net.name = graph.name or os.path.splitext(os.path.basename(path))[0]
    return net


def load(path: str | os.PathLike, input_shape: Sequence[int] | None = None) -> Sequential:
    """Read an ONNX file into a trainable cnnkit network (see this module's docstring).

    Input (N, C, H, W) as the graph's input; output as the graph's output. A corrupt or
    truncated file, an unsupported operator or a graph cnnkit's containers can't express
    is one OnnxError naming the file and the nodes."""
    onnx = require_onnx()
    path = os.fspath(path)
    data = read_bytes(path, "an ONNX model", OnnxError)
    try:
        model = onnx.load_model_from_string(data)
    except Exception as e:  # noqa: BLE001 - protobuf's DecodeError and friends, one message for all
        raise OnnxError(f"{path}: not an ONNX model (the protobuf does not parse: {e}); truncated or corrupt?") from None
    if not model.graph.node:
        raise OnnxError(f"{path}: the ONNX graph has no nodes; truncated or not an ONNX model")
    _inline_external_data(model, onnx, path)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:
        raise OnnxError(f"{path}: not a valid ONNX model: {str(e).splitlines()[0]}") from None
    return from_onnx(model, path, input_shape)
