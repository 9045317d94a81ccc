"""Batch-norm running statistics on 2 ranks against one process (tests only).

    mpiexec -n 2 python -m mpi4py tests/parallel/bn_stats.py OUT.npz

Three data-parallel steps (gradients, no update) of a CONV -> BN -> RELU -> GAP -> FC net
on global batches of 16 whose two halves differ in mean; rank 0 saves the running
statistics averaged over the ranks, each rank's own before the average, and the running
statistics of one process that saw the whole global batches.
"""

from __future__ import annotations

import sys

import numpy as np

import cnnkit as ck
from cnnkit.parallel import DataParallel, world


def network() -> ck.Sequential:
    ck.manual_seed(0)
    return ck.Sequential(ck.Conv2D(3, 4, 3, padding=1), ck.BatchNorm2D(4), ck.ReLU(), ck.GlobalAvgPool2D(),
                         ck.FC(4, 3))


comm = world()
assert comm is not None and comm.size == 2, "run with mpiexec -n 2"
dp = DataParallel(comm, batch_size=16)
rng = np.random.default_rng(7)
batches = []
for _ in range(3):
    X = rng.standard_normal((16, 3, 6, 6)).astype(np.float32)
    X[8:] = 3.0 * X[8:] + 2.0  # the second shard differs in mean and spread: per-shard statistics matter
    batches.append((X, rng.integers(0, 3, size=16)))

parallel_net, single_net = network(), network()
for X, y in batches:
    dp.step(parallel_net, dp.shard(X), dp.shard(y), total=16)
    single_net.forward(X)  # one process: the batch statistics of the whole global batch

bn = parallel_net[1]
own = {k: comm.comm.allgather(bn.buffers[k].copy()) for k in ("running_mean", "running_var")}
dp.sync_buffers(parallel_net)
dp.sync_buffers(parallel_net)  # a second call without a step between must change nothing
if comm.rank == 0:
    np.savez(sys.argv[1], mean=bn.buffers["running_mean"], var=bn.buffers["running_var"],
             own_mean=np.stack(own["running_mean"]), own_var=np.stack(own["running_var"]),
             single_mean=single_net[1].buffers["running_mean"], single_var=single_net[1].buffers["running_var"],
             X=np.stack([b[0] for b in batches]))
