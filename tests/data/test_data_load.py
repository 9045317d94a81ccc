"""load(spec): the one entry point, its errors, and iterate_minibatches."""

import numpy as np
import pytest
from datafakes import cifar_files, write

from cnnkit.data import DataError, Dataset, Split, iterate_minibatches, load
from cnnkit.errors import CnnkitError


@pytest.mark.parametrize("spec", ["imagenet", "cifar100:x", "", "mnist-fashion"])
def test_unknown_name_lists_valid_specs_on_one_line(spec):
    with pytest.raises(DataError) as e:
        load(spec)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"unknown dataset {spec!r}")
    for name in ("digits", "cifar10", "mnist", "fashion-mnist", "folder:PATH"):
        assert name in msg


@pytest.mark.parametrize("spec, words", [
    ("cifar10:/no/such/place", "does not exist"),
    ("mnist:", "empty PATH"),
    ("folder", "needs a PATH"),
    ("digits:/tmp", "takes no PATH"),
])
def test_bad_paths(spec, words):
    with pytest.raises(DataError, match=words) as e:
        load(spec)
    assert "valid: digits" in str(e.value)


def test_data_error_is_a_cnnkit_value_error():
    assert issubclass(DataError, CnnkitError) and issubclass(DataError, ValueError)
    with pytest.raises(DataError, match=r"val_fraction must be in \[0, 1\)"):
        load("digits", val_fraction=1.0)


def test_dataset_shape_and_split_tuple(tmp_path):
    ds = load(f"CIFAR10:{write(tmp_path / 'c', cifar_files(per_batch=2))}", val_fraction=0.0)
    assert isinstance(ds, Dataset) and isinstance(ds.train, Split)
    X, y = ds.train                                 # a Split unpacks as (X, y)
    assert X is ds.train.X and y is ds.train.y and len(ds.train) == 10
    assert ds.val.X.shape == (0, 3, 32, 32) and ds.val.y.dtype == np.int64
    assert ds.num_classes == 10 and ds.input_shape == (3, 32, 32)


def test_minibatches_cover_everything_once_in_seeded_order():
    X = np.arange(23 * 2, dtype=np.float32).reshape(23, 2)
    y = np.arange(23)
    batches = list(iterate_minibatches(X, y, 5, rng=np.random.default_rng(0)))
    assert [len(b[1]) for b in batches] == [5, 5, 5, 5, 3]
    seen = np.concatenate([b[1] for b in batches])
    assert sorted(seen) == list(range(23)) and not np.array_equal(seen, np.arange(23))
    for xb, yb in batches:
        np.testing.assert_array_equal(xb, X[yb])    # pairs stay together
    again = np.concatenate([b[1] for b in iterate_minibatches(X, y, 5, rng=np.random.default_rng(0))])
    np.testing.assert_array_equal(seen, again)
    seeded = np.concatenate([b[1] for b in iterate_minibatches(X, y, 5, rng=0)])
    np.testing.assert_array_equal(seeded, again)
    ordered = np.concatenate([b[1] for b in iterate_minibatches(X, y, 10, shuffle=False)])
    np.testing.assert_array_equal(ordered, y)


def test_minibatch_errors():
    with pytest.raises(DataError, match="3 examples but y has 2"):
        next(iterate_minibatches(np.zeros((3, 1)), np.zeros(2), 1))
    with pytest.raises(DataError, match="batch_size"):
        next(iterate_minibatches(np.zeros((3, 1)), np.zeros(3), 0))
