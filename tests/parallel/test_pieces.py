"""The pieces of cnnkit.parallel that need no MPI: the split, the flat buffer, launch detection."""

from __future__ import annotations

import itertools
import sys

import numpy as np
import pytest

import cnnkit as ck
from cnnkit.parallel import (
    BatchSplitError,
    GradientBuffer,
    ParallelError,
    check_batch_size,
    launched_size,
    shard_bounds,
    world,
)

LAUNCH_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE", "SLURM_STEP_NUM_TASKS", "SLURM_PROCID")


@pytest.fixture
def no_launcher(monkeypatch):
    for var in LAUNCH_VARS:
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def test_the_global_batch_splits_into_equal_shards_or_is_refused_with_the_numbers():
    assert check_batch_size(64, 2) == 32 and check_batch_size(64, 1) == 64 and check_batch_size(48, 3) == 16
    with pytest.raises(BatchSplitError) as e:
        check_batch_size(64, 3)
    assert str(e.value).startswith("--batch-size 64 is the global batch and does not divide by the 3 ranks "
                                   "(64 / 3 = 21.33); use a multiple of 3 such as 63 or 66")


@pytest.mark.parametrize("n, ranks", [(64, 2), (15, 2), (47, 3), (2, 4), (0, 3), (1295, 7)])
def test_shards_are_contiguous_cover_the_batch_once_and_differ_by_at_most_one(n, ranks):
    bounds = [shard_bounds(n, r, ranks) for r in range(ranks)]
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))
    sizes = [b - a for a, b in bounds]
    assert sizes == sorted(sizes, reverse=True) and max(sizes) - min(sizes) <= 1
    assert sizes == [len(part) for part in np.array_split(np.arange(n), ranks)]


def small_net() -> ck.Sequential:
    ck.manual_seed(1)
    return ck.Sequential(ck.Conv2D(2, 3, 3, padding=1), ck.BatchNorm2D(3), ck.ReLU(), ck.FC(3 * 4 * 4, 5))


def test_the_flat_buffer_holds_every_gradient_and_hands_them_back_as_views():
    net = small_net()
    x = np.random.default_rng(0).standard_normal((4, 2, 4, 4)).astype(np.float32)
    _, dscores = ck.softmax_loss(net.forward(x), np.array([0, 1, 2, 3]))
    net.backward(dscores)
    before = {name: g.copy() for name, _, g in net.params_and_grads()}
    buf = GradientBuffer(net, extra=3)
    assert buf.flat.shape == (net.num_params() + 3,) and buf.flat.dtype == np.float32
    flat = buf.pack(net)
    # each gradient in its parameter's memory order (CONV filters channels-last)
    in_memory_order = [before[name].transpose(np.argsort(p.strides)[::-1]).ravel() for name, p, _ in net.params_and_grads()]
    assert np.array_equal(flat[:buf.numel], np.concatenate(in_memory_order))
    flat[:buf.numel] *= 2  # what an Allreduce over two identical ranks would leave
    buf.unpack(net)
    for name, p, g in net.params_and_grads():
        assert np.shares_memory(g, buf.flat), name  # a view: no copy back
        assert np.array_equal(g, 2 * before[name]), name
        assert np.argsort(g.strides).tolist() == np.argsort(p.strides).tolist(), name   # the update reads both alike
    assert not buf.pack(net, zero=True)[:buf.numel].any()  # a rank with an empty shard adds nothing


def test_a_plain_process_has_no_world_and_never_imports_mpi4py(no_launcher):
    no_launcher.setitem(sys.modules, "mpi4py", None)  # importing it would fail
    assert launched_size() is None
    assert world() is None


def test_srun_counts_only_inside_a_task(no_launcher):
    no_launcher.setenv("SLURM_STEP_NUM_TASKS", "4")
    assert launched_size() is None  # an sbatch script, not one of srun's tasks
    no_launcher.setenv("SLURM_PROCID", "0")
    assert launched_size()[0] == 4


def test_several_ranks_without_mpi4py_say_what_to_install(no_launcher):
    no_launcher.setenv("PMI_SIZE", "2")
    no_launcher.setitem(sys.modules, "mpi4py", None)
    with pytest.raises(ParallelError) as e:
        world()
    message = str(e.value)
    assert "one of 2 ranks started by mpiexec" in message and "pip install 'cnnkit[mpi]'" in message


def test_the_watchdog_tells_a_live_process_from_a_dead_or_zombie_one():
    import os
    import subprocess
    import time
    from pathlib import Path

    from cnnkit.parallel.comm import pid_alive

    assert pid_alive(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 30
    while Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
        assert time.monotonic() < deadline  # exited, not reaped: a zombie, as a killed rank is
        time.sleep(0.001)                   # until its launcher reaps it
    assert not pid_alive(child.pid)
    child.wait()
    assert not pid_alive(child.pid)
