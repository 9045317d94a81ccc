"""`cnnkit export` and `cnnkit import-torch`: results checked by value, errors as one line."""

from __future__ import annotations

import numpy as np
import pytest
from interop_helpers import randomize_stats

import cnnkit as ck
from cnnkit.checkpoint import load_checkpoint, save_checkpoint
from cnnkit.cli import main
from cnnkit.interop import read_state_dict, save_torch_weights

SPEC = "INPUT[8x8x3] -> CONV3-4 -> BN -> RELU -> POOL2 -> FC5"


def test_export_a_checkpoint(tmp_path, capsys):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    net = randomize_stats(ck.build(SPEC))
    save_checkpoint(tmp_path / "c.safetensors", net, extra={"input_shape": [3, 8, 8]})
    assert main(["export", str(tmp_path / "c.safetensors"), str(tmp_path / "m.onnx")]) == 0
    assert "input 'input' (N, 3, 8, 8)" in capsys.readouterr().out
    x = np.random.default_rng(0).random((2, 3, 8, 8), dtype=np.float32)
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(None, {"input": x})[0], net.forward(x), atol=1e-5)


def test_export_without_an_input_size_says_so(tmp_path, capsys):
    pytest.importorskip("onnx")
    save_checkpoint(tmp_path / "c.safetensors", ck.build(SPEC))
    assert main(["export", str(tmp_path / "c.safetensors"), str(tmp_path / "m.onnx")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "does not say its input size; pass --input WxHxD" in err
    assert main(["export", str(tmp_path / "c.safetensors"), str(tmp_path / "m.onnx"), "--input", "8x8x3"]) == 0


def test_export_a_locally_connected_net_fails_in_one_line(tmp_path, capsys):
    pytest.importorskip("onnx")
    save_checkpoint(tmp_path / "c.safetensors", ck.build("INPUT[6x6x2] -> LC3-2 -> FC2"),
                    extra={"input_shape": [2, 6, 6]})
    assert main(["export", str(tmp_path / "c.safetensors"), str(tmp_path / "m.onnx")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("cnnkit export: error: layer 0 LocallyConnected2D(") and err.count("\n") == 0
    assert not (tmp_path / "m.onnx").exists()


def test_import_torch_infers_the_classes_and_writes_a_checkpoint(tmp_path, capsys):
    src = randomize_stats(ck.models.get("cifar10_simple", num_classes=7))
    save_torch_weights(src, tmp_path / "w.pth")
    assert main(["import-torch", str(tmp_path / "w.pth"), "--model", "cifar10_simple",
                 str(tmp_path / "out.safetensors")]) == 0
    assert "7 classes" in capsys.readouterr().out
    ckpt = load_checkpoint(tmp_path / "out.safetensors")
    x = np.random.default_rng(0).random((2, 3, 32, 32), dtype=np.float32)
    np.testing.assert_array_equal(ckpt.net.eval().forward(x), src.forward(x))
    assert ckpt.meta["extra"]["input_shape"] == [3, 32, 32]
    # and back out as a torchvision-named .pth
    assert main(["import-torch", str(tmp_path / "w.pth"), "--model", "cifar10_simple", str(tmp_path / "b.pth")]) == 0
    again = read_state_dict(tmp_path / "b.pth")
    for k, v in read_state_dict(tmp_path / "w.pth").items():
        np.testing.assert_array_equal(again[k], v)


def test_import_torch_hostile_file_is_one_line(tmp_path, capsys):
    import zipfile
    with zipfile.ZipFile(tmp_path / "evil.pth", "w") as z:
        z.writestr("archive/data.pkl", b"\x80\x02cos\nsystem\nX\x04\x00\x00\x00trueR.")
    assert main(["import-torch", str(tmp_path / "evil.pth"), "--model", "resnet18", str(tmp_path / "o.safetensors")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "evil.pth: refused the global os.system" in err
    assert main(["import-torch", str(tmp_path / "evil.pth"), "--model", "resnet7", str(tmp_path / "o")]) == 1
    assert "unknown model 'resnet7'" in capsys.readouterr().err
