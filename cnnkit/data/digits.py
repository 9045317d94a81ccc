"""The embedded default: 1,797 real 8x8 handwritten digits (UCI, as shipped by scikit-learn)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from .dataset import Dataset, split_by_index

CSV = Path(__file__).with_name("digits.csv.gz")
CLASSES = [str(d) for d in range(10)]
SEED = 0               # fixed forever: the split of digits never changes
TEST_FRACTION = 0.2


def read_digits(path: Path = CSV) -> tuple[np.ndarray, np.ndarray]:
    """digits.csv.gz (rows of 64 pixels in 0..16, then the label) -> uint8 (N, 1, 8, 8), int64 (N,)."""
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    return table[:, :-1].reshape(-1, 1, 8, 8).astype(np.uint8), table[:, -1]


def load_digits(val_fraction: float = 0.1) -> Dataset:
    """Dataset 'digits': X (N, 1, 8, 8) = pixel / 16, stratified 70/10/20 split with a fixed seed."""
    pixels, labels = read_digits()
    train, val, test = split_by_index(pixels / np.float32(16), labels, TEST_FRACTION,
                                      val_fraction, SEED)
    return Dataset("digits", CLASSES, train, val, test)
