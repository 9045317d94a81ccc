"""Checkpoints: one safetensors file holds the network, its optimizer and the training state.

Tensors: ``model.<name>`` for every entry of ``net.state_dict()`` (weights and batch
norm buffers) and ``optim.<param name>.<slot>`` for the optimizer's arrays. Metadata
(str -> str, each value JSON): ``format``, ``architecture`` (``net.config()``), ``epoch``,
``step``, ``rng``, ``normalization``, ``optimizer`` (type, hyperparameters, steps),
``schedule`` (``schedule.config()``) and ``extra``.

Nothing here unpickles: loading reads JSON and raw arrays, so a file cannot run code.
Writes are atomic: a crash mid-write leaves the previous checkpoint as it was.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

import numpy as np

from .errors import CnnkitError
from .files import atomic_file

if TYPE_CHECKING:  # imported when used below; the checker only needs their types
    from .layers import Layer
    from .optim import Optimizer
    from .schedules import Schedule

FORMAT = "cnnkit.checkpoint/1"

# bit generators a checkpoint may name; restore_rng never looks names up beyond these
_BIT_GENERATORS: dict[str, type[np.random.BitGenerator]] = {c.__name__: c for c in (np.random.PCG64, np.random.PCG64DXSM, np.random.MT19937,
                                            np.random.Philox, np.random.SFC64)}


class CheckpointError(CnnkitError):
    """A checkpoint file that cannot be read or written as a cnnkit checkpoint."""


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
    if name == "MT19937":
        state["state"] = {**state["state"], "key": np.asarray(state["state"]["key"], dtype=np.uint32)}
    bit_generator.state = state
    return np.random.Generator(bit_generator)


# --- writing ------------------------------------------------------------------------

def _write_bytes(f: IO[bytes], data: bytes) -> None:
    """Write all of data to the open file (a seam the atomicity tests break)."""
    f.write(data)


def _atomic_write(path: str, data: bytes) -> None:
    """Replace path with data so that readers see the old file or the new one, never a mix."""
    with atomic_file(path) as f:
        _write_bytes(f, data)


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
        return optimizer_from_state(self.net if net is None else net, self.optimizer_state,
                                    self.meta["optimizer"])

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


def _read_metadata(path: str, data: bytes) -> dict[str, str]:
    """The header's __metadata__, after checking the safetensors framing by hand for clear errors."""
    what = "a cnnkit checkpoint (safetensors: 8-byte header length, JSON header, tensor data)"
    if len(data) < 8:
        raise CheckpointError(f"{path}: file is {len(data)} bytes, too short to be {what}")
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8:
        raise CheckpointError(
            f"{path}: header claims {n} bytes but only {len(data) - 8} follow; the file is truncated "
            f"or not {what}"
        )
    try:
        header = json.loads(data[8:8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointError(f"{path}: header is not valid JSON; expected {what}") from None
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(metadata, dict) or metadata.get("format") != json.dumps(FORMAT):
        raise CheckpointError(
            f"{path}: safetensors file without cnnkit metadata (expected format {FORMAT!r}); "
            "it was not written by save_checkpoint"
        )
    return metadata


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a checkpoint and rebuild its network from the stored architecture alone."""
    from safetensors.numpy import load

    from .layers import from_config  # importing the package registers every layer type

    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read checkpoint: {e.strerror}") from None
    metadata = _read_metadata(path, data)
    try:
        tensors = load(data)
    except Exception as e:  # safetensors raises its own error type for bad offsets and dtypes
        raise CheckpointError(f"{path}: tensor data is corrupt or truncated ({e}); expected a cnnkit checkpoint") from None
    try:
        meta = {k: json.loads(v) for k, v in metadata.items()}
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: metadata value is not JSON ({e})") from None
    for key in ("architecture", "epoch", "step", "rng", "normalization", "optimizer", "schedule", "extra"):
        meta.setdefault(key, None)

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
    return Checkpoint(path=path, net=net, model_state=model_state, optimizer_state=optimizer_state, meta=meta)

