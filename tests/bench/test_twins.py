"""Each torch.nn twin computes what the cnnkit network computes: outputs, and in train mode gradients."""

from __future__ import annotations

import numpy as np
import pytest

import cnnkit as ck
from cnnkit.bench import BenchError, check_twin, torch_twin

torch = pytest.importorskip("torch")


def _random_bn(net, rng):
    """Batch norm away from the identity, so a twin that ignored it would differ."""
    for layer in net.layers():
        if isinstance(layer, ck.BatchNorm2D):
            D = layer.num_features
            layer.params["weight"] = rng.uniform(0.5, 2, D).astype(np.float32)
            layer.params["bias"] = rng.normal(0, 0.1, D).astype(np.float32)
            layer.buffers["running_mean"] = rng.normal(0, 0.1, D).astype(np.float32)
            layer.buffers["running_var"] = rng.uniform(0.5, 2, D).astype(np.float32)


@pytest.mark.parametrize("name, size", [("alexnet", 64), ("vgg11", 32), ("googlenet", 64), ("resnet18", 32),
                                        ("resnet50", 32), ("cifar10", 32), ("alexnet_original", 67)])
def test_zoo_twin_same_outputs(name, size):
    torch.set_num_threads(1)
    ck.manual_seed(0)
    rng = np.random.default_rng(1)
    net = ck.models.get(name, input_size=size)
    _random_bn(net, rng)
    model = torch_twin(net)
    x = rng.standard_normal((2, *net.input_shape), dtype=np.float32)
    assert check_twin(net, model, x) <= 1e-4
    with torch.no_grad():
        theirs = model(torch.from_numpy(x)).numpy()
    ours = net.forward(x)
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4 * np.abs(theirs).max())


def test_resnet_twin_same_gradients_in_train_mode():
    """Train mode: batch statistics, the residual sums, backward through every layer. In
    float64 (the float32 weights upcast exactly on both sides): train-mode batch norm on
    a few values per channel amplifies float32 rounding beyond any useful tolerance."""
    ck.manual_seed(0)
    rng = np.random.default_rng(2)
    net = ck.models.get("resnet18", input_size=32, num_classes=7)
    _random_bn(net, rng)
    model = torch_twin(net).double()
    net.astype(np.float64)
    assert model.training
    x = rng.standard_normal((3, 3, 32, 32))
    dout = rng.standard_normal((3, 7))
    out = net.forward(x)
    dx = net.backward(dout)
    xt = torch.from_numpy(x).requires_grad_()
    yt = model(xt)
    yt.backward(torch.from_numpy(dout))
    np.testing.assert_allclose(out, yt.detach().numpy(), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-6, atol=1e-9 * np.abs(dx).max())
    ours = [g for _, _, g in net.params_and_grads()]
    theirs = [p.grad.numpy() for p in model.parameters()]
    assert len(ours) == len(theirs) == 62
    for g, h in zip(ours, theirs):
        np.testing.assert_allclose(g, h, rtol=1e-6, atol=1e-9 * max(np.abs(h).max(), 1e-6))


def test_other_layers_twin():
    """LRN, average and L2 pooling, ceil rounding, padding, Flatten, Dropout in eval."""
    ck.manual_seed(0)
    net = ck.Sequential(ck.Conv2D(3, 8, 3, padding=1), ck.LRN(5), ck.ReLU(), ck.AvgPool2D(3, 2, 1, rounding="ceil"),
                        ck.L2Pool2D(2, rounding="floor"), ck.MaxPool2D(3, 2, 1, rounding="ceil"), ck.Flatten(),
                        ck.Dropout(0.5), ck.FC(8 * 3 * 3, 5))
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 15, 15), dtype=np.float32)
    assert net.output_shape((3, 15, 15)) == (5,)
    assert check_twin(net, torch_twin(net), x) <= 1e-4


def test_layer_without_twin_is_one_clear_error():
    net = ck.Sequential(ck.LocallyConnected2D(3, 4, 3, input_size=8), ck.ReLU())
    with pytest.raises(BenchError, match="no torch.nn twin for LocallyConnected2D"):
        torch_twin(net)
