"""Dense evaluation: the converted net over a larger image equals the crop loop where no CONV pads."""

import numpy as np
import pytest

import cnnkit as ck
from cnnkit import models
from cnnkit.convert import convolutionalize, crop_loop, resize, slide

# The notes' example at a size CI runs quickly: VGG-shaped, 224 input, five POOL2 (total
# stride 32), few channels, and no zero padding, so dense and crop scores are equal.
VGG_SHAPED = "INPUT[224x224x3] -> [CONV3-4p0 -> RELU -> POOL2floor]*5 -> FC16 -> RELU -> DROPOUT -> FC10"


@pytest.fixture(scope="module")
def vgg():
    ck.manual_seed(0)
    net = ck.build(VGG_SHAPED)
    return net, convolutionalize(net)


def image(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def crops_at(net, x, cells, stride, size=224):
    """The original net on the crops at the given map cells, as one batch: (len(cells), K)."""
    batch = np.stack([x[:, stride * i:stride * i + size, stride * j:stride * j + size] for i, j in cells])
    return net.eval().forward(batch)


# cells of an 11x11 stride-16 map: corners, edges and every parity of (row, column)
CELLS_16 = [(0, 0), (0, 10), (10, 0), (10, 10), (1, 0), (0, 1), (1, 1), (5, 6), (6, 5), (3, 3), (7, 9), (9, 2)]


def test_the_notes_384_image_gives_a_6x6_map_equal_to_the_36_crops(vgg):
    net, conv = vgg
    x = image(3, 384, 384)
    r = slide(conv, x)
    assert r.score_map.shape == (10, 6, 6) and r.stride == (32, 32) and r.num_windows == 36
    assert r.ys.tolist() == r.xs.tolist() == [0, 32, 64, 96, 128, 160]
    assert r.uncovered == (0, 0)
    net.eval()
    for i, j in [(0, 0), (2, 3), (5, 5), (5, 0)]:
        crop = x[None, :, 32 * i:32 * i + 224, 32 * j:32 * j + 224]
        np.testing.assert_allclose(r.score_map[:, i, j], net.forward(crop)[0], atol=1e-4, rtol=0)
    assert np.abs(r.score_map - crop_loop(net, x)).max() <= 1e-4
    np.testing.assert_allclose(r.scores, r.score_map.mean(axis=(1, 2)), rtol=1e-6)
    assert np.abs(slide(net, x).score_map - r.score_map).max() == 0     # the original net converts on the fly


def test_a_remainder_is_left_uncovered_and_reported(vgg):
    net, conv = vgg
    x = image(3, 400, 390, seed=1)                  # (400 - 224)/32 = 5.5, (390 - 224)/32 = 5.19
    r = slide(conv, x)
    assert r.score_map.shape == (10, 6, 6)
    assert r.uncovered == (16, 6)                    # 400 - (160 + 224), 390 - (160 + 224)
    mask = r.levels[0].uncovered_mask()
    assert mask.shape == (400, 390) and mask.sum() == 400 * 390 - 384 * 384 and mask[399, 0] and not mask[383, 383]
    cells = [(0, 0), (5, 5), (0, 5), (5, 0), (3, 2)]
    np.testing.assert_allclose(np.stack([r.score_map[:, i, j] for i, j in cells]), crops_at(net, x, cells, 32),
                               atol=1e-4, rtol=0)
    assert r.levels[0].boxes()[5, 5].tolist() == [160, 160, 384, 384]


def test_stride_16_is_four_shifted_passes_interleaved(vgg):
    net, conv = vgg
    x = image(3, 384, 384, seed=2)
    r = slide(conv, x, stride=16)
    assert r.score_map.shape == (10, 11, 11) and r.stride == (16, 16)
    got = np.stack([r.score_map[:, i, j] for i, j in CELLS_16])
    np.testing.assert_allclose(got, crops_at(net, x, CELLS_16, 16), atol=1e-4, rtol=0)
    # the notes' recipe: the image, shifted 16 px in x, in y and in both, each at stride 32
    for dy, dx in [(0, 0), (0, 16), (16, 0), (16, 16)]:
        shifted = slide(conv, x[:, dy:, dx:]).score_map
        np.testing.assert_allclose(r.score_map[:, dy // 16::2, dx // 16::2], shifted, atol=1e-6, rtol=0)


def test_any_divisor_of_the_total_stride_and_nothing_else(vgg):
    net, conv = vgg
    x = image(2, 3, 240, 264, seed=3)                # a batch of two
    r = slide(conv, x, stride=(8, 16))
    assert r.score_map.shape == (2, 10, 3, 3) and r.stride == (8, 16)
    assert np.abs(r.score_map - crop_loop(net, x, stride=(8, 16))).max() <= 1e-4
    np.testing.assert_allclose(slide(conv, x[1], stride=(8, 16)).score_map, r.score_map[1], atol=1e-4, rtol=0)
    with pytest.raises(ck.ShapeError, match=r"stride 12 does not divide the net's total stride 32.*1, 2, 4, 8, 16, 32"):
        slide(conv, x, stride=12)
    with pytest.raises(ck.ShapeError, match=r"smaller than the 224x224 window"):
        slide(conv, x[:, :, :200])


def test_an_unpadded_zoo_net_lenet5_slides_exactly_at_every_stride():
    net = models.get("lenet5")                       # no padding anywhere; total stride 4
    x = image(1, 48, 44, seed=4)
    conv = convolutionalize(net)
    assert conv.total_stride == (4, 4)
    for s in (4, 2, 1):
        r = slide(conv, x, stride=s)
        assert r.score_map.shape == (10, 16 // s + 1, 12 // s + 1)
        assert np.abs(r.score_map - crop_loop(net, x, stride=s)).max() <= 1e-5


def test_gap_nets_slide_with_the_training_window():
    net = ck.build("INPUT[12x12x3] -> CONV3-8p0 -> RELU -> POOL2 -> GAP -> FC5")
    x = image(3, 20, 24, seed=5)
    r = slide(net, x)
    assert r.stride == (2, 2) and r.score_map.shape == (5, 5, 7)
    assert np.abs(r.score_map - crop_loop(net, x)).max() <= 1e-5


def test_padded_convs_see_real_neighbours_not_zeros():
    # The notes call the two "the same"; with P = 1 a window's border sees the image (and, one
    # layer up, activations computed from it) around it in the dense pass but zeros in its crop,
    # so they differ (benchmarks/slide.py --gap measures by how much). Without padding (every
    # other test here) they are equal.
    padded = ck.build("INPUT[16x16x1] -> CONV3-4 -> RELU -> POOL2 -> CONV3-4 -> RELU -> POOL2 -> FC3")
    x = image(1, 32, 32, seed=6)
    dense, crops = slide(padded, x).score_map, crop_loop(padded, x)
    assert dense.shape == crops.shape == (3, 5, 5)
    assert np.abs(dense - crops).max() > 1e-3
    # a ceil-mode pool's partial last window: the crop's edge, but full inside the large image
    x = image(1, 31, 31, seed=9)
    exact = ck.build("INPUT[15x15x1] -> CONV3-2p0 -> RELU -> POOL3/2 -> FC3")
    assert np.abs(slide(exact, x).score_map - crop_loop(exact, x)).max() <= 1e-5
    ceil = ck.build("INPUT[15x15x1] -> CONV2-2p0 -> RELU -> POOL3/2ceil -> FC3")
    assert np.abs(slide(ceil, x).score_map - crop_loop(ceil, x)).max() > 1e-3


def test_multi_scale_averages_each_scale_s_windows(vgg):
    _, conv = vgg
    x = image(3, 256, 288, seed=7)
    r = slide(conv, x, scales=(1.0, 1.5))
    a, b = r.levels
    assert a.score_map.shape == (10, 2, 3) and b.image_size == (384, 432) and b.score_map.shape == (10, 6, 7)
    assert r.num_windows == 6 + 42
    np.testing.assert_array_equal(b.score_map, slide(conv, resize(x[None], 1.5)[0]).score_map)
    np.testing.assert_allclose(r.scores, (a.score_map.mean(axis=(1, 2)) + b.score_map.mean(axis=(1, 2))) / 2,
                               rtol=1e-6)
    np.testing.assert_allclose(b.boxes()[0, 1], [0, 32 / 1.5, 224 / 1.5, 256 / 1.5])
    with pytest.raises(ck.ShapeError, match=r"at scale 0.5, smaller than the 224x224 window"):
        slide(conv, x, scales=(1.0, 0.5))
    with pytest.raises(ck.ShapeError, match=r"scales must be positive"):
        slide(conv, x, scales=(0.0,))


def test_resize_is_bilinear_with_pillow():
    ramp = np.tile(np.arange(8, dtype=np.float32), (2, 1, 6, 1))        # x = column index
    big = resize(ramp, 2.0)
    assert big.shape == (2, 1, 12, 16)
    # bilinear, pixel centres aligned: output column j samples input x = (j + 0.5)/2 - 0.5
    np.testing.assert_allclose(big[1, 0, 5, 2:14], (np.arange(2, 14) + 0.5) / 2 - 0.5, atol=1e-5)
    assert resize(ramp, 1.0) is ramp


def test_a_dense_pass_too_big_is_refused_before_memory_is_spent(vgg):
    _, conv = vgg
    with pytest.raises(ck.ShapeError, match=r"needs about .* GiB for the image and activations"):
        slide(conv, image(3, 384, 384), max_bytes=2**20)
    # checked before resizing: a 1000x scale would need terabytes
    with pytest.raises(ck.ShapeError, match=r"scale 1000.*more than the 4.0 GiB allowed"):
        slide(conv, image(3, 384, 384), scales=(1.0, 1000.0))


def test_torch_runs_the_same_dense_pass():
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    ck.manual_seed(1)
    net = ck.build("INPUT[32x32x3] -> CONV3-4 -> RELU -> POOL2 -> CONV3-6 -> RELU -> POOL2 -> FC12 -> RELU -> FC5")
    conv = convolutionalize(net)
    x = image(1, 3, 64, 48, seed=8)
    t = torch.from_numpy(x)
    for layer in conv.children():
        if isinstance(layer, ck.Conv2D):
            t = F.conv2d(t, torch.from_numpy(layer.params["weight"]), torch.from_numpy(layer.params["bias"]),
                         layer.stride, layer.padding)
        elif isinstance(layer, ck.MaxPool2D):
            t = F.max_pool2d(t, layer.kernel_size, layer.stride)
        else:
            t = F.relu(t)
    ours = slide(conv, x).score_map
    assert ours.shape == (1, 5, 9, 5)
    np.testing.assert_allclose(ours, t.numpy(), atol=1e-5, rtol=0)
