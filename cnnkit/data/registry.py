"""load(spec): the one entry point that turns 'digits', 'cifar10:PATH', 'folder:PATH', ... into a Dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, TypedDict

from .cifar import load_cifar10
from .dataset import DataError, Dataset
from .digits import load_digits
from .folder import load_folder
from .idx import load_idx

NAMES = ("digits", "cifar10", "mnist", "fashion-mnist", "folder")
SPECS = "digits, cifar10[:PATH], mnist[:PATH], fashion-mnist[:PATH], folder:PATH"


class _Fetched(TypedDict):
    """The keyword arguments load_cifar10 and load_idx share."""

    path: str | None
    root: str | None
    download: bool
    val_fraction: float
    mirror: str | None
    checksums: Mapping[str, str] | None


def load(spec: str, root: str | None = None, download: bool = True, val_fraction: float = 0.1,
         *, mirror: str | None = None, checksums: Mapping[str, str] | None = None) -> Dataset:
    """spec -> Dataset whose splits hold X float32 (N, C, H, W) in [0, 1] and y int64 (N,).

    spec: 'digits' | 'cifar10' | 'cifar10:PATH' | 'mnist' | 'mnist:PATH' | 'fashion-mnist'
    | 'fashion-mnist:PATH' | 'folder:PATH'. A PATH is read as it is; without one, the
    files are looked for in root (default the cache, see ``download.cache_dir``) and
    downloaded when missing and download is true. mirror replaces the official base URL;
    checksums ({file name: MD5}) replaces the published ones, for mirrors and tests.
    """
    name, sep, path = spec.partition(":")
    name, path = name.strip().lower(), str(Path(path).expanduser()) if path else ""
    if name not in NAMES:
        raise DataError(f"unknown dataset {spec!r}; valid: {SPECS}")
    if sep and not path:
        raise DataError(f"dataset spec {spec!r} has an empty PATH; valid: {SPECS}")
    if path and not Path(path).exists():
        raise DataError(f"dataset path {path!r} does not exist; valid: {SPECS}")
    if name == "digits":
        if path:
            raise DataError(f"digits is embedded and takes no PATH; valid: {SPECS}")
        return load_digits(val_fraction)
    if name == "folder":
        if not path:
            raise DataError(f"folder needs a PATH, as in folder:images/; valid: {SPECS}")
        return load_folder(path, val_fraction)
    fetched = _Fetched(path=path or None, root=root, download=download, val_fraction=val_fraction,
                       mirror=mirror, checksums=checksums)
    return load_cifar10(**fetched) if name == "cifar10" else load_idx(name, **fetched)
