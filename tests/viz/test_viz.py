"""cnnkit.viz: the tiling arithmetic on known arrays, every picture rendered (size, not blank),
the activations against the layers run by hand, and `cnnkit viz` on a real run folder."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import cnnkit as ck
from cnnkit import viz
from cnnkit.cli import main
from cnnkit.data import load
from cnnkit.data.dataset import Dataset, Split
from cnnkit.train import TrainConfig, Trainer
from cnnkit.viz.plots import write_atomic

SMALL = "INPUT[8x8x1] -> CONV3-4 -> RELU -> POOL2 -> CONV3-6 -> RELU -> FC10"


def png(path) -> np.ndarray:
    """The PNG as an (H, W, channels) array; asserts it is a real, non-blank picture."""
    with Image.open(path) as im:
        assert im.format == "PNG"
        a = np.asarray(im.convert("RGB"), dtype=np.float64)
    assert a.shape[0] >= 200 and a.shape[1] >= 300, a.shape
    assert a.std() > 20, f"{path} looks blank (pixel std {a.std():.1f})"
    return a


# --- tiling arithmetic ----------------------------------------------------------------------

def test_tile_k_sits_at_row_k_div_cols_column_k_mod_cols():
    K, h, w, cols, pad = 7, 3, 4, 3, 2
    images = np.arange(K * h * w, dtype=np.float32).reshape(K, h, w) + 1  # every pixel distinct, none 0
    grid = viz.tile(images, cols=cols, pad=pad, fill=0.0)
    rows = 3  # ceil(7 / 3)
    assert grid.shape == (rows * (h + pad) - pad, cols * (w + pad) - pad)
    for k in range(K):
        i, j = divmod(k, cols)
        y, x = viz.tile_origin(k, cols, h, w, pad)
        assert (y, x) == (i * (h + pad), j * (w + pad))
        np.testing.assert_array_equal(grid[y:y + h, x:x + w], images[k])
    # every pixel not inside a tile is the fill: 7 tiles' pixels are all the non-zero ones
    assert np.count_nonzero(grid) == K * h * w
    assert viz.grid_shape(7) == (3, 3) and viz.grid_shape(96) == (10, 10) and viz.grid_shape(5, cols=2) == (3, 2)


def test_rgb_filters_are_tiled_one_per_filter_normalised_each():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((5, 3, 2, 2)).astype(np.float32)
    w[3] *= 100  # a filter's scale must not change another's tile
    ft = viz.filter_tiles(w)
    assert ft.images.shape == (5, 2, 2, 3) and ft.cols == 3 and ft.note == ""
    grid = viz.tile(ft.images, ft.cols, pad=1, fill=1.0)
    for k in range(5):
        y, x = viz.tile_origin(k, ft.cols, 2, 2, 1)
        f = w[k].transpose(1, 2, 0)
        np.testing.assert_allclose(grid[y:y + 2, x:x + 2], (f - f.min()) / (f.max() - f.min()), rtol=1e-6)


def test_deeper_filters_are_grey_per_input_channel_capped_with_a_note():
    w = np.arange(4 * 6 * 2 * 2, dtype=np.float32).reshape(4, 6, 2, 2)
    ft = viz.filter_tiles(w, max_filters=3, max_channels=5)
    assert ft.images.shape == (15, 2, 2) and ft.cols == 5
    assert ft.note == "showing 3 of 4 filters x 5 of 6 input channels"
    grid = viz.tile(ft.images, ft.cols, pad=1)
    for k in range(3):            # row k: filter k
        shown = w[k, :5]
        norm = (shown - shown.min()) / (shown.max() - shown.min())
        for c in range(5):        # column c: its slice on input channel c
            y, x = viz.tile_origin(k * 5 + c, 5, 2, 2, 1)
            np.testing.assert_allclose(grid[y:y + 2, x:x + 2], norm[c], rtol=1e-6)
    grey = viz.filter_tiles(np.ones((2, 1, 3, 3)))
    assert grey.images.shape == (2, 3, 3) and np.all(grey.images == 0.5)  # a constant filter is mid grey


def test_tile_refuses_what_it_cannot_draw():
    with pytest.raises(viz.VizError, match=r"\(N, h, w\)"):
        viz.tile(np.zeros((2, 3)))
    with pytest.raises(viz.VizError, match="CONV weight"):
        viz.filter_tiles(np.zeros((3, 3, 3)))


# --- what the net computes --------------------------------------------------------------------

def test_layer_volumes_are_the_layers_outputs_in_order_with_the_notes_labels():
    ck.manual_seed(0)
    net = ck.build(SMALL)
    x = np.random.default_rng(1).random((1, 8, 8), dtype=np.float32)
    norm = {"mean": [0.25], "std": [0.5]}
    vols = viz.layer_volumes(net, x, norm)
    assert [v.label for v in vols] == ["CONV3-4 [8x8x4]", "RELU [8x8x4]", "POOL2 [4x4x4]", "CONV3-6 [4x4x6]",
                                       "RELU [4x4x6]", "FC10 [1x1x10]"]
    net.eval()
    out = (x[None] - 0.25) / 0.5
    for layer, v in zip(net.children(), vols):
        out = layer.forward(out)
        np.testing.assert_allclose(v.data, out[0], rtol=1e-6)
    assert net.training is False  # it was in eval mode before the call, and is left so
    net.train()
    viz.layer_volumes(net, x)
    assert net.training is True
    top = viz.top_k(vols[-1].data, [str(i) for i in range(10)], 5)
    p = np.exp(out[0] - out[0].max()) / np.exp(out[0] - out[0].max()).sum()
    assert [c for c, _ in top] == [str(i) for i in np.argsort(-p)[:5]]
    np.testing.assert_allclose([q for _, q in top], np.sort(p)[::-1][:5], rtol=1e-6)


def test_every_picture_renders_readable_and_not_blank(tmp_path):
    ck.manual_seed(0)
    net = ck.build(SMALL)
    ds = load("digits")
    x = ds.test.X[0]
    vols = viz.layer_volumes(net, x)
    top = viz.top_k(vols[-1].data, ds.classes)
    paths = [
        viz.plot_filters(net[0].params["weight"], tmp_path / "f0.png", "CONV3-4"),
        viz.plot_filters(net[3].params["weight"], tmp_path / "f3.png", "CONV3-6"),
        viz.plot_filters(ck.build("INPUT[16x16x3] -> CONV5-12")[0].params["weight"], tmp_path / "rgb.png"),
        viz.plot_activations(vols, x, tmp_path / "acts.png", ds.classes),
        viz.plot_predictions(x, top, tmp_path / "top5.png"),
        viz.plot_confusion(np.diag(np.arange(1, 11)) + 1, ds.classes, tmp_path / "cm.png"),
        viz.plot_curves([{"kind": "step", "epoch": 1, "step": s, "loss": 2.0 / s, "acc": 0.1, "lr": 0.1,
                          "images_per_s": 1.0} for s in range(1, 30)]
                        + [{"kind": "epoch", "epoch": 1, "step": 29, "train_loss": 0.5, "train_acc": 0.6,
                            "val_acc": 0.5, "test_acc": 0.55, "seconds": 1.0}], tmp_path / "curves.png"),
    ]
    for p in paths:
        png(p)
    acts = png(tmp_path / "acts.png")
    assert acts.shape[1] > acts.shape[0]  # one column per layer: a wide figure, as in the notes
    rgb = png(tmp_path / "rgb.png")
    assert np.abs(rgb[..., 0] - rgb[..., 1]).max() > 50  # colour tiles for an RGB first layer
    assert not list(tmp_path.glob(".*"))  # atomic writes leave no temporary files behind


def test_plot_write_is_atomic_on_failure(tmp_path):
    target = tmp_path / "cm.png"
    target.write_bytes(b"old")
    with pytest.raises(viz.VizError):
        viz.plot_confusion(np.zeros((3, 3)), ["a", "b"], target)

    def half_then_fail(f):
        f.write(b"\x89PNG half a picture")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(target, half_then_fail)
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["cm.png"]


# --- the command --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    ds = load("digits")
    small = Dataset("digits", ds.classes, Split(ds.train.X[:300], ds.train.y[:300]),
                    Split(ds.val.X[:50], ds.val.y[:50]), Split(ds.test.X[:100], ds.test.y[:100]))
    out = tmp_path_factory.mktemp("run")
    Trainer(TrainConfig(model=SMALL, epochs=2, batch_size=50, lr=0.01), out, dataset=small, progress=False).fit()
    return out


def test_cnnkit_viz_draws_a_run_folder(run_dir, tmp_path, capsys):
    img = tmp_path / "three.png"
    Image.fromarray((load("digits").test.X[3, 0] * 255).astype(np.uint8)).save(img)
    out = tmp_path / "pics"
    assert main(["viz", str(run_dir), str(img), "--out", str(out)]) == 0
    printed = capsys.readouterr().out.split()
    names = sorted(p.name for p in out.iterdir())
    assert names == ["activations-three.png", "confusion.png", "curves.png", "filters-0.png", "filters-3.png",
                     "top5-three.png"]
    assert sorted(printed) == sorted(str(out / n) for n in names)
    for n in names:
        png(out / n)


def test_cnnkit_viz_uses_a_test_image_without_one_and_errors_in_one_line(run_dir, tmp_path, capsys):
    assert main(["viz", str(run_dir / "checkpoint.safetensors"), "--out", str(tmp_path), "--index", "7"]) == 0
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["activations-test7.png", "filters-0.png", "filters-3.png", "top5-test7.png"]
    capsys.readouterr()
    assert main(["viz", str(run_dir), "--index", "100000", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("cnnkit viz: error: --index 100000 is outside the") and "\n" not in err
    assert main(["viz", str(tmp_path / "nothing")]) == 1
    assert "no such checkpoint" in capsys.readouterr().err
    bad = tmp_path / "wide.png"
    Image.new("L", (9, 8)).save(bad)
    assert main(["viz", str(run_dir), str(bad), "--out", str(tmp_path)]) == 1
    assert "9x8 but the model takes 8x8" in capsys.readouterr().err
