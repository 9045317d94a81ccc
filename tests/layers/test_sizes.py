"""The output-size formula (W - F + 2P)/S + 1 as a property of every sliding layer."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import cnnkit as ck

dims = st.integers(1, 14)


@settings(max_examples=150, deadline=None)
@given(W=dims, H=dims, F=st.integers(1, 5), S=st.integers(1, 4), P=st.integers(0, 3), D=st.integers(1, 3))
def test_conv_shape_is_predicted_or_refused(W, H, F, S, P, D):
    F_eff = D * (F - 1) + 1
    conv = ck.Conv2D(2, 3, F, stride=S, padding=P, dilation=D)
    x = np.zeros((1, 2, H, W), np.float32)
    spans = [H - F_eff + 2 * P, W - F_eff + 2 * P]
    if all(s >= 0 and s % S == 0 for s in spans):
        expected = (1, 3, spans[0] // S + 1, spans[1] // S + 1)
        assert conv.forward(x).shape == expected
        assert conv.output_shape((2, H, W)) == expected[1:]
    else:
        with pytest.raises(ck.ShapeError) as err:
            conv.forward(x)
        assert "Conv2D" in str(err.value)
        assert "not an integer" in str(err.value) or "larger than the padded input" in str(err.value)
        if all(s >= 0 for s in spans):  # floor keeps what fits
            floor = ck.Conv2D(2, 3, F, stride=S, padding=P, dilation=D, rounding="floor")
            assert floor.forward(x).shape == (1, 3, spans[0] // S + 1, spans[1] // S + 1)


@settings(max_examples=150, deadline=None)
@given(W=dims, F=st.integers(1, 4), S=st.integers(1, 3), P=st.integers(0, 2),
       rounding=st.sampled_from(["exact", "floor", "ceil"]),
       kind=st.sampled_from([ck.MaxPool2D, ck.AvgPool2D]))
def test_pool_shape(W, F, S, P, rounding, kind):
    if 2 * P > F:
        with pytest.raises(ck.ShapeError):
            kind(F, S, padding=P)
        return
    pool = kind(F, S, padding=P, rounding=rounding)
    x = np.random.default_rng(0).standard_normal((1, 2, W, W)).astype(np.float32)
    span = W - F + 2 * P
    if span < 0 or (span % S and rounding == "exact"):
        with pytest.raises(ck.ShapeError):
            pool.forward(x)
        return
    if rounding == "ceil":
        out = -(-span // S) + 1
        if (out - 1) * S >= W + P:
            out -= 1
    else:
        out = span // S + 1
    assert pool.forward(x).shape == (1, 2, out, out)
    assert np.isfinite(pool.forward(x)).all()   # every window holds at least one real input


@pytest.mark.slow
def test_torch_rounding_agrees_when_available():
    torch = pytest.importorskip("torch")
    x = torch.zeros(1, 1, 10, 10)
    for F, S, P in [(3, 2, 0), (3, 2, 1), (2, 2, 0), (3, 3, 1)]:
        ceil = torch.nn.functional.max_pool2d(x, F, S, P, ceil_mode=True).shape[2]
        floor = torch.nn.functional.max_pool2d(x, F, S, P).shape[2]
        assert ck.output_size(10, F, S, P, rounding="ceil") == ceil
        assert ck.output_size(10, F, S, P, rounding="floor") == floor
