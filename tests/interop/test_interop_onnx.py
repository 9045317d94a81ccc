"""ONNX out and in: every zoo model against onnxruntime, export -> load identical, torch's
exporter's graphs loaded, and clear errors for what cnnkit can't express."""

from __future__ import annotations

import types

import numpy as np
import pytest
from interop_helpers import assert_close, randomize_stats
from interop_helpers import fixture_script as fx

import cnnkit as ck

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from cnnkit.onnx import OnnxError, export, from_onnx, load, to_onnx  # noqa: E402 (needs onnx)


def _run(model_or_path, x):
    source = model_or_path.SerializeToString() if hasattr(model_or_path, "SerializeToString") else str(model_or_path)
    sess = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


SIZES = {"alexnet": 64, "alexnet_original": 67, "zfnet": 64, "lenet5": 32}
SLOW = {"alexnet", "resnet50", "vgg11", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn", "resnet34", "zfnet", "alexnet_original"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n
                                  for n in ck.models.names()])
def test_zoo_model_matches_onnxruntime_and_loads_back(name, tmp_path):
    net = randomize_stats(ck.models.get(name, num_classes=10, input_size=SIZES.get(name, 32)))
    path = tmp_path / f"{name}.onnx"
    export(net, path)
    onnx.checker.check_model(str(path), full_check=True)
    x = np.random.default_rng(0).random((2, *net.input_shape), dtype=np.float32)
    expected = net.forward(x)
    assert_close(_run(path, x), expected)
    back = load(path)
    assert back.input_shape == net.input_shape and back.training  # a fresh, trainable network
    assert list(back.state_dict()) == list(net.state_dict())
    np.testing.assert_array_equal(back.eval().forward(x), expected)


OPS = [
    "INPUT[9x9x4] -> CONV3-6d2g2 -> RELU -> AVGPOOL3/2p1ceil -> NORM3 -> FLATTEN -> FC5 -> DROPOUT0.3 -> FC2",
    "INPUT[9x9x3] -> CONV3-4/2floor -> POOL2ceil -> CONV1-4nb -> BN -> RELU -> GAP -> FC3",
    "INPUT[11x11x2] -> CONV5x3-4p2x1 -> L2POOL3/2ceil -> AVGPOOL2floor -> FC3",
    ("INPUT[8x8x3] -> RES[CONV3-3 -> BN] -> RELU -> RES[CONV3-4/2floor -> BN | CONV1-4/2floor] "
     "-> CAT[CONV1-2 | SEQ[] | POOL3/1p1 -> CONV1-2] -> FC3"),
    "INPUT[12] -> FC6 -> RELU -> FC2",
]


@pytest.mark.parametrize("spec", OPS)
def test_each_operator_matches_onnxruntime_and_loads_back(spec):
    net = randomize_stats(ck.build(spec))
    model = to_onnx(net)
    x = np.random.default_rng(1).random((3, *net.input_shape), dtype=np.float32)
    assert_close(_run(model, x), net.forward(x), tol=1e-5)
    assert_close(_run(model, x[:1]), net.forward(x[:1]), tol=1e-5)  # the batch axis is dynamic
    back = from_onnx(model)
    assert back.spec.replace("CONV3-4/2floor", "CONV3-4/2") == net.spec.replace("CONV3-4/2floor", "CONV3-4/2")
    np.testing.assert_array_equal(back.eval().forward(x), net.forward(x))


def test_ops_in_the_graph():
    model = to_onnx(ck.build(OPS[0]))
    ops = [n.op_type for n in model.graph.node]
    assert ops == ["Conv", "Relu", "AveragePool", "LRN", "Flatten", "Gemm", "Dropout", "Gemm", "Identity"]
    pool = next(n for n in model.graph.node if n.op_type == "AveragePool")
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in pool.attribute}
    assert attrs["ceil_mode"] == 1 and attrs["count_include_pad"] == 1 and list(attrs["pads"]) == [1, 1, 1, 1]
    conv = model.graph.node[0]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in conv.attribute}
    assert attrs["group"] == 2 and list(attrs["dilations"]) == [2, 2]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"


def test_an_imported_network_trains():
    net = from_onnx(to_onnx(randomize_stats(ck.build(OPS[3]))))
    net.train().astype(np.float64)
    x = np.random.default_rng(2).random((2, 3, 8, 8))
    assert ck.gradcheck(net, x) < 1e-6


def test_locally_connected_layer_is_refused_by_name():
    net = ck.build("INPUT[6x6x2] -> CONV3-2 -> LC3-2 -> FC2")
    with pytest.raises(OnnxError, match=r"layer 1 LocallyConnected2D\(.*\): a locally-connected layer has no ONNX operator"):
        to_onnx(net)


def _graph(nodes, inits=(), out_shape=None):
    h = onnx.helper
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 2, 4, 4])],
                     [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, out_shape)], list(inits))
    return h.make_model(g, opset_imports=[h.make_opsetid("", 18)], ir_version=8)


def test_unsupported_operators_are_listed_in_one_error():
    h = onnx.helper
    model = _graph([h.make_node("Sigmoid", ["x"], ["a"], name="gate"), h.make_node("Relu", ["a"], ["b"]),
                    h.make_node("Softmax", ["b"], ["y"], name="probs")])
    with pytest.raises(OnnxError, match=r"2 operator\(s\) cnnkit has no layer for: Sigmoid \(node 'gate'\), "
                                        r"Softmax \(node 'probs'\)"):
        from_onnx(model)


def test_unsupported_attributes_name_the_node():
    h = onnx.helper
    w = onnx.numpy_helper.from_array(np.ones((2, 2, 3, 3), np.float32), "w")
    model = _graph([h.make_node("Conv", ["x", "w"], ["y"], name="c1", pads=[1, 1, 0, 0])], [w])
    with pytest.raises(OnnxError, match=r"Conv \(node 'c1'\): pads \[1, 1, 0, 0\] differ between the sides"):
        from_onnx(model)


def test_truncated_and_garbage_files(tmp_path):
    path = tmp_path / "m.onnx"
    export(ck.build("INPUT[8x8x3] -> CONV3-4 -> RELU -> FC3"), path)
    data = path.read_bytes()
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(OnnxError, match=r"cut\.onnx: "):
        load(cut)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00\xff" * 50)
    with pytest.raises(OnnxError, match=r"junk\.onnx: "):
        load(junk)
    with pytest.raises(OnnxError, match=r"none\.onnx: cannot read an ONNX model"):
        load(tmp_path / "none.onnx")


# --- models exported by PyTorch ---------------------------------------------------------

def _view_forward(self, x):
    """torchvision's ResNet forward with the older x.view(x.size(0), -1): Shape/Gather/Concat/Reshape."""
    x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
    for i in range(1, self.stages + 1):
        x = getattr(self, f"layer{i}")(x)
    x = self.avgpool(x)
    return self.fc(x.view(x.size(0), -1))


@pytest.mark.parametrize("case,folding", [
    (case, True) for case in ("resnet_basic_tiny", "resnet_bottleneck_tiny", "vgg11_bn_tiny", "vgg13_tiny",
                              "googlenet_tiny")
] + [("resnet_basic_tiny", False), ("vgg11_bn_tiny", False)])  # unfolded: BatchNormalization nodes stay
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch calls its TorchScript exporter legacy
def test_torch_onnx_export_loads_and_matches(case, folding, tmp_path):
    torch = pytest.importorskip("torch")
    model, x, expected = fx.make_case(case)
    if case.startswith("resnet"):
        model.forward = types.MethodType(_view_forward, model)
    path = tmp_path / f"{case}.onnx"
    # dynamo=False: torch 2.13's default exporter (dynamo) needs the onnxscript package
    torch.onnx.export(model, (torch.from_numpy(x),), str(path), dynamo=False, input_names=["x"],
                      output_names=["y"], dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
                      do_constant_folding=folding)
    net = load(path).eval()
    assert_close(net.forward(x), expected)
    assert_close(_run(path, x), expected)
    assert_close(net.forward(x[:1]), _run(path, x[:1]))


def test_external_data_beside_the_model_is_read_and_checked(tmp_path):
    net = randomize_stats(ck.build("INPUT[8x8x3] -> CONV3-4 -> BN -> RELU -> GAP -> FC3"))
    path = tmp_path / "m.onnx"
    onnx.save_model(to_onnx(net), str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="m.onnx.data", size_threshold=0)
    x = np.random.default_rng(0).random((2, 3, 8, 8), dtype=np.float32)
    np.testing.assert_array_equal(load(path).eval().forward(x), net.forward(x))
    side = tmp_path / "m.onnx.data"
    side.write_bytes(side.read_bytes()[:40])
    with pytest.raises(OnnxError, match=r"m\.onnx: tensor '0\.weight' needs 432 bytes at offset 0 of m\.onnx\.data"):
        load(path)
    model = onnx.load_model(str(path), load_external_data=False)
    for entry in model.graph.initializer[0].external_data:
        if entry.key == "location":
            entry.value = "../secret"
    (tmp_path / "evil.onnx").write_bytes(model.SerializeToString())
    with pytest.raises(OnnxError, match=r"points at '\.\./secret'; cnnkit reads external data only from a file beside"):
        load(tmp_path / "evil.onnx")


@pytest.mark.parametrize("case", ["resnet_bottleneck_tiny", "googlenet_tiny"])
def test_torch_dynamo_exporter_graphs_load(case, tmp_path):
    """torch 2.13's default exporter (dynamo=True) needs onnxscript; it writes opset 20,
    ReduceMean for the average pool, Reshape, and the weights in a side file."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxscript")
    model, x, expected = fx.make_case(case)
    path = tmp_path / f"{case}.onnx"
    torch.onnx.export(model, (torch.from_numpy(x),), str(path), dynamo=True, input_names=["x"],
                      dynamic_shapes=({0: torch.export.Dim("batch")},))
    assert_close(load(path).eval().forward(x), expected)
