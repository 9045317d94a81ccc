"""The suite's cases at tiny sizes: rows, flops, the twin check, the train step's first losses, memory."""

from __future__ import annotations

import numpy as np
import pytest

import cnnkit as ck
from cnnkit.bench import LAYER_CASES, NET_CASES, SCRIPT_CASES, net_flops, run_layer_case, run_net_case, run_train
from cnnkit.bench.cases import NetCase, conv_case, fc_case, pool_case
from cnnkit.bench.memory import CIFAR, MemoryRow, format_memory, measure, run_child


def test_suite_has_the_issue_cases():
    names = [c.name for c in LAYER_CASES]
    assert names[:len(SCRIPT_CASES)] == [c.name for c in SCRIPT_CASES]       # benchmarks/layers.py's first
    assert any("(cifar)" in n for n in names) and any("s2" in n and "3x3" in n for n in names)
    assert any("1x1 s2" in n for n in names)
    assert [(c.model, c.batch, c.size) for c in NET_CASES] == [
        ("alexnet", 16, 224), ("vgg11", 4, 224), ("googlenet", 8, 224), ("resnet18", 8, 224), ("resnet50", 4, 224)]


@pytest.mark.parametrize("case", [conv_case("conv", 2, 3, 4, 9, 3, S=2, P=1), pool_case("pool", 2, 3, 8, 2, 2),
                                  fc_case("fc", 2, 20, 6)], ids=["conv", "pool", "fc"])
def test_layer_case_rows(case):
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    rows = run_layer_case(case, repeat=1, min_seconds=0.0)
    assert [r.pass_ for r in rows] == ["fwd", "fwd+bwd"]
    layer = case.make()
    expected = {"conv": 2 * 4 * 3 * 9 * 5 * 5 * 2, "pool": 0, "fc": 2 * 20 * 6 * 2}[case.kind]
    assert rows[0].flops == expected and rows[1].flops == 3 * expected
    assert layer.output_shape(case.shape)
    for r in rows:
        assert r.cnnkit_s > 0 and r.torch_s > 0 and r.ratio == pytest.approx(r.cnnkit_s / r.torch_s)
    alone = run_layer_case(case, repeat=1, min_seconds=0.0, compare=False)
    assert all(r.torch_s is None for r in alone)


def test_net_case_checks_the_twin_and_counts_flops():
    pytest.importorskip("torch")
    rows = run_net_case(NetCase("ResNet-18", "resnet18", 8), repeat=1, batch=2, size=32)
    assert [(r.case, r.pass_, r.batch) for r in rows] == [("ResNet-18 @32", "fwd", 2), ("ResNet-18 @32", "fwd+bwd", 2)]
    assert rows[0].notes["twin_ok"] and rows[0].notes["twin_diff"] <= 1e-4
    net = ck.models.get("resnet18", input_size=32)
    assert rows[0].flops == net_flops(net, batch=2)
    net.input_grad = False
    assert rows[1].flops == net_flops(net, batch=2, backward=True) < 3 * rows[0].flops
    assert all(r.torch_s > 0 for r in rows)


def test_train_step_same_first_loss():
    pytest.importorskip("torch")
    r = run_train(batch=8, steps=2)
    assert r.cnnkit_loss == pytest.approx(r.torch_loss, rel=1e-5)     # the same net from the same weights
    assert r.cnnkit_ms > 0 and r.torch_ms > 0
    row = r.row()
    assert row.section == "train" and row.batch == 8 and row.ratio == pytest.approx(r.cnnkit_ms / r.torch_ms)


def test_memory_cnnkit_side_in_this_process():
    r = measure("cnnkit", CIFAR, 4, 32, 1)
    assert r["peak"] >= r["setup"] > 0 and r["step"] == r["peak"] - r["setup"]
    # tracemalloc counts at least the weights, the batch and the activations the two first
    # CONVs keep for backward (the gradients may live in buffers made by the untraced step)
    net = ck.build("INPUT[32x32x3] -> [[CONV3-32 -> RELU]*2 -> POOL2]*2 -> FC512 -> RELU -> FC10")
    weights = sum(p.nbytes for _, p in net.named_parameters())
    assert r["tracemalloc"] >= weights + 4 * 3 * 32 * 32 * 4 + 2 * 4 * 32 * 32 * 32 * 4


def test_memory_child_process_keeps_torch_out():
    r = run_child("cnnkit", CIFAR, 2, 32, 1)
    assert r["side"] == "cnnkit" and r["batch"] == 2 and r["tracemalloc"] > 0
    assert r["torch_loaded"] is False       # cnnkit's side never carries PyTorch's libraries
    row = MemoryRow("cifar", 2, r, None)
    assert row.ratio is None
    line = format_memory([row]).splitlines()[1].split()
    assert line[:2] == ["cifar", "2"] and float(line[2]) == pytest.approx(r["setup"] / 2**20, abs=0.06)


@pytest.mark.slow
def test_memory_both_sides_fresh_processes():
    pytest.importorskip("torch")
    ours, theirs = run_child("cnnkit", CIFAR, 8, 32, 1), run_child("torch", CIFAR, 8, 32, 1)
    row = MemoryRow("cifar", 8, ours, theirs)
    assert theirs["setup"] > ours["setup"]          # PyTorch's libraries are resident
    assert row.ratio == pytest.approx(ours["step"] / theirs["step"])
    assert np.isfinite(row.ratio) and row.ratio > 0
    assert theirs["torch_loaded"] and "tracemalloc" not in theirs
