"""Shared helpers of the interoperability tests: the fixture script, random stats, tolerances."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).resolve().parent / "fixtures"

_spec = importlib.util.spec_from_file_location("make_interop_fixtures", ROOT / "scripts" / "make_interop_fixtures.py")
fixture_script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fixture_script)


def randomize_stats(net, seed: int = 0):
    """Random batch norm statistics and affine parameters (defaults would hide a mix-up), eval mode."""
    rng = np.random.default_rng(seed)
    for layer in net.layers():
        if "running_mean" in layer.buffers:
            n = layer.buffers["running_mean"].shape
            layer.buffers["running_mean"] = rng.normal(0, 0.1, n).astype(np.float32)
            layer.buffers["running_var"] = rng.uniform(0.5, 1.5, n).astype(np.float32)
            layer.params["weight"] = rng.uniform(0.5, 1.5, n).astype(np.float32)
            layer.params["bias"] = rng.normal(0, 0.1, n).astype(np.float32)
        elif "bias" in layer.params:
            layer.params["bias"] = rng.normal(0, 0.1, layer.params["bias"].shape).astype(np.float32)
    return net.eval()


def assert_close(actual, expected, tol: float = 1e-4):
    """|actual - expected| <= tol, scaled by the output's size when it is above 1 (float32 sums)."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape
    scale = max(1.0, float(np.abs(expected).max()))
    err = float(np.abs(actual - expected).max())
    assert err <= tol * scale, f"max |difference| {err:.3g} > {tol} x {scale:.3g}"
