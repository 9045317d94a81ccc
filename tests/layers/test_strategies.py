"""Every kernel strategy equals the reference loops on the same cases, forward and backward;
the reference itself passes gradient checks; the engine's options are scoped and checked."""

import numpy as np
import pytest

import cnnkit as ck
from cnnkit.layers import kernels

rng = np.random.default_rng(11)

CONV_CASES = {
    "3x3 s1 p1": (dict(in_channels=6, out_channels=5, kernel_size=3, padding=1), (2, 6, 7, 8)),
    "image 5x5 p2": (dict(in_channels=3, out_channels=4, kernel_size=5, padding=2), (2, 3, 9, 7)),
    "image dilated": (dict(in_channels=1, out_channels=3, kernel_size=(3, 2), padding=(2, 0), dilation=(2, 1)),
                      (2, 1, 9, 8)),
    "s2 groups": (dict(in_channels=4, out_channels=6, kernel_size=3, stride=2, padding=1, groups=2), (2, 4, 9, 9)),
    "11x11 s4": (dict(in_channels=3, out_channels=2, kernel_size=11, stride=4), (1, 3, 27, 27)),
    "7x7 s2 p3 stem": (dict(in_channels=3, out_channels=4, kernel_size=7, stride=2, padding=3), (2, 3, 15, 11)),
    "5x3 s(2,1) floor": (dict(in_channels=2, out_channels=3, kernel_size=(5, 3), stride=(2, 1), padding=(1, 2),
                              rounding="floor"), (2, 2, 10, 7)),
    "1x1": (dict(in_channels=5, out_channels=3, kernel_size=1), (2, 5, 4, 4)),
    "3x3 p0 odd tiles": (dict(in_channels=4, out_channels=3, kernel_size=3), (2, 4, 9, 8)),
    "3x3 p2 no bias": (dict(in_channels=3, out_channels=7, kernel_size=3, padding=2, bias=False), (1, 3, 5, 6)),
    "floor no bias": (dict(in_channels=3, out_channels=2, kernel_size=3, stride=2, bias=False, rounding="floor"),
                      (2, 3, 8, 8)),
    "wide 3x3 p1": (dict(in_channels=5, out_channels=130, kernel_size=3, padding=1), (2, 5, 6, 5)),
    "wide 1x1": (dict(in_channels=8, out_channels=144, kernel_size=1), (1, 8, 5, 5)),
    "wide dX 3x3": (dict(in_channels=136, out_channels=6, kernel_size=3, padding=1), (1, 136, 4, 4)),
    # strided and wide: a small one's dW and dX_col shared by channels and columns
    "wide 3x3 s2": (dict(in_channels=6, out_channels=130, kernel_size=3, stride=2, padding=1), (2, 6, 7, 7)),
    "wide 1x1 s2": (dict(in_channels=5, out_channels=136, kernel_size=1, stride=2), (1, 5, 7, 7)),
    # widening at stride 1 (K >= 2 D1): dX by col2im, with and without groups
    "widening 3x3 p1": (dict(in_channels=6, out_channels=13, kernel_size=3, padding=1), (2, 6, 8, 7)),
    "widening 5x5 groups": (dict(in_channels=6, out_channels=12, kernel_size=5, padding=2, groups=3, dilation=(1, 2)),
                            (2, 6, 9, 11)),
    # dilated 3x3: phases of unequal sizes, padding below and above the dilation
    "3x3 d2 p2": (dict(in_channels=5, out_channels=4, kernel_size=3, padding=2, dilation=2), (2, 5, 9, 8)),
    "3x3 d(3,2) p1": (dict(in_channels=6, out_channels=3, kernel_size=3, padding=1, dilation=(3, 2)), (2, 6, 11, 10)),
    "3x3 d2 p0 no bias": (dict(in_channels=4, out_channels=5, kernel_size=3, dilation=2, bias=False), (1, 4, 7, 9)),
    # fewer outputs than the dilation: some phases are empty, and their input cells get dX = 0
    "3x3 d3 1x2 outputs": (dict(in_channels=3, out_channels=2, kernel_size=3, dilation=3), (2, 3, 7, 8)),
}

OTHER_CASES = {
    "max 2/2": (lambda: ck.MaxPool2D(2), (2, 3, 6, 8)),
    "max 3/2 p1 ceil": (lambda: ck.MaxPool2D(3, 2, padding=1, rounding="ceil"), (2, 3, 8, 8)),
    "max 3/1 p1": (lambda: ck.MaxPool2D(3, 1, padding=1), (2, 3, 7, 6)),
    "avg 3/2": (lambda: ck.AvgPool2D(3, 2), (2, 3, 7, 7)),
    "avg 3/2 p1 ceil": (lambda: ck.AvgPool2D(3, 2, padding=1, rounding="ceil"), (2, 2, 8, 8)),
    "l2 2/2": (lambda: ck.L2Pool2D(2), (2, 3, 6, 6)),
    "l2 3/2 ceil": (lambda: ck.L2Pool2D(3, 2, rounding="ceil"), (2, 2, 8, 8)),
    "lrn 5": (lambda: ck.LRN(5, alpha=1e-2), (2, 7, 3, 3)),
    "lrn 4": (lambda: ck.LRN(4, alpha=0.1, beta=0.5, k=1.0), (2, 6, 2, 2)),
    "locally connected": (lambda: ck.LocallyConnected2D(3, 4, 3, input_size=(7, 5), stride=(2, 1), padding=1),
                          (2, 3, 7, 5)),
}


def run(layer, x, dout, **options):
    with ck.engine(**options):
        out = layer.forward(x)
        dx = layer.backward(dout)
    return out, dx, {k: v.copy() for k, v in layer.grads.items()}


def assert_same(fast, ref):
    for a, b in zip(fast[:2], ref[:2]):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)
    assert fast[2].keys() == ref[2].keys()
    for k in ref[2]:
        np.testing.assert_allclose(fast[2][k], ref[2][k], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", CONV_CASES)
def test_every_conv_lowering_equals_the_reference(name):
    kwargs, shape = CONV_CASES[name]
    conv = ck.Conv2D(**kwargs).astype(np.float64)
    if "bias" in conv.params:
        conv.params["bias"] = rng.standard_normal(conv.out_channels)
    x = rng.standard_normal(shape)
    dout = rng.standard_normal((shape[0], *conv.output_shape(shape[1:])))
    ref = run(conv, x, dout, conv="reference")
    window = conv.window(shape)
    tried = []
    for lowering in kernels.available("conv"):
        if lowering.name == "reference" or lowering.why_not(window):
            continue
        tried.append(lowering.name)
        assert_same(run(conv, x, dout, conv=lowering.name), ref)
        assert_same(run(conv, x, dout, conv=lowering.name, compiled=False), ref)   # NumPy's passes (no numba)
        assert_same(run(conv, x, dout, conv=lowering.name, block_bytes=64, shifted_block_bytes=64), ref)
        assert_same(run(conv, x, dout, conv=lowering.name, compiled=False, shifted_backward_bytes=64), ref)
        # two threads sharing blocks of rows, then one block whose GEMM they share by channels
        assert_same(run(conv, x, dout, conv=lowering.name, threads=2, min_share_bytes=1, channel_share_rows=0), ref)
        assert_same(run(conv, x, dout, conv=lowering.name, threads=2, min_share_bytes=1,
                        channel_share_rows=10**6), ref)
    assert tried, "no fast lowering computes this case"
    assert kernels.conv_lowering(window, shape[0]).name in tried        # the rule picks one of them


def test_the_rule_picks_shifted_rows_for_images_and_blocks_otherwise():
    assert kernels.conv_lowering(ck.Conv2D(3, 8, 3, padding=1).window((3, 8, 8)), 2).name == "shifted"
    assert kernels.conv_lowering(ck.Conv2D(3, 8, 3, stride=2).window((3, 9, 9)), 2).name == "blocked"
    # a 1x1 CONV of an NCHW batch (as a user passes it) multiplies it as it is; inside a
    # network, where activations live channels-last, blocked takes it
    one = ck.Conv2D(16, 8, 1)
    assert kernels.conv_lowering(one.window((16, 5, 5)), 2, nchw_input=True).name == "pointwise"
    assert kernels.conv_lowering(one.window((16, 5, 5)), 2).name == "blocked"
    assert kernels.conv_lowering(ck.Conv2D(16, 8, 3).window((16, 5, 5)), 2, nchw_input=True).name == "blocked"
    x = rng.standard_normal((2, 16, 5, 5)).astype(np.float32)
    one.forward(x)
    assert one._cache[0].name == "pointwise" and np.shares_memory(one._cache[1], x)     # kept as it is, no copy
    one.forward(np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2))
    assert one._cache[0].name == "blocked"
    assert kernels.conv_lowering(ck.Conv2D(16, 8, 3).window((16, 8, 8)), 2).name == "blocked"
    with ck.engine(strategy="reference"):
        assert kernels.conv_lowering(ck.Conv2D(16, 8, 3).window((16, 8, 8)), 2).name == "reference"
    with pytest.raises(ck.CnnkitError, match="shifted.*stride 1"):
        with ck.engine(conv="shifted"):
            ck.Conv2D(3, 8, 3, stride=2).forward(np.zeros((1, 3, 9, 9), np.float32))


def test_blocked_gives_dx_by_col2im_where_dy_lowered_would_be_twice_x_col_or_the_conv_is_small():
    blocked = kernels._registry["conv"]["blocked"]

    def flips(D1, K, size, batch, F=3, threads=2, **kwargs):
        with ck.engine(threads=threads):
            return blocked.flips(ck.Conv2D(D1, K, F, padding=F // 2, **kwargs).window((D1, size, size)), batch, 4)

    assert flips(32, 32, 32, 64)                    # the CIFAR net's layers: the flipped convolution
    assert flips(64, 127, 27, 16, F=5)
    assert not flips(64, 192, 27, 16, F=5)          # AlexNet's 5x5: dY lowered is 3x X_col
    assert not flips(512, 512, 7, 8)                # small: its GEMMs shared by channels
    assert flips(512, 512, 7, 8, threads=1)         # one thread: not small
    assert flips(64, 256, 28, 8, F=1)               # 1x1: no scatter to save
    assert not flips(16, 64, 33, 8, stride=2)       # strided: col2im always
    assert flips(16, 64, 400, 8)                    # col2im's blocks would be bands of one image


def test_the_rule_picks_winograd_for_wide_3x3_layers_over_many_tiles():
    def rule(D1, K, size, batch, **kwargs):
        return kernels.conv_lowering(ck.Conv2D(D1, K, 3, **kwargs).window((D1, size, size)), batch).name

    for compiled in (False, True):
        with ck.engine(compiled=compiled, winograd_tile=2):
            assert rule(64, 64, 56, 8, padding=1) == "winograd2"        # ResNet's first 3x3 layers at batch 8
        with ck.engine(compiled=compiled):
            assert rule(256, 256, 14, 8, padding=1) == "winograd2"      # 7x7 tiles >= 256/16
            assert rule(512, 512, 7, 32, padding=1) == "blocked"        # 4x4 tiles < 512/16: too few for its GEMMs
            assert rule(32, 64, 64, 64, padding=1) == "blocked"         # too narrow
            assert rule(64, 64, 65, 64, stride=2, padding=1) == "blocked"
            assert rule(256, 256, 14, 1, padding=1) == "blocked"        # 49 tiles < 256 channels; 0.12 G
            # dilated: the phases go to Winograd where their undilated CONVs would
            direct = compiled and kernels.jit.available()      # the direct loops take dilated CONVs of <= 64
            assert rule(64, 64, 56, 32, padding=2, dilation=2) == ("direct" if direct else "phases")
            with ck.engine(direct_dilated_max_channels=0):
                assert rule(64, 64, 56, 32, padding=2, dilation=2) == "phases"   # four 28x28 phases
                assert rule(32, 32, 56, 32, padding=2, dilation=2) == "blocked"  # too narrow
            assert rule(512, 512, 14, 32, padding=2, dilation=2) == "blocked"   # 7x7 phases: 4x4 tiles < 512/16
    with ck.engine(compiled=False):   # NumPy's transforms: one image has too few multiply-adds (0.12 G)
        assert rule(64, 64, 56, 1, padding=1) == "blocked"
        with ck.engine(winograd_min_macs=0):
            assert rule(64, 64, 56, 1, padding=1) == "winograd2"
    if kernels.compiled.loops() is not None:     # one pass per transform: 784 tiles > 64 channels
        assert rule(64, 64, 56, 1, padding=1) == "winograd2"        # 196 4x4 tiles: too few for F(4x4)
        assert rule(64, 64, 56, 2, padding=1) == "winograd4"        # 392
        assert rule(64, 64, 56, 8, padding=1) == "winograd4"
        assert rule(128, 128, 28, 4, padding=1) == "winograd2"      # 196 4x4 tiles < 256
        assert rule(128, 192, 28, 8, padding=1) == "winograd4"      # GoogLeNet's 3x3 at batch 8: 392
        assert rule(256, 256, 14, 8, padding=1) == "winograd2"      # 128 4x4 tiles < 256 channels
        assert rule(512, 512, 28, 4, padding=1) == "winograd2"      # 196 < 512
        with ck.engine(direct_dilated_max_channels=0):
            assert rule(64, 64, 56, 32, padding=2, dilation=2) == "phases"
        assert rule(128, 128, 56, 32, padding=2, dilation=2) == "phases"
        assert kernels._registry["conv"]["phases"].inner(
            ck.Conv2D(64, 64, 3, padding=2, dilation=2).window((64, 56, 56)), 32).name == "winograd4"
        with ck.engine(winograd_tile=2):
            assert rule(64, 64, 56, 8, padding=1) == "winograd2"
            assert kernels._registry["conv"]["phases"].inner(
                ck.Conv2D(64, 64, 3, padding=2, dilation=2).window((64, 56, 56)), 32).name == "winograd2"
        with ck.engine(winograd4_min_tiles=1000):
            assert rule(64, 64, 56, 2, padding=1) == "winograd2"
        with ck.engine(compiled=False):                              # F(4x4)'s NumPy passes are slow
            assert rule(64, 64, 56, 8, padding=1) == "winograd2"
        # one image with NumPy's BLAS sharing each GEMM between the threads: im2col
        from cnnkit.layers.runtime import runtime
        with ck.engine(threads=2):
            assert rule(128, 128, 28, 1, padding=1) == "winograd2"
            with runtime.few_images(1):
                assert runtime.sharing_blas and rule(128, 128, 28, 1, padding=1) == "blocked"   # 115M
                assert rule(128, 128, 56, 1, padding=1) == "winograd2"                        # 462M
                with ck.engine(winograd_one_image_min_macs=0):
                    assert rule(128, 128, 28, 1, padding=1) == "winograd2"
            assert not runtime.sharing_blas and rule(128, 128, 28, 1, padding=1) == "winograd2"
        assert rule(128, 128, 28, 1, padding=1) == "winograd2"      # 196 tiles > 128
        assert rule(256, 256, 14, 4, padding=1) == "blocked"        # 196 tiles < 256
        assert rule(64, 64, 4, 64, padding=1) == "blocked"          # digits: 128 tiles, but 38M multiply-adds
        with ck.engine(winograd_compiled_min_macs=0):
            assert rule(64, 64, 4, 64, padding=1) == "winograd2"
    with pytest.raises(ck.CnnkitError, match="winograd_min_macs"):
        with ck.engine(winograd_min_macs=-1):
            pass
    with pytest.raises(ck.CnnkitError, match="winograd_tile must be 2 or 4"):
        with ck.engine(winograd_tile=3):
            pass
    with pytest.raises(ck.CnnkitError, match="winograd2.*3x3 filter, stride 1"):
        with ck.engine(conv="winograd2"):
            ck.Conv2D(8, 8, 5, padding=2).forward(np.zeros((1, 8, 9, 9), np.float32))



def test_small_convs_share_their_gemm_by_channels_only_where_it_is_worth_a_hand_off():
    from cnnkit.layers.kernels.blocked import small

    def shared(D1, K, size, batch, threads=2, F=1):
        w = ck.Conv2D(D1, K, F, padding=F // 2).window((D1, size, size))
        with ck.engine(threads=threads):
            return small(batch, *w.out, w.out[1] * F * F * D1 * 4, K)

    assert shared(2048, 512, 7, 1)              # ResNet-50's last 1x1 layers at one image: 51M multiply-adds
    assert shared(256, 256, 14, 1, F=3)         # 14x14 3x3 at one image
    assert not shared(2048, 512, 1, 1)          # the same layer on a 32x32 input: 1M, less than a hand-off
    assert not shared(2048, 512, 7, 1, threads=1)
    assert not shared(64, 64, 56, 1, F=3)       # 3136 positions: shared by rows instead
    with ck.engine(min_share_bytes=1):
        assert shared(2048, 512, 1, 1)

def test_bias_grad_sums_dy_over_images_and_pixels_in_either_layout():
    from cnnkit.layers.kernels.blocked import bias_grad
    d = rng.standard_normal((3, 5, 7, 16)).astype(np.float32)             # (N, H, W, K), NHWC
    exact = d.astype(np.float64).sum(axis=(0, 1, 2))
    lives_nchw = np.ascontiguousarray(d.transpose(0, 3, 1, 2)).transpose(0, 2, 3, 1)
    for view in (d, lives_nchw, d[:, 1:4, 2:6], lives_nchw[:, :, ::2]):   # contiguous either way, then neither
        want = view.astype(np.float64).sum(axis=(0, 1, 2))
        got = bias_grad(view)
        assert got.dtype == np.float32 and got.shape == (16,)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(d).sum() / 16)
    assert np.abs(bias_grad(d) - exact).max() < 1e-4


@pytest.mark.parametrize("lowering,tolerance", [("winograd2", 2e-6), ("winograd4", 2e-5), ("blocked", 2e-6)])
def test_winograd_in_float32_stays_within_float32_rounding_of_the_exact_conv(lowering, tolerance):
    """F(2x2, 3x3) rounds like the direct sum; F(4x4, 3x3)'s coefficients (up to 8, and
    1/24 in G) cost about one decimal digit: errors relative to the largest output."""
    conv = ck.Conv2D(64, 32, 3, padding=1)
    conv.params["bias"] = rng.standard_normal(32).astype(np.float32)
    x = rng.standard_normal((2, 64, 14, 13)).astype(np.float32)
    dout = rng.standard_normal((2, 32, 14, 13)).astype(np.float32)
    exact_conv = ck.Conv2D(64, 32, 3, padding=1).astype(np.float64)
    exact_conv.params.update({k: v.astype(np.float64) for k, v in conv.params.items()})
    exact = run(exact_conv, x.astype(np.float64), dout.astype(np.float64), conv="blocked")
    fast = run(conv, x, dout, conv=lowering)
    for a, b in [*zip(fast[:2], exact[:2]), *((fast[2][k], exact[2][k]) for k in exact[2])]:
        assert a.dtype == np.float32
        assert np.abs(a - b).max() <= tolerance * np.abs(b).max()


@pytest.mark.parametrize("name", OTHER_CASES)
def test_pools_lrn_and_locally_connected_equal_the_reference(name):
    make, shape = OTHER_CASES[name]
    layer = make().astype(np.float64)
    x = rng.standard_normal(shape)
    dout = rng.standard_normal((shape[0], *layer.output_shape(shape[1:])))
    assert_same(run(layer, x, dout), run(layer, x, dout, strategy="reference"))


@pytest.mark.parametrize("name", ["image 5x5 p2", "s2 groups", "floor no bias"])
def test_reference_conv_passes_gradcheck(name):
    kwargs, shape = CONV_CASES[name]
    with ck.engine(strategy="reference"):
        assert ck.gradcheck(ck.Conv2D(**kwargs), rng.standard_normal(shape)) < 1e-6


@pytest.mark.parametrize("name", ["max 3/2 p1 ceil", "avg 3/2 p1 ceil", "l2 2/2", "lrn 5", "locally connected"])
def test_reference_loops_pass_gradcheck(name):
    make, shape = OTHER_CASES[name]
    with ck.engine(strategy="reference"):
        assert ck.gradcheck(make(), rng.standard_normal(shape)) < 1e-6


def test_use_reference_switches_a_whole_network_and_back():
    net = ck.build("INPUT[8x8x3] -> CONV3-4 -> RELU -> POOL2 -> NORM3 -> FC5")
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    fast = net.forward(x)
    ck.use_reference()
    try:
        assert ck.layers.runtime.options().strategy == "reference"
        np.testing.assert_allclose(net.forward(x), fast, rtol=1e-5, atol=1e-5)
    finally:
        ck.use_reference(False)
    assert ck.layers.runtime.options().strategy == "auto"


def test_engine_options_are_restored_and_checked():
    before = ck.layers.runtime.options()
    with ck.engine(block_bytes=1024, strategy="reference") as options:
        assert options.block_bytes == 1024 and options.strategy == "reference"
    assert ck.layers.runtime.options() == before
    with pytest.raises(ck.CnnkitError, match="unknown option"):
        with ck.engine(blocks=3):
            pass
    with pytest.raises(ck.CnnkitError, match="strategy must be one of"):
        with ck.engine(strategy="fast"):
            pass
    assert ck.layers.runtime.options() == before
