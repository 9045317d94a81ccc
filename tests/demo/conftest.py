"""Fixtures of the demo tests (helpers live in demohelp.py)."""

from __future__ import annotations

import pytest
from demohelp import small_digits


@pytest.fixture(scope="session")
def small():
    return small_digits()
