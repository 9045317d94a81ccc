"""Weights files without torch: the restricted .pth reader, safetensors with NumPy, the name mapping."""

from __future__ import annotations

import io
import os
import pickle
import zipfile

import numpy as np
import pytest
from interop_helpers import FIXTURES, assert_close, fixture_script, randomize_stats

import cnnkit as ck
from cnnkit.interop import (
    WeightsError,
    load_torch_weights,
    pth,
    read_state_dict,
    safetensors_io,
    save_torch_weights,
    torchvision_names,
)


def _arrays():
    rng = np.random.default_rng(0)
    return {"w": rng.standard_normal((3, 4, 2)).astype(np.float32), "d": rng.standard_normal(5),
            "h": rng.standard_normal(3).astype(np.float16), "n": np.array(7, np.int64),
            "b": np.array([True, False]), "e": np.zeros((0, 3), np.float32),
            "view": np.arange(12, dtype=np.float32).reshape(3, 4)[:, ::2]}


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_round_trip_keeps_every_dtype_and_shape(tmp_path, suffix, no_torch):
    arrays = _arrays()
    module = pth if suffix == ".pth" else safetensors_io
    module.save(tmp_path / f"a{suffix}", arrays)
    back = module.load(tmp_path / f"a{suffix}")
    assert list(back) == list(arrays)
    for k, v in arrays.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape
        np.testing.assert_array_equal(back[k], v)


def test_safetensors_reader_matches_the_safetensors_package(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    arrays = {k: v for k, v in _arrays().items() if k != "view"}
    st.save_file(arrays, str(tmp_path / "a.safetensors"))
    back = safetensors_io.load(tmp_path / "a.safetensors")
    for k, v in arrays.items():
        np.testing.assert_array_equal(back[k], v)
    safetensors_io.save(tmp_path / "b.safetensors", arrays)  # and the package reads ours
    for k, v in st.load_file(str(tmp_path / "b.safetensors")).items():
        np.testing.assert_array_equal(v, arrays[k])


# --- hostile and broken files ------------------------------------------------------

def _zip(tmp_path, pkl: bytes, extra: dict[str, bytes] | None = None, name="evil.pth"):
    path = tmp_path / name
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pkl)
        for k, v in (extra or {}).items():
            z.writestr(k, v)
    return path


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.remove, (self.marker,))


def test_a_reduce_payload_runs_no_code(tmp_path):
    marker = tmp_path / "still-here"
    marker.write_text("x")
    path = _zip(tmp_path, pickle.dumps({"w": _Payload(str(marker))}, protocol=2))
    with pytest.raises(WeightsError, match=r"evil\.pth: refused the global (posix|nt)\.remove.*nothing in it was run"):
        read_state_dict(path)
    assert marker.exists()  # os.remove was never called


def test_an_unexpected_global_is_refused_by_name(tmp_path):
    pkl = b"\x80\x02ctorch.nn.modules.conv\nConv2d\n)\x81."  # what torch.save(model) writes
    with pytest.raises(WeightsError, match=r"refused the global torch\.nn\.modules\.conv\.Conv2d.*state_dict"):
        pth.load(_zip(tmp_path, pkl))


def _tensor_pickle(numel: int, size: tuple, stride: tuple) -> bytes:
    """A one-tensor state dict pickle, written with the writer's own opcodes but any sizes."""
    good = pth.dumps({"w": np.zeros(numel, np.float32)})
    pkl = zipfile.ZipFile(io.BytesIO(good)).read("archive/data.pkl")
    def opcodes(t):  # protocol 2: MARK, BININT1 each, TUPLE
        return b"(" + b"".join(b"K" + bytes([v]) for v in t) + b"t"
    return pkl.replace(opcodes((numel,)) + opcodes((1,)), opcodes(size) + opcodes(stride))


def test_a_storage_that_does_not_match_its_entry_is_refused(tmp_path):
    data = pth.dumps({"w": np.zeros(6, np.float32)})
    z = zipfile.ZipFile(io.BytesIO(data))
    entries = {n: z.read(n) for n in z.namelist()}
    entries["archive/data/0"] = entries["archive/data/0"][:8]  # 2 floats where 6 are claimed
    path = tmp_path / "short.pth"
    with zipfile.ZipFile(path, "w") as out:
        for n, v in entries.items():
            out.writestr(n, v)
    with pytest.raises(WeightsError, match=r"short\.pth: storage '0' claims 6 x FloatStorage = 24 bytes but its entry holds 8"):
        read_state_dict(path)


def test_a_tensor_reaching_past_its_storage_is_refused(tmp_path):
    pkl = _tensor_pickle(6, (4, 4), (4, 1))
    path = _zip(tmp_path, pkl, {"archive/data/0": b"\0" * 24}, name="far.pth")
    with pytest.raises(WeightsError, match=r"reaches element 15 of a storage of 6"):
        read_state_dict(path)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_truncated_and_garbage_files_get_one_clear_error(tmp_path, suffix):
    module = pth if suffix == ".pth" else safetensors_io
    data = module.dumps({"w": np.ones((8, 8), np.float32)})
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match=rf"cut{suffix}: .*(truncated|corrupt)"):
        read_state_dict(cut)
    junk = tmp_path / f"junk{suffix}"
    junk.write_bytes(b"\xff" * 40)
    with pytest.raises(WeightsError, match=rf"junk{suffix}: "):
        read_state_dict(junk)
    with pytest.raises(WeightsError, match=r"nope\.pth: cannot read"):
        read_state_dict(tmp_path / "nope.pth")
    with pytest.raises(WeightsError, match=r"unknown weights format '\.npy'"):
        read_state_dict(tmp_path / "w.npy")


def test_safetensors_header_larger_than_the_file_is_refused(tmp_path):
    path = tmp_path / "big.safetensors"
    path.write_bytes((10**12).to_bytes(8, "little") + b"{}")
    with pytest.raises(WeightsError, match=r"big\.safetensors: the header claims 1000000000000 bytes but 2 follow"):
        read_state_dict(path)


def test_legacy_torch_format_is_named(tmp_path):
    path = tmp_path / "old.pth"
    path.write_bytes(b"\x80\x02\x8a\x0alZ\xfc\x9cF\xf9\x20j\xa8P\x19.")
    with pytest.raises(WeightsError, match=r"old\.pth: PyTorch's legacy \(pre-1\.6\) format"):
        read_state_dict(path)


# --- the committed real PyTorch files, read without torch -------------------------------

@pytest.mark.parametrize("case", sorted(fixture_script.TINY))
def test_committed_torch_files_load_without_torch(case, no_torch):
    spec, _, _, _, suffix = fixture_script.TINY[case]
    net = ck.build(spec)
    result = load_torch_weights(net, FIXTURES / f"{case}{suffix}")
    assert result.missing_keys == [] and result.unexpected_keys == []
    data = np.load(FIXTURES / f"{case}.npz")
    assert_close(net.eval().forward(data["x"]), data["y"])


# --- torchvision's names --------------------------------------------------------------

@pytest.mark.parametrize("name,size,keys", [
    ("alexnet", 64, ["features.0.weight", "features.10.bias", "classifier.1.weight", "classifier.6.bias"]),
    ("vgg11_bn", 32, ["features.0.weight", "features.1.running_mean", "features.25.weight", "features.26.running_var", "classifier.6.weight"]),
    ("resnet18", 32, ["conv1.weight", "bn1.running_mean", "layer1.0.conv1.weight", "layer1.1.bn2.bias",
                      "layer2.0.downsample.0.weight", "layer2.0.downsample.1.running_mean", "layer4.1.conv2.weight",
                      "fc.weight"]),
    ("resnet50", 32, ["layer1.0.downsample.0.weight", "layer1.2.conv3.weight", "layer3.5.bn3.running_var",
                      "layer4.0.downsample.1.weight"]),
    ("googlenet", 32, ["conv1.conv.weight", "conv3.bn.running_mean", "inception3a.branch1.conv.weight",
                       "inception3a.branch2.0.conv.weight", "inception3a.branch2.1.bn.running_var",
                       "inception4e.branch4.1.conv.weight", "inception5b.branch3.1.bn.bias", "fc.bias"]),
])
def test_zoo_models_get_torchvision_names(name, size, keys):
    net = ck.models.get(name, num_classes=10, input_size=size)
    mapping = torchvision_names(net)
    assert set(mapping) == set(net.state_dict())
    assert len(set(mapping.values())) == len(mapping)  # one torch key per array
    for key in keys:
        assert key in mapping.values(), key


def test_torchvision_resnet18_has_exactly_its_keys():
    """torchvision's resnet18 state dict: 62 parameters, 40 buffers (20 BN x mean, var) + 20 counters."""
    net = ck.models.get("resnet18", input_size=32)
    mapping = torchvision_names(net)
    assert len([v for v in mapping.values() if not v.endswith(("running_mean", "running_var"))]) == 62
    assert len([v for v in mapping.values() if v.endswith("running_mean")]) == 20


def _saved(tmp_path, net, suffix=".pth"):
    path = tmp_path / f"w{suffix}"
    save_torch_weights(net, path)
    return path


def test_save_then_load_by_torchvision_names(tmp_path, no_torch):
    spec = fixture_script.TINY["resnet_basic_tiny"][0]
    src = randomize_stats(ck.build(spec))
    x = np.random.default_rng(1).random((2, 3, 16, 16), dtype=np.float32)
    for suffix in (".pth", ".safetensors"):
        state = read_state_dict(_saved(tmp_path, src, suffix))
        assert "layer1.0.bn1.num_batches_tracked" in state and state["layer1.0.bn1.num_batches_tracked"].dtype == np.int64
        dst = ck.build(spec)
        load_torch_weights(dst, state)
        np.testing.assert_array_equal(dst.eval().forward(x), src.forward(x))


def test_models_get_with_weights(tmp_path, no_torch):
    src = randomize_stats(ck.models.get("cifar10_simple", num_classes=7))
    path = _saved(tmp_path, src)
    assert sorted(read_state_dict(path)) == ["classifier.0.bias", "classifier.0.weight", "features.0.bias",
                                             "features.0.weight"]
    net = ck.models.get("cifar10_simple", num_classes=7, weights=path).eval()
    x = np.random.default_rng(0).random((2, 3, 32, 32), dtype=np.float32)
    np.testing.assert_array_equal(net.forward(x), src.forward(x))


def test_mismatches_are_named_key_by_key():
    spec = fixture_script.TINY["resnet_basic_tiny"][0]
    net = ck.build(spec)
    state = dict(read_state_dict(FIXTURES / "resnet_basic_tiny.pth"))
    bad = dict(state, **{"layer1.1.conv2.weight": np.zeros((4, 4, 1, 1), np.float32)})
    with pytest.raises(WeightsError, match=r"'layer1\.1\.conv2\.weight' has shape \(4, 4, 1, 1\), cnnkit's "
                                           r"'6\.body\.3\.weight' expects \(4, 4, 3, 3\)"):
        load_torch_weights(net, bad)
    gone = {k: v for k, v in state.items() if k != "layer2.0.downsample.1.running_var"}
    with pytest.raises(WeightsError, match=r"missing key 'layer2\.0\.downsample\.1\.running_var'"):
        load_torch_weights(net, gone)
    extra = dict(state, **{"head.weight": np.zeros(3, np.float32)})
    with pytest.raises(WeightsError, match=r"unexpected key 'head\.weight'"):
        load_torch_weights(net, extra)
    result = load_torch_weights(net, {**gone, "head.weight": np.zeros(3, np.float32)}, strict=False)
    assert result.missing_keys == ["layer2.0.downsample.1.running_var"] and result.unexpected_keys == ["head.weight"]


def test_googlenet_aux_heads_and_batch_counters_are_ignored():
    spec = fixture_script.TINY["googlenet_tiny"][0]
    state = dict(read_state_dict(FIXTURES / "googlenet_tiny.safetensors"))
    state["aux1.fc2.weight"] = np.zeros((4, 8), np.float32)
    state["aux2.conv.conv.weight"] = np.zeros((8, 4, 1, 1), np.float32)
    assert any(k.endswith("num_batches_tracked") for k in state)
    result = load_torch_weights(ck.build(spec), state)
    assert result == ([], [])


def test_cnnkit_own_names_load_too(tmp_path):
    src = randomize_stats(ck.build("INPUT[8x8x3] -> CONV3-4 -> BN -> RELU -> FC3"))
    path = tmp_path / "own.safetensors"
    save_torch_weights(src, path, names="cnnkit")
    assert set(read_state_dict(path)) == set(src.state_dict())
    dst = ck.build("INPUT[8x8x3] -> CONV3-4 -> BN -> RELU -> FC3")
    load_torch_weights(dst, path)
    for k, v in src.state_dict().items():
        np.testing.assert_array_equal(dst.state_dict()[k], v)


def test_load_state_dict_reports_missing_and_unexpected():
    net = ck.build("INPUT[8x8x3] -> CONV3-4 -> BN -> FC3")
    state = net.state_dict()
    missing, unexpected = net.load_state_dict({"0.weight": state["0.weight"], "9.weight": np.zeros(1)}, strict=False)
    assert "1.running_mean" in missing and "0.weight" not in missing and unexpected == ["9.weight"]


def test_a_pickle_of_shared_lists_cannot_blow_up(tmp_path):
    """40 nested lists, each holding the previous one twice: 2**40 visits if walked naively."""
    pkl = bytearray(b"\x80\x02]q\x00")  # EMPTY_LIST, BINPUT 0
    for i in range(1, 41):
        pkl += b"(h" + bytes([i - 1]) + b"h" + bytes([i - 1]) + b"lq" + bytes([i])  # [prev, prev]
    pkl += b"."
    with pytest.raises(WeightsError, match=r"nests shared objects far beyond its own size"):
        pth.load(_zip(tmp_path, bytes(pkl), name="bomb.pth"))
