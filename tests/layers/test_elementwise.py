"""The elementwise kernels equal NumPy's plain ufuncs on every memory layout."""

import numpy as np
import pytest


@pytest.mark.parametrize("shape, order", [
    ((2, 3, 5, 7), (0, 2, 3, 1)),      # a channels-last volume: one run, read as rows with a tail
    ((4, 64, 8, 8), (0, 2, 3, 1)),     # whole rows
    ((3, 40), (0, 1)),                 # plain rows
    ((6, 5), (1, 0)),                  # a transposed matrix
])
def test_relu_into_equals_maximum_on_every_layout(shape, order):
    from cnnkit.layers.activation import relu_into
    from cnnkit.layers.layout import memory_view
    rng = np.random.default_rng(0)
    memory = rng.standard_normal([shape[i] for i in order]).astype(np.float32)
    x = memory.transpose(np.argsort(order))
    assert x.shape == shape and memory_view(x) is not None
    want = np.maximum(x, 0)
    np.testing.assert_array_equal(relu_into(x, np.empty_like(x)), want)
    np.testing.assert_array_equal(relu_into(x, np.empty(shape, np.float32)), want)   # layouts differ
    y = x.copy(order="K")
    relu_into(y, y)
    np.testing.assert_array_equal(y, want)
    strided = np.repeat(memory, 2, axis=-1)[..., ::2].transpose(np.argsort(order))   # not one run
    assert memory_view(strided) is None
    np.testing.assert_array_equal(relu_into(strided, np.empty_like(strided)), want)
    axis = -2 if memory.ndim > 2 else -1     # rows of a wider array, as the shifted lowering leaves them
    wide = np.concatenate([memory, memory], axis=axis)
    cropped = wide[tuple(slice(0, n) for n in memory.shape)].transpose(np.argsort(order))
    assert memory_view(cropped) is None
    np.testing.assert_array_equal(relu_into(cropped, np.empty_like(cropped)), want)
