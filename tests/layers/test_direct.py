"""The direct lowering (loops compiled from LLVM IR, cnnkit[fast]) in float32 against the
exact (float64) convolution, and the rule that picks it."""

import numpy as np
import pytest

import cnnkit as ck
from cnnkit.layers import kernels
from cnnkit.layers.kernels import jit

pytestmark = pytest.mark.skipif(not jit.available(), reason="llvmlite is not installed")

rng = np.random.default_rng(5)

CASES = {   # (C, K, F, P, image H x W, batch[, dilation]): tiles cut at rows' ends, dX 8 or 16k channels wide
    "cifar 32->32 3x3": (32, 32, 3, 1, (9, 11), 3),
    "image 3->16 5x5": (3, 16, 5, 2, (8, 7), 2),
    "5->32 3x3 p0": (5, 32, 3, 0, (7, 13), 2),
    "20->48 3x5 p(1,2)": (20, 48, (3, 5), (1, 2), (6, 9), 2),
    "32->16 3x3 p2 one image": (32, 16, 3, 2, (5, 6), 1),
    "16->32 7x7 p3": (16, 32, 7, 3, (10, 10), 2),
    "64->64 3x3 d2 p2": (64, 64, 3, 2, (9, 12), 2, 2),
    "8->16 3x3 d(2,3) p(1,3)": (8, 16, 3, (1, 3), (11, 10), 2, (2, 3)),
    "16->32 5x5 d3 p0": (16, 32, 5, 0, (14, 15), 1, 3),
}


def exact_and_direct(C, K, F, P, size, N, D=1, threads=1, channels_last=False, bias=True):
    conv = ck.Conv2D(C, K, F, padding=P, dilation=D, bias=bias)
    if bias:
        conv.params["bias"] = rng.standard_normal(K).astype(np.float32)
    exact = ck.Conv2D(C, K, F, padding=P, dilation=D, bias=bias).astype(np.float64)
    exact.params.update({k: v.astype(np.float64) for k, v in conv.params.items()})
    x = rng.standard_normal((N, C, *size)).astype(np.float32)
    if channels_last:       # as a network's layers pass activations
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    dout = rng.standard_normal((N, *conv.output_shape((C, *size)))).astype(np.float32)
    with ck.engine(conv="blocked"):
        want = exact.forward(x.astype(np.float64)), exact.backward(dout.astype(np.float64)), dict(exact.grads)
    with ck.engine(conv="direct", threads=threads, min_share_bytes=1):
        out = conv.forward(x)
        assert conv._cache[0].name == "direct"
        got = out, conv.backward(dout), {k: v.copy() for k, v in conv.grads.items()}
    return got, want


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("name", CASES)
def test_direct_equals_the_exact_conv_within_float32_rounding(name, threads):
    for channels_last, bias in [(False, True), (True, False)]:
        case = CASES[name] + (1,) * (7 - len(CASES[name]))
        (out, dx, grads), (out64, dx64, grads64) = exact_and_direct(*case, threads, channels_last, bias)
        assert out.dtype == dx.dtype == np.float32 and grads.keys() == grads64.keys()
        for a, b in [(out, out64), (dx, dx64), *((grads[k], grads64[k]) for k in grads64)]:
            assert a.shape == b.shape
            assert np.abs(a - b).max() <= 2e-6 * np.abs(b).max()


def test_direct_fuses_bn_relu_and_the_shortcut_into_its_epilogue():
    conv = ck.Conv2D(16, 32, 3, padding=1)
    x = rng.standard_normal((2, 16, 6, 7)).astype(np.float32)
    add = np.ascontiguousarray(rng.standard_normal((2, 6, 7, 32)).astype(np.float32)).transpose(0, 3, 1, 2)
    scale = rng.uniform(0.5, 2, 32).astype(np.float32)
    bias = rng.standard_normal(32).astype(np.float32)
    w = conv.window(x.shape[1:])
    direct = kernels._registry["conv"]["direct"]
    xp = direct.pad(x, w)
    fused = direct.forward(xp, conv.params["weight"], bias, w, scale=scale, relu=True, add=add)
    plain = direct.forward(xp, conv.params["weight"], None, w)
    want = np.maximum(plain * scale[:, None, None] + bias[:, None, None] + add, 0)
    np.testing.assert_allclose(fused, want, rtol=1e-6, atol=1e-6)


def test_the_rule_picks_direct_for_few_channel_convs():
    def picked(C, K, F=3, stride=1, input_grad=True, dilation=1, **engine):
        with ck.engine(**engine):
            conv = ck.Conv2D(C, K, F, stride=stride, padding=dilation * (F // 2), dilation=dilation)
            return kernels.conv_lowering(conv.window((C, 33, 33)), 8, input_grad=input_grad).name

    assert picked(32, 32) == "direct"                       # the CIFAR-10 net's layers
    assert picked(16, 32, F=5) == "direct"
    assert picked(3, 16, F=5) == "shifted"                  # an image's CONV whose dX is wanted
    assert picked(3, 16, F=5, input_grad=False) == "direct"     # a network's first layer
    assert picked(64, 64) != "direct"                       # wider: im2col's GEMM runs near peak
    assert picked(64, 64, direct_max_channels=64) == "direct"
    assert picked(64, 64, dilation=2) == "direct"           # dilated: no copies to the phases and back
    assert picked(128, 128, dilation=2) == "phases"         # wider: Winograd on the phases pays for them
    assert picked(64, 64, dilation=2, direct_dilated_max_channels=32) == "phases"
    assert picked(32, 32, stride=2) == "blocked"
    assert picked(32, 24) == "blocked"                      # filters not 16k
    assert picked(32, 32, F=1) == "blocked"                 # a 1x1 CONV is a GEMM already
    assert picked(32, 32, compiled=False) == "blocked"      # engine(compiled=False): NumPy only
    with pytest.raises(ck.CnnkitError, match="direct.*stride 1"):
        with ck.engine(conv="direct"):
            ck.Conv2D(8, 16, 3, stride=2).forward(np.zeros((1, 8, 9, 9), np.float32))


def test_without_llvmlite_the_rule_falls_back(monkeypatch):
    monkeypatch.setattr(jit, "_missing", True)
    assert kernels.conv_lowering(ck.Conv2D(32, 32, 3, padding=1).window((32, 8, 8)), 2).name == "blocked"
    assert "llvmlite" in kernels._registry["conv"]["direct"].why_not(ck.Conv2D(32, 32, 3).window((32, 8, 8)))


def test_the_cifar_net_trains_the_same_by_direct_and_by_im2col():
    """One SGD step of the notes' CIFAR-10 net: the rule's direct lowering and blocked im2col
    give the same loss and weights within float32 rounding."""
    def step(conv):
        ck.manual_seed(3)
        net = ck.build("INPUT[16x16x3] -> [CONV3-32 -> RELU]*2 -> POOL2 -> [CONV3-32 -> RELU] -> POOL2 -> FC10")
        x = np.random.default_rng(0).standard_normal((4, 3, 16, 16)).astype(np.float32)
        with ck.engine(conv=conv, threads=2):
            loss, d = ck.softmax_loss(net.forward(x), np.arange(4))
            net.backward(d)
        return loss, {name: g.copy() for name, _, g in net.params_and_grads()}

    (a, ga), (b, gb) = step("auto"), step("blocked")
    assert abs(a - b) <= 1e-5 * abs(b)
    for name in gb:
        assert np.abs(ga[name] - gb[name]).max() <= 1e-5 * np.abs(gb[name]).max(), name


@pytest.mark.parametrize("shape", [(2, 8, 3, 8), (3, 13, 5, 11), (2, 32, 7, 16), (1, 5, 4, 6), (4, 64, 9, 23)])
def test_the_compiled_transpose_makes_nchw_channels_last_exactly(shape):
    """jit.channels_last: 8 x 8 blocks by shuffles, the last W % 8 columns and C % 8
    channels by NumPy, into a padded buffer's interior (the border untouched)."""
    N, C, H, W = shape
    x = rng.standard_normal(shape).astype(np.float32)
    buffer = np.full((N, H + 2, W + 3, C + 1), 7, np.float32)
    jit.channels_last(x, buffer[:, 1:H + 1, 2:W + 2, :C])
    np.testing.assert_array_equal(buffer[:, 1:H + 1, 2:W + 2, :C], x.transpose(0, 2, 3, 1))
    interior = np.zeros(buffer.shape, bool)
    interior[:, 1:H + 1, 2:W + 2, :C] = True
    assert (buffer[~interior] == 7).all()


@pytest.mark.parametrize("threads", [1, 2])
def test_padding_an_nchw_batch_channels_last_takes_the_compiled_transpose(threads, monkeypatch):
    from cnnkit.layers.layout import pad_nhwc
    x = rng.standard_normal((6, 24, 10, 17)).astype(np.float32)
    calls = []
    monkeypatch.setattr(jit, "channels_last", lambda s, d, f=jit.channels_last: (calls.append(s.shape), f(s, d)))
    with ck.engine(threads=threads, copy_share_bytes=1):
        padded = pad_nhwc(x.transpose(0, 2, 3, 1), (1, 2))
        with ck.engine(compiled=False):
            want = pad_nhwc(x.transpose(0, 2, 3, 1), (1, 2))
    np.testing.assert_array_equal(padded, want)
    assert sum(shape[0] for shape in calls) == 6 and len(calls) == threads    # each thread its images
