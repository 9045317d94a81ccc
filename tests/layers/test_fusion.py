"""One-pass runs: eval mode computes CONV -> BN? -> RELU? at once (Conv2D.forward_fused),
and both modes BN -> RELU and Residual -> RELU (forward_relu). Each is the same function as the
layers one by one (the formulas, for the batch norm), and none runs around a wrapped
method (a profiler's timer)."""

import numpy as np
import pytest

import cnnkit as ck
from cnnkit.layers import kernels

rng = np.random.default_rng(5)

# batch norm's two ways: NumPy's passes and the compiled loops (numba, cnnkit[fast])
compiled_or_not = pytest.mark.parametrize("compiled", [
    False, pytest.param(True, marks=pytest.mark.skipif(kernels.compiled.loops() is None,
                                                       reason="numba is not installed"))])


def with_statistics(bn: ck.BatchNorm2D) -> ck.BatchNorm2D:
    D = bn.num_features
    bn.params["weight"] = rng.uniform(0.5, 2, D).astype(np.float32)
    bn.params["bias"] = rng.standard_normal(D).astype(np.float32)
    bn.buffers["running_mean"] = rng.standard_normal(D).astype(np.float32)
    bn.buffers["running_var"] = rng.uniform(0.2, 3, D).astype(np.float32)
    return bn


def one_by_one(net: ck.Sequential, x: np.ndarray) -> np.ndarray:
    for layer in net:
        x = layer.forward(x)
    return x


@pytest.mark.parametrize("lowering", [k.name for k in kernels.available("conv")])
@pytest.mark.parametrize("D1,bias,dilation", [(3, True, 1), (64, False, 1), (64, True, 2)])
def test_fused_runs_equal_the_layers_one_by_one(lowering, D1, bias, dilation):
    conv = ck.Conv2D(D1, 64, 3, padding=dilation, dilation=dilation, bias=bias)
    if bias:
        conv.params["bias"] = rng.standard_normal(64).astype(np.float32)
    same = dict(padding=dilation, dilation=dilation)
    net = ck.Sequential(conv, with_statistics(ck.BatchNorm2D(64)), ck.ReLU(),     # CONV -> BN -> RELU
                        ck.Conv2D(64, 64, 3, **same), ck.ReLU(),                   # CONV -> RELU
                        ck.Conv2D(64, 64, 3, **same), with_statistics(ck.BatchNorm2D(64)))   # CONV -> BN
    net.eval()
    x = rng.standard_normal((2, D1, 16, 16)).astype(np.float32)
    computes = {k.name: k for k in kernels.available("conv")}[lowering].why_not
    if computes(conv.window(x.shape[1:])) or computes(net[3].window((64, 16, 16))):
        net = net[:3]                                     # the first run only (shifted: 1-4 channels)
    if computes(conv.window(x.shape[1:])):
        pytest.skip(f"{lowering} does not compute this CONV")
    with ck.engine(conv=lowering):
        fused, plain = net.forward(x), one_by_one(net, x)
    assert fused.dtype == np.float32
    np.testing.assert_allclose(fused, plain, rtol=1e-5, atol=1e-5 * np.abs(plain).max())


def test_fusion_is_used_in_eval_mode_only_and_never_around_a_wrapped_forward(monkeypatch):
    conv, bn, relu = ck.Conv2D(4, 8, 3, padding=1), with_statistics(ck.BatchNorm2D(8)), ck.ReLU()
    net = ck.Sequential(conv, bn, relu)
    calls = []
    real = ck.Conv2D.forward_fused
    monkeypatch.setattr(ck.Conv2D, "forward_fused", lambda self, *a: calls.append(1) or real(self, *a))
    x = rng.standard_normal((2, 4, 6, 6)).astype(np.float32)
    net.train()
    out = net.forward(x)
    net.backward(np.ones_like(out))                       # train mode: the layers, their caches
    assert not calls
    net.eval()
    net.forward(x)
    assert calls == [1]
    timed = []
    bn.forward = lambda x, f=bn.forward: timed.append(1) or f(x)   # what the profiler does
    net.forward(x)
    assert calls == [1] and timed == [1]                  # BN is timed, so CONV runs alone
    del bn.forward


def batch_norm_relu_by_formula(x, gamma, beta, eps, dout):
    """The notes' batch norm and ReLU in float64, straight from the formulas."""
    axes = (0, 2, 3)
    mean, var = x.mean(axis=axes, keepdims=True), x.var(axis=axes, keepdims=True)
    x_hat = (x - mean) / np.sqrt(var + eps)
    y = gamma[None, :, None, None] * x_hat + beta[None, :, None, None]
    out = np.maximum(y, 0)
    dy = dout * (y > 0)
    m = x.size / x.shape[1]
    dgamma, dbeta = (dy * x_hat).sum(axis=axes), dy.sum(axis=axes)
    dx = gamma[None, :, None, None] / np.sqrt(var + eps) * (
        dy - dbeta[None, :, None, None] / m - x_hat * dgamma[None, :, None, None] / m)
    return out, dx, dgamma, dbeta


@compiled_or_not
@pytest.mark.parametrize("block_bytes", [1, 2 << 20])      # one row per block, and the default
def test_train_mode_batch_norm_relu_is_one_pass_equal_to_the_formulas(block_bytes, compiled):
    D = 6
    bn, relu = ck.BatchNorm2D(D), ck.ReLU()
    bn.params["weight"] = rng.uniform(0.5, 2, D).astype(np.float32)
    bn.params["bias"] = rng.standard_normal(D).astype(np.float32)
    net = ck.Sequential(bn, relu).astype(np.float64).train()
    x = rng.standard_normal((3, 5, 4, D)).transpose(0, 3, 1, 2) * 3 + 2    # channels-last, as a CONV leaves it
    dout = rng.standard_normal((3, D, 5, 4))
    with ck.engine(image_block_bytes=block_bytes, compiled=compiled, threads=2):
        out = net.forward(x)
        assert relu._cache is None and bn._cache[-1] is not None   # one pass: the batch norm keeps what both need
        dx = net.backward(dout)
    want_out, want_dx, want_dgamma, want_dbeta = batch_norm_relu_by_formula(
        x, bn.params["weight"], bn.params["bias"], bn.eps, dout)
    np.testing.assert_allclose(out, want_out, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dx, want_dx, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(bn.grads["weight"], want_dgamma, rtol=1e-10)
    np.testing.assert_allclose(bn.grads["bias"], want_dbeta, rtol=1e-10)
    m = x.size / D
    np.testing.assert_allclose(bn.buffers["running_var"], 0.9 + 0.1 * x.var(axis=(0, 2, 3)) * m / (m - 1), rtol=1e-10)


def test_a_wrapped_relu_after_batch_norm_runs_on_its_own():
    bn, relu = ck.BatchNorm2D(3), ck.ReLU()
    net = ck.Sequential(bn, relu).train()
    relu.forward = lambda x, f=relu.forward: f(x)            # what the profiler does
    x = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    fused_off = net.forward(x)
    assert relu._cache is not None and bn._cache[-1] is None
    del relu.forward
    np.testing.assert_array_equal(net.forward(x), fused_off)
    assert relu._cache is None and bn._cache[-1] is not None


@compiled_or_not
def test_batch_statistics_stay_exact_far_from_zero(compiled):
    # float32 activations with a large mean: summing squares about zero would lose the
    # variance to cancellation; each block is centred on its own mean first (NumPy), or
    # on the first row's values (the compiled loops).
    x = (1000 + rng.standard_normal((8, 64, 16, 16))).astype(np.float32)
    bn = ck.BatchNorm2D(64, momentum=1.0).train()
    with ck.engine(image_block_bytes=64 << 10, compiled=compiled):          # many blocks to combine
        out = bn.forward(x)
    x64 = x.astype(np.float64)
    m = x.size / 64
    np.testing.assert_allclose(bn.buffers["running_mean"], x64.mean(axis=(0, 2, 3)), rtol=1e-7)
    np.testing.assert_allclose(bn.buffers["running_var"], x64.var(axis=(0, 2, 3)) * m / (m - 1), rtol=1e-5)
    x_hat = (x64 - x64.mean(axis=(0, 2, 3), keepdims=True)) / np.sqrt(x64.var(axis=(0, 2, 3), keepdims=True) + 1e-5)
    np.testing.assert_allclose(out, x_hat, atol=1e-3)      # |x| = 1000 in float32: ulp 6e-5


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shortcut", [False, True])
def test_residual_relu_is_one_pass_equal_to_the_two_layers(training, shortcut):
    """Residual -> RELU: the sum, its ReLU in place and (train mode) the ReLU's mask kept
    by the block, whose backward applies it; against the same net with the ReLU wrapped
    (so it runs on its own). float64, so both must agree to rounding."""
    def make():
        ck.manual_seed(3)
        body = ck.Sequential(ck.Conv2D(4, 4, 3, padding=1), ck.BatchNorm2D(4), ck.ReLU(),
                             ck.Conv2D(4, 4, 3, padding=1))
        block = ck.Residual(body, ck.Conv2D(4, 4, 1) if shortcut else None)
        return ck.Sequential(block, ck.ReLU(), ck.GlobalAvgPool2D(), ck.Flatten()).astype(np.float64).train(training)

    x = rng.standard_normal((3, 4, 6, 6))
    dout = rng.standard_normal((3, 4))
    fused, plain = make(), make()
    plain[1].forward = lambda x, f=plain[1].forward: f(x)     # a wrapped ReLU: no fusion
    out, want = fused.forward(x), plain.forward(x)
    np.testing.assert_allclose(out, want, rtol=1e-12, atol=1e-12)
    assert fused[1]._cache is None and plain[1]._cache is not None or not training
    if training:
        assert fused[0]._cache is not True                    # the block keeps the mask
        np.testing.assert_allclose(fused.backward(dout), plain.backward(dout), rtol=1e-12, atol=1e-12)
        for (name, _, g), (_, _, h) in zip(fused.params_and_grads(), plain.params_and_grads(), strict=True):
            np.testing.assert_allclose(g, h, rtol=1e-12, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("lowering", [k.name for k in kernels.available("conv")])
@pytest.mark.parametrize("D1,stride,dilation", [(3, 1, 1), (64, 1, 1), (8, 2, 1), (8, 1, 2)])
def test_train_mode_conv_relu_is_one_pass_equal_to_the_two_layers(lowering, D1, stride, dilation):
    """CONV -> RELU in train mode: the ReLU in the CONV's epilogue, its mask kept by the
    CONV, whose backward applies it to dY; against the same net with the ReLU wrapped (so
    it runs on its own), for every lowering that computes the CONV. float64: rounding only."""
    size = 16 + (stride == 2)
    computes = {k.name: k for k in kernels.available("conv")}[lowering].why_not
    first = ck.Conv2D(D1, 64, 3, stride=stride, padding=dilation, dilation=dilation)
    second = ck.Conv2D(64, 8, 3, padding=1)
    if computes(first.window((D1, size, size))):
        pytest.skip(f"{lowering} does not compute this CONV")
    pairs = 2 if not computes(second.window(first.output_shape((D1, size, size)))) else 1

    def make():
        ck.manual_seed(4)
        layers = [ck.Conv2D(D1, 64, 3, stride=stride, padding=dilation, dilation=dilation), ck.ReLU(),
                  ck.Conv2D(64, 8, 3, padding=1), ck.ReLU()]
        return ck.Sequential(*layers[:2 * pairs]).astype(np.float64).train()

    x = rng.standard_normal((2, D1, size, size))
    fused, plain = make(), make()
    for relu in plain[1::2]:
        relu.forward = lambda x, f=relu.forward: f(x)     # wrapped ReLUs: no fusion
    with ck.engine(conv=lowering):
        out, want = fused.forward(x), plain.forward(x)
        np.testing.assert_allclose(out, want, rtol=1e-12, atol=1e-12)
        assert fused[1]._cache is None and fused[0]._cache[-1] is not None and plain[1]._cache is not None
        dout = rng.standard_normal(out.shape) * (rng.random(out.shape) < 0.7)
        np.testing.assert_allclose(fused.backward(dout), plain.backward(dout), rtol=1e-12, atol=1e-12)
    for (name, _, g), (_, _, h) in zip(fused.params_and_grads(), plain.params_and_grads(), strict=True):
        np.testing.assert_allclose(g, h, rtol=1e-12, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("layout", ["concat slice", "padded view", "nchw"])
def test_batch_norm_reads_a_strided_gradient_as_it_is(layout):
    """dY of a batch norm inside an inception branch is the Concat's slice of channels (rows
    of the whole join), after a ceil-mode pool a view of a padded array: the result is the
    contiguous dY's, and NumPy's passes read the slice in place (no copy; the compiled loops
    copy it to contiguous rows first, which costs less than reading it with gaps)."""
    from cnnkit.layers.norm import _rows
    D = 5
    bn = ck.BatchNorm2D(D).astype(np.float64).train()
    x = rng.standard_normal((3, 4, 6, D)).transpose(0, 3, 1, 2)
    dout = rng.standard_normal((3, D, 4, 6))
    join = np.empty((3, 4, 6, D + 7))
    bigger = np.empty((3, 5, 7, D))
    strided = {"concat slice": join[..., 2:2 + D], "padded view": bigger[:, :4, :6]}.get(layout)
    if strided is not None:
        strided[...] = dout.transpose(0, 2, 3, 1)
        strided = strided.transpose(0, 3, 1, 2)
    else:
        strided = np.ascontiguousarray(dout)
    if layout == "concat slice":
        assert np.shares_memory(_rows(strided), join)
    bn.forward(x)
    want = bn.backward(np.ascontiguousarray(dout.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2))
    grads = {k: v.copy() for k, v in bn.grads.items()}
    bn.forward(x)
    np.testing.assert_allclose(bn.backward(strided), want, rtol=1e-12, atol=1e-12)
    for k in grads:
        np.testing.assert_allclose(bn.grads[k], grads[k], rtol=1e-12)


@pytest.mark.skipif(kernels.compiled.loops() is None, reason="numba is not installed")
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("training", [True, False])
def test_compiled_batch_norm_equals_numpys_passes(training, relu, threads):
    """cnnkit[fast]'s loops against NumPy's passes in float32, on a Concat's slice of channels
    (strided rows) and on a contiguous NCHW batch: outputs, dX, dgamma, dbeta and the running
    statistics agree within float32 rounding (their sums are added in other orders)."""
    D = 24
    join = rng.standard_normal((4, 7, 9, D + 8)).astype(np.float32) * 2 + 0.5
    for x in (join[..., 3:3 + D].transpose(0, 3, 1, 2), np.ascontiguousarray(join[..., :D].transpose(0, 3, 1, 2))):
        dout = rng.standard_normal((4, D, 7, 9)).astype(np.float32)
        results, drawn = [], with_statistics(ck.BatchNorm2D(D))
        for compiled in (False, True):
            bn = ck.BatchNorm2D(D).train(training)
            bn.params.update({k: v.copy() for k, v in drawn.params.items()})
            bn.buffers.update({k: v.copy() for k, v in drawn.buffers.items()})
            with ck.engine(compiled=compiled, threads=threads, image_block_bytes=16 << 10):
                out = bn.forward_relu(x) if relu else bn.forward(x)
                assert (bn._cache is not None) == training
                assert not training or (bn._cache[1] is not None) == compiled     # the loops keep x and the shift
                dx = bn.backward(dout) if training else None
            results.append((out, dx, dict(bn.grads), dict(bn.buffers)))
        (out0, dx0, g0, b0), (out1, dx1, g1, b1) = results
        np.testing.assert_allclose(out1, out0, rtol=1e-5, atol=1e-5)
        if training:
            np.testing.assert_allclose(dx1, dx0, rtol=1e-4, atol=1e-5)
            for k in g0:
                np.testing.assert_allclose(g1[k], g0[k], rtol=1e-4, atol=1e-4, err_msg=k)
        for k in b0:
            np.testing.assert_allclose(b1[k], b0[k], rtol=1e-5, atol=1e-6, err_msg=k)   # means near 0 too


@pytest.mark.skipif(kernels.compiled.loops() is None, reason="numba is not installed")
@pytest.mark.parametrize("lowering", ["blocked", "pointwise", "winograd2", "winograd4"])
def test_compiled_epilogue_and_residual_sum_give_numpys_numbers(lowering):
    """A CONV's epilogue (scale, bias, ReLU) and a residual block's sum and ReLU by the compiled
    loops make the same float32 operations in the same order as NumPy's passes: equal bit for
    bit, the ReLU's mask too."""
    ck.manual_seed(2)
    C, F = 64, 1 if lowering == "pointwise" else 3

    def block(*middle: ck.Layer) -> ck.Sequential:       # eval: CONV -> BN -> RELU; train: CONV -> RELU
        conv = ck.Conv2D(C, C, F, padding=F // 2)
        conv.params["bias"] = rng.standard_normal(C).astype(np.float32)
        return ck.Sequential(ck.Residual(ck.Sequential(conv, *middle, ck.ReLU())), ck.ReLU())

    in_eval, in_train = block(with_statistics(ck.BatchNorm2D(C))).eval(), block().train()
    x = rng.standard_normal((2, C, 8, 8)).astype(np.float32)     # NCHW as a user passes it
    results = []
    for compiled in (False, True):
        with ck.engine(compiled=compiled, conv=lowering, threads=2, winograd_min_macs=0):
            y_eval, y_train = in_eval.forward(x), in_train.forward(x)
            mask = in_train[0]._cache
            dx = in_train.backward(np.ones_like(y_train))
        results.append((y_eval, y_train, mask, dx))
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)
    assert isinstance(results[1][2], np.ndarray) and results[1][2].any() and not results[1][2].all()


@pytest.mark.skipif(kernels.compiled.loops() is None, reason="numba is not installed")
@pytest.mark.parametrize("shape", [(5, 3, 12, 10), (1, 2, 40, 9)])     # whole images; bands of one
def test_compiled_shifted_col2im_gives_numpys_numbers(shape):
    """The shifted lowering's dX adds by the compiled loop, one call per block, are NumPy's
    adds in NumPy's order: bit for bit equal, over the same blocks (small ones, so that
    there are several, bands of one image among them)."""
    conv = ck.Conv2D(shape[1], 6, 5, padding=2)
    x = rng.standard_normal(shape).astype(np.float32)
    dout = rng.standard_normal((shape[0], 6, *shape[2:])).astype(np.float32)
    def run(layer, x, dout, **options):
        with ck.engine(**options):
            out = layer.forward(x)
            return out, layer.backward(dout), {k: v.copy() for k, v in layer.grads.items()}

    blocks = dict(shifted_block_bytes=4096, shifted_backward_bytes=4096)
    results = [run(conv, x, dout, conv="shifted", compiled=compiled, threads=2, min_share_bytes=1, **blocks)
               for compiled in (False, True)]
    for a, b in zip(results[0][:2], results[1][:2]):
        np.testing.assert_array_equal(a, b)
    for k in results[0][2]:
        np.testing.assert_array_equal(results[0][2][k], results[1][2][k])
    np.testing.assert_allclose(results[1][1], run(conv.astype(np.float64), x.astype(np.float64),
                                                  dout.astype(np.float64), conv="reference")[1], atol=1e-4)


@pytest.mark.skipif(kernels.compiled.loops() is None, reason="numba is not installed")
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("F,S,P,rounding,size", [(3, 1, 1, "exact", (9, 7)), (3, 2, 1, "ceil", (10, 9)),
                                                 (2, 2, 0, "exact", (8, 6)), (3, 2, 0, "floor", (12, 12))])
def test_compiled_max_pool_gives_numpys_numbers(F, S, P, rounding, size, threads):
    """The one-pass max pool gives NumPy's passes' outputs, switches and routed gradients
    bit for bit: ties (rounded inputs) keep the first maximum, a nan wins a window without
    moving its switch, and overlapping windows add their gradients in the same order."""
    x = np.round(rng.standard_normal((6, 5, *size)) * 2).astype(np.float32)    # many ties
    x[0, 0, 1, 1] = x[1, 2, 3, 0] = np.nan
    dout = None
    results = []
    for compiled in (False, True):
        pool = ck.MaxPool2D(F, S, padding=P, rounding=rounding).train()
        with ck.engine(compiled=compiled, threads=threads, image_block_bytes=1):   # a block per image
            y = pool.forward(x)
            switches = pool._cache[1][2].copy()
            if dout is None:
                dout = rng.standard_normal(y.shape).astype(np.float32)
            dx = pool.backward(dout)
            pool.eval()
            y_eval = pool.forward(x)
        results.append((y, switches, dx, y_eval))
    for a, b in zip(*results, strict=True):
        np.testing.assert_array_equal(a, b)
    assert np.isnan(results[1][0]).any()


@pytest.mark.skipif(kernels.compiled.loops() is None, reason="numba is not installed")
def test_warm_up_compiles_every_loop_for_float32():
    kernels.compiled.warm_up()          # what the memory benchmark does before it notes the setup
    loops = vars(kernels.compiled.loops())
    assert loops and all(any("float32" in str(sig) for sig in f.signatures) for f in loops.values())


def test_batch_norm_without_numba_makes_numpys_passes(monkeypatch):
    monkeypatch.setattr(kernels.compiled, "_loops", None)
    monkeypatch.setattr(kernels.compiled, "_missing", True)     # what a failed `import numba` leaves
    bn = ck.BatchNorm2D(3).train()
    bn.forward_relu(rng.standard_normal((2, 3, 4, 4)).astype(np.float32))
    assert bn._cache[1] is None and isinstance(bn._cache[-1], np.ndarray)      # s = x - shift kept, and the mask
    with pytest.raises(ck.CnnkitError, match="compiled must be True or False"):
        ck.engine(compiled="yes").__enter__()


@pytest.mark.parametrize("training", [False, True])
def test_one_pass_runs_of_a_1x1_conv_of_an_nchw_batch(training, monkeypatch):
    """The pointwise lowering (a 1x1 CONV of an NCHW batch) in the one-pass runs: eval mode
    CONV -> BN -> RELU (scale, shift and ReLU per channel), train mode CONV -> RELU (the
    mask); against the same layers one by one, in float64."""
    def make():
        ck.manual_seed(6)
        conv = ck.Conv2D(6, 5, 1)
        conv.params["bias"] = np.random.default_rng(7).standard_normal(5)
        layers = [conv, ck.ReLU()] if training else [conv, with_statistics(ck.BatchNorm2D(5)), ck.ReLU()]
        return ck.Sequential(*layers).astype(np.float64).train(training)

    x = rng.standard_normal((3, 6, 4, 5))                 # NCHW in memory, as a user passes it
    fused, plain = make(), make()
    for layer in plain:
        layer.forward = lambda x, f=layer.forward: f(x)   # wrapped: no fusion
    if not training:
        for name in ("running_mean", "running_var"):
            plain[1].buffers[name] = fused[1].buffers[name]
        plain[1].params = dict(fused[1].params)
    from cnnkit.layers.kernels.pointwise import Pointwise
    calls = []
    real = Pointwise.forward
    monkeypatch.setattr(Pointwise, "forward", lambda self, *a, **k: calls.append(k) or real(self, *a, **k))
    out, want = fused.forward(x), plain.forward(x)
    np.testing.assert_allclose(out, want, rtol=1e-12, atol=1e-12)
    assert calls[0]["relu"] and (calls[0].get("scale") is not None) == (not training)   # the one pass
    if training:
        assert fused[0]._cache[0].name == "pointwise" and fused[1]._cache is None
        dout = rng.standard_normal(out.shape)
        np.testing.assert_allclose(fused.backward(dout), plain.backward(dout), rtol=1e-12, atol=1e-12)
        for (name, _, g), (_, _, h) in zip(fused.params_and_grads(), plain.params_and_grads(), strict=True):
            np.testing.assert_allclose(g, h, rtol=1e-12, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("lowering", [k.name for k in kernels.available("conv")])
@pytest.mark.parametrize("compiled", [False, True])
@pytest.mark.parametrize("C,size,threads", [(8, 8, 1), (128, 4, 2)])   # (128, 4): a small CONV shared by channels
def test_eval_residual_sum_made_in_the_last_conv_epilogue_equals_the_sum_after_it(
        lowering, compiled, C, size, threads, monkeypatch):
    """Eval mode: a residual body ending in CONV (-> BN) adds the shortcut (and a ReLU after
    the block) in its last CONV's epilogue, where that lowering fuses it, else just after
    it: the same float32 numbers as the body's output and the shortcut added after it."""
    from cnnkit.layers import containers
    from cnnkit.layers import conv as conv_module

    if compiled and kernels.compiled.loops() is None:
        pytest.skip("numba is not installed")
    F = 1 if lowering == "pointwise" else 3
    nets = []
    for shortcut, tail_bn, relu in [(None, True, True), (ck.Conv2D(C, C, F, padding=F // 2), False, True),
                                    (None, False, False)]:
        last = ck.Conv2D(C, C, F, padding=F // 2)
        last.params["bias"] = rng.standard_normal(C).astype(np.float32)
        body = ck.Sequential(ck.Conv2D(C, C, F, padding=F // 2), ck.ReLU(), last,
                             *([with_statistics(ck.BatchNorm2D(C))] if tail_bn else []))
        nets.append(ck.Sequential(ck.Residual(body, shortcut), *([ck.ReLU()] if relu else [])).eval())
    x = np.ascontiguousarray(rng.standard_normal((2, size, size, C)).astype(np.float32)).transpose(0, 3, 1, 2)
    if {k.name: k for k in kernels.available("conv")}[lowering].why_not(nets[0][0].body[0].window(x.shape[1:])):
        pytest.skip(f"{lowering} does not compute this CONV")
    sums_after = []
    real_add_relu = conv_module.add_relu
    monkeypatch.setattr(conv_module, "add_relu", lambda *a, **k: (sums_after.append(1), real_add_relu(*a, **k))[1])
    with ck.engine(compiled=compiled, conv=lowering, threads=threads, winograd_min_macs=0, min_share_bytes=1):
        fused = [net.forward(x) for net in nets]
        fuses = kernels.conv_lowering(nets[0][0].body[2].window(x.shape[1:]), 2).fuses_add(
            nets[0][0].body[2].window(x.shape[1:]))
        monkeypatch.setattr(containers, "_conv_tail", lambda layers: None)     # the sum after the body
        plain = [net.forward(x) for net in nets]
    assert len(sums_after) == (0 if fuses else len(nets))
    assert fuses == (lowering in ("blocked", "direct"))
    for a, b in zip(fused, plain, strict=True):
        np.testing.assert_array_equal(a, b)
    assert (fused[0] == 0).any() and (fused[2] < 0).any()        # ReLU after the first block only
