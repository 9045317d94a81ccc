"""The per-layer profile of a training step: rows in forward order that add up to the step."""

from __future__ import annotations

import numpy as np
import pytest

import cnnkit as ck
from cnnkit.bench import profile_step
from cnnkit.bench.profile import OTHER


def _data(net, batch, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((batch, *net.input_shape), dtype=np.float32)
    return X, rng.integers(0, 10, batch)


def test_rows_add_up_to_the_step_time():
    ck.manual_seed(0)
    net = ck.build("INPUT[32x32x3] -> [[CONV3-32 -> RELU]*2 -> POOL2]*2 -> FC512 -> RELU -> FC10")
    net.input_grad = False
    X, y = _data(net, 16)
    p = profile_step(net, X, y, steps=3)
    names = [r.name for r in p.rows]
    assert names == [str(i) for i in range(13)] + [OTHER]
    assert [r.kind for r in p.rows[:3]] == ["Conv2D", "ReLU", "Conv2D"]
    total = sum(r.total_ms for r in p.rows)
    assert total == pytest.approx(p.step_ms, rel=1e-6)          # the rows are that step's parts
    # and the timers cost little: about the step without them (a shared machine: a wide margin)
    assert 0.5 * p.unprofiled_ms < total < 2 * p.unprofiled_ms
    convs = sum(r.total_ms for r in p.rows if r.kind == "Conv2D")
    assert convs > 0.3 * total                       # where a CIFAR step's time goes
    assert p.rows[0].flops == 2 * (2 * 32 * 3 * 9 * 32 * 32 * 16)    # first CONV: forward and dW, no dX
    assert p.rows[2].flops == 3 * (2 * 32 * 32 * 9 * 32 * 32 * 16)
    # the wrappers are gone: the class's methods again
    assert all("forward" not in vars(layer) and "backward" not in vars(layer) for layer in net.layers())
    text = p.format()
    assert text.splitlines()[1].split()[:3] == ["layer", "type", "output"] and OTHER in text


BLOCKS = ("INPUT[16x16x3] -> CONV3-8p1 -> RES[CONV3-8p1 -> BN -> RELU -> CONV3-8p1 -> BN] -> RELU -> "
          "RES[CONV3-16/2p1floor -> BN | CONV1-16/2floor -> BN] -> CAT[CONV1-4 | CONV3-4p1 -> RELU] -> POOL2 -> FC10")


def test_blocks_have_their_own_rows():
    ck.manual_seed(0)
    net = ck.build(BLOCKS)
    net.input_grad = False
    X, y = _data(net, 8)
    p = profile_step(net, X, y, steps=3, warmup=1)
    names = [r.name for r in p.rows]
    assert names[:8] == ["0", "1.body.0", "1.body.1", "1.body.2", "1.body.3", "1.body.4", "1", "2"]
    assert names[8:13] == ["3.body.0", "3.body.1", "3.shortcut.0", "3.shortcut.1", "3"]
    assert [r.kind for r in p.rows if r.name in ("1", "3", "4")] == ["Residual", "Residual", "Concat"]
    # a block's row is its own work (the sum, the join), its branches' time is on their rows
    for block in ("1", "3"):
        row = next(r for r in p.rows if r.name == block)
        inside = sum(r.total_ms for r in p.rows if r.name.startswith(block + "."))
        assert 0 <= row.total_ms < inside
    assert sum(r.total_ms for r in p.rows) == pytest.approx(p.step_ms, rel=1e-6)
    assert p.as_dict()["rows"][0]["name"] == "0"


def test_the_profiled_step_fuses_as_the_plain_step_does():
    # BN -> RELU runs as one pass in a plain training step; the timers must not undo that,
    # or the profile would show a step that never runs: the pass is on the batch norm's row
    ck.manual_seed(0)
    net = ck.build("INPUT[8x8x3] -> CONV3-8p1 -> BN -> RELU -> FC10")
    net.input_grad = False
    X, y = _data(net, 4)
    calls = []
    real = ck.BatchNorm2D.forward_relu
    ck.BatchNorm2D.forward_relu = lambda self, x: calls.append(1) or real(self, x)
    try:
        p = profile_step(net, X, y, steps=2, warmup=1)
    finally:
        ck.BatchNorm2D.forward_relu = real
    assert len(calls) == 2 * (2 + 1)                 # every step, profiled or not, fused the pair
    bn, relu = p.rows[1], p.rows[2]
    assert (bn.kind, relu.kind) == ("BatchNorm2D", "ReLU")
    assert bn.forward_ms > 0 and bn.backward_ms > 0 and relu.forward_ms == relu.backward_ms == 0
    assert all(not vars(layer).keys() & {"forward", "backward", "forward_relu", "forward_fused"}
               for layer in net.layers())
