"""The layer contract: every layer maps an input volume to an output volume.

A layer is a small object (ConvNetJS style) with

* ``forward(x)`` -> output, keeping in train mode only what backward needs;
* ``backward(dout)`` -> gradient on the input, filling ``grads``;
* ``params`` (name -> learnable array) and ``grads`` (same keys, after backward);
* ``buffers`` (name -> non-learnable state such as batch norm's running mean);
* ``output_shape(in_shape)`` -> per-sample output shape, without computing anything;
* ``config()`` -> plain data (JSON) that rebuilds the layer with ``from_config``.

Arrays are NCHW, float32 by default; float64 works everywhere (gradient checks).
"""

from __future__ import annotations

from typing import Any, Iterator, NamedTuple

import numpy as np

from ..errors import ShapeError, StateError

_REGISTRY: dict[str, type["Layer"]] = {}


class LoadResult(NamedTuple):
    """What load_state_dict(strict=False) could not match (PyTorch's _IncompatibleKeys)."""
    missing_keys: list[str]
    unexpected_keys: list[str]

_rng = np.random.default_rng()


def manual_seed(seed: int) -> None:
    """Seed the generator that initialises new layers' weights (and unseeded dropout)."""
    global _rng
    _rng = np.random.default_rng(seed)


def default_rng() -> np.random.Generator:
    """The generator that new layers draw their initial weights from."""
    return _rng


def pair(value: Any, what: str, owner: str) -> tuple[int, int]:
    """An int or an (h, w) pair of non-negative ints, as (h, w)."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value), int(value)
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value
    ):
        return int(value[0]), int(value[1])
    raise ShapeError(f"{owner}: {what} must be an int or an (h, w) pair of ints, got {value!r}")


class Layer:
    """Base class: subclasses implement forward, backward and, if they change shape,
    output_shape. Containers override children()."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        _REGISTRY[cls.__name__] = cls

    #: backward computes the gradient on the input; a network's first layer in training
    #: doesn't need it (PyTorch: an input that doesn't require grad). See Sequential.
    input_grad = True

    def __init__(self) -> None:
        self.params: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}
        self.buffers: dict[str, np.ndarray] = {}
        self.training = True
        self._cache: Any = None
        self._out_shape: tuple[int, ...] | None = None

    # --- the computation -------------------------------------------------
    def forward(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def backward(self, dout: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.forward(x)

    def output_shape(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Per-sample output shape ((C, H, W) or (D,)) for a per-sample input shape."""
        return tuple(in_shape)

    # --- modes and structure ---------------------------------------------
    def children(self) -> list["Layer"]:
        return []

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
            getattr(layer, attr)[key] = value.astype(target.dtype, copy=True)
        return LoadResult(missing, unexpected)

    def astype(self, dtype) -> "Layer":
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
        from ..spec import to_spec  # the model language builds on the engine, not the reverse
        return to_spec(self)

    @classmethod
    def from_kwargs(cls, **kwargs) -> "Layer":
        """Build from config() data; containers override this to rebuild children."""
        return cls(**kwargs)

    def __repr__(self) -> str:
        args = {k: v for k, v in self.config().items() if k not in ("type", "layers", "body", "shortcut", "branches")}
        inner = ", ".join(f"{k}={v!r}" for k, v in args.items())
        return f"{type(self).__name__}({inner})"

    # --- checks shared by all layers ----------------------------------------
    def _check_input(self, x: Any, ndim: int | tuple[int, ...] = 4, channels: int | None = None) -> np.ndarray:
        """Validate x once per call: an ndarray of floats, the right ndim, N >= 1."""
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
        return x

    def _save(self, cache: Any, out: np.ndarray) -> np.ndarray:
        """Keep cache for backward only in train mode; remember the output shape."""
        self._cache = cache if self.training else None
        self._out_shape = out.shape
        return out

    def _take_cache(self, dout: Any) -> Any:
        """Check dout against the last forward's output and hand back its cache."""
        if self._cache is None:
            why = "in eval mode no caches are kept" if not self.training else "forward() has not run"
            raise StateError(f"{self!r}: backward() called without a forward() in train mode ({why})")
        if not isinstance(dout, np.ndarray):
            raise ShapeError(f"{self!r}: backward expected a NumPy array, got {type(dout).__name__}")
        if dout.shape != self._out_shape:
            raise ShapeError(
                f"{self!r}: backward expected a gradient of shape {self._out_shape} "
                f"(the forward output), got {dout.shape}"
            )
        return self._cache


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

