"""Data-parallel training over MPI: one model, many processes (CS231n notes, "Neural Networks 3").

    $ mpiexec -n 4 cnnkit train --batch-size 256 ...     # or: srun --mpi=pmix -n 4 cnnkit train ...

``--batch-size`` is the global batch: each of the R ranks trains on its contiguous
shard of B / R images of every batch, drawn from the same seeded order one process
uses; one in-place MPI Allreduce per step sums a flat buffer of all gradients (plus the
step's loss, accuracy, stop and failure flags), so every rank takes the same update.
Rank 0 alone writes checkpoints, metrics and the progress bar. Without a launcher (or
with one rank) nothing here runs and mpi4py is never imported.

- ``world()``: the MPI world of this process (a Comm) or None for a single process.
- ``DataParallel(comm, batch_size)``: shards, the per-step Allreduce, BN statistics.
- ``guard(comm)``: a failure on one rank stops every rank (MPI_Abort), never a hang.

See docs/mpi.md for running across nodes, failures and resuming on other rank counts.
"""

from .comm import Comm, ParallelError, launched_size, world
from .failure import agree, guard, install_excepthook
from .replicas import (
    BatchSplitError,
    DataParallel,
    GradientBuffer,
    QuietLog,
    RankFailed,
    StepResult,
    check_batch_size,
    shard_bounds,
)

__all__ = [
    "BatchSplitError",
    "Comm",
    "DataParallel",
    "GradientBuffer",
    "ParallelError",
    "QuietLog",
    "RankFailed",
    "StepResult",
    "agree",
    "check_batch_size",
    "data_parallel",
    "guard",
    "install_excepthook",
    "launched_size",
    "shard_bounds",
    "world",
]


def data_parallel(batch_size: int, settings: dict | None = None) -> DataParallel | None:
    """A DataParallel over world() for a global batch of batch_size, or None for a single process.

    ``settings`` (plain JSON data, e.g. a TrainConfig's dict) must be the same on every rank."""
    comm = world()
    return None if comm is None else DataParallel(comm, batch_size, settings)
