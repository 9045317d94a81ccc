"""How the suite times: each side's best of back-to-back calls, threads set alike, the machine's sgemm peak.

The libraries are never interleaved call by call: PyTorch's OpenMP threads spin for a
while after each call and would take the cores from whatever runs next. So one side runs
a block of calls, then the other, and the blocks alternate for a few rounds: a shared
machine's slow spells last seconds, and each side keeps its best block. Each block starts
after a pause (SETTLE_S) in which the other side's spinning threads go to sleep.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

import cnnkit as ck

from .errors import BenchError

#: Variables that work around old OpenBLAS bugs and slow a current NumPy's BLAS down; they
#: are read when the library loads, so only the command line can unset them (README
#: "Performance").
OPENBLAS_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")

#: seconds between one side's block of calls and the other's (OpenMP's threads spin for up
#: to 200 ms after a parallel region, by default)
SETTLE_S = 0.25


def best_of(fn: Callable[[], Any], repeat: int, min_seconds: float = 0.5) -> float:
    """Best time in seconds of fn called back to back, as a training loop calls it: at
    least ``repeat`` calls, and more until ``min_seconds`` have passed (hundreds for short
    cases, whose single calls a shared machine makes noisy). One warm-up call first
    (caches, allocators, workspaces)."""
    fn()
    best, start, calls = float("inf"), time.perf_counter(), 0
    while calls < repeat or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
        calls += 1
    return best


def side_by_side(mine: Callable[[], Any], theirs: Callable[[], Any] | None, repeat: int, min_seconds: float,
                 rounds: int, prepare: tuple[Callable[[], Any], Callable[[], Any]] | None = None,
                 ) -> tuple[float, float | None]:
    """(cnnkit's best, PyTorch's best or None) over `rounds` alternating blocks of
    ``best_of``; prepare = (before cnnkit's block, before PyTorch's), e.g. the modes."""
    a = b = float("inf")
    for _ in range(rounds):
        if prepare:
            prepare[0]()
        time.sleep(SETTLE_S)
        a = min(a, best_of(mine, repeat, min_seconds))
        if theirs is not None:
            if prepare:
                prepare[1]()
            time.sleep(SETTLE_S)
            b = min(b, best_of(theirs, repeat, min_seconds))
    return a, (None if theirs is None else b)


def time_steps(step: Callable[[], Any], steps: int, warmup: int = 2) -> list[float]:
    """Seconds of each of ``steps`` calls of step, after ``warmup`` untimed ones."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return times


def median_ms(times: list[float]) -> float:
    """The median of times in seconds, in milliseconds."""
    return 1e3 * statistics.median(times)


def torch_available() -> bool:
    """Whether PyTorch is installed (the default comparison then is torch); found, not
    imported, so a cnnkit-only run never loads it."""
    import importlib.util
    return importlib.util.find_spec("torch") is not None


def openblas_warning(environ: dict[str, str] | None = None) -> str | None:
    """A warning naming the OpenBLAS variables that are set, with the command that unsets
    them; None when none is set."""
    env = os.environ if environ is None else environ
    found = [v for v in OPENBLAS_VARS if env.get(v)]
    if not found:
        return None
    shown = ", ".join(f"{v}={env[v]}" for v in found)
    unset = " ".join(f"-u {v}" for v in OPENBLAS_VARS)
    return (f"warning: {shown} is set; it slows NumPy's BLAS (README 'Performance'). "
            f"Run as: env {unset} cnnkit bench ...")


_blas_one: list[Any] = []     # threadpoolctl's limiter while one thread means BLAS on one too


def set_threads(threads: int, torch_too: bool) -> None:
    """The same thread count for both: cnnkit.set_num_threads (CONV/FC blocks on
    ``threads`` threads, BLAS on one inside) and torch.set_num_threads. With one thread
    NumPy's BLAS is held at one as well (cnnkit.set_num_threads(1) leaves it as it is,
    all cores)."""
    if not isinstance(threads, int) or threads < 1:
        raise BenchError(f"--threads: expected an int >= 1, got {threads!r}")
    ck.set_num_threads(threads)
    while _blas_one:
        _blas_one.pop().restore_original_limits()
    if threads == 1:
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:
            pass
        else:
            _blas_one.append(threadpool_limits(limits=1, user_api="blas"))
    if torch_too:
        import torch
        torch.set_num_threads(threads)


def sgemm_peak(threads: int, n: int = 2048, repeat: int = 3) -> float:
    """The machine's measured float32 GEMM rate in GFLOP/s: the best of ``repeat`` n x n x n
    products by NumPy's BLAS on ``threads`` threads (2 n^3 flops each), measured in a
    fresh process: BLAS threads, once woken, keep spinning after the call and would take
    the cores from the cases timed next (PyTorch's threads most). The table's '%peak'
    divides by it."""
    code = f"from cnnkit.bench.timing import _sgemm_here; print(_sgemm_here({int(threads)}, {int(n)}, {int(repeat)}))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise BenchError(f"sgemm peak: the measuring process failed: {last}")
    return float(done.stdout.split()[-1])


def _sgemm_here(threads: int, n: int, repeat: int) -> float:
    """sgemm_peak's measurement, in this process (BLAS on ``threads`` threads)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    out = np.empty((n, n), dtype=np.float32)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:   # BLAS as it is: its own default thread count
        seconds = best_of(lambda: np.matmul(a, b, out=out), repeat, 0.0)
    else:
        with threadpool_limits(limits=threads, user_api="blas"):
            seconds = best_of(lambda: np.matmul(a, b, out=out), repeat, 0.0)
    return 2 * n ** 3 / seconds / 1e9


@dataclass
class Machine:
    """What the figures were measured on: versions, BLAS, threads, the sgemm peak."""

    threads: int
    sgemm_gflops: float
    numpy: str = np.__version__
    torch: str | None = None
    python: str = platform.python_version()
    cpu: str = ""
    cores: int = os.cpu_count() or 1
    blas: str = ""
    #: batch norm's compiled loops: 'numba X.Y' when cnnkit[fast]'s numba runs them, else ''
    compiled: str = ""
    env: dict[str, str] = field(default_factory=dict)

    def header(self) -> str:
        """Two lines for the top of the table."""
        torch = f"torch {self.torch}" if self.torch else "torch: not compared"
        setters = "cnnkit.set_num_threads, torch.set_num_threads" if self.torch else "cnnkit.set_num_threads"
        return (f"threads={self.threads} ({setters})  numpy {self.numpy}  "
                f"{torch}  BLAS: {self.blas or '?'}  compiled loops: {self.compiled or 'off (NumPy passes)'}\n"
                f"cpu: {self.cpu or '?'} ({self.cores} cores)  sgemm peak {self.sgemm_gflops:.1f} GFLOP/s on "
                f"{self.threads} threads  " + "  ".join(f"{k}={v!r}" for k, v in self.env.items()))

    def as_dict(self) -> dict[str, Any]:
        return dict(threads=self.threads, sgemm_gflops=self.sgemm_gflops, numpy=self.numpy, torch=self.torch,
                    python=self.python, cpu=self.cpu, cores=self.cores, blas=self.blas, compiled=self.compiled,
                    env=self.env)


def blas_name() -> str:
    """NumPy's BLAS as threadpoolctl names it (e.g. 'openblas SkylakeX'); '' without threadpoolctl."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return ""
    return ", ".join(f"{i['internal_api']} {i.get('architecture') or ''}".strip()
                     for i in threadpool_info() if i["user_api"] == "blas")


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else platform.processor()."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def machine(threads: int, compare_torch: bool, peak_n: int = 2048) -> Machine:
    """Set both libraries to ``threads`` threads and describe the machine (measuring the
    sgemm peak with an peak_n-sized product)."""
    set_threads(threads, compare_torch)
    torch_version = None
    if compare_torch:
        import torch
        torch_version = torch.__version__
    return Machine(threads=threads, sgemm_gflops=sgemm_peak(threads, peak_n), torch=torch_version,
                   cpu=cpu_name(), blas=blas_name(), compiled=compiled_loops(),
                   env={v: os.environ.get(v, "") for v in OPENBLAS_VARS})


def compiled_loops() -> str:
    """'numba X.Y' when cnnkit[fast]'s compiled loops run, '' when NumPy's passes do."""
    from ..layers import kernels

    return kernels.compiled.version()


def progress(text: str) -> None:
    """One line of progress on stderr (the table goes to stdout)."""
    print(text, file=sys.stderr, flush=True)
