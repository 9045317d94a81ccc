"""Every layer's analytic gradients (input and parameters) against centered differences."""

import numpy as np
import pytest

import cnnkit as ck

rng = np.random.default_rng(0)


def x(*shape):
    return rng.standard_normal(shape)


CASES = {
    "conv 3x3 s1 p1": (lambda: ck.Conv2D(3, 4, 3, padding=1), (2, 3, 6, 6)),
    "conv 3x3 s2 p1": (lambda: ck.Conv2D(3, 4, 3, stride=2, padding=1), (2, 3, 7, 7)),
    "conv 5x5 s1 p2": (lambda: ck.Conv2D(2, 3, 5, padding=2), (1, 2, 6, 6)),
    "conv rect 3x2 s(1,2)": (lambda: ck.Conv2D(3, 2, (3, 2), stride=(1, 2), padding=(1, 0)), (2, 3, 5, 8)),
    "conv dilation 2": (lambda: ck.Conv2D(2, 3, 3, dilation=2, padding=2), (2, 2, 7, 7)),
    "conv dilation (1,2) s2": (lambda: ck.Conv2D(2, 3, 3, stride=2, dilation=(1, 2), padding=(1, 2)), (2, 2, 7, 7)),
    "conv groups 2": (lambda: ck.Conv2D(4, 6, 3, padding=1, groups=2), (2, 4, 5, 5)),
    "conv groups 2 s2 dilation 2": (lambda: ck.Conv2D(4, 2, 3, stride=2, padding=2, dilation=2, groups=2), (2, 4, 7, 7)),
    "conv depthwise": (lambda: ck.Conv2D(3, 3, 3, padding=1, groups=3), (2, 3, 5, 5)),
    "conv 1x1": (lambda: ck.Conv2D(5, 3, 1), (2, 5, 4, 4)),
    "conv 1x1 s2": (lambda: ck.Conv2D(5, 3, 1, stride=2), (2, 5, 5, 5)),
    "conv no bias": (lambda: ck.Conv2D(3, 2, 3, bias=False), (2, 3, 5, 5)),
    "conv floor": (lambda: ck.Conv2D(3, 2, 3, stride=2, rounding="floor"), (2, 3, 10, 10)),
    "conv big padding": (lambda: ck.Conv2D(2, 2, 3, padding=3), (1, 2, 4, 4)),
    "locally connected": (lambda: ck.LocallyConnected2D(2, 3, 3, (6, 6), padding=1), (2, 2, 6, 6)),
    "locally connected s2": (lambda: ck.LocallyConnected2D(2, 3, (3, 2), (7, 6), stride=2), (2, 2, 7, 6)),
    "max pool 2/2": (lambda: ck.MaxPool2D(2), (2, 3, 6, 6)),
    "max pool 3/2 overlapping": (lambda: ck.MaxPool2D(3, 2), (2, 3, 7, 7)),
    "max pool 3/2 ceil pad 1": (lambda: ck.MaxPool2D(3, 2, padding=1, rounding="ceil"), (2, 3, 8, 8)),
    "max pool 2 floor": (lambda: ck.MaxPool2D(2, rounding="floor"), (2, 3, 7, 7)),
    "max pool rect": (lambda: ck.MaxPool2D((2, 3), (2, 1)), (2, 2, 6, 6)),
    "avg pool 2/2": (lambda: ck.AvgPool2D(2), (2, 3, 6, 6)),
    "avg pool 3/2 pad 1 ceil": (lambda: ck.AvgPool2D(3, 2, padding=1, rounding="ceil"), (2, 3, 8, 8)),
    "l2 pool 2/2": (lambda: ck.L2Pool2D(2), (2, 3, 6, 6)),
    "l2 pool 3/2": (lambda: ck.L2Pool2D(3, 2), (2, 3, 7, 7)),
    "global avg pool": (lambda: ck.GlobalAvgPool2D(), (2, 3, 4, 5)),
    "lrn 5": (lambda: ck.LRN(5), (2, 7, 3, 3)),
    "lrn 4 strong": (lambda: ck.LRN(4, alpha=0.5, beta=0.75, k=1.0), (2, 6, 3, 3)),
    "batch norm": (lambda: ck.BatchNorm2D(3), (4, 3, 3, 3)),
    "fc 2-D": (lambda: ck.FC(6, 4), (3, 6)),
    "fc 4-D": (lambda: ck.FC(12, 5), (3, 3, 2, 2)),
    "relu": (lambda: ck.ReLU(), (3, 2, 4, 4)),
    "dropout": (lambda: ck.Dropout(0.3, seed=1), (3, 2, 4, 4)),
    "flatten": (lambda: ck.Flatten(), (2, 3, 2, 2)),
    "sequential": (lambda: ck.Sequential(ck.Conv2D(3, 4, 3, padding=1), ck.ReLU(), ck.MaxPool2D(2), ck.FC(64, 3)), (2, 3, 8, 8)),
    "residual identity": (lambda: ck.Residual(ck.Sequential(ck.Conv2D(3, 3, 3, padding=1), ck.BatchNorm2D(3), ck.ReLU())), (2, 3, 5, 5)),
    "residual projection": (lambda: ck.Residual(ck.Conv2D(3, 4, 3, padding=1, stride=2), ck.Conv2D(3, 4, 1, stride=2)), (2, 3, 7, 7)),
    "concat inception": (lambda: ck.Concat(ck.Conv2D(3, 2, 1), ck.Sequential(ck.Conv2D(3, 2, 1), ck.Conv2D(2, 3, 3, padding=1)),
                                           ck.Sequential(ck.MaxPool2D(3, 1, padding=1), ck.Conv2D(3, 2, 1))), (2, 3, 5, 5)),
}


@pytest.mark.parametrize("name", CASES)
def test_gradcheck(name):
    make, shape = CASES[name]
    assert ck.gradcheck(make(), x(*shape)) < 1e-5


def test_gradcheck_in_small_blocks():
    """Blocked lowering (bands of rows of one image) gives the same gradients."""
    with ck.engine(block_bytes=64):
        for name in ("conv 3x3 s1 p1", "conv 5x5 s1 p2", "conv dilation 2", "conv 3x3 s2 p1",
                     "conv groups 2 s2 dilation 2", "conv floor", "conv 1x1 s2"):
            make, shape = CASES[name]
            assert ck.gradcheck(make(), x(*shape)) < 1e-5, name


def test_gradcheck_detects_a_wrong_gradient():
    class Broken(ck.ReLU):
        def backward(self, dout):
            return 1.01 * super().backward(dout)

    assert ck.gradcheck(Broken(), x(2, 5)) > 1e-3


def test_losses_gradients():
    scores, y = x(5, 4), np.array([0, 3, 1, 1, 2])
    for loss in (ck.softmax_loss, ck.svm_loss):
        _, d = loss(scores, y)
        numeric = np.zeros_like(scores)
        for i in np.ndindex(scores.shape):
            s = scores.copy()
            s[i] += 1e-6
            plus = loss(s, y)[0]
            s[i] -= 2e-6
            minus = loss(s, y)[0]
            numeric[i] = (plus - minus) / 2e-6
        np.testing.assert_allclose(d, numeric, atol=1e-6)
