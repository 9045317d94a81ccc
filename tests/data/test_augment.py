"""Random crop with zero padding, horizontal flip, and per-channel normalisation."""

import json

import numpy as np
import pytest

from cnnkit.data import DataError, Normalize, augment, random_crop, random_flip


def batch(n=64, c=3, h=8, w=7, seed=0):
    return np.random.default_rng(seed).random((n, c, h, w), dtype=np.float32) + 0.5  # never 0


def test_crop_is_a_window_of_the_padded_image():
    x, pad = batch(), 2
    out = random_crop(x, pad, np.random.default_rng(1))
    assert out.shape == x.shape and out.dtype == x.dtype
    padded = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    offsets = set()
    for i in range(len(x)):
        hits = [(dy, dx) for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)
                if np.array_equal(out[i], padded[i, :, dy:dy + 8, dx:dx + 7])]
        assert len(hits) == 1
        offsets.add(hits[0])
    assert len(offsets) > 10                       # offsets vary from image to image
    # padding shows as zeros, real pixels are never zero here
    assert ((out == 0).sum(axis=1) % 3 == 0).all()


def test_crop_is_deterministic_for_a_seed_and_leaves_input_alone():
    x = batch()
    before = x.copy()
    a = random_crop(x, 4, np.random.default_rng(7))
    b = random_crop(x, 4, np.random.default_rng(7))
    c = random_crop(x, 4, np.random.default_rng(8))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    np.testing.assert_array_equal(x, before)
    np.testing.assert_array_equal(random_crop(x, 0, np.random.default_rng(0)), x)
    with pytest.raises(DataError, match="pad"):
        random_crop(x, -1, np.random.default_rng(0))


def test_flip_mirrors_about_half_the_images():
    x = batch(n=1000, h=2, w=3)
    out = random_flip(x, np.random.default_rng(0))
    flipped = np.array([np.array_equal(o, i[:, :, ::-1]) for o, i in zip(out, x)])
    kept = np.array([np.array_equal(o, i) for o, i in zip(out, x)])
    assert (flipped ^ kept).all()
    assert 400 < flipped.sum() < 600
    np.testing.assert_array_equal(random_flip(x, np.random.default_rng(0), p=0.0), x)
    np.testing.assert_array_equal(random_flip(x, np.random.default_rng(0), p=1.0), x[..., ::-1])
    np.testing.assert_array_equal(out, random_flip(x, np.random.default_rng(0)))


def test_augment_composes_crop_and_flip():
    x = batch()
    np.testing.assert_array_equal(augment(x, np.random.default_rng(3), pad=0, flip=False), x)
    a = augment(x, np.random.default_rng(3), pad=2)
    rng = np.random.default_rng(3)
    np.testing.assert_array_equal(a, random_flip(random_crop(x, 2, rng), rng))


def test_normalize_fits_the_training_set_only():
    rng = np.random.default_rng(0)
    train = rng.normal([0.2, 0.5, 0.8], [0.1, 0.2, 0.3], (500, 4, 4, 3)).transpose(0, 3, 1, 2)
    train = train.astype(np.float32)
    norm = Normalize.fit(train)
    out = norm(train)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out.mean(axis=(0, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(out.std(axis=(0, 2, 3)), 1, atol=1e-4)
    np.testing.assert_allclose(norm.mean, train.mean(axis=(0, 2, 3)), rtol=1e-5)
    test = np.ones((2, 3, 4, 4), np.float32)
    np.testing.assert_allclose(norm(test)[:, 1], (1 - norm.mean[1]) / norm.std[1], rtol=1e-6)


def test_normalize_round_trips_through_plain_json():
    norm = Normalize([0.5, 0.25], [0.1, 0.2])
    d = norm.to_dict()
    assert d == json.loads(json.dumps(d))
    assert all(type(v) is float for v in d["mean"] + d["std"])
    back = Normalize.from_dict(json.loads(json.dumps(d)))
    x = batch(c=2)
    np.testing.assert_array_equal(back(x), norm(x))
    assert "mean=" in repr(back)


def test_normalize_errors_and_constant_channel():
    with pytest.raises(DataError, match="one value per channel"):
        Normalize([0.1, 0.2], [1.0])
    with pytest.raises(DataError, match="std > 0"):
        Normalize([0.1], [0.0])
    with pytest.raises(DataError, match="expected"):
        Normalize.from_dict({"mean": [0.1]})
    with pytest.raises(DataError, match=r"\(N, 1, H, W\)"):
        Normalize([0.1], [1.0])(batch(c=3))
    flat = Normalize.fit(np.full((2, 1, 3, 3), 0.5, np.float32))   # std 0 -> eps, no nan
    assert np.isfinite(flat(np.zeros((1, 1, 3, 3), np.float32))).all()
