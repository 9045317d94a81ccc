"""The MPI world a run was launched into: who we are, one in-place sum, and how to stop.

mpi4py is imported only when a launcher (mpiexec, srun) started this process as one of
several ranks, so a plain ``cnnkit train`` never touches MPI. Every collective waits with
a watchdog: a rank on this host that has died (its PID gone, or a zombie) or no answer for
``CNNKIT_MPI_TIMEOUT`` seconds (default 600; 0: wait forever) aborts the whole job with a
message naming the rank, instead of hanging in the collective.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from typing import Any

import numpy as np

from ..errors import CnnkitError

# Variables launchers set in each process they start: (variable with the world size, launcher).
# SLURM_NTASKS is not here: an sbatch script sees it without being one of srun's tasks.
LAUNCH_SIZE_VARS = (("PMI_SIZE", "mpiexec (MPICH/Hydra) or srun --mpi=pmi2"),
                    ("OMPI_COMM_WORLD_SIZE", "Open MPI's mpirun"),
                    ("MV2_COMM_WORLD_SIZE", "MVAPICH's mpirun"),
                    ("SLURM_STEP_NUM_TASKS", "srun"))
TIMEOUT_VAR = "CNNKIT_MPI_TIMEOUT"
OFF_VAR = "CNNKIT_MPI"  # "0": ignore the launcher, every rank trains on its own
DEFAULT_TIMEOUT = 600.0
INSTALL_HINT = "pip install 'cnnkit[mpi]' (mpi4py and the mpich wheel), or mpi4py built against your system MPI"


class ParallelError(CnnkitError):
    """A data-parallel run that cannot start or go on; raised on every rank alike."""


def launched_size() -> tuple[int, str] | None:
    """(ranks, launcher) when a launcher started this process as one of several ranks, else None."""
    for var, launcher in LAUNCH_SIZE_VARS:
        value = os.environ.get(var, "")
        if value.isdigit() and int(value) > 1 and (var != "SLURM_STEP_NUM_TASKS" or "SLURM_PROCID" in os.environ):
            return int(value), f"{launcher} ({var}={value})"
    return None


def world() -> Comm | None:
    """The MPI world of this process when it is one of several ranks; None for a single process.

    The first call on a rank is collective (every rank must make it) and installs an
    excepthook that aborts the job on an uncaught exception.

    Raises ParallelError when a launcher started several ranks but mpi4py is missing,
    naming what to install. ``CNNKIT_MPI=0`` makes every rank a single process (a sweep:
    one independent run per rank)."""
    launched = launched_size()
    if launched is None or os.environ.get(OFF_VAR) == "0":
        return None
    try:
        from mpi4py import MPI
    except ImportError as e:
        ranks, launcher = launched
        raise ParallelError(f"this process is one of {ranks} ranks started by {launcher}, but mpi4py is not "
                            f"installed ({e}); install it with {INSTALL_HINT}, or run without mpiexec") from None
    if MPI.COMM_WORLD.Get_size() < 2:
        return None
    global _WORLD
    if _WORLD is None:
        from .failure import install_excepthook
        _WORLD = Comm(MPI.COMM_WORLD)
        install_excepthook(_WORLD)
    return _WORLD


_WORLD: Comm | None = None  # one per process: creating it is collective


class Comm:
    """A thin wrapper over an mpi4py communicator: rank, size, in-place sums with a watchdog, abort.

    Arrays travel through mpi4py's buffer interface (no pickling); only small text
    (failure messages, host names) is sent as Python objects."""

    def __init__(self, comm: Any) -> None:
        from mpi4py import MPI

        self.MPI = MPI
        self.comm = comm
        self.rank: int = comm.Get_rank()
        self.size: int = comm.Get_size()
        value = os.environ.get(TIMEOUT_VAR, "")
        try:
            self.timeout = float(value) if value else DEFAULT_TIMEOUT
        except ValueError:
            raise ParallelError(f"{TIMEOUT_VAR} must be a number of seconds (0: no limit), got {value!r}") from None
        # (host, pid, pid namespace) of every rank: a peer on this host in this PID namespace
        # can be checked for life while we wait; one elsewhere only by the timeout
        me = (socket.gethostname(), os.getpid(), _pid_namespace())
        self.peers: list[tuple[str, int, int | None]] = comm.allgather(me)
        self._local = [r for r, (host, _, ns) in enumerate(self.peers)
                       if r != self.rank and host == me[0] and ns is not None and ns == me[2]]

    def library(self) -> str:
        """The MPI library's name and version, e.g. 'MPICH 5.0.2'."""
        first = self.MPI.Get_library_version().strip().splitlines()[0]
        return " ".join(first.replace("Version:", "").split())

    def describe(self) -> str:
        """'rank 0 pid 123 on host-a, rank 1 pid 124 on host-a' (to match a launcher's report to a rank)."""
        return ", ".join(f"rank {r} pid {pid} on {host}" for r, (host, pid, _) in enumerate(self.peers))

    # --- collectives ----------------------------------------------------------------
    def sum_(self, buf: np.ndarray, what: str = "the gradient Allreduce") -> np.ndarray:
        """Sum a contiguous 1-D array over all ranks, in place (MPI_Allreduce, MPI_IN_PLACE); returns buf."""
        if buf.ndim != 1 or not buf.flags.c_contiguous:
            raise ParallelError(f"Comm.sum_: expected a contiguous 1-D array, got shape {buf.shape}")
        self._wait(self.comm.Iallreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM), what)
        return buf

    def barrier(self, what: str = "a barrier") -> None:
        """Wait until every rank is here (MPI_Ibarrier, with the watchdog)."""
        self._wait(self.comm.Ibarrier(), what)

    def allgather_text(self, text: str, what: str = "exchanging reports") -> list[str]:
        """Every rank's string, in rank order (small messages only: failure reports, checksums)."""
        self.barrier(what)  # wait under the watchdog; once all are here the allgather cannot hang
        return [str(t) for t in self.comm.allgather(str(text))]

    def _wait(self, request: Any, what: str) -> None:
        # MPICH progresses a non-blocking collective only inside Test, so spin on it (a
        # blocking Allreduce spins the same way) and look at the clock now and then
        start = time.monotonic()
        next_look = start + 0.25
        spins = 0
        while not request.Test():
            spins += 1
            if spins > 1024:
                os.sched_yield()  # on a busy (oversubscribed) machine, let the rank we wait for run
            if spins % 256:
                continue
            now = time.monotonic()
            if now < next_look:
                continue
            next_look = now + 0.25
            for r in self._local:
                if not pid_alive(self.peers[r][1]):
                    self.abort(f"rank {r} (pid {self.peers[r][1]} on {self.peers[r][0]}) died during {what}; "
                               f"stopping all {self.size} ranks")
            if self.timeout and now - start > self.timeout:
                self.abort(f"no answer from the other ranks for {self.timeout:g} s in {what} (one may have died "
                           f"on another host); stopping all {self.size} ranks ({TIMEOUT_VAR} sets the limit)")

    # --- stopping ---------------------------------------------------------------------
    def abort(self, message: str, code: int = 1) -> None:
        """Print 'cnnkit: rank R: message' and end every rank of the job (MPI_Abort); does not return."""
        print(f"cnnkit: rank {self.rank}: {message}", file=sys.stderr, flush=True)
        # The launcher forwards a rank's output in its own time; Abort kills the forwarders
        # too, so on a busy machine the one line that says why could be lost: give it a moment.
        time.sleep(0.5)
        self.comm.Abort(code)


def _pid_namespace() -> int | None:
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None


def pid_alive(pid: int) -> bool:
    """True while pid exists and is not a zombie (a killed rank its launcher has not reaped yet)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")
