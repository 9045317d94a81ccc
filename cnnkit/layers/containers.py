"""Containers are layers too: Sequential (a list), Residual (skip connection) and
Concat (parallel branches joined along depth, as in Inception)."""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Any, Callable, Iterator

import numpy as np

from ..errors import CnnkitError, ShapeError
from .activation import ReLU, add_relu, masked
from .base import Layer, MemoryCost, Shape, from_config
from .runtime import runtime


def _in_child(where: str, exc: CnnkitError) -> CnnkitError:
    """The same error, prefixed with where in the network it happened."""
    err = type(exc)(f"{where}: {exc}")
    err.__cause__ = exc
    return err


def _check_layers(owner: str, layers) -> list[Layer]:
    for i, layer in enumerate(layers):
        if not isinstance(layer, Layer):
            raise ShapeError(f"{owner}: item {i} is a {type(layer).__name__}, expected a cnnkit layer")
    return list(layers)


class Sequential(Layer):
    """Layers applied in order; backward runs them in reverse. Children are named 0, 1, ..."""

    # Set on the networks that build() and the zoo make: the per-sample input volume
    # (C, H, W) and the zoo name. Declared, not defaulted: hasattr() tells they were set.
    input_shape: tuple[int, ...]
    name: str

    def __init__(self, *layers: Layer):
        super().__init__()
        self.layers_ = _check_layers("Sequential", layers)

    def children(self):
        return list(self.layers_)

    def __getitem__(self, index):
        return Sequential(*self.layers_[index]) if isinstance(index, slice) else self.layers_[index]

    def __len__(self):
        return len(self.layers_)

    def __iter__(self):
        return iter(self.layers_)

    def append(self, layer: Layer) -> "Sequential":
        self.layers_.append(_check_layers("Sequential.append", [layer])[0])
        return self

    def output_shape(self, in_shape: Shape) -> Shape:
        shape = tuple(in_shape)
        for i, layer in enumerate(self.layers_):
            try:
                shape = layer.output_shape(shape)
            except CnnkitError as exc:
                raise _in_child(f"layer {i}", exc) from None
        return shape

    def walk(self, in_shape: Shape, prefix: str = "", depth: int = 0) -> Iterator[tuple[str, Layer, Shape, Shape, int]]:
        shape = tuple(in_shape)
        for name, child in self.named_children():
            yield from child.walk(shape, prefix + name + ".", depth)
            shape = tuple(child.output_shape(shape))

    def memory_cost(self, in_shape: Shape, batch: int = 1, itemsize: int = 4) -> MemoryCost:
        """Caches add up; one layer runs at a time, so the peaks are the worst layer's.
        Backward frees each layer's cache once it has run, so layer i's peak comes on top
        of the caches of layers 0..i only (its train_peak here: beyond all the caches)."""
        from .conv import Conv2D

        costs, shape = [], tuple(in_shape)
        for i, child in enumerate(self.layers_):
            cost = child.memory_cost(shape, batch, itemsize)
            shape = tuple(child.output_shape(shape))
            if isinstance(child, (Conv2D, Residual)) and i + 1 < len(self.layers_) and isinstance(self.layers_[i + 1], ReLU):
                # a train-mode CONV (or RES) -> RELU in one pass: the first layer's backward
                # makes dY * mask beside the dY it was given (see _fused_run)
                cost = dataclasses.replace(cost, train_peak=cost.train_peak + batch * math.prod(shape) * itemsize)
            costs.append(cost)
        caches = list(itertools.accumulate(c.cache for c in costs))
        total = caches[-1] if caches else 0
        train = max((upto + c.train_peak for upto, c in zip(caches, costs, strict=True)), default=0)
        return MemoryCost(total, train - total, max((c.infer_peak for c in costs), default=0),
                          max((c.workspace for c in costs), default=0))

    def forward(self, x: np.ndarray) -> np.ndarray:
        with runtime.few_images(x.shape[0] if isinstance(x, np.ndarray) and x.ndim else 2):
            return self._forward(x)

    def _forward(self, x: np.ndarray, end: int | None = None) -> np.ndarray:
        """Layers [0, end) (all of them by default) on x."""
        # Each layer drops its cache in eval mode, so inference keeps only the current
        # activation alive (the notes' test-time memory trick).
        i, steps, end = 0, [], len(self.layers_) if end is None else end
        while i < end:
            run = _fused_run(self.layers_, i)
            forward, length = run if run is not None else (self.layers_[i].forward, 1)
            try:
                x = forward(x)
            except CnnkitError as exc:
                raise _in_child(f"layer {i}", exc) from None
            steps.append((i, length))
            i += length
        return self._save(steps, x)

    def forward_adding(self, x: np.ndarray, add: np.ndarray, relu: bool) -> np.ndarray | None:
        """Eval mode: max(0, this(x) + add) (relu) or this(x) + add, the sum made in the
        epilogue of a last CONV (-> BN) while each block is in cache (a residual block's
        body and its shortcut); None where the layers do not end so (the caller adds)."""
        last = _conv_tail(self.layers_)
        if last is None:
            return None
        conv, norm = self.layers_[last], (self.layers_[last + 1] if last + 1 < len(self.layers_) else None)
        with runtime.few_images(x.shape[0] if isinstance(x, np.ndarray) and x.ndim else 2):
            head = self._forward(x, end=last)
            try:
                return conv.forward_fused(head, norm, relu, add=add)   # type: ignore[attr-defined]
            except CnnkitError as exc:
                raise _in_child(f"layer {last}", exc) from None

    def backward(self, dout: np.ndarray) -> np.ndarray | None:
        """Gradient on the input; None when ``input_grad`` is False, which spares the first
        layer's dX (set it on the network you train: nothing reads the image's gradient).
        A run of layers that forward computed in one pass (a fused BN -> RELU) takes its
        gradient through its first layer."""
        steps = self._take_cache(dout)
        if not self.layers_:
            return dout if self.input_grad else None
        with runtime.few_images(dout.shape[0] if isinstance(dout, np.ndarray) and dout.ndim else 2):
            return self._backward(steps, dout)

    def _backward(self, steps: list[tuple[int, int]], dout: np.ndarray) -> np.ndarray | None:
        first, first_wanted = self.layers_[0], self.layers_[0].input_grad
        grad: np.ndarray | None = dout
        first.input_grad = first_wanted and self.input_grad
        try:
            for i, _ in reversed(steps):
                assert grad is not None                    # None only from the first layer, the last here
                try:
                    grad = self.layers_[i].backward(grad)
                except CnnkitError as exc:
                    raise _in_child(f"layer {i}", exc) from None
        finally:
            first.input_grad = first_wanted
        return grad if self.input_grad else None

    def config(self) -> dict[str, Any]:
        return {"type": "Sequential", "layers": [layer.config() for layer in self.layers_]}

    @classmethod
    def from_kwargs(cls, layers):
        return cls(*[from_config(c) for c in layers])

    def __repr__(self):
        inner = "".join(f"\n  ({i}): " + repr(l).replace("\n", "\n  ") for i, l in enumerate(self.layers_))
        return f"Sequential({inner}\n)" if inner else "Sequential()"


def _fused_run(layers: list[Layer], i: int) -> tuple[Callable[[np.ndarray], np.ndarray], int] | None:
    """(the one-pass forward, layers taken) when layers[i:] start with a run that one pass
    computes; None otherwise:

    * eval mode: CONV -> BN? -> RELU? (at least one of the two), ``Conv2D.forward_fused``;
    * BN -> RELU and Residual -> RELU, train or eval mode, and CONV -> RELU in train mode,
      ``forward_relu`` (the first layer's backward then applies the ReLU's mask, so the
      ReLU's own backward is skipped).

    Only layers whose forward and backward are their class's, or a timer around them
    (cnnkit.bench.profile marks its wrappers ``timing_only``): any other wrapped method
    is called as it is."""
    from .conv import Conv2D
    from .norm import BatchNorm2D

    def plain(j: int, kind: type, training: bool) -> bool:
        return j < len(layers) and _plain(layers[j], kind, training)

    head = layers[i]
    if plain(i, Conv2D, False):
        j, norm = i + 1, None
        if plain(j, BatchNorm2D, False):
            norm, j = layers[j], j + 1
        relu = plain(j, ReLU, False)
        length = j - i + relu
        if length > 1:
            return (lambda x: head.forward_fused(x, norm, relu)), length   # type: ignore[attr-defined]
        return None
    if any(plain(i, kind, head.training) for kind in (BatchNorm2D, Residual, Conv2D)) and plain(i + 1, ReLU, head.training):
        after = layers[i + 1]

        def then_relu(x: np.ndarray) -> np.ndarray:
            out = head.forward_relu(x)   # type: ignore[attr-defined]
            after.forget()               # its mask lives in the first layer's backward
            return out

        return then_relu, 2
    return None


def _conv_tail(layers: list[Layer]) -> int | None:
    """Where a last eval-mode CONV (-> BN) begins, for a sum in its epilogue; None where the
    layers end otherwise (with a ReLU, a pool, a block, or in train mode)."""
    from .conv import Conv2D
    from .norm import BatchNorm2D

    for start, kinds in ((len(layers) - 2, (Conv2D, BatchNorm2D)), (len(layers) - 1, (Conv2D,))):
        tail = layers[start:] if start >= 0 else []
        if len(tail) == len(kinds) and all(_plain(layer, kind, False) for layer, kind in zip(tail, kinds)):
            return start
    return None


def _plain(layer: Layer, kind: type, training: bool) -> bool:
    """Is layer a `kind` in that mode whose forward and backward are its class's, or a timer
    around them (cnnkit.bench.profile marks its wrappers ``timing_only``)?"""
    return (type(layer) is kind and layer.training == training
            and all(m not in vars(layer) or getattr(vars(layer)[m], "timing_only", False)
                    for m in ("forward", "backward")))


def _branch_cost(block: Layer, in_shape: Shape, batch: int, itemsize: int, joined: bool) -> MemoryCost:
    """A block whose branches all read the block input: that input stays alive while each
    branch runs (with the finished branches' outputs when they are joined, Concat), and
    the sum or join makes the block output. A sum (Residual) in eval mode may also run its
    shortcut first and its body beside the shortcut's output (Residual._eval_sum)."""
    a_in = batch * math.prod(in_shape) * itemsize
    out = batch * math.prod(block.output_shape(in_shape)) * itemsize
    cache = train = infer = workspace = done = 0
    children = block.children()
    for i, child in enumerate(children):
        c = child.memory_cost(in_shape, batch, itemsize)
        cache += c.cache
        workspace = max(workspace, c.workspace)
        train = max(train, c.train_peak + a_in + (out if joined else 0))
        infer = max(infer, c.infer_peak + a_in + done)
        if i == 0 and not joined:
            infer = max(infer, c.infer_peak + a_in + (out if len(children) > 1 else 0))
        done += batch * math.prod(child.output_shape(in_shape)) * itemsize
    return MemoryCost(cache, max(train, a_in + 3 * out), max(infer, a_in + done + out), workspace)


def _walk_block(block: Layer, in_shape: Shape, prefix: str, depth: int) -> Iterator[tuple[str, Layer, Shape, Shape, int]]:
    """A block's branches (one level deeper), then the block itself (its sum or join)."""
    for name, child in block.named_children():
        yield from child.walk(in_shape, prefix + name + ".", depth + 1)
    yield prefix.rstrip("."), block, tuple(in_shape), tuple(block.output_shape(in_shape)), depth


class Residual(Layer):
    """y = body(x) + shortcut(x), shortcut the identity by default (ResNet).

    The gradient fans out to both paths and the two input gradients are summed.
    """

    def __init__(self, body: Layer, shortcut: Layer | None = None):
        super().__init__()
        self.body = _check_layers("Residual", [body])[0]
        self.shortcut = None if shortcut is None else _check_layers("Residual", [shortcut])[0]

    def children(self):
        return [self.body] + ([self.shortcut] if self.shortcut is not None else [])

    def named_children(self):
        return [("body", self.body)] + ([("shortcut", self.shortcut)] if self.shortcut is not None else [])

    def walk(self, in_shape: Shape, prefix: str = "", depth: int = 0) -> Iterator[tuple[str, Layer, Shape, Shape, int]]:
        return _walk_block(self, in_shape, prefix, depth)

    def memory_cost(self, in_shape: Shape, batch: int = 1, itemsize: int = 4) -> MemoryCost:
        return _branch_cost(self, in_shape, batch, itemsize, joined=False)

    def output_shape(self, in_shape: Shape) -> Shape:
        body = self.body.output_shape(in_shape)
        skip = self.shortcut.output_shape(in_shape) if self.shortcut is not None else tuple(in_shape)
        self._check_match(body, skip)
        return body

    def _check_match(self, body, skip):
        if tuple(body) != tuple(skip):
            raise ShapeError(f"Residual: body output {tuple(body)} and shortcut output {tuple(skip)} "
                             "must have the same shape to be added")

    def forward(self, x: np.ndarray) -> np.ndarray:
        out = self._eval_sum(x, relu=False)
        if out is None:
            out, _ = add_relu(*self._paths(x), relu=False, keep_mask=False)
        return self._save(True, out)

    def forward_relu(self, x: np.ndarray) -> np.ndarray:
        """This block, then a ReLU, in one pass over the sum (Sequential calls it, see
        _fused_run); in train mode it keeps the ReLU's mask for its own backward."""
        out = self._eval_sum(x, relu=True)
        if out is not None:
            return self._save(True, out)
        out, mask = add_relu(*self._paths(x), relu=True, keep_mask=self.training)
        return self._save(mask if mask is not None else True, out)

    def _eval_sum(self, x: np.ndarray, relu: bool) -> np.ndarray | None:
        """Eval mode, a body ending in CONV (-> BN): the shortcut first, then the body with
        the sum (and ReLU) in its last CONV's epilogue (no array for the body's output and
        another for the sum); None otherwise."""
        if self.training or type(self.body) is not Sequential or _conv_tail(self.body.layers_) is None:
            return None
        try:
            body_shape = self.body.output_shape(x.shape[1:])
        except CnnkitError as exc:
            raise _in_child("Residual body", exc) from None
        skip = self.shortcut.forward(x) if self.shortcut is not None else x
        self._check_match(body_shape, skip.shape[1:])
        try:
            return self.body.forward_adding(x, skip, relu)
        except CnnkitError as exc:
            raise _in_child("Residual body", exc) from None

    def _paths(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The body's and the shortcut's outputs, to be added into a new array (a body's
        last layer may keep its output for backward)."""
        try:
            y = self.body.forward(x)
        except CnnkitError as exc:
            raise _in_child("Residual body", exc) from None
        skip = self.shortcut.forward(x) if self.shortcut is not None else x
        self._check_match(y.shape[1:], skip.shape[1:])
        return y, skip

    def backward(self, dout: np.ndarray) -> np.ndarray | None:
        mask = self._take_cache(dout)
        if mask is not True:            # the fused ReLU's: dY where the sum was > 0
            dout = masked(dout, mask)
        dx = self.body.backward(dout)
        skip = self.shortcut.backward(dout) if self.shortcut is not None else dout
        assert dx is not None and skip is not None   # inner layers always give dX
        if dx is dout or np.may_share_memory(dx, dout) or np.may_share_memory(dx, skip):
            return dx + skip
        return np.add(dx, skip, out=dx)  # the body's dX is a new array: add into it

    def config(self) -> dict[str, Any]:
        cfg = {"type": "Residual", "body": self.body.config()}
        if self.shortcut is not None:
            cfg["shortcut"] = self.shortcut.config()
        return cfg

    @classmethod
    def from_kwargs(cls, body, shortcut=None):
        return cls(from_config(body), None if shortcut is None else from_config(shortcut))

    def __repr__(self):
        parts = [f"body={self.body!r}"] + ([f"shortcut={self.shortcut!r}"] if self.shortcut is not None else [])
        return "Residual(" + ", ".join(parts).replace("\n", "\n  ") + ")"


class Concat(Layer):
    """Branches applied to the same input, outputs joined along depth (Inception).

    Every branch must keep the same H x W; output depth is the sum of the branches'.
    """

    def __init__(self, *branches: Layer):
        super().__init__()
        if not branches:
            raise ShapeError("Concat: needs at least one branch")
        self.branches = _check_layers("Concat", branches)

    def children(self):
        return list(self.branches)

    def walk(self, in_shape: Shape, prefix: str = "", depth: int = 0) -> Iterator[tuple[str, Layer, Shape, Shape, int]]:
        return _walk_block(self, in_shape, prefix, depth)

    def memory_cost(self, in_shape: Shape, batch: int = 1, itemsize: int = 4) -> MemoryCost:
        return _branch_cost(self, in_shape, batch, itemsize, joined=True)

    def output_shape(self, in_shape: Shape) -> Shape:
        shapes = [b.output_shape(in_shape) for b in self.branches]
        self._check_match(shapes)
        return (sum(s[0] for s in shapes), *shapes[0][1:])

    def _check_match(self, shapes):
        if len({tuple(s[1:]) for s in shapes}) > 1:
            raise ShapeError(f"Concat: branch outputs must share H x W to be joined along depth, got "
                             f"{[tuple(s) for s in shapes]}")

    def forward(self, x: np.ndarray) -> np.ndarray:
        outs = []
        for i, branch in enumerate(self.branches):
            try:
                outs.append(branch.forward(x))
            except CnnkitError as exc:
                raise _in_child(f"Concat branch {i}", exc) from None
        self._check_match([o.shape[1:] for o in outs])
        return self._save([o.shape[1] for o in outs], np.concatenate(outs, axis=1))

    def backward(self, dout: np.ndarray) -> np.ndarray | None:
        depths = self._take_cache(dout)
        splits = np.cumsum(depths)[:-1]
        dx = None
        for branch, d in zip(self.branches, np.split(dout, splits, axis=1)):
            g = branch.backward(d)
            dx = g if dx is None else dx + g
        return dx

    def config(self) -> dict[str, Any]:
        return {"type": "Concat", "branches": [b.config() for b in self.branches]}

    @classmethod
    def from_kwargs(cls, branches):
        return cls(*[from_config(c) for c in branches])

    def __repr__(self):
        inner = "".join(f"\n  ({i}): " + repr(b).replace("\n", "\n  ") for i, b in enumerate(self.branches))
        return f"Concat({inner}\n)"
