"""The interoperability tests' fixture: torch made unimportable while a test runs."""

from __future__ import annotations

import sys

import pytest


@pytest.fixture
def no_torch(monkeypatch):
    """torch (and every torch.* module) unimportable while the test runs: `import torch` fails."""
    for name in [m for m in sys.modules if m == "torch" or m.startswith("torch.")] + ["torch"]:
        monkeypatch.setitem(sys.modules, name, None)
