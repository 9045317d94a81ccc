"""What every loader returns: a Dataset of train/val/test Splits, and the helpers that make them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, NamedTuple

import numpy as np

from ..errors import CnnkitError


class DataError(CnnkitError, ValueError):
    """A data set that cannot be found, downloaded or read; the message names the file."""


class Split(NamedTuple):
    """One part of a data set: X float32 (N, C, H, W) in [0, 1], y int64 (N,)."""

    X: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:  # len(split) counts examples, not the two fields
        return len(self.y)


@dataclass(frozen=True)
class Dataset:
    """A named data set: class names and train / val / test Splits sharing one input shape."""

    name: str
    classes: list[str]
    train: Split
    val: Split
    test: Split

    def check_fits(self, where: str, input_shape: tuple[int, ...], num_classes: int, data: str | None = None) -> None:
        """Refuse a trained model that takes other images or has another number of classes
        than this data set (the one check for eval, resume and the tools that load runs)."""
        from ..layers import format_volume
        data = data or self.name
        if tuple(int(d) for d in input_shape) != self.input_shape:
            raise DataError(f"{where}: the model takes {format_volume(tuple(input_shape))} images but {data!r} "
                            f"has {format_volume(self.input_shape)}")
        if int(num_classes) != len(self.classes):
            raise DataError(f"{where}: the model has {num_classes} classes but {data!r} has {len(self.classes)}")

    @property
    def input_shape(self) -> tuple[int, ...]:
        """(C, H, W) of one image."""
        return tuple(int(d) for d in self.train.X.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def make_split(images: np.ndarray, labels: np.ndarray) -> Split:
    """uint8 or float (N, C, H, W) images and (N,) labels -> Split(float32 in [0, 1], int64)."""
    X = np.asarray(images)
    if X.dtype == np.uint8:
        X = X.astype(np.float32)
        X /= 255    # in place: CIFAR-10's float copy alone is 700 MB
    return Split(np.ascontiguousarray(X, dtype=np.float32), np.asarray(labels, dtype=np.int64))


def hold_out_last(split: Split, val_fraction: float) -> tuple[Split, Split]:
    """Split (N, ...) -> (train, val): val is the last round(val_fraction * N) examples."""
    n_val = round(_fraction(val_fraction, "val_fraction") * len(split))
    cut = len(split) - n_val
    return Split(split.X[:cut], split.y[:cut]), Split(split.X[cut:], split.y[cut:])


def stratified_split(labels: np.ndarray, test_fraction: float, val_fraction: float,
                     seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N,) labels -> sorted index arrays (train, val, test), each class divided in proportion.

    test takes test_fraction of every class, val takes val_fraction of what remains. The
    permutation comes from ``default_rng(seed)``, so a seed always gives the same split.
    """
    test_fraction = _fraction(test_fraction, "test_fraction")
    val_fraction = _fraction(val_fraction, "val_fraction")
    rng = np.random.default_rng(seed)
    parts: tuple[list, list, list] = ([], [], [])
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_test = round(test_fraction * len(idx))
        n_val = round(val_fraction * (len(idx) - n_test))
        parts[2].append(idx[:n_test])
        parts[1].append(idx[n_test:n_test + n_val])
        parts[0].append(idx[n_test + n_val:])
    train, val, test = (np.sort(np.concatenate(p)).astype(np.int64) if p else np.zeros(0, np.int64)
                        for p in parts)
    return train, val, test


def split_by_index(images: np.ndarray, labels: np.ndarray, test_fraction: float,
                   val_fraction: float, seed: int) -> tuple[Split, Split, Split]:
    """(N, C, H, W) images, (N,) labels -> stratified (train, val, test) Splits."""
    train, val, test = (make_split(images[i], labels[i])
                        for i in stratified_split(labels, test_fraction, val_fraction, seed))
    return train, val, test


def iterate_minibatches(X: np.ndarray, y: np.ndarray, batch_size: int,
                        rng: np.random.Generator | int | None = None,
                        shuffle: bool = True) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(N, ...) X and (N,) y -> batches (B, ...), (B,) covering every example once; the last may be short.

    With shuffle, the order comes from ``rng`` (a Generator, or a seed for ``default_rng``).
    """
    if len(X) != len(y):
        raise DataError(f"iterate_minibatches: X has {len(X)} examples but y has {len(y)}")
    if int(batch_size) != batch_size or batch_size < 1:
        raise DataError(f"iterate_minibatches: batch_size must be a positive integer, got {batch_size!r}")
    order = np.random.default_rng(rng).permutation(len(X)) if shuffle else np.arange(len(X))
    for start in range(0, len(X), int(batch_size)):
        idx = order[start:start + int(batch_size)]
        yield X[idx], y[idx]


def _fraction(value: float, name: str) -> float:
    if not 0.0 <= value < 1.0:
        raise DataError(f"{name} must be in [0, 1), got {value!r}")
    return float(value)
