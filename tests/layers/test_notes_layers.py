"""The notes' layer arithmetic, claims S1-S14 of shared/spec.md, as executable checks."""

import numpy as np
import pytest

import cnnkit as ck
from cnnkit.layers import reference
from cnnkit.layers.im2col import im2col
from cnnkit.layers.layout import nhwc
from cnnkit.layers.pool import WindowOffsets

rng = np.random.default_rng(1)


def test_s1_fc_neuron_weights():
    assert ck.FC(32 * 32 * 3, 1).params["weight"].shape == (1, 3072)
    assert ck.FC(200 * 200 * 3, 1).params["weight"].size == 120_000


def test_s2_cifar_example_volumes():
    net = ck.Sequential(ck.Conv2D(3, 12, 3, padding=1), ck.ReLU(), ck.MaxPool2D(2), ck.FC(16 * 16 * 12, 10))
    shapes, shape = [], (3, 32, 32)
    for layer in net:
        shape = layer.output_shape(shape)
        shapes.append(shape)
    assert shapes == [(12, 32, 32), (12, 32, 32), (12, 16, 16), (10,)]
    assert net.forward(rng.standard_normal((2, 3, 32, 32), dtype=np.float32)).shape == (2, 10)


def test_s3_receptive_field_weights():
    conv = ck.Conv2D(3, 1, 5)            # 5x5 on 32x32x3
    assert conv.params["weight"][0].size == 75 and conv.params["bias"].size == 1
    assert ck.Conv2D(20, 1, 3).params["weight"][0].size == 180   # 3x3 on 16x16x20


@pytest.mark.parametrize("W,F,S,P,expected", [(7, 3, 1, 0, 5), (7, 3, 2, 0, 3), (5, 3, 1, 1, 5), (5, 3, 2, 1, 3)])
def test_s4_output_size(W, F, S, P, expected):
    assert ck.output_size(W, F, S, P) == expected
    conv = ck.Conv2D(1, 1, (1, F), stride=(1, S), padding=(0, P))
    assert conv.forward(np.ones((1, 1, 1, W), np.float32)).shape == (1, 1, 1, expected)


def test_s4_stride_3_is_invalid():
    with pytest.raises(ck.ShapeError, match=r"\(5 - 3 \+ 2\)/3 \+ 1 = 2.33333 is not an integer"):
        ck.output_size(5, 3, 3, 1)


def test_s5_the_4_point_5_case():
    conv = ck.Conv2D(3, 2, 3, stride=2)
    with pytest.raises(ck.ShapeError) as err:
        conv.forward(np.zeros((1, 3, 10, 10), np.float32))
    message = str(err.value)
    assert "Conv2D" in message and "(10 - 3 + 0)/2 + 1 = 4.5 is not an integer" in message
    assert "rounding='floor'" in message and "Use an input of 11" in message
    assert "Use P = 1" in str(pytest.raises(ck.ShapeError, ck.output_size, 10, 3, 3, 0).value)
    floor = ck.Conv2D(3, 2, 3, stride=2, rounding="floor")
    assert floor.forward(np.zeros((1, 3, 10, 10), np.float32)).shape == (1, 2, 4, 4)


def test_s6_alexnet_conv1_sharing():
    conv = ck.Conv2D(3, 96, 11, stride=4)
    assert conv.output_shape((3, 227, 227)) == (96, 55, 55)
    neurons = 55 * 55 * 96
    assert neurons == 290_400
    per_neuron = conv.params["weight"][0].size
    assert per_neuron == 363
    assert neurons * (per_neuron + 1) == 105_705_600            # without sharing
    assert conv.params["weight"].size == 34_848 and conv.num_params() == 34_944


def test_s6_locally_connected_unshared_count():
    # The same count from the layer that really does not share: H2*W2*K*(F*F*D1 + 1).
    lc = ck.LocallyConnected2D(3, 4, 5, (15, 15), stride=2)
    assert lc.output_shape((3, 15, 15)) == (4, 6, 6)
    assert lc.num_params() == 6 * 6 * 4 * (5 * 5 * 3 + 1)


def test_s7_numpy_example():
    # Notes: X.shape (11, 11, 4) indexed X[x, y, depth]; F=5, S=2, P=0 -> V is 4x4.
    X = rng.standard_normal((11, 11, 4))
    W0, W1 = rng.standard_normal((5, 5, 4)), rng.standard_normal((5, 5, 4))
    b0, b1 = 0.5, -0.25
    conv = ck.Conv2D(4, 2, 5, stride=2).astype(np.float64)
    # NCHW: x[0, d, y, x] = X[x, y, d]; weight[k, d, y, x] = Wk[x, y, d]
    conv.params["weight"] = np.stack([W0.transpose(2, 1, 0), W1.transpose(2, 1, 0)])
    conv.params["bias"] = np.array([b0, b1])
    out = conv.forward(X.transpose(2, 1, 0)[None])
    V = out[0].transpose(2, 1, 0)             # back to V[x, y, d]
    assert V.shape == (4, 4, 2)
    assert np.isclose(V[0, 0, 0], np.sum(X[:5, :5, :] * W0) + b0)
    assert np.isclose(V[1, 0, 0], np.sum(X[2:7, :5, :] * W0) + b0)
    assert np.isclose(V[2, 0, 0], np.sum(X[4:9, :5, :] * W0) + b0)
    assert np.isclose(V[3, 0, 0], np.sum(X[6:11, :5, :] * W0) + b0)
    assert np.isclose(V[0, 0, 1], np.sum(X[:5, :5, :] * W1) + b1)
    assert np.isclose(V[0, 1, 1], np.sum(X[:5, 2:7, :] * W1) + b1)
    assert np.isclose(V[2, 3, 1], np.sum(X[4:9, 6:11, :] * W1) + b1)


def test_s8_conv_demo():
    conv = ck.Conv2D(3, 2, 3, stride=2, padding=1)
    assert conv.forward(rng.standard_normal((1, 3, 5, 5), dtype=np.float32)).shape == (1, 2, 3, 3)


def test_s9_im2col_shapes_and_product():
    x = rng.standard_normal((1, 3, 227, 227), dtype=np.float32)
    X_col = im2col(np.ascontiguousarray(nhwc(x)), (11, 11), (4, 4), (55, 55))[0].T
    assert X_col.shape == (363, 3025)
    conv = ck.Conv2D(3, 96, 11, stride=4)
    W_row = conv.params["weight"].transpose(0, 2, 3, 1).reshape(96, -1)   # im2col's column order
    assert W_row.shape == (96, 363)
    product = np.dot(W_row, X_col)
    assert product.shape == (96, 3025)
    expected = conv.forward(x)[0] - conv.params["bias"][:, None, None]
    np.testing.assert_allclose(product.reshape(96, 55, 55), expected, rtol=1e-4, atol=1e-4)


def test_s10_dilation_mapping():
    # Notes' "dilation 1": w0*x0 + w1*x2 + w2*x4  ==  cnnkit/PyTorch dilation=2.
    conv = ck.Conv2D(1, 1, (1, 3), dilation=(1, 2), bias=False).astype(np.float64)
    w = np.array([2.0, 3.0, 5.0])
    conv.params["weight"] = w.reshape(1, 1, 1, 3)
    x = np.array([1.0, 10.0, 100.0, 1000.0, 10000.0]).reshape(1, 1, 1, 5)
    assert conv.forward(x).item() == 2 * 1 + 3 * 100 + 5 * 10000
    dense = ck.Conv2D(1, 1, (1, 3), dilation=1, bias=False).astype(np.float64)
    dense.params["weight"] = w.reshape(1, 1, 1, 3)
    np.testing.assert_allclose(dense.forward(x).ravel(), [2 + 30 + 500, 20 + 300 + 5000, 200 + 3000 + 50000])


@pytest.mark.parametrize("layers,field", [(2, 5), (3, 7)])
def test_s11_stacked_3x3_receptive_field(layers, field):
    net = ck.Sequential(*[ck.Conv2D(1, 1, 3) for _ in range(layers)]).astype(np.float64)
    for conv in net:
        conv.params["weight"] = np.ones((1, 1, 3, 3))
    x = np.zeros((1, 1, 9, 9))
    out = net.forward(x)
    dout = np.zeros_like(out)
    dout[0, 0, out.shape[2] // 2, out.shape[3] // 2] = 1.0
    seen = np.argwhere(net.backward(dout)[0, 0] != 0)
    assert tuple(seen.max(axis=0) - seen.min(axis=0) + 1) == (field, field)


def test_s11_parameter_counts():
    C = 8
    three = ck.Sequential(*[ck.Conv2D(C, C, 3, padding=1, bias=False) for _ in range(3)])
    one = ck.Conv2D(C, C, 7, padding=3, bias=False)
    assert three.num_params() == 27 * C * C and one.num_params() == 49 * C * C


def test_s12_max_pool_sizes():
    pool = ck.MaxPool2D(2, 2)
    assert pool.output_shape((64, 224, 224)) == (64, 112, 112)
    x = rng.standard_normal((2, 3, 8, 8), dtype=np.float32)
    out = pool.forward(x)
    assert out.size == x.size // 4            # 75% of the activations are discarded
    np.testing.assert_array_equal(out, reference.max_pool2d(x, 2, 2))
    assert ck.MaxPool2D(3, 2).output_shape((5, 7, 7)) == (5, 3, 3)   # (W1 - F)/S + 1


def test_non_overlapping_pools_read_tiles_of_the_input_in_place():
    """F = S windows that tile the input take the reshape fast path: every offset of every
    window is a view of the input's memory, no padded copy; others read strided slices."""
    xp = rng.standard_normal((2, 8, 6, 3))                                # NHWC
    tiled = ck.MaxPool2D(2)
    window = tiled.window((3, 8, 6))
    cells = dict(WindowOffsets._windows(xp, window))
    assert window.tiles and len(cells) == 4
    for (i, j), k in (((0, 0), 0), ((0, 1), 1), ((1, 0), 2), ((1, 1), 3)):
        assert np.shares_memory(cells[k], xp)
        np.testing.assert_array_equal(cells[k], xp[:, i::2, j::2])
    x = rng.standard_normal((2, 3, 8, 6))
    np.testing.assert_array_equal(tiled.forward(x), reference.max_pool2d(x, 2, 2))
    assert not ck.MaxPool2D(3, 2).window((3, 7, 7)).tiles                    # overlapping
    assert not ck.MaxPool2D(2, rounding="floor").window((3, 7, 7)).tiles     # a remainder


def test_s13_max_backward_routes_to_switches():
    x = rng.standard_normal((2, 3, 6, 6))
    pool = ck.MaxPool2D(2)
    out = pool.forward(x)
    dx = pool.backward(np.ones_like(out))
    windows = x.reshape(2, 3, 3, 2, 3, 2).transpose(0, 1, 2, 4, 3, 5).reshape(2, 3, 3, 3, 4)
    grads = dx.reshape(2, 3, 3, 2, 3, 2).transpose(0, 1, 2, 4, 3, 5).reshape(2, 3, 3, 3, 4)
    expected = np.zeros_like(grads)
    np.put_along_axis(expected, windows.argmax(-1)[..., None], 1.0, axis=-1)
    np.testing.assert_array_equal(grads, expected)


def test_s13_ties_go_to_the_first_maximum():
    pool = ck.MaxPool2D(2)
    pool.forward(np.zeros((1, 1, 2, 2)))
    np.testing.assert_array_equal(pool.backward(np.ones((1, 1, 1, 1)))[0, 0], [[1, 0], [0, 0]])


@pytest.mark.parametrize("F,P,D", [(3, 1, 1), (5, 2, 1), (3, 0, 1), (3, 2, 2)])
def test_s14_conv_backward_is_conv_with_flipped_filters(F, P, D):
    conv = ck.Conv2D(3, 4, F, padding=P, dilation=D).astype(np.float64)
    x = rng.standard_normal((2, 3, 8, 8))
    dout = rng.standard_normal(conv.forward(x).shape)
    dx = conv.backward(dout)
    flipped = conv.params["weight"][:, :, ::-1, ::-1].transpose(1, 0, 2, 3)   # (D1, K, F, F)
    full = D * (F - 1) - P
    expected = reference.conv2d(dout, flipped, None, padding=(full, full), dilation=(D, D))
    np.testing.assert_allclose(dx, expected, atol=1e-10)


CONFIGS = [
    dict(C=3, K=4, F=3, S=1, P=1, D=1, G=1, H=7), dict(C=3, K=4, F=3, S=2, P=1, D=1, G=1, H=9),
    dict(C=4, K=6, F=(3, 2), S=(2, 1), P=(1, 0), D=1, G=2, H=8), dict(C=2, K=3, F=3, S=1, P=2, D=2, G=1, H=6),
    dict(C=3, K=3, F=3, S=1, P=1, D=1, G=3, H=5), dict(C=5, K=2, F=1, S=1, P=0, D=1, G=1, H=4),
    dict(C=3, K=2, F=11, S=4, P=0, D=1, G=1, H=27),
    dict(C=1, K=3, F=(5, 3), S=1, P=(2, 0), D=(1, 2), G=1, H=9),   # channels-first, shifted runs
]


@pytest.mark.parametrize("cfg", CONFIGS)
def test_fast_conv_equals_the_notes_definition(cfg):
    conv = ck.Conv2D(cfg["C"], cfg["K"], cfg["F"], cfg["S"], cfg["P"], cfg["D"], cfg["G"], rounding="floor")
    conv.params["bias"] = rng.standard_normal(cfg["K"], dtype=np.float32)
    x = rng.standard_normal((2, cfg["C"], cfg["H"], cfg["H"] + 1), dtype=np.float32)
    expected = reference.conv2d(x.astype(np.float64), conv.params["weight"].astype(np.float64),
                                conv.params["bias"], conv.stride, conv.padding, conv.dilation, conv.groups)
    np.testing.assert_allclose(conv.forward(x), expected, rtol=1e-4, atol=1e-4)
    with ck.engine(block_bytes=100):                              # bands of single rows
        np.testing.assert_allclose(conv.forward(x), expected, rtol=1e-4, atol=1e-4)
