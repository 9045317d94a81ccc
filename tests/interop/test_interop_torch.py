"""PyTorch weights both ways: each zoo architecture built in plain torch.nn with torchvision's
module names and random weights (batch norm statistics too), saved by torch, loaded by cnnkit
with torch blocked; and cnnkit's files loaded by torch with strict=True."""

from __future__ import annotations

import numpy as np
import pytest
from interop_helpers import FIXTURES, assert_close, randomize_stats
from interop_helpers import fixture_script as fx

import cnnkit as ck
from cnnkit.interop import load_torch_weights, pth, read_state_dict, save_torch_weights

torch = pytest.importorskip("torch")


def _zoo_torch(name: str, classes: int):
    """torch model of a zoo name, at widths matching cnnkit's model at the small test input."""
    if name == "alexnet":
        return fx.torch_alexnet(classes, pool=1)
    if name.startswith("vgg"):
        return fx.torch_vgg(int(name[3:5]), name.endswith("_bn"), classes, pool=1)
    if name.startswith("resnet"):
        return fx.torch_resnet(int(name[6:]), classes)
    return fx.torch_googlenet(classes)


FAST = ["alexnet", "vgg11_bn", "resnet18", "resnet50", "googlenet"]
SLOW = ["vgg11", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn", "resnet34"]


@pytest.mark.parametrize("name", FAST + [pytest.param(n, marks=pytest.mark.slow) for n in SLOW])
def test_torch_state_dict_loads_into_the_zoo_model(name, tmp_path, monkeypatch):
    size = 64 if name == "alexnet" else 32  # AlexNet's 11x11/4 stem needs 64 to leave a 1x1 map
    model = fx.randomize(_zoo_torch(name, 10), seed=3)
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(x).numpy()
    path = tmp_path / f"{name}.pth"
    torch.save(model.state_dict(), path)
    for mod in [m for m in list(__import__("sys").modules) if m == "torch" or m.startswith("torch.")]:
        monkeypatch.setitem(__import__("sys").modules, mod, None)  # the load runs without torch
    net = ck.models.get(name, num_classes=10, input_size=size, weights=path)
    monkeypatch.undo()
    assert_close(net.eval().forward(x.numpy()), expected)


@pytest.mark.parametrize("case", sorted(fx.TINY))
@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_cnnkit_weights_load_into_torch_strictly(case, suffix, tmp_path):
    spec, builder, kwargs, size, _ = fx.TINY[case]
    net = randomize_stats(ck.build(spec), seed=5)
    path = tmp_path / f"w{suffix}"
    save_torch_weights(net, path)
    if suffix == ".pth":
        state = torch.load(path, weights_only=True)
    else:
        from safetensors.torch import load_file
        state = load_file(str(path))
    model = builder(**kwargs).eval()
    model.load_state_dict(state, strict=True)
    x = np.random.default_rng(0).random((2, 3, size, size), dtype=np.float32)
    with torch.no_grad():
        assert_close(net.forward(x), model(torch.from_numpy(x)).numpy())


@pytest.mark.slow
def test_zoo_resnet50_weights_load_into_torch_strictly(tmp_path):
    net = randomize_stats(ck.models.get("resnet50", num_classes=10, input_size=32))
    save_torch_weights(net, tmp_path / "r50.pth")
    model = fx.torch_resnet(50, 10).eval()
    model.load_state_dict(torch.load(tmp_path / "r50.pth", weights_only=True), strict=True)
    x = np.random.default_rng(0).random((1, 3, 32, 32), dtype=np.float32)
    with torch.no_grad():
        assert_close(net.forward(x), model(torch.from_numpy(x)).numpy())


def test_the_restricted_reader_equals_torch_load(tmp_path):
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    state = {"t": base.t(), "row": base[1], "slice": base[:, 2:5], "half": torch.randn(3, 2).half(),
             "bf16": torch.randn(5).bfloat16(), "long": torch.tensor([1, -2**40]), "scalar": torch.tensor(3.5),
             "bool": torch.tensor([True, False]), "f64": torch.randn(2, 2, dtype=torch.float64),
             "param": torch.nn.Parameter(torch.ones(2))}
    torch.save(state, tmp_path / "s.pth")
    ours = pth.load(tmp_path / "s.pth")
    theirs = torch.load(tmp_path / "s.pth", weights_only=True)
    for k, v in theirs.items():
        v = v.detach().float() if v.dtype == torch.bfloat16 else v.detach()
        np.testing.assert_array_equal(ours[k], v.numpy(), err_msg=k)
        assert ours[k].shape == tuple(v.shape)


@pytest.mark.parametrize("case", sorted(fx.TINY))
def test_committed_fixtures_match_torch(case):
    """The committed files are what torch reads, and the recorded outputs are torch's."""
    _, builder, kwargs, _, suffix = fx.TINY[case]
    path = FIXTURES / f"{case}{suffix}"
    if suffix == ".pth":
        state = torch.load(path, weights_only=True)
    else:
        from safetensors.torch import load_file
        state = load_file(str(path))
    ours = read_state_dict(path)
    assert set(ours) == set(state)
    model = builder(**kwargs).eval()
    model.load_state_dict(state, strict=True)
    data = np.load(FIXTURES / f"{case}.npz")
    with torch.no_grad():
        assert_close(model(torch.from_numpy(data["x"])).numpy(), data["y"], tol=1e-5)


def test_torch_tensors_load_directly():
    spec = fx.TINY["resnet_bottleneck_tiny"][0]
    model, x, y = fx.make_case("resnet_bottleneck_tiny")
    net = ck.build(spec)
    load_torch_weights(net, model.state_dict())
    assert_close(net.eval().forward(x), y)
