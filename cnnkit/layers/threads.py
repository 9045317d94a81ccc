"""All cores for a layer: its blocks split between cnnkit's threads, BLAS on one thread each.

NumPy's BLAS parallelises a single GEMM, but the im2col copies between GEMMs run on one
core and a CONV's skinny GEMMs (32 or 64 output columns) scale poorly. With
``cnnkit.set_num_threads(n)``, n > 1, a CONV instead splits its blocks between n threads
and BLAS runs single-threaded (set once: BLAS threads that are switched on and off keep
spinning and steal the cores back). Pools and ReLU share their blocks of images the same
way (by_images). NumPy releases the GIL in copies, ufuncs and GEMMs; the Python between
them holds it, so the loops over blocks are kept lean. Each thread takes a fixed,
contiguous share of the blocks, so results do not depend on scheduling; they depend on n,
as PyTorch's do on its thread count.

The default is 1: cnnkit leaves NumPy's BLAS as it found it. Setting n > 1 needs
threadpoolctl (installed with cnnkit[train]).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Callable, Sequence, TypeVar

from ..errors import CnnkitError

T = TypeVar("T")
R = TypeVar("R")

_workers = 1
_pool: ThreadPoolExecutor | None = None
_blas_limit = None  # threadpoolctl's limiter while cnnkit holds BLAS at one thread


def set_num_threads(n: int) -> None:
    """Run CONV blocks on n threads with single-threaded BLAS (n = 1: as NumPy is)."""
    global _workers, _pool, _blas_limit
    n = int(n)
    if n < 1:
        raise CnnkitError(f"set_num_threads: n must be >= 1, got {n}")
    if n > 1 and _blas_limit is None:
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:
            raise CnnkitError("set_num_threads(n > 1) needs threadpoolctl: pip install 'cnnkit[train]'") from None
        _blas_limit = threadpool_limits(limits=1, user_api="blas")
    if n == 1 and _blas_limit is not None:
        _blas_limit.restore_original_limits()
        _blas_limit = None
    if _pool is not None:
        _pool.shutdown()
    _pool = ThreadPoolExecutor(n - 1, thread_name_prefix="cnnkit") if n > 1 else None
    _workers = n


def get_num_threads() -> int:
    return _workers


@contextmanager
def num_threads(n: int):
    """set_num_threads(n) for a with-block, then back to what it was."""
    previous = _workers
    set_num_threads(n)
    try:
        yield
    finally:
        set_num_threads(previous)


def blas_threads() -> int:
    """NumPy's BLAS thread count as configured (1 without threadpoolctl, or while cnnkit
    holds BLAS at one thread: then cnnkit's own count)."""
    if _blas_limit is not None:
        return _workers
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return 1
    counts = [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]
    return max(counts, default=1)


def run_shares(fn: Callable[[Sequence[T]], R], items: Sequence[T]) -> list[R]:
    """fn over contiguous shares of items, one per thread; the results in share order."""
    n = min(_workers, len(items))
    if n <= 1 or _pool is None:
        return [fn(items)]
    shares = [items[i * len(items) // n:(i + 1) * len(items) // n] for i in range(n)]
    others = [_pool.submit(fn, share) for share in shares[1:]]
    first = fn(shares[0])  # the caller works too: one hand-off fewer
    return [first] + [f.result() for f in others]


# Elementwise layers and pools make several passes over their arrays: in blocks of images
# of about this many bytes (of the first array), the passes after the first hit the cache.
IMAGE_BLOCK_BYTES = 2 << 20


def by_images(fn: Callable[..., None], *arrays) -> None:
    """fn(*(a[n0:n1] for a in arrays)) over cache-sized blocks of images (axis 0), the
    blocks shared between cnnkit's threads; None arrays are passed through."""
    N = arrays[0].shape[0]
    step = max(1, IMAGE_BLOCK_BYTES // max(1, arrays[0][:1].nbytes))
    blocks = [slice(n, min(N, n + step)) for n in range(0, N, step)]

    def run(share: Sequence[slice]) -> None:
        for images in share:
            fn(*(a if a is None else a[images] for a in arrays))

    run_shares(run, blocks)
