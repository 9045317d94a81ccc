"""Resources are bounded before they are spent: the notation's limits, the memory limit
of build, dry sizing in summary/lint, and constant-time block arithmetic."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

import cnnkit as ck
from cnnkit import models
from cnnkit.layers import engine
from cnnkit.layers.im2col import row_blocks
from cnnkit.layers.kernels.blocked import blocks, largest_block
from cnnkit.notation import LimitError, SpecError, build, limits, memory_limit, parse
from cnnkit.notation.parser import expanded_layers
from cnnkit.summary import summary, training_memory
from cnnkit.summary.units import human_bytes


def quick(fn, seconds=1.0):
    """fn() and the seconds it took, which must be under `seconds` (nothing was expanded or walked)."""
    t = time.perf_counter()
    out = fn()
    took = time.perf_counter() - t
    assert took < seconds, f"took {took:.2f} s"
    return out


def test_expanded_layers_counted_without_expanding():
    with pytest.raises(LimitError, match="expands to 1,000,000,000 layers.*limit is 10,000") as e:
        quick(lambda: parse("INPUT[32x32x3] -> [[[RELU]*1000]*1000]*1000"))
    assert e.value.pos == len("INPUT[32x32x3] -> ")
    # RES/CAT count themselves and their parts; a group its items times its repeat
    tree = parse("INPUT[8x8x4] -> [CONV3-4 -> RELU]*3 -> RES[CONV3-4 -> BN | CONV1-4] -> CAT[RELU | RELU]*2")
    assert expanded_layers(tree.items) == 2 * 3 + (1 + 2 + 1) + 2 * (1 + 1 + 1)
    leaves = [layer for layer in build(tree).layers() if not layer.children()]
    assert len(leaves) == 2 * 3 + 3 + 2 * 2    # the atoms alone, as built
    parse("INPUT[8x8x1] -> [RELU]*" + str(limits.MAX_LAYERS))      # exactly at the limit is fine


@pytest.mark.parametrize("opening, closing", [("[", "]"), ("RES[", "]"), ("CAT[", "]"), ("SEQ[", "]")])
def test_deep_nesting_is_a_clear_error_not_a_recursion_error(opening, closing):
    deep = "INPUT[8x8x1] -> " + opening * 500 + "RELU" + closing * 500
    with pytest.raises(LimitError, match=f"nest more than {limits.MAX_DEPTH} deep"):
        parse(deep)
    ok = limits.MAX_DEPTH
    assert len(list(build("INPUT[8x8x1] -> " + opening * ok + "RELU" + closing * ok).layers())) >= 1


@pytest.mark.parametrize("spec, where", [
    ("INPUT[32x32x3] -> CONV3-1234567890", "1234567890"),
    ("INPUT[32x32x3] -> FC99999999999999999999", "9999"),
    ("INPUT[1234567890x2x3]", "1234567890"),
    ("INPUT[32x32x3] -> POOL2/1234567890", "1234567890"),
    ("INPUT[32x32x3] -> [RELU]*00000000001", "00000000001"),
])
def test_long_numbers_are_refused_at_their_place(spec, where):
    with pytest.raises(LimitError, match="digits; numbers in a spec have at most 9") as e:
        parse(spec)
    assert e.value.pos == spec.index(where)


def test_spec_length_limit():
    with pytest.raises(LimitError, match=f"characters long; the limit is {limits.MAX_SPEC_CHARS:,}"):
        parse("INPUT[8x8x1]" + " -> RELU" * (limits.MAX_SPEC_CHARS // 8))
    assert parse("INPUT[8x8x1] -> DROPOUT0.00000000001").items[0].p == pytest.approx(1e-11)  # a fraction may be long


@pytest.mark.parametrize("spec, params", [
    ("INPUT[32x32x3] -> CONV3-100000000", (3 * 3 * 3 + 1) * 100_000_000),
    ("INPUT[32x32x3] -> FC100000000", (32 * 32 * 3 + 1) * 100_000_000),
    ("INPUT[100000x100000x3]", 0),
])
def test_too_big_nets_are_refused_with_the_figure_before_memory_is_spent(spec, params):
    with pytest.raises(LimitError) as e:
        quick(lambda: build(spec, max_bytes=1 << 30))
    message = str(e.value)
    assert f"{params:,} parameters" in message and "over the limit of 1.0 GB" in message
    # the figure: parameters (and buffers) plus one image's forward pass, as network_cost says
    with engine(allocate=False):
        dry = build(spec)
    stored, forward, count = limits.network_cost(dry, dry.input_shape)
    assert count == params and stored == 4 * params
    assert forward >= 4 * math.prod(dry.input_shape)           # at least the image itself
    assert f"needs {human_bytes(stored + forward)}" in message


def test_the_memory_limit_is_overridable(monkeypatch):
    spec = "INPUT[32x32x3] -> FC1000"     # 3,073,000 parameters: 12.3 MB, plus a 12 KB image
    with engine(allocate=False):
        stored, forward, _ = limits.network_cost(build(spec), (3, 32, 32))
    assert build(spec, max_bytes=stored + forward).num_params() == 3_073_000
    with pytest.raises(LimitError, match="max_bytes="):
        build(spec, max_bytes=stored + forward - 1)
    monkeypatch.setenv("CNNKIT_MAX_MEMORY", "8MB")
    assert memory_limit() == (8 << 20, "CNNKIT_MAX_MEMORY=8MB")
    with pytest.raises(LimitError, match=r"over the limit of 8\.0 MB \(CNNKIT_MAX_MEMORY=8MB\)"):
        build(spec)
    assert models.get("cifar10").num_params() == 577_578    # 2.3 MB: fits
    with pytest.raises(LimitError, match="138,357,544 parameters"):
        models.get("vgg16")                                   # the zoo builds through build: refused
    monkeypatch.setenv("CNNKIT_MAX_MEMORY", "plenty")
    with pytest.raises(LimitError, match="CNNKIT_MAX_MEMORY='plenty': expected a size"):
        build(spec)


def test_default_limit_is_half_the_physical_memory(monkeypatch):
    monkeypatch.delenv("CNNKIT_MAX_MEMORY", raising=False)
    import os
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    limit, source = memory_limit()
    assert limit == int(total * limits.MEMORY_FRACTION) and "physical memory" in source


def test_numpy_overflow_is_a_spec_error():
    with pytest.raises(SpecError, match="too big to build"):
        build("INPUT[999999999x999999999x999999999] -> FC10")


def test_summary_and_lint_size_huge_nets_without_allocating():
    huge = "INPUT[100000x100000x3] -> CONV3-8 -> RELU -> POOL2 -> CONV3-16 -> GAP -> FC10"
    s = quick(lambda: summary(huge))
    assert s.total_params == (27 * 8 + 8) + (72 * 16 + 16) + (16 * 10 + 10)
    assert s.rows[1].shape == (8, 100_000, 100_000)
    # INPUT, CONV3-8, POOL2 (RELU folded), CONV3-16 at 50000x50000, GAP, FC10
    assert s.total_activations == 3 * 10**10 + 8 * 10**10 + 2 * 10**10 + 16 * 25 * 10**8 + 16 + 10
    assert any("refuses to build this network" in r for r in s.remarks)
    assert quick(lambda: ck.lint(huge)) == []
    big = quick(lambda: summary("INPUT[32x32x3] -> CONV3-100000000"))
    assert big.total_params == 2_800_000_000
    # the memory estimate is arithmetic: the same time for any image size, and it scales
    small = training_memory("INPUT[64x64x3] -> CONV3-8 -> RELU -> FC10")
    large = quick(lambda: training_memory("INPUT[64000x64000x3] -> CONV3-8 -> RELU -> FC10"))
    assert large.activations > 500_000 * small.activations


@pytest.mark.parametrize("n, rows, row_bytes, lowered", [
    (1, 1, 100, None), (32, 56, 56 * 9 * 64 * 4, None), (1, 224, 224 * 9 * 64 * 4, None),
    (7, 13, 3 * 4, 13 * 9 * 5 * 4), (3, 1000, 1 << 20, None), (5, 3, 1 << 24, None), (128, 8, 8 * 9 * 32 * 4, 64),
])
def test_largest_block_is_arithmetic_and_equals_the_listed_blocks(n, rows, row_bytes, lowered):
    listed = blocks(n, rows, lowered or row_bytes)
    assert largest_block(n, rows, row_bytes, lowered) == max((n1 - n0) * (h1 - h0) for n0, n1, h0, h1 in listed) * row_bytes
    for budget in (1, row_bytes, 3 * row_bytes + 1, rows * row_bytes, 10 * rows * row_bytes):
        cut = list(row_blocks(n, rows, row_bytes, budget))
        first = next(row_blocks(n, rows, row_bytes, budget))
        assert (first[1] - first[0]) * (first[3] - first[2]) == max((b[1] - b[0]) * (b[3] - b[2]) for b in cut)
        covered = np.zeros((n, rows), int)
        for n0, n1, h0, h1 in cut:
            covered[n0:n1, h0:h1] += 1
        assert (covered == 1).all()   # the blocks tile the output once


@pytest.mark.parametrize("width", [16, 32, 33, 64, 256])
def test_narrow_gemms_take_the_narrow_block_budget(width):
    # 64 images of a 32x32 CIFAR layer's X_col rows (32 x 288 numbers each): 75.5 MB
    n, rows, row_bytes = 64, 32, 32 * 288 * 4
    budget = (3 << 20) if width <= 32 else (8 << 20)
    with ck.engine(narrow_block_bytes=3 << 20, narrow_width=32, block_bytes=8 << 20):
        listed = blocks(n, rows, row_bytes, width=width)
        biggest = max((n1 - n0) * (h1 - h0) for n0, n1, h0, h1 in listed) * row_bytes
        image = rows * row_bytes
        assert biggest <= budget < biggest + image   # as many whole images as fit the budget
        assert largest_block(n, rows, row_bytes, width=width) == biggest   # the memory model's


def test_largest_block_of_a_huge_image_takes_no_time():
    quick(lambda: largest_block(64, 100_000, 100_000 * 9 * 3 * 4), 0.05)


def test_dry_builds_hold_no_memory():
    with engine(allocate=False):
        net = build("INPUT[32x32x3] -> CONV3-100000000")
    w = net[0].params["weight"]
    assert w.shape == (100_000_000, 3, 3, 3) and w.strides == (0, 0, 0, 0)
