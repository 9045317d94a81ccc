"""When a rank fails: all ranks stop together, never one left waiting in a collective.

Three cases, from the most to the least orderly:

- an error every rank meets alike (a global batch that doesn't split, a diverged loss,
  Ctrl-C agreed in the step's Allreduce, a failure reported in that Allreduce: RankFailed)
  ends every rank normally; only rank 0 prints it;
- an error on one rank outside the step (a checkpoint that cannot be written, data
  missing on one node) prints ``cnnkit: rank R: ...`` and calls MPI_Abort, which ends the
  whole job at once;
- a rank that is killed outright is found by the launcher (mpiexec ends the job and names
  the PID; the first output line maps PIDs to ranks) or by the other ranks' watchdog
  (cnnkit.parallel.comm).
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import TypeVar, cast

from ..errors import CnnkitError
from .comm import Comm, ParallelError
from .replicas import RankFailed

T = TypeVar("T")


@contextmanager
def guard(comm: Comm | None, agreed: tuple[type[BaseException], ...] = (), prefix: str = "cnnkit") -> Iterator[None]:
    """Run a block so that no rank of comm fails alone. For comm None, a no-op.

    An error of the ``agreed`` kinds (and ParallelError), which every rank raises alike,
    is printed by rank 0 as ``<prefix>: error: ...``; then every rank exits with status 1
    (SystemExit), the others only after rank 0 has printed. Any other error prints its
    rank and aborts the job (MPI_Abort)."""
    try:
        yield
    except BaseException as e:
        if comm is None or (isinstance(e, SystemExit) and not e.code):
            raise
        if isinstance(e, (ParallelError, *agreed)):
            if comm.rank == 0:
                print(f"{prefix}: error: {e}", file=sys.stderr, flush=True)
            comm.barrier("stopping after an error every rank met")  # rank 0 speaks before anyone ends
            raise SystemExit(1) from None
        if not isinstance(e, CnnkitError):  # a bug or a system error: the traceback is the report
            traceback.print_exception(e, file=sys.stderr)
        comm.abort(f"failed: {type(e).__name__}: {e}; stopping all {comm.size} ranks")


def agree(comm: Comm | None, build: Callable[[], T], what: str = "setting up") -> T:
    """build() on every rank, then agree: if it raised anywhere, every rank raises.

    The same CnnkitError on every rank (a bad option) becomes one ParallelError with its
    message; a failure on some ranks only (a file missing on one node) becomes RankFailed
    naming them. For comm None this is just build()."""
    if comm is None:
        return build()
    try:
        result, error = build(), None
    except Exception as e:  # noqa: BLE001 - any failure: the others must hear of it before they wait
        result, error = None, e
    texts = comm.allgather_text("" if error is None else f"{type(error).__name__}: {error}")
    failed = [r for r, t in enumerate(texts) if t]
    if not failed:
        return cast(T, result)
    if len(failed) == comm.size and len(set(texts)) == 1 and isinstance(error, CnnkitError):
        raise ParallelError(str(error)) from error
    names = "; ".join(f"rank {r}: {texts[r]}" for r in failed)
    raise RankFailed(f"{'rank' if len(failed) == 1 else 'ranks'} {', '.join(map(str, failed))} of {comm.size} "
                     f"failed while {what} ({names})", failed) from error


def install_excepthook(comm: Comm) -> None:
    """Abort the job on an uncaught exception in any rank (as ``python -m mpi4py`` does), so a
    Python script that forgets the launcher's -m mpi4py still cannot leave ranks hanging."""
    previous = sys.excepthook

    def hook(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
        previous(kind, value, tb)
        comm.abort(f"uncaught {kind.__name__}; stopping all {comm.size} ranks")

    sys.excepthook = hook
