"""The layer contract: every layer maps an input volume to an output volume.

A layer is a small object (ConvNetJS style) with

* ``forward(x)`` -> output, keeping in train mode only what backward needs;
* ``backward(dout)`` -> gradient on the input, filling ``grads``;
* ``params`` (name -> learnable array) and ``grads`` (same keys, after backward);
* ``buffers`` (name -> non-learnable state such as batch norm's running mean);
* ``output_shape(in_shape)`` -> per-sample output shape, without computing anything;
* ``memory_cost(in_shape, batch, itemsize)`` -> what it keeps and makes (the memory model);
* ``config()`` -> plain data (JSON) that rebuilds the layer with ``from_config``.

Arrays are NCHW, float32 by default; float64 works everywhere (gradient checks).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterator, NamedTuple

import numpy as np

from ..errors import ShapeError, StateError
from .init import default_rng, manual_seed  # noqa: F401  (their home before init.py; kept importable)
from .layout import copy_like

Shape = tuple[int, ...]

_REGISTRY: dict[str, type["Layer"]] = {}


class LoadResult(NamedTuple):
    """What load_state_dict(strict=False) could not match (PyTorch's _IncompatibleKeys)."""
    missing_keys: list[str]
    unexpected_keys: list[str]


@dataclass(frozen=True)
class MemoryCost:
    """Bytes a layer (or a whole network) costs on a batch, by the notes' sources.

    cache: kept from forward for backward (train mode); train_peak: the most its forward
    or backward has alive at once beyond the caches; infer_peak: the most alive at once
    in an eval-mode forward (its input included); workspace: scratch kept between calls,
    shared by all layers (so the largest counts, not the sum)."""

    cache: int
    train_peak: int
    infer_peak: int
    workspace: int = 0


def _register(cls: type["Layer"]) -> None:
    """Name -> class for from_config (and so checkpoints). Private classes are skipped; a
    second class under a built-in's or another module's name is refused, so a user's
    ``ReLU`` can never silently replace cnnkit's in a checkpoint."""
    name = cls.__name__
    if name.startswith("_"):
        return
    known = _REGISTRY.get(name)
    if known is not None and known is not cls and (known.__module__, known.__qualname__) != (cls.__module__, cls.__qualname__):
        raise ShapeError(
            f"layer type {name!r} is already {known.__module__}.{known.__qualname__}; a layer class of "
            f"{cls.__module__} cannot take its name (from_config and checkpoints rebuild layers by "
            f"name). Rename the class, e.g. My{name}"
        )
    _REGISTRY[name] = cls


class Layer:
    """Base class: subclasses implement forward, backward and, if they change shape,
    output_shape. Containers override children()."""

    def __init_subclass__(cls, register: bool = True, **kwargs: Any) -> None:
        """Subclasses join the registry unless private or declared ``register=False``
        (abstract bases such as WindowedLayer)."""
        super().__init_subclass__(**kwargs)
        if register:
            _register(cls)

    #: backward computes the gradient on the input; a network's first layer in training
    #: doesn't need it (PyTorch: an input that doesn't require grad). See Sequential.
    input_grad = True

    #: False (the default): backward OVERWRITES ``grads`` with this batch's gradients, so
    #: no zero_grad() is needed between steps. True (``net.accumulate_grads()``): backward
    #: ADDS to them, to accumulate several batches before one step, as PyTorch always does;
    #: zero_grad() then starts again.
    accumulate = False

    def __init__(self) -> None:
        self.params: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}
        self.buffers: dict[str, np.ndarray] = {}
        self.training = True
        self._cache: Any = None
        self._out_shape: tuple[int, ...] | None = None

    # --- the computation -------------------------------------------------
    def forward(self, x: np.ndarray) -> np.ndarray:
        """Output volume for input x (N, ...); in train mode keeps what backward needs."""
        raise NotImplementedError

    def backward(self, dout: np.ndarray) -> np.ndarray | None:
        """Gradient on the input for dout on the output; fills ``grads`` (overwriting)."""
        raise NotImplementedError

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.forward(x)

    def output_shape(self, in_shape: Shape) -> Shape:
        """Per-sample output shape ((C, H, W) or (D,)) for a per-sample input shape."""
        return tuple(in_shape)

    # --- what it costs (the memory model, next to the code it models) ------------------
    def memory_use(self, in_shape: Shape, batch: int, itemsize: int) -> tuple[int, int, int]:
        """(kept for backward, forward's transient, backward's transient) in bytes for a
        batch: the arrays forward keeps with _save and those forward/backward make
        (outputs included). The default: a fresh output forward, a fresh dX backward."""
        a_in = batch * math.prod(in_shape) * itemsize
        a_out = batch * math.prod(self.output_shape(in_shape)) * itemsize
        return 0, a_in + a_out, a_in + a_out

    def workspace_bytes(self, in_shape: Shape, batch: int, itemsize: int) -> int:
        """Scratch this layer's kernel keeps between calls (the runtime's workspace)."""
        return 0

    def memory_cost(self, in_shape: Shape, batch: int = 1, itemsize: int = 4) -> MemoryCost:
        """What this layer costs on a batch of per-sample in_shape; containers combine
        their children's."""
        cache, forward, backward = self.memory_use(tuple(in_shape), batch, itemsize)
        a_in = batch * math.prod(in_shape) * itemsize
        return MemoryCost(cache, max(forward, backward), a_in + forward,
                          self.workspace_bytes(tuple(in_shape), batch, itemsize))

    # --- modes and structure ---------------------------------------------
    def children(self) -> list["Layer"]:
        return []

    def walk(self, in_shape: Shape, prefix: str = "", depth: int = 0) -> Iterator[tuple[str, "Layer", Shape, Shape, int]]:
        """(qualified name, layer, input shape, output shape, nesting depth) for every
        layer, in forward order; containers list their insides (Sequential instead of
        itself, RES/CAT blocks after their insides)."""
        yield prefix.rstrip("."), self, tuple(in_shape), tuple(self.output_shape(in_shape)), depth

    def named_children(self) -> list[tuple[str, "Layer"]]:
        return [(str(i), c) for i, c in enumerate(self.children())]

    def train(self, mode: bool = True) -> "Layer":
        """Set train mode (caches for backward, dropout active, batch statistics)."""
        self.training = mode
        if not mode:
            self._cache = None
        for child in self.children():
            child.train(mode)
        return self

    def eval(self) -> "Layer":
        """Set eval mode: no backward caches, dropout off, running statistics."""
        return self.train(False)

    def forget(self) -> None:
        """Drop the backward cache: the last forward's work was done by a fused pass of
        the layer before (its backward covers this layer's too)."""
        self._cache = None

    def layers(self) -> Iterator["Layer"]:
        """This layer and every layer inside it, depth first."""
        yield self
        for child in self.children():
            yield from child.layers()

    # --- parameters --------------------------------------------------------
    def _named(self, attr: str, prefix: str = "") -> Iterator[tuple[str, "Layer", str]]:
        for key in getattr(self, attr):
            yield prefix + key, self, key
        for name, child in self.named_children():
            yield from child._named(attr, prefix + name + ".")

    def params_and_grads(self) -> Iterator[tuple[str, np.ndarray, np.ndarray | None]]:
        """(qualified name, parameter, gradient or None) for every learnable array."""
        for name, layer, key in self._named("params"):
            yield name, layer.params[key], layer.grads.get(key)

    def parameters(self) -> Iterator[np.ndarray]:
        """Every learnable array (PyTorch's net.parameters())."""
        for _, p in self.named_parameters():
            yield p

    def modules(self) -> Iterator["Layer"]:
        """This layer and every layer inside it (PyTorch's net.modules(); also layers())."""
        return self.layers()

    def zero_grad(self) -> None:
        """Forget every gradient (the next backward starts from zero, even when accumulating)."""
        for layer in self.layers():
            layer.grads = {}

    def accumulate_grads(self, on: bool = True) -> "Layer":
        """Make backward add to ``grads`` (True) instead of overwriting them (False, the default)."""
        for layer in self.layers():
            layer.accumulate = on
        return self

    def _grad_buffer(self, name: str, dtype: Any) -> np.ndarray:
        """Where backward may write a parameter's gradient: the last step's array when it is
        overwritten anyway (not accumulating; same shape and dtype; writeable, contiguous),
        else a new one. A big layer (FC) then never holds two of its gradients at once."""
        shape, g = self.params[name].shape, self.grads.get(name)
        if (not self.accumulate and g is not None and g.shape == shape and g.dtype == dtype
                and g.flags.writeable and g.flags.c_contiguous):
            return g
        return np.empty(shape, dtype=dtype)

    def _set_grad(self, name: str, value: np.ndarray) -> None:
        """Store a parameter's gradient from backward: overwrite, or add when accumulating."""
        value = value.astype(self.params[name].dtype, copy=False)
        previous = self.grads.get(name)
        self.grads[name] = previous + value if self.accumulate and previous is not None else value

    def named_parameters(self) -> Iterator[tuple[str, np.ndarray]]:
        for name, p, _ in self.params_and_grads():
            yield name, p

    def num_params(self) -> int:
        return int(sum(p.size for _, p in self.named_parameters()))

    def state_dict(self) -> dict[str, np.ndarray]:
        """Every parameter and buffer by qualified name (PyTorch's naming)."""
        state = {n: l.params[k] for n, l, k in self._named("params")}
        state.update({n: l.buffers[k] for n, l, k in self._named("buffers")})
        return state

    def load_state_dict(self, state: dict[str, np.ndarray], strict: bool = True) -> "LoadResult":
        """Copy arrays into this network's parameters and buffers, checking shapes.

        Returns the missing and unexpected keys (as PyTorch does); with strict=True any of
        either is an error instead."""
        slots = {n: (l, "params", k) for n, l, k in self._named("params")}
        slots.update({n: (l, "buffers", k) for n, l, k in self._named("buffers")})
        missing = sorted(set(slots) - set(state))
        unexpected = sorted(set(state) - set(slots))
        if strict:
            if missing or unexpected:
                raise ShapeError(
                    f"{type(self).__name__}.load_state_dict: missing keys {missing}, "
                    f"unexpected keys {unexpected}"
                )
        for name, value in state.items():
            if name not in slots:
                continue
            layer, attr, key = slots[name]
            target = getattr(layer, attr)[key]
            value = np.asarray(value)
            if value.shape != target.shape:
                raise ShapeError(
                    f"{layer!r}: '{name}' expected shape {target.shape}, got {value.shape}"
                )
            getattr(layer, attr)[key] = copy_like(target, value)   # in the parameter's memory order
        return LoadResult(missing, unexpected)

    def astype(self, dtype: Any) -> "Layer":
        """Convert every parameter and buffer to dtype, in place (float64 for gradcheck)."""
        for layer in self.layers():
            for store in (layer.params, layer.buffers):
                for k, v in store.items():
                    if np.issubdtype(v.dtype, np.floating):
                        store[k] = v.astype(dtype)
            layer.grads = {}
        return self

    # --- plain-data description -------------------------------------------
    def config(self) -> dict[str, Any]:
        """Constructor arguments as plain data; subclasses with arguments extend it."""
        return {"type": type(self).__name__}

    @property
    def spec(self) -> str:
        """This network in the notes' notation (``cnnkit.build(net.spec)`` rebuilds it)."""
        from ..notation import to_spec  # the model language builds on the engine, not the reverse
        return to_spec(self)

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> "Layer":
        """Build from config() data; containers override this to rebuild children."""
        return cls(**kwargs)

    def __repr__(self) -> str:
        args = {k: v for k, v in self.config().items() if k not in ("type", "layers", "body", "shortcut", "branches")}
        inner = ", ".join(f"{k}={v!r}" for k, v in args.items())
        return f"{type(self).__name__}({inner})"

    # --- checks shared by all layers ----------------------------------------
    def _check_input(self, x: Any, ndim: int | tuple[int, ...] = 4, channels: int | None = None) -> np.ndarray:
        """Validate x once per forward: an ndarray of floats, the right ndim, N >= 1."""
        if not isinstance(x, np.ndarray):
            raise ShapeError(f"{self!r}: expected a NumPy array, got {type(x).__name__}")
        if not np.issubdtype(x.dtype, np.floating):
            raise ShapeError(
                f"{self!r}: expected a floating-point array (float32 or float64), got dtype {x.dtype}; "
                "convert with x.astype(np.float32)"
            )
        ndims = (ndim,) if isinstance(ndim, int) else ndim
        if x.ndim not in ndims:
            want = " or ".join(_SHAPE_NAMES[d] for d in ndims)
            raise ShapeError(f"{self!r}: expected input of shape {want}, got shape {x.shape}")
        if x.shape[0] < 1:
            raise ShapeError(f"{self!r}: the batch is empty (N = 0), expected N >= 1")
        if channels is not None and x.ndim == 4 and x.shape[1] != channels:
            raise ShapeError(
                f"{self!r}: expected {channels} input channels (depth D1), got {x.shape[1]} "
                f"in input of shape {x.shape}"
            )
        self._cache = None      # this forward replaces the last one's cache: free it before making buffers
        return x

    def _forward_by(self, op: str, x: np.ndarray) -> np.ndarray:
        """Forward by the kernel strategy the engine picks for op ('pool', 'lrn',
        'locally_connected'), keeping what that kernel's backward needs."""
        from . import kernels  # the kernels build on the layers, not the reverse
        kernel = kernels.pick(op)
        out, saved = kernel.forward(self, x)
        return self._save((kernel, saved), out)

    def _backward_by(self, dout: np.ndarray) -> tuple[np.ndarray | None, dict[str, np.ndarray]]:
        """(dX, parameter gradients) from the kernel that ran forward."""
        kernel, saved = self._take_cache(dout)
        return kernel.backward(self, saved, dout)

    def _save(self, cache: Any, out: np.ndarray) -> np.ndarray:
        """Keep cache for backward only in train mode; remember the output shape."""
        self._cache = cache if self.training else None
        self._out_shape = out.shape
        return out

    def _take_cache(self, dout: Any) -> Any:
        """Check dout against the last forward's output and hand back its cache, which
        the layer lets go of (as PyTorch frees its graph): backward once per forward, so
        a step's caches are freed as its backward goes instead of living on to the next."""
        if self._cache is None:
            why = ("in eval mode no caches are kept" if not self.training else
                   "backward() already ran for the last forward()" if self._out_shape is not None else
                   "forward() has not run")
            raise StateError(f"{self!r}: backward() called without a forward() in train mode ({why})")
        if not isinstance(dout, np.ndarray):
            raise ShapeError(f"{self!r}: backward expected a NumPy array, got {type(dout).__name__}")
        if dout.shape != self._out_shape:
            raise ShapeError(
                f"{self!r}: backward expected a gradient of shape {self._out_shape} "
                f"(the forward output), got {dout.shape}"
            )
        cache, self._cache = self._cache, None
        return cache


_SHAPE_NAMES = {2: "(N, D)", 3: "(N, C, L)", 4: "(N, C, H, W)"}


def from_config(config: dict[str, Any]) -> Layer:
    """Rebuild a layer (or a whole network) from ``layer.config()``."""
    if not isinstance(config, dict) or "type" not in config:
        raise ShapeError(f"from_config: expected a dict with a 'type' key, got {config!r}")
    kind = config["type"]
    if kind not in _REGISTRY:
        raise ShapeError(f"from_config: unknown layer type {kind!r}; known: {sorted(_REGISTRY)}")
    cls = _REGISTRY[kind]
    kwargs = {k: v for k, v in config.items() if k != "type"}
    return cls.from_kwargs(**kwargs)

