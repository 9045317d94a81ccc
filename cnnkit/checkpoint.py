"""Checkpoints: one safetensors file holds the network, its optimizer and the training state.

Tensors: ``model.<name>`` for every entry of ``net.state_dict()`` (weights and batch
norm buffers) and ``optim.<param name>.<slot>`` for the optimizer's arrays. Metadata
(str -> str, each value JSON): ``format``, ``architecture`` (``net.config()``), ``epoch``,
``step``, ``rng``, ``normalization``, ``optimizer`` (type, hyperparameters, steps),
``schedule`` (``schedule.config()``) and ``extra``.

Nothing here unpickles: loading reads JSON and raw arrays, so a file cannot run code.
Loading checks what the file sizes before memory is spent (the header against the file,
the architecture built dry against a limit and the file's tensors) and every metadata
field by type, each failure one CheckpointError naming the file and the field.
Writes are atomic: a crash or a full disk mid-write leaves the previous checkpoint as it
was (a full disk is one CheckpointWriteError); ``remove_stale_temps`` clears what a
killed save left.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any, TypeGuard

import numpy as np

from .data.bounded import format_bytes
from .errors import CnnkitError
from .files import atomic_file, remove_stale_temps

if TYPE_CHECKING:  # imported when used below; the checker only needs their types
    from .layers import Layer
    from .optim import Optimizer
    from .schedules import Schedule

FORMAT = "cnnkit.checkpoint/1"

__all__ = ["save_checkpoint", "load_checkpoint", "Checkpoint", "CheckpointError", "CheckpointWriteError",
           "rng_state", "restore_rng", "memory_limit", "remove_stale_temps"]

# bit generators a checkpoint may name; restore_rng never looks names up beyond these
_BIT_GENERATORS: dict[str, type[np.random.BitGenerator]] = {c.__name__: c for c in (np.random.PCG64, np.random.PCG64DXSM, np.random.MT19937,
                                            np.random.Philox, np.random.SFC64)}


class CheckpointError(CnnkitError):
    """A checkpoint file that cannot be read or written as a cnnkit checkpoint."""


class CheckpointWriteError(CheckpointError, OSError):
    """A checkpoint that could not be written (disk full, folder gone); the previous file is kept."""


# --- random number generator state ------------------------------------------------

def _plain(value: Any) -> Any:
    """JSON-able copy of a bit generator state (MT19937 keeps its key in an array)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.integer):
        return int(value)
    return value


def rng_state(rng: np.random.Generator) -> dict[str, Any]:
    """The generator's bit_generator.state as plain JSON data."""
    if not isinstance(rng, np.random.Generator):
        raise CheckpointError(f"rng_state: expected a numpy.random.Generator, got {type(rng).__name__}")
    return _plain(rng.bit_generator.state)


def restore_rng(state: dict[str, Any]) -> np.random.Generator:
    """A new Generator continuing exactly where the one rng_state() captured left off."""
    name = state.get("bit_generator") if isinstance(state, dict) else None
    if name not in _BIT_GENERATORS:
        raise CheckpointError(
            f"restore_rng: expected a bit generator state naming one of {sorted(_BIT_GENERATORS)}, got {name!r}"
        )
    bit_generator = _BIT_GENERATORS[name]()
    state = dict(state)
    try:
        if name == "MT19937":
            state["state"] = {**state["state"], "key": np.asarray(state["state"]["key"], dtype=np.uint32)}
        bit_generator.state = state
    except (TypeError, ValueError, KeyError, OverflowError) as e:
        raise CheckpointError(f"restore_rng: the {name} state does not fit: {type(e).__name__}: {e}") from None
    return np.random.Generator(bit_generator)


# --- writing ------------------------------------------------------------------------

def _write_bytes(f: IO[bytes], data: bytes) -> None:
    """Write all of data to the open file (a seam the atomicity tests break)."""
    f.write(data)


def _atomic_write(path: str, data: bytes) -> None:
    """Replace path with data so that readers see the old file or the new one, never a mix.

    A failed write (ENOSPC: disk full) is one CheckpointWriteError naming the file; the
    temporary file is gone and the previous checkpoint, if any, is untouched."""
    try:
        with atomic_file(path) as f:
            _write_bytes(f, data)
    except OSError as e:
        kept = "the previous checkpoint is kept" if os.path.exists(path) else "nothing was written"
        raise CheckpointWriteError(f"{path}: cannot write the checkpoint ({format_bytes(len(data))}): "
                                   f"{e.strerror or e}; {kept}") from None


def save_checkpoint(path: str | os.PathLike, net: Layer, optimizer: Optimizer | None = None, *,
                    epoch: int | None = None, step: int | None = None,
                    rng: np.random.Generator | dict[str, Any] | None = None,
                    normalization: dict[str, Any] | None = None, schedule: Schedule | dict[str, Any] | None = None,
                    extra: dict[str, Any] | None = None) -> None:
    """Write net (architecture and state), the optimizer and training metadata to one file, atomically."""
    from safetensors.numpy import save  # optional dependency (cnnkit[train]): imported only when used

    path = os.fspath(path)
    tensors = {f"model.{k}": _contiguous(v) for k, v in net.state_dict().items()}
    optim_hyper = None
    if optimizer is not None:
        arrays, optim_hyper = optimizer.state_dict()
        tensors.update({f"optim.{k}": _contiguous(v) for k, v in arrays.items()})
    if isinstance(rng, np.random.Generator):
        rng = rng_state(rng)
    if schedule is not None and not isinstance(schedule, dict):
        schedule = schedule.config()
    meta = {
        "format": FORMAT,
        "architecture": net.config(),
        "epoch": epoch,
        "step": step,
        "rng": rng,
        "normalization": normalization,
        "optimizer": optim_hyper,
        "schedule": schedule,
        "extra": extra if extra is not None else {},
    }
    try:
        metadata = {k: json.dumps(v, default=_plain_json) for k, v in meta.items()}
    except TypeError as e:
        raise CheckpointError(f"save_checkpoint({path!r}): metadata must be plain JSON data: {e}") from None
    _atomic_write(path, save(tensors, metadata=metadata))


def _contiguous(a: np.ndarray) -> np.ndarray:
    """C-ordered array for safetensors; unlike np.ascontiguousarray it keeps 0-d arrays 0-d."""
    a = np.asarray(a)
    return a if a.flags.c_contiguous else a.copy(order="C")


def _plain_json(value: Any) -> Any:
    """json.dumps fallback: NumPy scalars and arrays in metadata become plain numbers and lists."""
    if isinstance(value, (np.ndarray, np.generic)):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


# --- reading --------------------------------------------------------------------------

@dataclass
class Checkpoint:
    """What load_checkpoint found: the rebuilt net, raw states and the metadata."""

    path: str
    net: Any
    model_state: dict[str, np.ndarray]
    optimizer_state: dict[str, np.ndarray]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def epoch(self) -> int | None:
        return self.meta["epoch"]

    @property
    def step(self) -> int | None:
        return self.meta["step"]

    @property
    def optimizer_hyper(self) -> dict[str, Any] | None:
        return self.meta["optimizer"]

    def restore_optimizer(self, net: Layer | None = None) -> Optimizer:
        """The saved optimizer, rebuilt for net (default: this checkpoint's net) with its state."""
        from .optim import optimizer_from_state

        if self.meta["optimizer"] is None:
            raise CheckpointError(f"{self.path}: the checkpoint holds no optimizer state")
        try:
            return optimizer_from_state(self.net if net is None else net, self.optimizer_state,
                                        self.meta["optimizer"])
        except (CnnkitError, KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{self.path}: checkpoint metadata 'optimizer' does not fit the network "
                                  f"({type(e).__name__}: {e})") from None

    def restore_rng(self) -> np.random.Generator:
        """The saved random generator, continuing where it was saved."""
        if self.meta["rng"] is None:
            raise CheckpointError(f"{self.path}: the checkpoint holds no RNG state")
        return restore_rng(self.meta["rng"])

    def schedule(self) -> Schedule | None:
        """The saved learning-rate schedule, or None."""
        from .schedules import schedule_from_config

        cfg = self.meta["schedule"]
        return None if cfg is None else schedule_from_config(cfg)


_DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
                "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
MAX_HEADER_BYTES = 100 << 20   # safetensors' own limit on the JSON header
_WHAT = "a cnnkit checkpoint (safetensors: 8-byte header length, JSON header, tensor data)"


def _read_header(path: str, f: IO[bytes], size: int) -> tuple[dict[str, Any], dict[str, str]]:
    """(tensor entries, __metadata__) from the file's header, after checking the framing by hand."""
    if size < 8:
        raise CheckpointError(f"{path}: file is {size} bytes, too short to be {_WHAT}")
    (n,) = struct.unpack("<Q", f.read(8))
    if n > size - 8 or n > MAX_HEADER_BYTES:
        raise CheckpointError(f"{path}: header claims {n} bytes but only {size - 8} follow; the file is truncated "
                              f"or not {_WHAT}")
    try:
        header = json.loads(f.read(n).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise CheckpointError(f"{path}: header is not valid JSON; expected {_WHAT}") from None
    metadata = header.pop("__metadata__", None) if isinstance(header, dict) else None
    if not isinstance(metadata, dict) or metadata.get("format") != json.dumps(FORMAT):
        raise CheckpointError(
            f"{path}: safetensors file without cnnkit metadata (expected format {FORMAT!r}); "
            "it was not written by save_checkpoint"
        )
    data_bytes = size - 8 - n
    for name, entry in header.items():
        if not _is_tensor_entry(entry, data_bytes):
            raise CheckpointError(f"{path}: tensor data is corrupt or truncated (entry {name!r} of the header does "
                                  f"not describe a tensor inside the {data_bytes} bytes of data); expected "
                                  "a cnnkit checkpoint")
    return header, metadata


def _is_tensor_entry(entry: Any, data_bytes: int) -> bool:
    """entry is {'dtype', 'shape', 'data_offsets'} of a tensor lying inside the data."""
    if not isinstance(entry, dict) or entry.get("dtype") not in _DTYPE_BYTES:
        return False
    shape, offsets = entry.get("shape"), entry.get("data_offsets")
    if not (_is_ints(shape) and _is_ints(offsets) and len(offsets) == 2):
        return False
    return (offsets[1] - offsets[0] == math.prod(shape) * _DTYPE_BYTES[entry["dtype"]]
            and offsets[0] <= offsets[1] <= data_bytes)


def _is_ints(value: Any) -> TypeGuard[list[int]]:
    return isinstance(value, list) and all(type(v) is int and v >= 0 for v in value)


def memory_limit() -> int:
    """The most bytes a checkpoint may make load_checkpoint spend by default: cnnkit's one
    memory limit, as for build (``cnnkit.notation.limits.memory_limit``: CNNKIT_MAX_MEMORY,
    else half of physical memory)."""
    from .notation.limits import memory_limit as network_limit  # the notation builds on checkpoints' engine
    return network_limit()[0]



def load_checkpoint(path: str | os.PathLike, *, max_bytes: int | None = None) -> Checkpoint:
    """Read a checkpoint and rebuild its network from the stored architecture alone.

    Everything the file sizes is checked before memory is spent: the header's tensors
    against the file's length; the architecture, built dry (``engine(allocate=False)``),
    against max_bytes (default ``memory_limit()``) and against the file's tensors, name by
    name and shape by shape; the metadata field by field. Any failure is one
    CheckpointError naming the file and what was expected."""
    from safetensors.numpy import load

    from .layers import engine, from_config  # importing the package registers every layer type

    path = os.fspath(path)
    limit = memory_limit() if max_bytes is None else int(max_bytes)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            entries, metadata = _read_header(path, f, size)
            try:
                meta = {k: json.loads(v) for k, v in metadata.items()}
            except (TypeError, json.JSONDecodeError, RecursionError) as e:
                raise CheckpointError(f"{path}: metadata value is not JSON ({e})") from None
            for key in ("architecture", "epoch", "step", "rng", "normalization", "optimizer", "schedule", "extra"):
                meta.setdefault(key, None)
            try:
                with engine(allocate=False):   # stand-in parameters: sizes without the memory
                    dry = from_config(meta["architecture"])
            except (CnnkitError, TypeError, ValueError, KeyError, AttributeError, RecursionError) as e:
                raise CheckpointError(f"{path}: cannot rebuild the network from the stored architecture: {e}") from None
            _check_sizes(path, dry.state_dict(), entries, limit)
            _check_meta(path, meta, dry)
            if size > limit:
                raise CheckpointError(f"{path}: the file is {format_bytes(size)}, more than the {format_bytes(limit)} "
                                      "limit (pass max_bytes= to change it); refused")
            f.seek(0)
            data = f.read()
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read checkpoint: {e.strerror or e}") from None
    try:
        tensors = load(data)
    except Exception as e:  # safetensors raises its own error type for bad offsets and dtypes
        raise CheckpointError(f"{path}: tensor data is corrupt or truncated ({e}); expected a cnnkit checkpoint") from None
    del data

    model_state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    optimizer_state = {k[len("optim."):]: v for k, v in tensors.items() if k.startswith("optim.")}

    try:
        net = from_config(meta["architecture"])
        # a float64 net (gradient checks) must come back float64, not cast to the default float32
        dtypes = {v.dtype for v in model_state.values() if np.issubdtype(v.dtype, np.floating)}
        if len(dtypes) == 1:
            net.astype(dtypes.pop())
        net.load_state_dict(model_state)
    except (CnnkitError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot rebuild the network from the stored architecture: {e}") from None
    if meta["extra"] is None:
        meta["extra"] = {}
    return Checkpoint(path=path, net=net, model_state=model_state, optimizer_state=optimizer_state, meta=meta)


def _check_sizes(path: str, dry_state: dict[str, np.ndarray], entries: dict[str, Any], limit: int) -> None:
    """The dry net's parameters against the limit, then against the file's model.* tensors."""
    count = sum(math.prod(v.shape) for v in dry_state.values())
    need = 4 * count   # float32; a float64 checkpoint's tensors are counted by the file's size
    if need > limit:
        biggest = max(dry_state, key=lambda k: math.prod(dry_state[k].shape))
        raise CheckpointError(
            f"{path}: the stored architecture has {count:,} parameters ({format_bytes(need)} as float32; the "
            f"largest, {biggest}, is {tuple(dry_state[biggest].shape)}), more than the {format_bytes(limit)} "
            "limit (pass max_bytes= to change it); refused before building it")
    unexpected = sorted(k for k in entries if k.startswith("model.") and k[len("model."):] not in dry_state)
    if unexpected:
        raise CheckpointError(f"{path}: the file holds {', '.join(unexpected[:3])}{' ...' if len(unexpected) > 3 else ''}, "
                              "which the stored architecture has no place for")
    for key, value in dry_state.items():
        entry = entries.get(f"model.{key}")
        if entry is None:
            raise CheckpointError(f"{path}: the stored architecture has {key} of shape {tuple(value.shape)}, but "
                                  f"the file holds no tensor model.{key}")
        if tuple(entry["shape"]) != tuple(value.shape):
            raise CheckpointError(
                f"{path}: the stored architecture needs {key} of shape {tuple(value.shape)} "
                f"({math.prod(value.shape):,} values), the file holds {tuple(entry['shape'])}")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _require(path: str, ok: bool, field: str, expected: str, value: Any) -> None:
    if not ok:
        raise CheckpointError(f"{path}: checkpoint metadata {field!r} must be {expected}, got {_short(value)}")


def _count(value: Any) -> bool:
    return type(value) is int and value >= 0


def _number(value: Any) -> bool:
    return type(value) in (int, float)


def _check_rng(path: str, field: str, value: Any) -> None:
    try:
        restore_rng(value)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: checkpoint metadata {field!r} is not a random generator state "
                              f"({str(e).removeprefix('restore_rng: ')})") from None


def _check_meta(path: str, meta: dict[str, Any], dry: Any) -> None:
    """Every metadata field save_checkpoint and cnnkit train write, by type and shape."""
    for key in ("epoch", "step"):
        _require(path, meta[key] is None or _count(meta[key]), key, "an integer >= 0", meta[key])
    if meta["rng"] is not None:
        _check_rng(path, "rng", meta["rng"])
    norm = meta["normalization"]
    if norm is not None:
        ok = (isinstance(norm, dict) and isinstance(norm.get("mean"), list) and isinstance(norm.get("std"), list)
              and len(norm["mean"]) == len(norm["std"]) > 0
              and all(_number(v) for v in norm["mean"] + norm["std"]))
        _require(path, ok, "normalization", "{'mean': [numbers], 'std': [numbers]} of equal length", norm)
    _require(path, meta["optimizer"] is None or (isinstance(meta["optimizer"], dict)
             and isinstance(meta["optimizer"].get("type"), str)), "optimizer", "a dict with a 'type'", meta["optimizer"])
    if meta["schedule"] is not None:
        from .schedules import schedule_from_config
        try:
            schedule_from_config(meta["schedule"])
        except (CnnkitError, TypeError, ValueError, KeyError, RecursionError) as e:
            raise CheckpointError(f"{path}: checkpoint metadata 'schedule' is not a schedule ({e})") from None
    extra = meta["extra"]
    _require(path, extra is None or isinstance(extra, dict), "extra", "a dict", extra)
    extra = extra or {}
    training = "config" in extra    # written by cnnkit train: these fields must all be there
    if training:
        _require(path, isinstance(extra["config"], dict), "extra.config", "a dict", extra["config"])
        _require(path, _count(meta["epoch"]), "epoch", "an integer >= 0 in a training checkpoint", meta["epoch"])
        for key in ("batch", "running", "input_shape", "classes"):
            if key not in extra:
                raise CheckpointError(f"{path}: checkpoint metadata 'extra.{key}' is missing; the training "
                                      "checkpoint is incomplete")
    if "batch" in extra:
        _require(path, _count(extra["batch"]), "extra.batch", "an integer >= 0", extra["batch"])
    if "running" in extra:
        run = extra["running"]
        ok = (isinstance(run, dict) and _number(run.get("loss")) and _count(run.get("correct"))
              and _count(run.get("seen")))
        _require(path, ok, "extra.running", "{'loss': number, 'correct': int, 'seen': int}", run)
    if "data" in extra:
        _require(path, extra["data"] is None or isinstance(extra["data"], str), "extra.data", "a string",
                 extra["data"])
    for i, state in (extra.get("layer_rngs") or {}).items() if isinstance(extra.get("layer_rngs"), dict) else ():
        _check_rng(path, f"extra.layer_rngs.{i}", state)
    _require(path, isinstance(extra.get("layer_rngs", {}), dict), "extra.layer_rngs", "a dict",
             extra.get("layer_rngs"))
    shape = extra.get("input_shape")
    if "input_shape" in extra:
        _require(path, isinstance(shape, list) and len(shape) in (1, 3) and all(type(d) is int and d > 0 for d in shape),
                 "extra.input_shape", "a list [C, H, W] of positive integers", shape)
    if "classes" in extra:
        classes = extra["classes"]
        _require(path, isinstance(classes, list) and len(classes) > 0 and all(isinstance(c, str) for c in classes),
                 "extra.classes", "a non-empty list of class names", classes)
        if shape is not None:
            try:
                scores = math.prod(dry.output_shape(tuple(shape)))
            except (CnnkitError, TypeError, ValueError) as e:
                raise CheckpointError(f"{path}: checkpoint metadata 'extra.input_shape' {shape} does not fit the "
                                      f"stored architecture ({e})") from None
            _require(path, len(classes) == scores, "extra.classes",
                     f"a list of {scores} names, one per score the network outputs", classes)
