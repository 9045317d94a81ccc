"""One thread everywhere in these tests: BLAS and PyTorch threads that wait for each other on
a loaded, shared machine turn milliseconds into seconds."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def one_thread():
    from threadpoolctl import threadpool_limits

    import cnnkit as ck
    try:
        import torch
    except ImportError:
        torch = None
    previous = torch.get_num_threads() if torch is not None else None
    if torch is not None:
        torch.set_num_threads(1)
    with threadpool_limits(limits=1, user_api="blas"), ck.engine(threads=1):
        yield
    if torch is not None:
        torch.set_num_threads(previous)
