"""Shared pieces of the demo tests: a small digits set, a tiny net, and a bounded wait."""

from __future__ import annotations

import time

import pytest

from cnnkit.data import load
from cnnkit.data.dataset import Dataset, Split

TINY = "INPUT[8x8x1] -> CONV3-4 -> RELU -> POOL2 -> FC10"


def small_digits() -> Dataset:
    """600 training digits, 60 validation, 120 test: an epoch of batch 32 is 19 quick steps."""
    ds = load("digits")
    return Dataset("digits", ds.classes, Split(ds.train.X[:600], ds.train.y[:600]),
                   Split(ds.val.X[:60], ds.val.y[:60]), Split(ds.test.X[:120], ds.test.y[:120]))


def wait_for(condition, timeout: float = 60.0, what: str = "the condition"):
    """Poll condition() until it is truthy (returned) or timeout seconds pass (a failure).

    Generous: these tests share a loaded 2-core machine."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)
