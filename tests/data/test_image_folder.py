"""folder:PATH reads an ImageFolder tree of PNG/JPEG files with Pillow."""

import numpy as np
import pytest
from PIL import Image

from cnnkit.data import DataError, load


def make_tree(root, classes, n, size=(6, 5), mode="RGB", seed=0):
    """root/<class>/<i>.png with random pixels; returns {path name: uint8 array}."""
    rng = np.random.default_rng(seed)
    pixels = {}
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
            a = rng.integers(0, 256, shape, dtype=np.uint8)
            Image.fromarray(a, mode).save(root / c / f"{i:02d}.png")
            pixels[f"{c}/{i:02d}"] = a
    return pixels


def test_rgb_tree(tmp_path):
    pixels = make_tree(tmp_path, ["zebra", "ant", "cat"], n=10)
    ds = load(f"folder:{tmp_path}")
    assert ds.classes == ["ant", "cat", "zebra"]            # sorted by name
    assert ds.input_shape == (3, 5, 6)                      # (C, H, W) from 6 wide, 5 high
    assert (len(ds.train), len(ds.val), len(ds.test)) == (21, 3, 6)
    for split in (ds.train, ds.val, ds.test):
        assert split.X.dtype == np.float32 and split.y.dtype == np.int64
        assert np.bincount(split.y, minlength=3).min() >= 1  # stratified: every class everywhere
    # every image arrives exactly once, pixel for pixel, under its class's label
    X = np.concatenate([ds.train.X, ds.val.X, ds.test.X])
    y = np.concatenate([ds.train.y, ds.val.y, ds.test.y])
    want = {(ds.classes.index(k.split("/")[0]), (v.transpose(2, 0, 1) / np.float32(255)).tobytes())
            for k, v in pixels.items()}
    assert {(int(c), x.tobytes()) for c, x in zip(y, X)} == want


def test_grayscale_stays_one_channel_mixed_becomes_rgb(tmp_path):
    gray = make_tree(tmp_path / "g", ["a", "b"], n=5, mode="L")
    ds = load(f"folder:{tmp_path / 'g'}", val_fraction=0.0)
    assert ds.input_shape == (1, 5, 6) and len(ds.val) == 0
    X = np.concatenate([ds.train.X, ds.test.X])
    assert {x.tobytes() for x in X} == {(v[None] / np.float32(255)).tobytes() for v in gray.values()}
    make_tree(tmp_path / "m", ["a"], n=3, mode="L")
    make_tree(tmp_path / "m", ["b"], n=3, mode="RGB")
    mixed = load(f"folder:{tmp_path / 'm'}")
    assert mixed.input_shape == (3, 5, 6)
    gray_as_rgb = mixed.train.X[mixed.train.y == 0]
    np.testing.assert_array_equal(gray_as_rgb[:, 0], gray_as_rgb[:, 2])


def test_jpeg_is_read(tmp_path):
    (tmp_path / "x").mkdir()
    Image.fromarray(np.full((4, 4, 3), 200, np.uint8)).save(tmp_path / "x" / "a.JPG")
    Image.fromarray(np.full((4, 4, 3), 10, np.uint8)).save(tmp_path / "x" / "b.jpeg")
    (tmp_path / "x" / "notes.txt").write_text("ignored")
    ds = load(f"folder:{tmp_path}", val_fraction=0.0)
    X = np.concatenate([ds.train.X, ds.test.X])
    assert X.shape == (2, 3, 4, 4)
    assert sorted(np.round(X.mean(axis=(1, 2, 3)) * 255)) == pytest.approx([10, 200], abs=2)


def test_size_mismatch_names_the_file(tmp_path):
    make_tree(tmp_path, ["a", "b"], n=2)
    Image.fromarray(np.zeros((7, 7, 3), np.uint8)).save(tmp_path / "b" / "odd.png")
    with pytest.raises(DataError, match=r"odd.png: 7x7 pixels, expected 6x5"):
        load(f"folder:{tmp_path}")


def test_empty_missing_and_unreadable(tmp_path):
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="no class subfolders"):
        load(f"folder:{tmp_path / 'empty'}")
    with pytest.raises(DataError, match="does not exist"):
        load(f"folder:{tmp_path / 'nowhere'}")
    (tmp_path / "bad" / "a").mkdir(parents=True)
    (tmp_path / "bad" / "a" / "x.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="x.png: not a readable image"):
        load(f"folder:{tmp_path / 'bad'}")
