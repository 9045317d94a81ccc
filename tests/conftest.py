"""Every test starts from the same state of cnnkit's generator, so a test that builds a net
without seeding it draws the same He initialisation each run (a failure reproduces)."""

import pytest

import cnnkit as ck


@pytest.fixture(autouse=True)
def _seeded_init():
    ck.manual_seed(1234)
