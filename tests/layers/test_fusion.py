"""Eval mode computes CONV -> BN? -> RELU? runs in one pass (Conv2D.forward_fused): the
same function as the layers one by one, for every lowering; never in train mode, never
around a wrapped forward."""

import numpy as np
import pytest

import cnnkit as ck
from cnnkit.layers import kernels

rng = np.random.default_rng(5)


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
@pytest.mark.parametrize("D1,bias", [(3, True), (64, False)])
def test_fused_runs_equal_the_layers_one_by_one(lowering, D1, bias):
    conv = ck.Conv2D(D1, 64, 3, padding=1, bias=bias)
    if bias:
        conv.params["bias"] = rng.standard_normal(64).astype(np.float32)
    net = ck.Sequential(conv, with_statistics(ck.BatchNorm2D(64)), ck.ReLU(),     # CONV -> BN -> RELU
                        ck.Conv2D(64, 64, 3, padding=1), ck.ReLU(),                # CONV -> RELU
                        ck.Conv2D(64, 64, 3, padding=1), with_statistics(ck.BatchNorm2D(64)))   # CONV -> BN
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
