"""`cnnkit train`, `cnnkit eval`, `cnnkit predict`: real runs, and one clear line for every user error."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnkit.checkpoint import load_checkpoint
from cnnkit.cli import build_parser, main
from cnnkit.data import load
from cnnkit.train import CHECKPOINT, TrainConfig, predict_scores

TINY = "INPUT[8x8x1] -> CONV3-4 -> RELU -> POOL2 -> FC10"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert main(["train", "--model", TINY, "--epochs", "2", "--lr", "0.01", "--out", str(out), "--quiet"]) == 0
    return out


@pytest.fixture(scope="module")
def digits():
    return load("digits")


def one_error_line(capsys, argv, command) -> str:
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"cnnkit {command}: error: ")
    return err


def test_train_prints_the_test_accuracy_eval_agrees(run_dir, capsys, digits):
    capsys.readouterr()
    assert main(["train", "--model", TINY, "--epochs", "2", "--lr", "0.01", "--out", str(run_dir / "again"),
                 "--quiet"]) == 0
    out = capsys.readouterr().out
    train_acc = float(re.search(r"test accuracy: ([\d.]+)%", out).group(1))
    assert train_acc > 80
    assert main(["eval", str(run_dir / "again"), "--data", "digits"]) == 0
    out = capsys.readouterr().out.splitlines()
    m = re.match(r"digits test: accuracy ([\d.]+)% \((\d+)/(\d+)\)", out[0])
    assert float(m.group(1)) == train_acc and int(m.group(3)) == len(digits.test.y)
    assert out[1].startswith("confusion matrix (rows: true class")
    matrix = np.array([[int(v) for v in line.split()[1:]] for line in out[3:]])
    assert matrix.shape == (10, 10)
    assert matrix.sum(axis=1).tolist() == np.bincount(digits.test.y, minlength=10).tolist()
    assert np.trace(matrix) == int(m.group(2))


def test_eval_other_split_and_checkpoint_file(run_dir, capsys, digits):
    assert main(["eval", str(run_dir / CHECKPOINT), "--split", "val"]) == 0
    assert f"/{len(digits.val.y)})" in capsys.readouterr().out.splitlines()[0]


def save_image(path, digit: np.ndarray, mode: str = "L"):
    pixels = np.round(digit * 255).astype(np.uint8)
    Image.fromarray(pixels).convert(mode).save(path)
    return pixels.astype(np.float32) / 255


def test_predict_prints_top5_matching_the_network(run_dir, tmp_path, capsys, digits):
    x = save_image(tmp_path / "digit.png", digits.test.X[3, 0])
    save_image(tmp_path / "digit_rgb.png", digits.test.X[3, 0], "RGB")  # converted back to grayscale
    capsys.readouterr()
    assert main(["predict", str(run_dir), str(tmp_path / "digit.png"), str(tmp_path / "digit_rgb.png")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 12 and lines[0].endswith("digit.png") and lines[6].endswith("digit_rgb.png")
    top = [(l.split()[0], float(l.split()[1])) for l in lines[1:6]]
    assert [s for _, s in top] == sorted((s for _, s in top), reverse=True)
    assert lines[1:6] == lines[7:12]
    ckpt = load_checkpoint(run_dir / CHECKPOINT)
    scores = predict_scores(ckpt.net, x[None, None], ckpt.meta["normalization"])[0]
    p = np.exp(scores - scores.max())
    p /= p.sum()
    assert [c for c, _ in top] == [str(j) for j in np.argsort(-p, kind="stable")[:5]]
    assert [s for _, s in top] == pytest.approx(np.sort(p)[::-1][:5], abs=1e-4)


def test_bare_train_means_the_default_convnet_on_digits():
    args = build_parser().parse_args(["train"])
    assert all(getattr(args, k) is None for k in ("data", "model", "epochs", "lr", "optimizer", "schedule"))
    d = TrainConfig()
    assert (d.data, d.model, d.optimizer, d.augment) == ("digits", None, "adam", None)


@pytest.mark.parametrize("argv, needle", [
    (["train", "--data", "imagenet"], "unknown dataset 'imagenet'"),
    (["train", "--data", "mnist:/no/such/folder"], "does not exist"),
    (["train", "--data", "folder:"], "empty PATH"),
    (["train", "--model", "INPUT[32x32x3] -> FC10"], "does not match the data's images (8x8x1"),
    (["train", "--model", "INPUT[8x8x1] -> FC7"], "end it with FC10"),
    (["train", "--epochs", "0"], "epochs must be a positive integer"),
    (["train", "--schedule", "sometimes"], "unknown schedule"),
    (["train", "--seed", "-1"], "seed must be an integer in [0, 2**63), got -1"),
    (["train", "--momentum", "1.5"], "momentum must be a number in [0, 1)"),
    (["train", "--threads", "0"], "--threads must be a positive integer"),
])
def test_train_errors(argv, needle, capsys, tmp_path):
    assert needle in one_error_line(capsys, argv + ["--out", str(tmp_path), "--quiet"], "train")


def test_resume_errors(run_dir, capsys, tmp_path):
    assert "nothing to resume" in one_error_line(capsys, ["train", "--out", str(tmp_path), "--resume"], "train")
    err = one_error_line(capsys, ["train", "--out", str(run_dir), "--resume", "--lr", "0.1", "--model", TINY], "train")
    assert "these differ: --lr 0.1 (the run has 0.01); drop them" in err


def test_the_same_command_line_with_resume_appended_is_accepted(run_dir, capsys):
    capsys.readouterr()
    argv = ["train", "--model", TINY, "--epochs", "2", "--lr", "0.01", "--out", str(run_dir), "--quiet"]
    assert main(argv + ["--resume"]) == 0  # the run is complete: nothing to train, the test accuracy again
    out, err = capsys.readouterr()
    assert "test accuracy:" in out and err == ""


def test_a_folder_holding_a_run_is_refused_unless_resume_or_overwrite(run_dir, capsys, tmp_path):
    before = (run_dir / CHECKPOINT).read_bytes()
    err = one_error_line(capsys, ["train", "--model", TINY, "--epochs", "1", "--out", str(run_dir), "--quiet"], "train")
    assert f"{run_dir} already holds a run (checkpoint.safetensors, metrics.jsonl, metrics.png, config.json); " \
           "add --resume to continue it, --overwrite to replace it" in err
    assert (run_dir / CHECKPOINT).read_bytes() == before
    out = tmp_path / "copy"
    out.mkdir()
    (out / "config.json").write_text("{}")
    assert main(["train", "--model", TINY, "--epochs", "1", "--out", str(out), "--quiet", "--overwrite"]) == 0
    assert load_checkpoint(out / CHECKPOINT).epoch == 1


def test_quickstart_twice_goes_to_a_fresh_folder_and_resume_finds_the_latest(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["train", "--model", TINY, "--epochs", "1", "--batch-size", "256"]
    assert main(argv + ["--quiet"]) == 0 and main(argv) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[0].endswith("run folder: runs/digits") and out.splitlines()[1].endswith("runs/digits-2")
    assert "runs/digits holds an earlier run, so this one goes to runs/digits-2" in err
    assert main(argv + ["--quiet", "--resume", "--epochs", "2"]) == 0
    assert capsys.readouterr().out.strip().endswith("run folder: runs/digits-2")
    assert load_checkpoint(tmp_path / "runs/digits-2" / CHECKPOINT).epoch == 2
    assert load_checkpoint(tmp_path / "runs/digits" / CHECKPOINT).epoch == 1


def test_bad_out_is_one_line_before_any_data_is_read(capsys, tmp_path):
    (tmp_path / "file").write_text("x")
    # the data spec would fail too, but only after the folder: the folder's error comes first
    for out, needle in ((tmp_path / "file", "is a file, not a folder"),
                        (tmp_path / "file" / "run", "cannot be made"),
                        (Path("/proc/cnnkit-run"), "/proc")):
        err = one_error_line(capsys, ["train", "--data", "mnist:/no/such/dir", "--out", str(out)], "train")
        assert needle in err and "--out" in err
    err = one_error_line(capsys, ["train", "--data", "mnist:/no/such/dir", "--out", str(tmp_path / "file"),
                                  "--resume"], "train")
    assert "is a file, not a folder" in err


def test_ctrl_c_while_starting_is_one_line(capsys, tmp_path, monkeypatch):
    import cnnkit.train.trainer as trainer_module

    def interrupted(spec):
        raise KeyboardInterrupt
    monkeypatch.setattr(trainer_module, "load_data", interrupted)
    assert main(["train", "--out", str(tmp_path / "run")]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["cnnkit train: interrupted while starting (loading the data, building the model); "
                   "nothing was written"]
    assert not (tmp_path / "run").exists()


def test_progress_in_a_log_is_plain_lines(capsys, tmp_path):
    assert main(["train", "--model", TINY, "--epochs", "2", "--out", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = [line for line in err.splitlines() if "  step " not in line]  # those come every 10 s on a slow day
    assert [line.split("  ")[0] for line in lines] == ["epoch 1/2", "epoch 2/2"]
    assert "  test " not in lines[0] and "  test " in lines[1]  # validation every epoch, test once


def test_eval_of_a_run_trained_on_arrays_from_python_asks_for_the_data(capsys, tmp_path, digits):
    from cnnkit.data import Dataset
    from cnnkit.train import train

    mine = Dataset("my digits", digits.classes, digits.train, digits.val, digits.test)
    train(run_dir=tmp_path, dataset=mine, progress=False, model=TINY, epochs=1, batch_size=256)
    err = one_error_line(capsys, ["eval", str(tmp_path)], "eval")
    assert "trained from Python on a dataset given to the Trainer ('my digits', 1295 training images: " \
           "8x8x1 images in 10 classes)" in err and "--data SPEC" in err
    assert main(["eval", str(tmp_path), "--data", "digits"]) == 0
    err = one_error_line(capsys, ["train", "--out", str(tmp_path), "--resume"], "train")
    assert "trained from Python" in err and "--data SPEC" in err
    assert main(["train", "--out", str(tmp_path), "--resume", "--data", "digits", "--quiet"]) == 0


def test_corrupt_archive(capsys, tmp_path):
    bad = tmp_path / "cifar-10-python.tar.gz"
    bad.write_bytes(np.random.default_rng(0).bytes(2000))
    assert "not a readable CIFAR-10" in one_error_line(capsys, ["train", "--data", f"cifar10:{bad}",
                                                                "--out", str(tmp_path)], "train")


def test_eval_batch_size_must_be_positive(run_dir, capsys):
    for bad in ("0", "-3"):
        err = one_error_line(capsys, ["eval", str(run_dir), "--batch-size", bad], "eval")
        assert f"--batch-size must be a positive integer, got {bad}" in err


def test_checkpoint_errors(run_dir, capsys, tmp_path):
    good = (run_dir / CHECKPOINT).read_bytes()
    (tmp_path / "truncated.safetensors").write_bytes(good[: len(good) // 2])
    (tmp_path / "noise.safetensors").write_bytes(np.random.default_rng(1).bytes(300))
    assert "no such checkpoint" in one_error_line(capsys, ["eval", str(tmp_path / "missing.safetensors")], "eval")
    assert "truncated" in one_error_line(capsys, ["eval", str(tmp_path / "truncated.safetensors")], "eval")
    one_error_line(capsys, ["eval", str(tmp_path / "noise.safetensors")], "eval")
    one_error_line(capsys, ["predict", str(tmp_path / "truncated.safetensors"), "x.png"], "predict")
    # a model trained on 8x8x1 digits cannot be evaluated on 32x32x3 images
    fake = tmp_path / "imgs"
    for c in ("a", "b"):
        (fake / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((32, 32, 3), 40 * i, np.uint8)).save(fake / c / f"{i}.png")
    err = one_error_line(capsys, ["eval", str(run_dir), "--data", f"folder:{fake}"], "eval")
    assert "takes 8x8x1 images" in err


def test_image_errors(run_dir, capsys, tmp_path):
    Image.fromarray(np.zeros((16, 12), np.uint8)).save(tmp_path / "big.png")
    (tmp_path / "text.png").write_text("not an image")
    err = one_error_line(capsys, ["predict", str(run_dir), str(tmp_path / "big.png")], "predict")
    assert ("image is 12x16 but the model takes 8x8 grayscale (1-channel) images, white digits on a black "
            "background") in err and "--resize" in err
    assert "not an image" in one_error_line(capsys, ["predict", str(run_dir), str(tmp_path / "text.png")], "predict")
    assert "no such image" in one_error_line(capsys, ["predict", str(run_dir), str(tmp_path / "none.png")], "predict")


def test_predict_resize_and_invert(run_dir, tmp_path, capsys, digits):
    """--resize scales a 32x32 drawing to the model's 8x8 as Pillow's bilinear resize does;
    --invert classifies 1 - pixels: both give the scores of the network on that input."""
    digit = digits.test.X[5, 0]
    big = Image.fromarray(np.round(digit * 255).astype(np.uint8)).resize((32, 32), Image.Resampling.NEAREST)
    big.save(tmp_path / "big.png")
    ckpt = load_checkpoint(run_dir / CHECKPOINT)
    for flags, transform in (([], lambda a: a), (["--invert"], lambda a: 1 - a)):
        capsys.readouterr()
        assert main(["predict", str(run_dir), str(tmp_path / "big.png"), "--resize", "--top", "1", *flags]) == 0
        line = capsys.readouterr().out.splitlines()[1].split()
        x = np.asarray(big.resize((8, 8), Image.Resampling.BILINEAR), dtype=np.float32) / 255
        scores = predict_scores(ckpt.net, transform(x)[None, None], ckpt.meta["normalization"])[0]
        p = np.exp(scores - scores.max())
        p /= p.sum()
        assert line[0] == str(int(np.argmax(p))) and float(line[1]) == pytest.approx(p.max(), abs=1e-4)


@pytest.mark.parametrize("argv", [
    ["train", "--data", "cifar10:/no/such/file.tar.gz"],
    ["eval", "/no/such/checkpoint.safetensors"],
])
def test_the_installed_command_ends_with_one_line_and_no_traceback(argv):
    proc = subprocess.run([sys.executable, "-m", "cnnkit.cli", *argv], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and proc.stderr.startswith(f"cnnkit {argv[0]}: error:")


@pytest.mark.slow
def test_readme_command_reaches_97_percent_on_digits(tmp_path, capsys, monkeypatch):
    """The README's `cnnkit train` (only the run folder moved into tmp_path): >= 97% test accuracy."""
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--quiet"]) == 0
    out = capsys.readouterr().out
    acc = float(re.search(r"test accuracy: ([\d.]+)% \(359 images, 20 epochs", out).group(1))
    assert acc >= 97.0
    assert (tmp_path / "runs" / "digits" / "metrics.png").exists()


def test_a_missing_optional_package_is_one_line(monkeypatch, capsys, tmp_path):
    import builtins

    from cnnkit import cli

    real_import = builtins.__import__

    def no_tqdm(name, *args, **kwargs):
        if name == "tqdm" or name.startswith("tqdm."):
            raise ModuleNotFoundError("No module named 'tqdm'", name="tqdm")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tqdm)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # tqdm draws on a terminal only
    code = cli.main(["train", "--epochs", "1", "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1
    assert "needs tqdm" in err[0] and "pip install 'cnnkit[train]'" in err[0]



def test_ctrl_c_while_cnnkit_is_still_importing_is_one_line(monkeypatch, capsys):
    import builtins

    import cnnkit_cli

    real_import = builtins.__import__

    def interrupted(name, *args, **kwargs):
        if name == "cnnkit.cli":
            raise KeyboardInterrupt
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", interrupted)
    assert cnnkit_cli.main() == 130
    err = capsys.readouterr().err
    assert err == "cnnkit: interrupted while starting; nothing was done\n"
