"""The table's arithmetic, its columns, the JSON file, the OpenBLAS warning."""

from __future__ import annotations

import json

import pytest

from cnnkit.bench import BenchError, Row, format_table, openblas_warning, write_json


def test_row_arithmetic():
    r = Row("layers", "conv", "fwd", 4, flops=6_000_000_000, cnnkit_s=0.05, torch_s=0.04)
    assert r.gflops() == pytest.approx(120.0)                    # 6 GFLOP in 50 ms
    assert r.gflops(r.torch_s) == pytest.approx(150.0)
    assert r.pct_peak(200.0) == pytest.approx(60.0)
    assert r.pct_peak(200.0, r.torch_s) == pytest.approx(75.0)
    assert r.ratio == pytest.approx(1.25)                        # cnnkit's time over PyTorch's
    d = r.as_dict(200.0)
    assert d["cnnkit_ms"] == pytest.approx(50.0) and d["torch_ms"] == pytest.approx(40.0)
    assert d["pass"] == "fwd" and d["cnnkit_pct_peak"] == pytest.approx(60.0) and d["ratio"] == pytest.approx(1.25)
    alone = Row("nets", "pool", "fwd", 1, flops=0, cnnkit_s=0.01)
    assert alone.gflops() is None and alone.ratio is None and alone.pct_peak(100.0) is None


def test_format_table_cells():
    rows = [Row("layers", "conv a", "fwd", 4, 6_000_000_000, 0.05, 0.04),
            Row("layers", "pool b", "fwd+bwd", 4, 0, 0.002, 0.004)]
    lines = format_table(rows, 200.0, compare=True).splitlines()
    assert lines[0].split() == ["case", "pass", "batch", "cnnkit", "ms", "GFLOP/s", "%peak", "torch", "ms",
                                "GFLOP/s", "%peak", "ratio"]
    assert lines[1].split()[2:] == ["fwd", "4", "50.00", "120.0", "60.0", "40.00", "150.0", "75.0", "1.25"]
    assert lines[2].split()[2:] == ["fwd+bwd", "4", "2.00", "-", "-", "4.00", "-", "-", "0.50"]
    alone = format_table(rows, 200.0, compare=False).splitlines()
    assert "torch" not in alone[0] and alone[1].split()[2:] == ["fwd", "4", "50.00", "120.0", "60.0"]


def test_write_json_is_atomic_and_complete(tmp_path):
    path = tmp_path / "out.json"
    path.write_text("old")
    write_json(path, {"rows": [1, 2]})
    assert json.loads(path.read_text()) == {"rows": [1, 2]}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]      # no temp file left
    with pytest.raises(BenchError, match="does not exist"):
        write_json(tmp_path / "missing" / "out.json", {})


def test_openblas_warning_names_the_variables():
    assert openblas_warning({}) is None
    text = openblas_warning({"OPENBLAS_CORETYPE": "Haswell"})
    assert "OPENBLAS_CORETYPE=Haswell" in text and "env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE" in text
    assert "OPENBLAS_L2_SIZE=" not in text


def test_side_by_side_alternates_blocks_and_keeps_each_sides_best(monkeypatch):
    """Blocks of calls alternate (cnnkit, torch, cnnkit, torch), each after its side's
    preparation; each side's figure is the best call of all its blocks."""
    from cnnkit.bench import timing

    clock = [0.0]
    monkeypatch.setattr(timing.time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(timing.time, "sleep", lambda s: log.append(f"pause {s}"))
    log: list[str] = []
    costs = {"ck": iter([5, 5, 4, 4, 4, 9, 9, 9, 9]), "torch": iter([7, 7, 7, 7, 3, 3, 3, 3])}

    def side(name):
        def call():
            log.append(name)
            clock[0] += next(costs[name])
        return call

    a, b = timing.side_by_side(side("ck"), side("torch"), repeat=2, min_seconds=0.0, rounds=2,
                               prepare=(lambda: log.append("prep ck"), lambda: log.append("prep torch")))
    # each block: a warm-up call, then `repeat` timed calls
    pause = f"pause {timing.SETTLE_S}"     # the other side's spinning threads go to sleep first
    assert log == ["prep ck", pause, "ck", "ck", "ck", "prep torch", pause, "torch", "torch", "torch",
                   "prep ck", pause, "ck", "ck", "ck", "prep torch", pause, "torch", "torch", "torch"]
    assert (a, b) == (4, 3)
    assert timing.side_by_side(side("ck"), None, repeat=1, min_seconds=0.0, rounds=1) == (9, None)
