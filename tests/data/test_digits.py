"""digits: the embedded 8x8 handwritten digits and their fixed split."""

import gzip
import hashlib
import subprocess
import sys

import numpy as np

from cnnkit.data import load
from cnnkit.data.dataset import stratified_split
from cnnkit.data.digits import CSV, SEED, read_digits

# pinned: the split of digits must never change
SIZES = (1295, 143, 359)
SPLIT_MD5 = "c12e88dd93acd69e83878351bcce576a"


def test_counts_classes_and_dtypes():
    ds = load("digits")
    assert ds.name == "digits" and ds.classes == [str(d) for d in range(10)]
    assert ds.input_shape == (1, 8, 8)
    assert (len(ds.train), len(ds.val), len(ds.test)) == SIZES and sum(SIZES) == 1797
    for split in (ds.train, ds.val, ds.test):
        assert split.X.dtype == np.float32 and split.y.dtype == np.int64
        assert split.X.shape[1:] == (1, 8, 8) and 0.0 <= split.X.min() and split.X.max() <= 1.0
        assert set(np.unique(split.y)) == set(range(10))
    assert ds.train.X.max() == 1.0                  # 16 / 16
    y = np.concatenate([ds.train.y, ds.val.y, ds.test.y])
    # stratified: the test share of every class is within one image of 20%
    counts, test_counts = np.bincount(y), np.bincount(ds.test.y)
    assert (np.abs(test_counts - 0.2 * counts) <= 1).all()


def test_pixels_match_the_csv():
    with gzip.open(CSV, "rt") as f:
        first = [int(v) for v in f.readline().split(",")]
    pixels, labels = read_digits()
    assert pixels.shape == (1797, 1, 8, 8) and labels.shape == (1797,)
    assert first[:8] == [0, 0, 5, 13, 9, 1, 0, 0] and first[-1] == 0
    assert pixels[0, 0, 0, 2] == 5 and pixels[0, 0, 0, 3] == 13 and labels[0] == 0
    np.testing.assert_array_equal(pixels[0].reshape(-1), first[:64])
    # image 0 is in the data set as pixel / 16, with its label
    ds = load("digits")
    image0 = np.array(first[:64], np.float32).reshape(1, 8, 8) / 16
    where = [(s, i) for s in ("train", "val", "test") for i, x in enumerate(getattr(ds, s).X)
             if np.array_equal(x, image0)]
    assert len(where) == 1 and getattr(ds, where[0][0]).y[where[0][1]] == 0


def test_split_never_changes():
    _, labels = read_digits()
    train, val, test = stratified_split(labels, 0.2, 0.1, SEED)
    assert np.array_equal(np.sort(np.concatenate([train, val, test])), np.arange(1797))
    digest = hashlib.md5(b"".join(p.astype("<i8").tobytes() for p in (train, val, test))).hexdigest()
    assert digest == SPLIT_MD5 and test[:5].tolist() == [5, 9, 12, 14, 16]
    a, b = load("digits"), load("digits")
    np.testing.assert_array_equal(a.test.X, b.test.X)


def test_import_and_digits_need_numpy_only():
    code = ("import sys, cnnkit.data; cnnkit.data.load('digits'); "
            "print(sorted(m for m in ('sklearn', 'PIL', 'tqdm') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
