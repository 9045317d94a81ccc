"""The engine's runtime: one options object, its thread pool and its workspaces.

Everything that tunes how layers compute, rather than what they compute, lives here:
how many threads share a layer's blocks, how big a block of im2col rows may be, which
kernel strategy computes CONV, pools, LRN and locally-connected layers. Change it for a
with-block and it is restored afterwards::

    with cnnkit.engine(threads=2):          # CONV blocks on 2 threads, BLAS on one each
        net.forward(x)
    with cnnkit.engine(strategy="reference"):   # the notes' loops, slow and obviously right
        net.forward(x)

Threads: NumPy's BLAS parallelises one GEMM, but im2col copies run on one core and a
CONV's skinny GEMMs scale poorly. With n > 1 threads each thread takes a layer's next
block when it finishes one (on a shared host one core is often slower than the other for
a while: fixed shares would wait for it), and sums over blocks are folded in block order,
so results depend on the blocks, which depend on n, and not on which thread ran which (as
PyTorch's depend on its thread count). BLAS is held at one thread (set once: BLAS threads switched on and
off keep spinning and steal the cores back). NumPy releases the GIL in copies, ufuncs
and GEMMs; the Python between them holds it, so the loops over blocks stay lean. The
default is 1 thread, which leaves NumPy's BLAS as it found it; n > 1 needs threadpoolctl
(installed with cnnkit[train]).
"""

from __future__ import annotations

import ctypes
import dataclasses
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence, TypeVar

import numpy as np

from ..errors import CnnkitError

T = TypeVar("T")
R = TypeVar("R")

STRATEGIES = ("auto", "reference")
CONV_LOWERINGS = ("auto", "blocked", "pointwise", "shifted", "direct", "winograd2", "winograd4", "phases", "reference")


@dataclass(frozen=True)
class Options:
    """How the engine computes; ``cnnkit.engine(**changes)`` changes it for a with-block."""

    #: threads that share a layer's blocks (1: NumPy's BLAS as it is).
    threads: int = 1
    #: which kernels compute CONV, pools, LRN and locally-connected layers: 'auto' (the
    #: fast ones, chosen per layer by kernels.choose) or 'reference' (the notes' loops).
    strategy: str = "auto"
    #: force one CONV lowering: 'auto', 'blocked' (im2col NHWC), 'shifted' (channels-first
    #: shifted rows, stride 1 only), 'direct' (loops compiled from LLVM IR, cnnkit[fast];
    #: stride 1, 16k filters), 'winograd2' / 'winograd4' (F(2x2,3x3) / F(4x4,3x3),
    #: 3x3 stride 1 only), 'phases' (a dilated 3x3's phases by F(2x2,3x3)) or 'reference'.
    conv: str = "auto"
    #: at most this much X_col per block of the blocked lowering (it stays in cache).
    block_bytes: int = 8 << 20
    #: ... but this much for a GEMM at most narrow_width columns wide (32-channel layers):
    #: it reads each X_col number for few multiply-adds, too few to hide a block beyond L2.
    narrow_block_bytes: int = 3 << 20
    narrow_width: int = 32
    #: the shifted lowering's GEMM is skinny (K columns), fast only while X_col sits in
    #: the core's own L2: smaller blocks forward; backward's dX adds cost one NumPy call
    #: per kernel offset and block, so bigger ones there (with the compiled loops, one
    #: call per block: backward then uses the forward's size).
    shifted_block_bytes: int = 1 << 20
    shifted_backward_bytes: int = 8 << 20
    #: the direct lowering (cnnkit[fast]) is picked for CONVs (wider than 1x1, stride 1) of
    #: at most this many input and output channels: their im2col GEMMs are at most this
    #: many columns wide, which OpenBLAS runs well below its peak. 0: never.
    direct_max_channels: int = 32
    #: ... and dilated CONVs of at most this many: there the alternative, Winograd on the
    #: phases, pays for copies between the image and its stack of phases (docs/bench.md,
    #: fifteenth session: 64 channels by direct 122-131 ms fwd+bwd against 142-146).
    direct_dilated_max_channels: int = 64
    #: at most this much of transformed tiles V per block of the Winograd lowerings: their
    #: GEMMs have (m+2)^2 filter matrices to stream per block, so blocks need many tiles.
    winograd_block_bytes: int = 16 << 20
    #: the Winograd lowering is picked only for a CONV whose batch takes at least this
    #: many multiply-adds the direct way (below, its transforms' NumPy calls cost more
    #: than the multiplications it saves: a ResNet's 3x3 layers at batch 1 to 4).
    winograd_min_macs: int = 600_000_000
    #: with the compiled loops (cnnkit[fast]) its transforms are one pass each, and it pays
    #: from this many (ResNet's 56x56 and 28x28 layers of one image: 115M each).
    winograd_compiled_min_macs: int = 75_000_000
    #: a pass over one image while NumPy's BLAS shares each GEMM between the threads
    #: (blas_share_images) takes Winograd from this many multiply-adds: im2col's GEMM uses
    #: every thread there and Winograd's transforms one (ResNet's 128->128 @28x28, 115M,
    #: 1.68 ms by F(2x2) against 1.14 by im2col; 128->128 @56x56, 462M, 3.0 against 4.2).
    winograd_one_image_min_macs: int = 300_000_000
    #: the largest output tile m of F(m x m, 3x3) the rule picks: 4 (F(4x4), 4x fewer
    #: multiplications, where a batch has the tiles and multiply-adds for it; F(2x2)
    #: elsewhere) or 2 (F(2x2) only: rounding as exact as the direct sum, F(4x4) costs
    #: about one decimal digit). F(4x4) needs the compiled loops (its NumPy passes are slow).
    winograd_tile: int = 4
    #: F(4x4) is picked for a batch of at least this many 4x4 tiles (and as many as the wider
    #: of D1 and K): each of its 36 GEMMs packs a D1 x K filter matrix for that many rows,
    #: which pays from a few hundred (measured: docs/bench.md, ninth session).
    winograd4_min_tiles: int = 256
    #: below this much X_col per thread (multiplied into 64 columns; a wider GEMM counts
    #: for more), handing work to another thread costs more than it saves.
    min_share_bytes: int = 1 << 20
    #: a CONV with fewer output positions (N*H2*W2) than this, whose X_col fits one block,
    #: is lowered as that one block and its GEMM shared between threads by output
    #: channels: cut into rows, each thread would get few rows and repack all of W_row.
    #: (Not BLAS's own threads: OpenBLAS's spin for a while after each call, and take the
    #: cores from the next layer's threads.)
    channel_share_rows: int = 512
    #: elementwise layers and pools make several passes: in blocks of images of about
    #: this many bytes the passes after the first hit the cache.
    image_block_bytes: int = 2 << 20
    #: layout-changing copies (NCHW to NHWC) at least this big are shared between threads.
    copy_share_bytes: int = 4 << 20
    #: a network's forward or backward of at most this many images (threads > 1) runs on
    #: the calling thread with NumPy's BLAS sharing each GEMM between the threads instead:
    #: one image is too little work per layer for hand-offs between Python threads
    #: (100-150 us each). 0: never.
    blas_share_images: int = 1
    #: batch norm runs compiled loops (numba, cnnkit[fast]) where numba is installed:
    #: one read per pass instead of NumPy's several whole-block operations. False: NumPy's
    #: passes (the same results within float32 rounding).
    compiled: bool = True
    #: False: new layers get read-only stand-ins for their parameters (one number each,
    #: broadcast to the shape), so a network can be built and sized (summary, lint,
    #: limits) without spending its memory or drawing from the seeded generator.
    allocate: bool = True
    #: glibc's malloc keeps freed memory for the next arrays (arrays up to 32 MB come from
    #: its heap, which is not handed back to the system) instead of mapping fresh pages for
    #: each big array and faulting them in, a page at a time, on first touch: a training
    #: step makes the same arrays again every time (the CIFAR-10 step 66-69 -> 48-53 ms,
    #: docs/bench.md, fifteenth session). False: glibc's defaults. Elsewhere: nothing to set.
    keep_freed_memory: bool = True

    def check(self) -> "Options":
        if not isinstance(self.threads, int) or self.threads < 1:
            raise CnnkitError(f"engine: threads must be an int >= 1, got {self.threads!r}")
        if self.strategy not in STRATEGIES:
            raise CnnkitError(f"engine: strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if self.conv not in CONV_LOWERINGS:
            raise CnnkitError(f"engine: conv must be one of {CONV_LOWERINGS}, got {self.conv!r}")
        for name in ("compiled", "keep_freed_memory"):
            if not isinstance(getattr(self, name), bool):
                raise CnnkitError(f"engine: {name} must be True or False, got {getattr(self, name)!r}")
        if self.winograd_tile not in (2, 4):
            raise CnnkitError(f"engine: winograd_tile must be 2 or 4, got {self.winograd_tile!r}")
        for name in ("channel_share_rows", "winograd_min_macs", "winograd_compiled_min_macs", "winograd4_min_tiles",
                     "winograd_one_image_min_macs", "blas_share_images", "narrow_width", "direct_max_channels",
                     "direct_dilated_max_channels"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise CnnkitError(f"engine: {name} must be an int >= 0, got {value!r}")
        for f in dataclasses.fields(self):
            if f.name.endswith("_bytes") and (not isinstance(getattr(self, f.name), int) or getattr(self, f.name) < 1):
                raise CnnkitError(f"engine: {f.name} must be an int >= 1, got {getattr(self, f.name)!r}")
        return self


class Runtime:
    """The options in force, the worker threads they ask for, and per-thread workspaces."""

    def __init__(self) -> None:
        self.options = Options()
        self._pool: ThreadPoolExecutor | None = None
        self._blas_limit: Any = None      # threadpoolctl's limiter while BLAS is held at one thread
        self._blas_controllers: list[Any] = []   # and its BLAS libraries, to lend them the threads
        self._workspaces: dict[tuple, np.ndarray] = {}
        #: True while few_images lends NumPy's BLAS the threads (one layer at a time on this thread)
        self.sharing_blas = False
        keep_freed_memory(self.options.keep_freed_memory)

    # --- options -------------------------------------------------------------------
    def configure(self, **changes: Any) -> Options:
        """Apply changes to the options; returns the previous options."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(Options)}
        if unknown:
            raise CnnkitError(f"engine: unknown option(s) {sorted(unknown)}; known: "
                              f"{[f.name for f in dataclasses.fields(Options)]}")
        if "threads" in changes:
            changes["threads"] = _as_threads(changes["threads"])
        previous, new = self.options, dataclasses.replace(self.options, **changes).check()
        if new.threads != previous.threads:
            self._start_threads(new.threads)
        if new.keep_freed_memory != previous.keep_freed_memory:
            keep_freed_memory(new.keep_freed_memory)
        self.options = new
        return previous

    def _start_threads(self, n: int) -> None:
        if n > 1 and self._blas_limit is None:
            try:
                from threadpoolctl import threadpool_limits
            except ImportError:
                raise CnnkitError("set_num_threads(n > 1) needs threadpoolctl: pip install 'cnnkit[train]'") from None
            self._blas_limit = threadpool_limits(limits=1, user_api="blas")
            from threadpoolctl import ThreadpoolController
            self._blas_controllers = ThreadpoolController().select(user_api="blas").lib_controllers
        if n == 1 and self._blas_limit is not None:
            self._blas_limit.restore_original_limits()
            self._blas_limit, self._blas_controllers = None, []
        if self._pool is not None:
            self._pool.shutdown()
        self._pool = ThreadPoolExecutor(n - 1, thread_name_prefix="cnnkit") if n > 1 else None

    @contextmanager
    def few_images(self, images: int) -> Iterator[None]:
        """For a network's pass over `images` images: at most blas_share_images of them
        (and threads > 1), the layers run on this thread as with threads=1 while NumPy's
        BLAS shares each GEMM between the threads; else nothing changes. Switching BLAS's
        thread count is one C call each way."""
        options = self.options
        if options.threads == 1 or images > options.blas_share_images or not self._blas_controllers:
            yield
            return
        self.options = dataclasses.replace(options, threads=1)
        for blas in self._blas_controllers:
            blas.set_num_threads(options.threads)
        self.sharing_blas = True
        try:
            yield
        finally:
            for blas in self._blas_controllers:
                blas.set_num_threads(1)
            self.options = options
            self.sharing_blas = False

    # --- sharing work between threads ----------------------------------------------
    def run_shares(self, fn: Callable[[Any], R], items: Sequence[T]) -> list[R]:
        """fn over contiguous shares of items (slices of items: lists, ranges), one per
        thread; the results in share order."""
        n = min(self.options.threads, len(items))
        if n <= 1 or self._pool is None:
            return [fn(items)]
        shares = [items[i * len(items) // n:(i + 1) * len(items) // n] for i in range(n)]
        others = [self._pool.submit(fn, share) for share in shares[1:]]
        first = fn(shares[0])  # the caller works too: one hand-off fewer
        return [first] + [f.result() for f in others]

    def run_blocks(self, fn: Callable[[T], R], items: Sequence[T],
                   fold: Callable[[R, R], R] | None = None) -> list[R]:
        """fn(item) for every item, each thread taking the next item when it finishes one,
        so a thread that the machine slows down (a busy host, a late start) takes fewer.
        The results in item order; with fold, folded in item order as they arrive
        (total = fold(total, result), first to last) and returned as [total]: the same
        numbers whichever thread ran which item. A result waits only for the items before
        it, so at most a few are held at a time."""
        n = min(self.options.threads, len(items))
        if n <= 1 or self._pool is None:
            results = [fn(item) for item in items]
            return results if fold is None else folded(fold, results)
        taken = iter(range(len(items)))      # next() of a range iterator is atomic under the GIL
        done: dict[int, R] = {}
        state: dict[str, Any] = {"next": 0, "total": None, "failed": False}
        lock = threading.Lock()

        def deliver(i: int, result: R) -> None:
            with lock:
                done[i] = result
                while fold is not None and state["next"] in done:       # fold every result whose turn has come
                    part = done.pop(state["next"])
                    state["total"] = part if state["next"] == 0 else fold(state["total"], part)
                    state["next"] += 1

        def work() -> None:
            try:
                for i in taken:
                    if state["failed"]:
                        return
                    deliver(i, fn(items[i]))
            except BaseException:
                state["failed"] = True
                raise

        others = [self._pool.submit(work) for _ in range(n - 1)]
        try:
            work()
        finally:
            for other in others:
                other.exception()               # wait for every thread before anything is raised
        for other in others:
            other.result()                      # a worker's error, raised here
        if fold is not None:
            return [state["total"]]
        return [done[i] for i in range(len(items))]

    def by_images(self, fn: Callable[..., R], *arrays: np.ndarray | None) -> list[R]:
        """fn(*(a[n0:n1] for a in arrays)) over cache-sized blocks of images (axis 0),
        the blocks shared between threads; None arrays are passed through. The results
        in block order (so sums of them do not depend on which thread finished first)."""
        first = arrays[0]
        assert first is not None
        N = first.shape[0]
        step = max(1, self.options.image_block_bytes // max(1, first[:1].nbytes))
        blocks = [slice(n, min(N, n + step)) for n in range(0, N, step)]

        return self.run_blocks(lambda images: fn(*(a if a is None else a[images] for a in arrays)), blocks)

    def by_share(self, size: int, fn: Callable[[slice], Any]) -> None:
        """fn(slice) for contiguous slices of range(size), one per thread."""
        self.run_shares(lambda share: fn(slice(share.start, share.stop)), range(size))   # shares of a range are ranges

    def blas_threads(self) -> int:
        """NumPy's BLAS thread count as configured (1 without threadpoolctl; while the
        engine holds BLAS at one thread, the engine's own count)."""
        if self._blas_limit is not None:
            return self.options.threads
        try:
            from threadpoolctl import threadpool_info
        except ImportError:
            return 1
        counts = [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]
        return max(counts, default=1)

    # --- workspaces ----------------------------------------------------------------
    def workspace(self, numbers: int, dtype: Any) -> np.ndarray:
        """A flat scratch array of at least `numbers` items, this thread's, kept between
        calls: a fresh multi-MB array per block (or per call) costs the kernel's page
        faults. Only one caller per thread uses it at a time (a CONV's lowering)."""
        key = (threading.get_ident(), np.dtype(dtype).str)
        buffer = self._workspaces.get(key)
        if buffer is None or buffer.size < numbers:
            del buffer
            self._workspaces.pop(key, None)   # let the smaller one go before the bigger one comes
            buffer = self._workspaces[key] = np.empty(numbers, dtype=dtype)
        return buffer

    def release_workspaces(self) -> None:
        """Free every thread's scratch arrays (the next CONV call makes them again)."""
        self._workspaces.clear()


def folded(fold: Callable[[R, R], R], results: list[R]) -> list[R]:
    """[results folded first to last] (run_blocks on one thread)."""
    if not results:
        return []
    total = results[0]
    for part in results[1:]:
        total = fold(total, part)
    return [total]


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3     # mallopt's parameters (glibc's malloc.h)


def keep_freed_memory(on: bool) -> bool:
    """Tell glibc's malloc to keep freed memory for the next arrays (on: arrays up to 32 MB,
    its largest heap allocation, from the heap, and the heap never trimmed below 1 GB) or
    to use its defaults (128 KB each) and hand back what it kept; True where it took. Not glibc (macOS, Windows, musl):
    nothing to set, False."""
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt if hasattr(libc, "gnu_get_libc_version") else None   # glibc's, not another libc's
    except (OSError, AttributeError, TypeError):
        return False
    if mallopt is None:
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    mmap, trim = (32 << 20, 1 << 30) if on else (128 << 10, 128 << 10)
    took = bool(mallopt(_M_MMAP_THRESHOLD, mmap)) and bool(mallopt(_M_TRIM_THRESHOLD, trim))
    if not on:
        libc.malloc_trim(0)                 # and hand back what it kept
    return took


def _as_threads(n: Any) -> int:
    try:
        value = int(n)
    except (TypeError, ValueError):
        raise CnnkitError(f"set_num_threads: n must be an int >= 1, got {n!r}") from None
    if value < 1:
        raise CnnkitError(f"set_num_threads: n must be >= 1, got {value}")
    return value


#: The one runtime of this process.
runtime = Runtime()


@contextmanager
def engine(**changes: Any) -> Iterator[Options]:
    """Change the engine's options for a with-block (threads, strategy, conv, block sizes)."""
    previous = runtime.configure(**changes)
    try:
        yield runtime.options
    finally:
        runtime.configure(**dataclasses.asdict(previous))


def options() -> Options:
    """The options in force."""
    return runtime.options


def set_num_threads(n: int) -> None:
    """Share each layer's blocks between n threads with single-threaded BLAS (n = 1: as
    NumPy is), like torch.set_num_threads."""
    runtime.configure(threads=n)


def get_num_threads() -> int:
    return runtime.options.threads


def use_reference(on: bool = True) -> None:
    """Compute CONV, pools, LRN and locally-connected layers with the reference loops
    (cnnkit.layers.reference), or back with the fast kernels (on=False)."""
    runtime.configure(strategy="reference" if on else "auto")


def release_workspace() -> None:
    """Free the engine's scratch buffers (CONV's im2col blocks)."""
    runtime.release_workspaces()
