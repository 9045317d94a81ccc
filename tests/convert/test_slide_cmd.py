"""`cnnkit slide`: top classes of the averaged dense scores, heatmaps, one-line errors."""

import os

import numpy as np
import pytest

pytest.importorskip("PIL")
pytest.importorskip("safetensors")
pytest.importorskip("matplotlib")
from PIL import Image

import cnnkit as ck
from cnnkit.checkpoint import save_checkpoint
from cnnkit.cli import main
from cnnkit.convert import slide
from cnnkit.train import normalize

CLASSES = ["cat", "dog", "ship/boat", "frog"]
NORM = {"mean": [0.4, 0.5, 0.6], "std": [0.2, 0.25, 0.3]}


@pytest.fixture
def run_dir(tmp_path):
    ck.manual_seed(5)
    net = ck.build("INPUT[16x16x3] -> [CONV3-4 -> RELU -> POOL2]*2 -> FC8 -> RELU -> DROPOUT -> FC4")
    run = tmp_path / "run"
    run.mkdir()
    save_checkpoint(run / "checkpoint.safetensors", net, normalization=NORM,
                    extra={"input_shape": [3, 16, 16], "classes": CLASSES})
    return run, net


def write_image(path, h, w, seed=0):
    rgb = (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)
    Image.fromarray(rgb).save(path)
    return rgb.astype(np.float32).transpose(2, 0, 1) / 255


def test_prints_the_top_classes_of_the_averaged_scores_and_writes_heatmaps(run_dir, tmp_path, capsys):
    run, net = run_dir
    pixels = write_image(tmp_path / "street.png", 40, 45)
    out = tmp_path / "maps"
    assert main(["slide", str(run), str(tmp_path / "street.png"), "--stride", "2", "--scales", "1,1.5",
                 "--top", "3", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    # the same computation through the Python API
    r = slide(net, normalize(pixels[None], NORM)[0], (16, 16), stride=2, scales=(1.0, 1.5))
    p = np.exp(r.scores - r.scores.max())
    p /= p.sum()
    assert r.num_windows == 13 * 15 + 23 * 27                             # 45x40 and 68x60
    assert f"{r.num_windows} windows evaluated" in text and "15x13 at scale 1" in text
    listed = [line.split() for line in text.splitlines() if line.startswith("  ") and "not covered" not in line]
    assert [row[0] for row in listed] == [CLASSES[j] for j in np.argsort(-p)[:3]]
    assert [float(row[1]) for row in listed] == pytest.approx([p[j] for j in np.argsort(-p)[:3]], abs=1e-4)
    assert "not covered at scale 1: 0 rows at the bottom, 1 columns at the right (of 45x40)" in text
    names = sorted(os.listdir(out))
    assert len(names) == 3 and all(n.endswith(".png") and not n.startswith(".") for n in names)
    assert any("ship_boat" in n for n in names) == ("ship/boat" in [row[0] for row in listed])
    with Image.open(out / names[0]) as im:
        assert im.format == "PNG" and im.size[0] > 100


def test_a_checkpoint_file_and_the_default_output_folder(run_dir, tmp_path, capsys, monkeypatch):
    run, _ = run_dir
    write_image(tmp_path / "a.png", 16, 24)
    monkeypatch.chdir(tmp_path)
    assert main(["slide", str(run / "checkpoint.safetensors"), "a.png"]) == 0
    text = capsys.readouterr().out
    assert "stride 4: 3 windows evaluated" in text                        # (24 - 16)/4 + 1 = 3 across
    assert len(os.listdir(tmp_path / "a_slide")) == 4                     # --top 5, but four classes


@pytest.mark.parametrize("args,needle", [
    (["small.png"], "small.png: image is 20x10, smaller than the 16x16 window"),
    (["junk.png"], "junk.png: not an image Pillow can read"),
    (["missing.png"], "missing.png: no such image file"),
    (["big.png", "--stride", "3"], "stride 3 does not divide the net's total stride 4"),
    (["big.png", "--scales", "1,x"], "--scales '1,x': expected 1 to 8 comma-separated numbers"),
    (["big.png", "--scales", "0.2"], "smaller than the 16x16 window"),
    (["big.png", "--top", "0"], "--top 0: expected at least 1"),
])
def test_bad_input_is_one_line_and_exit_1(run_dir, tmp_path, capsys, monkeypatch, args, needle):
    run, _ = run_dir
    monkeypatch.chdir(tmp_path)
    write_image(tmp_path / "small.png", 10, 20)
    write_image(tmp_path / "big.png", 32, 32)
    (tmp_path / "junk.png").write_text("not a png")
    assert main(["slide", str(run), *args]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("cnnkit slide: error: ") and needle in err


def test_checkpoints_without_spatial_input_are_refused(tmp_path, capsys):
    write_image(tmp_path / "big.png", 32, 32)
    flat = tmp_path / "flat.safetensors"
    save_checkpoint(flat, ck.Sequential(ck.FC(12, 2)), extra={"input_shape": [12], "classes": ["a", "b"]})
    assert main(["slide", str(flat), str(tmp_path / "big.png")]) == 1
    assert "takes flat inputs of shape (12,), not W x H x D images" in capsys.readouterr().err
    lc = tmp_path / "lc.safetensors"
    save_checkpoint(lc, ck.build("INPUT[8x8x3] -> LC3-2 -> RELU -> FC2"),
                    extra={"input_shape": [3, 8, 8], "classes": ["a", "b"]})
    assert main(["slide", str(lc), str(tmp_path / "big.png")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "LocallyConnected2D" in err and "cannot slide" in err
