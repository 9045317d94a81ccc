"""`cnnkit bench` end to end at tiny sizes: the table, the JSON file, the profile, one-line errors, the scripts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cnnkit.cli import main

ROOT = Path(__file__).resolve().parents[2]
TINY = "INPUT[16x16x3] -> CONV3-8p1 -> RELU -> POOL2 -> FC10"


def one_error_line(capsys, argv) -> str:
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("cnnkit bench: error: ")
    return err


@pytest.mark.parametrize("argv, says", [
    (["bench", "gpus"], "unknown section 'gpus'"),
    (["bench", "profile"], "profile: which model?"),
    (["bench", "profile", "nosuchnet"], "nosuchnet"),
    (["bench", "layers", "--threads", "0"], "--threads: expected an int >= 1"),
    (["bench", "nets", "--batch", "-2"], "--batch: expected an int >= 1"),
    (["bench", "layers", "--compare", "tensorflow"], "--compare: expected torch or none"),
    (["bench", "layers", "--json", "/no/such/folder/x.json"], "does not exist"),
    (["bench", "layers", "resnet18"], "only 'cnnkit bench profile MODEL' takes a model"),
    (["bench", "layers", "--cases", "winograd"], "--cases 'winograd' matches no case"),
    (["bench", "nets", "--size", "16"], "at least 32x32"),
    (["bench", "profile", "INPUT[8x8x3] -> CONV3-4p1"], "class scores"),
])
def test_one_line_errors(capsys, argv, says):
    assert says in one_error_line(capsys, argv)


def test_layers_table_and_json(tmp_path, capsys):
    pytest.importorskip("torch")
    path = tmp_path / "bench.json"
    assert main(["bench", "layers", "--quick", "--cases", "(proj)", "--batch", "2", "--threads", "1",
                 "--json", str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("threads=1 ") and "sgemm peak" in out[1]
    head = next(i for i, line in enumerate(out) if line.startswith("case"))
    cells = [line.split() for line in out[head + 1:head + 3]]
    report = json.loads(path.read_text())
    rows = report["rows"]
    assert [(r["section"], r["pass"], r["batch"]) for r in rows] == [("layers", "fwd", 2), ("layers", "fwd+bwd", 2)]
    peak = report["machine"]["sgemm_gflops"]
    assert peak > 0 and report["machine"]["threads"] == 1
    assert report["options"]["section"] == "layers" and report["options"]["batch"] == 2
    for r, c in zip(rows, cells):
        assert r["flops"] == (1 if r["pass"] == "fwd" else 3) * 2 * 128 * 64 * 28 * 28 * 2
        assert r["cnnkit_gflops"] == pytest.approx(r["flops"] / r["cnnkit_ms"] / 1e6)
        assert r["cnnkit_pct_peak"] == pytest.approx(100 * r["cnnkit_gflops"] / peak)
        assert r["ratio"] == pytest.approx(r["cnnkit_ms"] / r["torch_ms"])
        assert float(c[-1]) == pytest.approx(r["ratio"], abs=0.006)          # the table shows the same figures
        assert float(c[-7]) == pytest.approx(r["cnnkit_ms"], abs=0.006)
        assert float(c[-4]) == pytest.approx(r["torch_ms"], abs=0.006)
        assert float(c[-6]) == pytest.approx(r["cnnkit_gflops"], abs=0.06)
        assert int(c[-8]) == 2


def test_cnnkit_alone(capsys):
    assert main(["bench", "train", "--quick", "--batch", "4", "--threads", "1", "--compare", "none"]) == 0
    out = capsys.readouterr().out
    assert "torch: not compared" in out and "ratio" not in out and "cifar10 net, SGD step" in out


def test_profile_command(tmp_path, capsys):
    path = tmp_path / "p.json"
    assert main(["bench", "profile", TINY, "--batch", "4", "--steps", "2", "--threads", "1", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "one SGD step, batch 4" in out
    rows = json.loads(path.read_text())["profile"]["rows"]
    assert [r["type"] for r in rows] == ["Conv2D", "ReLU", "MaxPool2D", "FC", "-"]


def test_openblas_variables_warn(capsys, monkeypatch):
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    assert main(["bench", "profile", TINY, "--batch", "2", "--steps", "1", "--threads", "1"]) == 0
    assert "warning: OPENBLAS_CORETYPE=Haswell is set" in capsys.readouterr().err


@pytest.mark.slow
def test_train_script_prints_its_table():
    pytest.importorskip("torch")
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks/train.py"), "--steps", "1", "--batch", "4",
                          "--threads", "1"], capture_output=True, text=True, check=True, cwd=ROOT).stdout.splitlines()
    assert out[0].startswith("net: INPUT[32x32x3]") and out[1].startswith("batch 4, 1 threads")
    assert out[3].split()[0] == "cnnkit" and out[4].split()[0] == "pytorch"
    ck_ms, t_ms = float(out[3].split()[1]), float(out[4].split()[1])
    assert float(out[5].split()[5]) == pytest.approx(t_ms / ck_ms, abs=0.02)   # ratio of images/s


@pytest.mark.slow
def test_layers_script_prints_its_table():
    pytest.importorskip("torch")
    env = dict(os.environ, CNNKIT_BENCH_THREADS="1")
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks/layers.py"), "--quick", "--cases", "conv 3->16"],
                         capture_output=True, text=True, check=True, cwd=ROOT, env=env).stdout.splitlines()
    assert out[0].startswith("threads=1 ") and out[2].split()[:3] == ["case", "(batch", "32)"]
    assert [line.split()[5] for line in out[3:]] == ["fwd", "fwd+bwd"]
