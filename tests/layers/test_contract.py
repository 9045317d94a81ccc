"""The layer contract: modes, caches, parameters, plain-data configs and clear errors."""

import json

import numpy as np
import pytest

import cnnkit as ck

rng = np.random.default_rng(2)


def small_net():
    return ck.Sequential(
        ck.Conv2D(3, 4, 3, padding=1), ck.BatchNorm2D(4), ck.ReLU(), ck.MaxPool2D(2),
        ck.Residual(ck.Sequential(ck.Conv2D(4, 4, 3, padding=1), ck.ReLU())),
        ck.Concat(ck.Conv2D(4, 2, 1), ck.AvgPool2D(3, 1, padding=1)),
        ck.LRN(3), ck.Dropout(0.5, seed=0), ck.GlobalAvgPool2D(), ck.Flatten(), ck.FC(6, 3),
    )


def test_eval_keeps_no_caches_and_train_keeps_them():
    net = small_net()
    x = rng.standard_normal((2, 3, 8, 8), dtype=np.float32)
    net.eval().forward(x)
    assert all(layer._cache is None for layer in net.layers())
    with pytest.raises(ck.StateError, match="eval mode"):
        net.backward(np.ones((2, 3), np.float32))
    net.train().forward(x)
    # BN -> RELU and the residual body's CONV -> RELU run as one pass: the first layer of
    # each keeps the ReLU's mask
    fused = [(net[1], net[2]), (net[4].body[0], net[4].body[1])]
    assert all(relu._cache is None and first._cache[-1] is not None for first, relu in fused)
    assert all(layer._cache is not None for layer in net.layers() if all(layer is not r for _, r in fused))
    assert net.backward(np.ones((2, 3), np.float32)).shape == x.shape
    # backward lets go of every cache, as PyTorch frees its graph: a step's caches do not
    # live on into the next step's forward
    assert all(layer._cache is None for layer in net.layers())
    with pytest.raises(ck.StateError, match=r"backward\(\) already ran for the last forward\(\)"):
        net.backward(np.ones((2, 3), np.float32))
    net.forward(x)
    assert net.backward(np.ones((2, 3), np.float32)).shape == x.shape


def test_conv_filters_live_channels_last_and_loads_keep_them_so(tmp_path):
    from cnnkit.layers.kernels.blocked import weight_rows
    conv = ck.Conv2D(3, 4, 3, padding=1)
    w = conv.params["weight"]
    assert w.shape == (4, 3, 3, 3) and w.transpose(0, 2, 3, 1).flags.c_contiguous
    assert np.shares_memory(weight_rows(w, 1), w)                   # W_row: a reshape, not a copy
    new = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)      # a C-ordered array, as torch/ONNX give
    net = ck.Sequential(conv)
    net.load_state_dict({"0.weight": new, "0.bias": np.zeros(4, np.float32)})
    loaded = net[0].params["weight"]
    np.testing.assert_array_equal(loaded, new)
    assert loaded.transpose(0, 2, 3, 1).flags.c_contiguous and not np.shares_memory(loaded, new)
    path = tmp_path / "c.safetensors"
    from cnnkit.checkpoint import load_checkpoint, save_checkpoint
    save_checkpoint(path, net)
    back = load_checkpoint(path).net[0].params["weight"]
    np.testing.assert_array_equal(back, new)
    assert back.transpose(0, 2, 3, 1).flags.c_contiguous


@pytest.mark.parametrize("channels", [3, 8])   # channels-first and channels-last lowering
def test_conv_caches_only_its_padded_input(channels):
    conv = ck.Conv2D(channels, 4, 3, padding=1)
    x = rng.standard_normal((2, channels, 8, 8), dtype=np.float32)
    conv.forward(x)
    _, xp, window, relu_mask = conv._cache
    assert xp.size == 2 * 10 * 10 * channels and (window.C, window.H, window.W) == x.shape[1:]   # not the 9x larger X_col
    assert relu_mask is None                                  # no ReLU after it


def test_train_eval_set_the_whole_network():
    net = small_net()
    assert all(layer.training for layer in net.eval().train().layers())
    assert not any(layer.training for layer in net.eval().layers())


def test_dropout_modes():
    d = ck.Dropout(0.25, seed=3)
    x = np.ones((200, 50), np.float32)
    out = d.forward(x)
    assert set(np.unique(out)) <= {0.0, np.float32(1 / 0.75)}
    assert abs((out == 0).mean() - 0.25) < 0.02 and abs(out.mean() - 1) < 0.03   # inverted scaling
    assert np.array_equal(d.eval().forward(x), x)
    again = ck.Dropout(0.25, seed=3)
    assert np.array_equal(again.forward(x), out)                                  # seeded


def test_batch_norm_running_statistics_and_eval():
    bn = ck.BatchNorm2D(2, momentum=0.5)
    x = rng.standard_normal((8, 2, 3, 3)) * 3 + 5
    y = bn.forward(x)
    np.testing.assert_allclose(y.mean(axis=(0, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(bn.buffers["running_mean"], 0.5 * x.mean(axis=(0, 2, 3)), rtol=1e-5)
    np.testing.assert_allclose(bn.buffers["running_var"], 0.5 + 0.5 * x.var(axis=(0, 2, 3), ddof=1), rtol=1e-5)
    bn.eval()
    m, v = bn.buffers["running_mean"], bn.buffers["running_var"]
    np.testing.assert_allclose(bn.forward(x), (x - m[None, :, None, None]) / np.sqrt(v[None, :, None, None] + 1e-5), rtol=1e-5)


def test_params_grads_and_state_dict_names():
    net = small_net()
    x = rng.standard_normal((2, 3, 8, 8), dtype=np.float32)
    net.backward(np.ones(net.forward(x).shape, np.float32))
    names = [n for n, p, g in net.params_and_grads()]
    assert names[:4] == ["0.weight", "0.bias", "1.weight", "1.bias"]
    assert "4.body.0.weight" in names and "5.0.weight" in names and "10.weight" in names
    for name, p, g in net.params_and_grads():
        assert g is not None and g.shape == p.shape and g.dtype == p.dtype, name
    state = net.state_dict()
    assert "1.running_mean" in state and "1.running_var" in state
    assert all(v.dtype == np.float32 for v in state.values())


def test_config_round_trip_is_plain_json():
    net = small_net().eval()
    text = json.dumps(net.config())
    clone = ck.from_config(json.loads(text)).eval()
    clone.load_state_dict(net.state_dict())
    x = rng.standard_normal((2, 3, 8, 8), dtype=np.float32)
    np.testing.assert_array_equal(clone.forward(x), net.forward(x))
    assert clone.config() == net.config()


def test_load_state_dict_checks_shapes_and_keys():
    net = ck.Sequential(ck.FC(4, 2))
    with pytest.raises(ck.ShapeError, match=r"'0.weight' expected shape \(2, 4\), got \(4, 2\)"):
        net.load_state_dict({"0.weight": np.zeros((4, 2)), "0.bias": np.zeros(2)})
    with pytest.raises(ck.ShapeError, match="missing keys"):
        net.load_state_dict({"0.weight": np.zeros((2, 4))})


def test_float64_everywhere():
    net = small_net().astype(np.float64)
    x = rng.standard_normal((2, 3, 8, 8))
    out = net.forward(x)
    assert out.dtype == np.float64 and net.backward(np.ones_like(out)).dtype == np.float64
    assert all(g.dtype == np.float64 for _, _, g in net.params_and_grads())


def test_float32_stays_float32_and_channels_last_in_memory():
    net = ck.Sequential(ck.Conv2D(3, 8, 3, padding=1), ck.ReLU(), ck.Conv2D(8, 8, 3, padding=1))
    out = net.forward(rng.standard_normal((1, 3, 5, 5), dtype=np.float32))
    assert out.dtype == np.float32
    assert out.transpose(0, 2, 3, 1).flags["C_CONTIGUOUS"]     # NCHW view of NHWC memory


def test_batch_of_one():
    net = small_net().eval()
    assert net.forward(rng.standard_normal((1, 3, 8, 8), dtype=np.float32)).shape == (1, 3)


# --- bad input: each error names the layer and says expected versus received ---------------

def test_wrong_ndim():
    with pytest.raises(ck.ShapeError, match=r"Conv2D\(.*expected input of shape \(N, C, H, W\), got shape \(3, 8, 8\)"):
        ck.Conv2D(3, 4, 3).forward(np.zeros((3, 8, 8), np.float32))


def test_wrong_channel_count():
    with pytest.raises(ck.ShapeError, match=r"expected 3 input channels \(depth D1\), got 4"):
        ck.Conv2D(3, 4, 3).forward(np.zeros((1, 4, 8, 8), np.float32))
    with pytest.raises(ck.ShapeError, match=r"BatchNorm2D.*expected 2 input channels"):
        ck.BatchNorm2D(2).forward(np.zeros((2, 3, 4, 4), np.float32))


def test_integer_dtype():
    with pytest.raises(ck.ShapeError, match=r"MaxPool2D.*floating-point.*got dtype int64"):
        ck.MaxPool2D(2).forward(np.zeros((1, 1, 4, 4), np.int64))


def test_empty_batch():
    with pytest.raises(ck.ShapeError, match=r"ReLU\(\): the batch is empty \(N = 0\)"):
        ck.ReLU().forward(np.zeros((0, 3)))


def test_not_an_array():
    with pytest.raises(ck.ShapeError, match="expected a NumPy array, got list"):
        ck.FC(2, 2).forward([[1.0, 2.0]])


def test_fc_wrong_size():
    with pytest.raises(ck.ShapeError, match=r"FC\(in_features=10.*expected 10 input numbers per example, got 12"):
        ck.FC(10, 2).forward(np.zeros((2, 3, 2, 2), np.float32))


def test_mismatched_gradient_shape():
    conv = ck.Conv2D(3, 4, 3)
    conv.forward(np.zeros((2, 3, 5, 5), np.float32))
    with pytest.raises(ck.ShapeError, match=r"backward expected a gradient of shape \(2, 4, 3, 3\).*got \(2, 4, 3, 4\)"):
        conv.backward(np.zeros((2, 4, 3, 4), np.float32))


def test_backward_before_forward():
    with pytest.raises(ck.StateError, match=r"FC\(.*backward\(\) called without a forward\(\)"):
        ck.FC(2, 2).backward(np.zeros((1, 2)))


def test_errors_in_a_network_say_where():
    net = ck.Sequential(ck.Conv2D(3, 4, 3, padding=1), ck.ReLU(), ck.FC(10, 2))
    with pytest.raises(ck.ShapeError, match=r"^layer 2: FC\(in_features=10"):
        net.forward(np.zeros((1, 3, 4, 4), np.float32))
    with pytest.raises(ck.ShapeError, match=r"layer 2: .*expected 10 input numbers per example, got 4x4x4 = 64"):
        net.output_shape((3, 4, 4))


def test_residual_shape_mismatch():
    with pytest.raises(ck.ShapeError, match=r"Residual: body output \(4, 4, 4\) and shortcut output \(3, 4, 4\)"):
        ck.Residual(ck.Conv2D(3, 4, 3, padding=1)).forward(np.zeros((1, 3, 4, 4), np.float32))


def test_bad_hyperparameters():
    with pytest.raises(ck.ShapeError, match="divisible by groups"):
        ck.Conv2D(3, 4, 3, groups=2)
    with pytest.raises(ck.ShapeError, match="kernel_size must be an int or an \\(h, w\\) pair"):
        ck.Conv2D(3, 4, "3")
    with pytest.raises(ck.ShapeError, match="rounding must be one of"):
        ck.Conv2D(3, 4, 3, rounding="ceil")
    with pytest.raises(ck.ShapeError, match=r"Dropout: p must be in \[0, 1\)"):
        ck.Dropout(1.0)


def test_loss_input_errors():
    with pytest.raises(ck.ShapeError, match=r"softmax_loss: labels must lie in \[0, 2\]"):
        ck.softmax_loss(np.zeros((2, 3)), np.array([0, 3]))
    with pytest.raises(ck.ShapeError, match=r"svm_loss: expected integer labels of shape \(2,\)"):
        ck.svm_loss(np.zeros((2, 3)), np.array([0.0, 1.0]))


def test_loss_known_values():
    scores = np.array([[3.2, 5.1, -1.7], [1.3, 4.9, 2.0], [2.2, 2.5, -3.1]])   # CS231n's SVM example
    y = np.array([0, 1, 2])
    loss, _ = ck.svm_loss(scores, y)
    assert np.isclose(loss, (2.9 + 0 + 12.9) / 3)
    loss, d = ck.softmax_loss(np.zeros((4, 10)), np.arange(4))
    assert np.isclose(loss, np.log(10)) and np.allclose(d.sum(axis=1), 0)


@pytest.mark.parametrize("first", [lambda: ck.Conv2D(3, 4, 3, padding=1), lambda: ck.Conv2D(8, 4, 3, padding=1),
                                   lambda: ck.Conv2D(8, 4, 2, stride=2)])
def test_training_net_skips_the_input_gradient_with_the_same_weight_gradients(first):
    layer = first()
    features = int(np.prod(layer.output_shape((layer.in_channels, 6, 6))))
    net = ck.Sequential(layer, ck.ReLU(), ck.Flatten(), ck.FC(features, 2))
    x = rng.standard_normal((2, layer.in_channels, 6, 6), dtype=np.float32)
    dout = np.ones((2, 2), np.float32)
    net.forward(x)
    assert net.backward(dout).shape == x.shape
    full = {n: g.copy() for n, _, g in net.params_and_grads()}
    net.input_grad = False
    net.forward(x)
    assert net.backward(dout) is None
    assert layer.input_grad                      # only for the duration of that backward
    for name, _, grad in net.params_and_grads():
        np.testing.assert_allclose(grad, full[name], rtol=1e-5, atol=1e-6)


def test_load_state_dict_non_strict_returns_missing_and_unexpected_keys():
    net = ck.Sequential(ck.FC(4, 2), ck.ReLU(), ck.FC(2, 3))
    state = {"0.weight": np.ones((2, 4), np.float32), "9.bias": np.zeros(3, np.float32)}
    result = net.load_state_dict(state, strict=False)
    assert result.missing_keys == ["0.bias", "2.bias", "2.weight"]
    assert result.unexpected_keys == ["9.bias"]
    assert np.array_equal(net[0].params["weight"], np.ones((2, 4)))
    assert net.load_state_dict(net.state_dict()) == ([], [])


def test_backward_overwrites_grads_unless_accumulating_as_pytorch_does():
    net = ck.Sequential(ck.Conv2D(2, 3, 3, padding=1), ck.BatchNorm2D(3), ck.ReLU(), ck.FC(3 * 4 * 4, 2))
    x = rng.standard_normal((2, 2, 4, 4), dtype=np.float32)
    dout = np.ones((2, 2), np.float32)

    def step():
        net.forward(x)
        net.backward(dout)
        return {name: g.copy() for name, _, g in net.params_and_grads()}

    once = step()
    again = step()                                    # overwritten: the same gradients
    for name in once:
        np.testing.assert_allclose(again[name], once[name], rtol=1e-5)
    net.accumulate_grads()
    twice = step()                                    # added: twice the gradients
    for name in once:
        np.testing.assert_allclose(twice[name], 2 * once[name], rtol=1e-5, atol=1e-6)
    net.zero_grad()
    assert all(g is None for _, _, g in net.params_and_grads())
    np.testing.assert_allclose(step()["0.weight"], once["0.weight"], rtol=1e-5)
    assert [p.shape for p in net.parameters()] == [p.shape for _, p in net.named_parameters()]
    assert list(net.modules()) == list(net.layers())


def test_a_dry_build_sizes_a_network_without_spending_its_memory():
    import tracemalloc
    tracemalloc.start()
    with ck.engine(allocate=False):
        net = ck.build("INPUT[224x224x3] -> [CONV3-64 -> RELU]*2 -> POOL2 -> FC100000 -> FC10")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert net.num_params() == 1728 + 64 + 36864 + 64 + 112 * 112 * 64 * 100_000 + 100_000 + 1_000_010
    assert peak < 1 << 20                              # 80 billion parameters, under a megabyte
    assert not net[0].params["weight"].flags.writeable
    assert ck.layers.runtime.options().allocate
