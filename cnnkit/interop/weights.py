"""PyTorch state dicts in and out of cnnkit networks: torchvision's names or cnnkit's own.

Files: ``.safetensors`` (read with NumPy alone) and ``.pth``/``.pt`` (torch.save's zip
format, read through the restricted unpickler of ``pth.py``: no torch needed, no code run).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from types import ModuleType
from typing import Any

import numpy as np

from ..layers import Layer, LoadResult
from . import pth, safetensors_io
from .errors import WeightsError
from .names import torchvision_names

SUFFIXES = {".pth": pth, ".pt": pth, ".bin": pth, ".safetensors": safetensors_io}
NAMES = ("auto", "torchvision", "cnnkit")
# keys torchvision writes that carry no weights cnnkit has: the batch counter of every batch
# norm, and GoogLeNet's auxiliary classifiers (training-time heads; ImageNet weights keep them)
_IGNORED_SUFFIXES = (".num_batches_tracked",)
_IGNORED_PREFIXES = ("aux1.", "aux2.")


def _module(path: str) -> ModuleType:
    """The reader/writer module (pth or safetensors_io) for a file, by its suffix."""
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in SUFFIXES:
        raise WeightsError(f"{path}: unknown weights format {suffix or '(no suffix)'!r}; expected one of "
                           f"{', '.join(sorted(SUFFIXES))}")
    return SUFFIXES[suffix]


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """key -> array from a .safetensors or .pth/.pt file, without torch and without running code.

    A checkpoint that wraps its weights (``{"state_dict": {...}}``, ``{"model": {...}}``) is
    unwrapped; DataParallel's ``module.`` prefix is dropped."""
    path = os.fspath(path)
    obj = _module(path).load(path)
    for wrapper in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, np.ndarray) for v in obj.values()):
        raise WeightsError(f"{path}: expected a state dict (names -> tensors), got "
                           f"{type(obj).__name__} with {sorted(type(v).__name__ for v in obj.values())[:3] if isinstance(obj, dict) else ''}")
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def _as_arrays(state: Mapping[str, Any], where: str) -> dict[str, np.ndarray]:
    """A dict of NumPy arrays from arrays or torch tensors (torch itself is not imported)."""
    out = {}
    for k, v in state.items():
        if not isinstance(k, str):
            raise WeightsError(f"{where}: keys must be strings, got {k!r}")
        if hasattr(v, "detach") and hasattr(v, "cpu"):  # a torch.Tensor
            v = v.detach().cpu()
            v = v.float().numpy() if str(v.dtype) == "torch.bfloat16" else v.numpy()
        out[k] = np.asarray(v)
    return out


def _resolve_names(net: Layer, state: Mapping[str, np.ndarray], names: str) -> dict[str, str]:
    """cnnkit key -> key in state, by the naming asked for (auto: cnnkit's if they all match)."""
    if names not in NAMES:
        raise WeightsError(f"names must be one of {NAMES}, got {names!r}")
    own = {k: k for k in net.state_dict()}
    if names == "cnnkit" or (names == "auto" and all(k in state for k in own)):
        return own
    return torchvision_names(net)


def load_torch_weights(net: Layer, path_or_dict: str | os.PathLike | Mapping[str, Any], *,
                       names: str = "auto", strict: bool = True, source: str | None = None) -> LoadResult:
    """Load a PyTorch state dict (a file or a dict of arrays/tensors) into net, in place.

    Keys are torchvision's (``features.0.weight``, ``layer1.0.downsample.1.running_mean``,
    ``inception3a.branch2.0.conv.weight``) or cnnkit's own; ``num_batches_tracked`` and
    GoogLeNet's ``aux1.``/``aux2.`` heads are accepted and ignored. Shapes are checked key
    by key and the first mismatch or missing key is named (strict=False returns missing
    keys instead). Weights are copied as the layers' dtype (float32 by default).
    ``source`` names a dict's origin in errors (a file names itself).
    Returns (missing_keys, unexpected_keys) in the state dict's names, like PyTorch."""
    if isinstance(path_or_dict, (str, os.PathLike)):
        where = os.fspath(path_or_dict)
        state = read_state_dict(where)
    else:
        where = source or "state dict"
        state = _as_arrays(path_or_dict, where)
    mapping = _resolve_names(net, state, names)
    targets = net.state_dict()
    values: dict[str, np.ndarray] = {}
    missing: list[str] = []
    for key, target in targets.items():
        source = mapping[key]
        if source not in state:
            if strict:
                raise WeightsError(f"{where}: missing key {source!r} (for cnnkit's {key!r}, shape {target.shape})")
            missing.append(source)
            continue
        value = state[source]
        if value.shape != target.shape:
            raise WeightsError(f"{where}: {source!r} has shape {tuple(value.shape)}, cnnkit's {key!r} "
                               f"expects {target.shape}")
        if not np.issubdtype(value.dtype, np.floating):
            raise WeightsError(f"{where}: {source!r} has dtype {value.dtype}, expected floating point")
        values[key] = value
    used = set(mapping.values())
    unexpected = [k for k in state if k not in used and not k.endswith(_IGNORED_SUFFIXES)
                  and not k.startswith(_IGNORED_PREFIXES)]
    if strict and unexpected:
        more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        raise WeightsError(f"{where}: unexpected key {unexpected[0]!r}{more}: the network has no array for it")
    result = net.load_state_dict(values, strict=False)
    return type(result)(missing, unexpected)  # load_state_dict's own (missing, unexpected) type


def torch_state_dict(net: Layer, names: str = "torchvision") -> dict[str, np.ndarray]:
    """net's arrays under torchvision's (or cnnkit's) names, module by module as PyTorch
    orders them; each batch norm also gets torchvision's ``num_batches_tracked`` (int64 0)."""
    if names not in ("torchvision", "cnnkit"):
        raise WeightsError(f"names must be 'torchvision' or 'cnnkit', got {names!r}")
    mapping = torchvision_names(net) if names == "torchvision" else {k: k for k in net.state_dict()}
    state = net.state_dict()
    out: dict[str, np.ndarray] = {}
    prefixes: dict[str, list[str]] = {}
    for key in state:
        prefixes.setdefault(key.rsplit(".", 1)[0], []).append(key)
    # cnnkit lists parameters first; regroup by layer so each module's arrays are together
    for layer_keys in prefixes.values():
        for key in layer_keys:
            out[mapping[key]] = np.asarray(state[key], order="C")
    if names == "torchvision":
        for key in list(out):
            if key.endswith(".running_var"):
                out[key[: -len("running_var")] + "num_batches_tracked"] = np.array(0, dtype=np.int64)
    return out


def save_torch_weights(net: Layer, path: str | os.PathLike, names: str = "torchvision") -> None:
    """Write net's weights as a PyTorch state dict (.pth/.pt, torch.save's format, or .safetensors).

    With names='torchvision' the keys are those torchvision's model of the same
    architecture loads with ``load_state_dict(..., strict=True)`` (GoogLeNet:
    ``googlenet(aux_logits=False)``). Written atomically, without torch."""
    path = os.fspath(path)
    module = _module(path)
    state = torch_state_dict(net, names)
    module.save(path, state)
