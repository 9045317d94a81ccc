"""Data-parallel training over MPI with real ranks: `mpiexec -n 2 python -m mpi4py ...`.

Every launch uses the venv's own mpiexec (the mpich wheel) and ``python -m mpi4py``, so an
uncaught error aborts the job instead of hanging it, and runs under a timeout that kills
the whole process group. Ranks use one BLAS thread each, as the one-process reference does.

Two ranks are not bit-exact with one process: one process sums the 64 images' gradient
contributions inside one GEMM, two ranks sum 32 + 32 and then add the halves, and float32
addition is not associative. The difference is a few float32 ulps of almost every
weight; Adam divides each step by the root of the gradient's mean square, so on a weight
whose gradient stays near zero those ulps become a visible difference (measured after 21
Adam steps, on weights up to 1.4: at most 2.4e-7 on an Intel Xeon; on an AMD EPYC, whose
BLAS kernels block the sums differently, 8 of the net's 99,000 weights differ by more,
the largest by 3.8e-6). So weights are compared with atol 2e-5, rtol 1e-5, and at most
0.1% of a tensor's weights may differ by more than 1e-6; a wrong shard, scale or a
missing rank shows up as differences of 1e-3 and more, in most weights. Two ranks are bit-exact with each other (each checkpoint
checks a CRC of the weights on every rank).
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("mpi4py")

from cnnkit.checkpoint import load_checkpoint
from cnnkit.train import CHECKPOINT

HERE = Path(__file__).parent
MPIEXEC = Path(sys.executable).with_name("mpiexec")
if not MPIEXEC.exists():
    pytest.skip(f"no mpiexec beside {sys.executable} (pip install mpich)", allow_module_level=True)

ENV = {**{k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "PMIX_", "OMPI_", "SLURM_"))},
       "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "CNNKIT_MPI_TIMEOUT": "30"}
# one epoch of digits (1,295 training images): 20 steps of 64 and a last one of 15 (8 + 7 on two ranks)
ARGS = ["--epochs", "1", "--batch-size", "64", "--seed", "3", "--quiet"]
STEPS = 21
WEIGHTS = {"rtol": 1e-5, "atol": 2e-5}
ULPS_APART = 1e-6   # ... and at most 0.1% of a tensor this far apart (see above)


def launch(ranks: int, *args: str, launcher: tuple[str, ...] = (), **env: str) -> subprocess.Popen:
    return subprocess.Popen([str(MPIEXEC), *launcher, "-n", str(ranks), sys.executable, "-m", "mpi4py", *args],
                            env={**ENV, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def finish(proc: subprocess.Popen, timeout: float = 90) -> tuple[int, str, str]:
    """Wait for a launch; on timeout kill its whole process group and fail: a hang is a bug."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"the MPI job hung for {timeout} s:\n{out}\n{err}")
    return proc.returncode, out, err


def train(ranks: int, *args: str, timeout: float = 90) -> tuple[int, str, str]:
    return finish(launch(ranks, "-m", "cnnkit.cli", "train", *args), timeout)


def train_one_process(*args: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "cnnkit.cli", "train", *args], env=ENV, capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr


def weights(run_dir: Path) -> dict[str, np.ndarray]:
    return load_checkpoint(run_dir / CHECKPOINT).model_state


def assert_close_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k, v in a.items():
        np.testing.assert_allclose(v, b[k], **WEIGHTS, err_msg=k)
        assert np.count_nonzero(np.abs(v - b[k]) > ULPS_APART) <= 0.001 * v.size, k


def steps_logged(run_dir: Path) -> int:
    try:
        return (run_dir / "metrics.jsonl").read_text().count('"kind": "step"')
    except FileNotFoundError:
        return 0


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> Path:
    """The reference: the same run in one process, without MPI."""
    run_dir = tmp_path_factory.mktemp("one_process")
    train_one_process(*ARGS, "--out", str(run_dir))
    return run_dir


def test_two_ranks_end_with_the_weights_of_one_process(one_process, tmp_path):
    rc, out, err = train(2, *ARGS, "--out", str(tmp_path))
    assert rc == 0, err
    assert out.count("test accuracy:") == 1  # rank 0 alone reports
    first = err.strip().splitlines()[0]
    assert '"ranks": 2' in first and "global batch 64 = 2 x 32" in first, first
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["ranks"] == 2 and config["batch_size"] == 64
    ckpt = load_checkpoint(tmp_path / CHECKPOINT)
    assert ckpt.step == STEPS and ckpt.epoch == 1
    assert_close_weights(ckpt.model_state, weights(one_process))
    # the logged loss is the global batch's, step by step, as one process logs it
    ours = [r for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "step"]
    ref = [r for r in map(json.loads, (one_process / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "step"]
    assert [r["step"] for r in ours] == list(range(1, STEPS + 1))
    np.testing.assert_allclose([r["loss"] for r in ours], [r["loss"] for r in ref], rtol=1e-5)
    assert [r["acc"] for r in ours] == [r["acc"] for r in ref]


def test_one_rank_under_mpiexec_is_exactly_one_process(one_process, tmp_path):
    rc, _, err = train(1, *ARGS, "--out", str(tmp_path))
    assert rc == 0, err
    assert "ranks" not in err and "ranks" not in json.loads((tmp_path / "config.json").read_text())
    a, b = load_checkpoint(tmp_path / CHECKPOINT), load_checkpoint(one_process / CHECKPOINT)
    for k in b.model_state:
        assert a.model_state[k].tobytes() == b.model_state[k].tobytes(), k


def test_a_batch_norm_net_is_evaluated_and_checkpointed_with_the_averaged_statistics(tmp_path):
    from cnnkit.data import load
    from cnnkit.train import accuracy

    model = "[CONV3-16 -> BN -> RELU]*2 -> POOL2 -> FC10"
    rc, _, err = train(2, *ARGS, "--model", model, "--out", str(tmp_path))
    assert rc == 0, err
    epoch = [r for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines())
             if r["kind"] == "epoch"][-1]
    ckpt = load_checkpoint(tmp_path / CHECKPOINT)
    stats = {k: v for k, v in ckpt.model_state.items() if k.endswith(("running_mean", "running_var"))}
    assert len(stats) == 4 and not any(np.array_equal(v, np.zeros_like(v)) or np.array_equal(v, np.ones_like(v))
                                       for v in stats.values())
    # the ranks scored a shard of the test split each with the statistics the checkpoint holds
    test = load("digits").test
    assert epoch["test_acc"] == accuracy(ckpt.net, test, ckpt.meta["normalization"])


def test_killed_two_rank_run_resumed_on_one_rank_ends_like_one_process(one_process, tmp_path):
    target = random.randrange(6, STEPS - 2)
    proc = launch(2, "-m", "cnnkit.cli", "train", *ARGS, "--checkpoint-every", "4", "--out", str(tmp_path))
    kill_at_step(proc, tmp_path, target)  # every rank and the launcher, at once
    saved = load_checkpoint(tmp_path / CHECKPOINT)  # whole, whatever the kill interrupted
    assert 4 <= saved.step < STEPS and saved.step % 4 == 0, (target, saved.step)
    train_one_process("--out", str(tmp_path), "--resume", "--quiet")
    final = load_checkpoint(tmp_path / CHECKPOINT)
    assert final.step == STEPS
    assert_close_weights(final.model_state, weights(one_process))


def injected(mode: str, step: int, *args: str, launcher: tuple[str, ...] = (), **env: str) -> tuple[int, str, float]:
    """Launch inject.py; returns (exit code, stderr + stdout, seconds from the failure to the job's end)."""
    proc = launch(2, str(HERE / "inject.py"), mode, str(step), "--", *args, launcher=launcher, **env)
    rc, out, err = finish(proc, timeout=60)
    err += out  # mpiexec reports a dead process on stdout
    ended = time.time()
    found = re.search(r"injected at ([0-9.]+)", err)
    assert found, err
    return rc, err, ended - float(found.group(1))


def test_a_rank_that_raises_in_a_step_stops_the_job_and_rank_0_names_it(tmp_path):
    rc, err, seconds = injected("raise", 5, *ARGS, "--out", str(tmp_path))
    assert rc != 0 and seconds < 10, (rc, seconds, err)
    assert "cnnkit train: error: rank 1 of 2 failed in step 5" in err, err
    assert "RuntimeError: injected failure" in err
    assert err.count("cnnkit train: error:") == 1


def test_a_rank_that_raises_outside_the_step_aborts_the_job(tmp_path):
    rc, err, seconds = injected("save", 4, *ARGS, "--checkpoint-every", "4", "--out", str(tmp_path))
    assert rc != 0 and seconds < 10, (rc, seconds, err)
    assert "cnnkit: rank 1: failed: RuntimeError: injected failure (checkpoint after step 4)" in err, err


def test_a_killed_rank_stops_the_job_and_the_launcher_names_a_pid_of_the_job(tmp_path):
    rc, err, seconds = injected("kill", 5, *ARGS, "--out", str(tmp_path))
    assert rc != 0 and seconds < 10, (rc, seconds, err)
    pids = dict(re.findall(r"rank (\d+) pid (\d+)", err.splitlines()[0]))
    dead = re.search(r"PID (\d+) RUNNING AT", err) or re.search(r"rank 1 \(pid (\d+)", err)
    # hydra names the first process it reaped: the killed rank 1, or (about one run in
    # eight here) rank 0, which it had just ended itself; the first line maps either to its rank
    assert dead and dead.group(1) in pids.values(), err


def test_a_rank_that_stops_answering_is_caught_by_the_timeout(tmp_path):
    rc, err, seconds = injected("hang", 5, *ARGS, "--out", str(tmp_path), CNNKIT_MPI_TIMEOUT="2")
    assert rc != 0 and 2 <= seconds < 10, (rc, seconds, err)
    assert ("cnnkit: rank 0: no answer from the other ranks for 2 s in the gradient Allreduce of step 5"
            in err), err


def test_a_batch_that_does_not_split_over_the_ranks_is_refused_once(tmp_path):
    rc, _, err = train(2, *ARGS[:2], "--batch-size", "63", "--quiet", "--out", str(tmp_path), timeout=60)
    assert rc == 1
    assert err.count("--batch-size 63 is the global batch and does not divide by the 2 ranks") == 1, err
    assert not (tmp_path / CHECKPOINT).exists()


# Each rank writes its own file: two ranks printing at once may interleave on the launcher's stdout.
SETTINGS_CHECK = """
import os, sys
from cnnkit.parallel import DataParallel, ParallelError, world
comm = world()
name = os.path.join(sys.argv[1], f"rank{os.getpid()}.txt")
if comm is None:
    message = "single process"
else:
    try:
        DataParallel(comm, 64, {"seed": comm.rank})
        message = "accepted"
    except ParallelError as e:
        message = f"rank {comm.rank}: {e}"
with open(name, "w") as f:
    f.write(message)
"""


def said(folder: Path) -> list[str]:
    return sorted(p.read_text() for p in folder.glob("rank*.txt"))


def test_ranks_with_different_settings_are_refused_and_cnnkit_mpi_0_opts_out(tmp_path):
    (tmp_path / "mpi").mkdir()
    (tmp_path / "single").mkdir()
    rc, out, err = finish(launch(2, "-c", SETTINGS_CHECK, str(tmp_path / "mpi")), timeout=60)
    assert rc == 0, err
    assert said(tmp_path / "mpi") == [
        f"rank {r}: ranks [{1 - r}] were started with other settings than rank {r}; one data-parallel run needs "
        "the same settings on every rank (set CNNKIT_MPI=0 to run one independent training per rank instead)"
        for r in (0, 1)]
    rc, out, err = finish(launch(2, "-c", SETTINGS_CHECK, str(tmp_path / "single"), CNNKIT_MPI="0"), timeout=60)
    assert rc == 0 and said(tmp_path / "single") == ["single process"] * 2, err


def test_batch_norm_statistics_averaged_over_ranks_match_one_process(tmp_path):
    rc, _, err = finish(launch(2, str(HERE / "bn_stats.py"), str(tmp_path / "bn.npz")), timeout=60)
    assert rc == 0, err
    r = np.load(tmp_path / "bn.npz")
    # the mean of equal shards' means is the global mean, and the running average is linear
    np.testing.assert_allclose(r["mean"], r["single_mean"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(r["mean"], r["own_mean"].mean(0), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(r["var"], r["own_var"].mean(0), rtol=1e-6)
    assert not np.allclose(r["own_mean"][0], r["own_mean"][1], rtol=0.1)  # the shards really differ
    # the variances, computed here from the conv outputs: per shard (what ranks average, as
    # DDP without SyncBN) and over the whole batch (one process); momentum 0.1, 3 steps
    import cnnkit as ck
    ck.manual_seed(0)
    conv = ck.Conv2D(3, 4, 3, padding=1)
    per_shard, whole = np.ones(4), np.ones(4)
    for X in r["X"]:
        Z = conv.forward(X).astype(np.float64)
        halves = [Z[:8], Z[8:]]
        shard_var = np.mean([h.var(axis=(0, 2, 3), ddof=1) for h in halves], axis=0)
        per_shard = 0.9 * per_shard + 0.1 * shard_var
        whole = 0.9 * whole + 0.1 * Z.var(axis=(0, 2, 3), ddof=1)
    np.testing.assert_allclose(r["var"], per_shard, rtol=1e-4)
    np.testing.assert_allclose(r["single_var"], whole, rtol=1e-4)
    assert np.all(r["single_var"] > r["var"])  # the spread between the shards' means: law of total variance


def kill_at_step(proc: subprocess.Popen, run_dir: Path, target: int) -> None:
    """SIGKILL every rank and the launcher once a checkpoint exists and target steps are logged."""
    deadline = time.monotonic() + 90
    while not ((run_dir / CHECKPOINT).exists() and steps_logged(run_dir) >= target):
        assert proc.poll() is None, f"the run ended before step {target}: {proc.communicate()}"
        assert time.monotonic() < deadline, "no progress"
        time.sleep(0.002)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)


@pytest.mark.slow
def test_a_two_rank_checkpoint_resumes_on_three_ranks(tmp_path, tmp_path_factory):
    args = ["--epochs", "1", "--batch-size", "48", "--seed", "3", "--quiet"]  # 48 splits over 1, 2 and 3 ranks
    ref = tmp_path_factory.mktemp("ref48")
    train_one_process(*args, "--out", str(ref))  # 27 steps: 26 of 48, then 47 (16 + 16 + 15 on 3 ranks)
    proc = launch(2, "-m", "cnnkit.cli", "train", *args, "--checkpoint-every", "9", "--out", str(tmp_path))
    kill_at_step(proc, tmp_path, random.randrange(10, 24))
    assert load_checkpoint(tmp_path / CHECKPOINT).step in (9, 18)
    rc, _, err = train(3, "--out", str(tmp_path), "--resume", "--quiet", timeout=120)
    assert rc == 0, err
    assert json.loads((tmp_path / "config.json").read_text())["ranks"] == 3
    assert "2 x 24" not in err and "global batch 48 = 3 x 16" in err
    final = load_checkpoint(tmp_path / CHECKPOINT)
    assert final.step == 27
    assert_close_weights(final.model_state, weights(ref))
