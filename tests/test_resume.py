"""Stopping and resuming `cnnkit train` for real: SIGKILL and Ctrl-C (SIGINT) at a random step.

Each run is a subprocess with one BLAS/OpenMP thread, so the uninterrupted run and the
stopped-then-resumed one do the same arithmetic; their final weights must be equal bit for bit.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import warnings

import pytest

from cnnkit.checkpoint import load_checkpoint
from cnnkit.train import CHECKPOINT, read_metrics

# the default ConvNet, 2 epochs of 41 steps, a checkpoint every 7 steps, augmentation on:
# slow enough (about 15 ms a step) to be stopped anywhere in the middle
ARGS = ["--epochs", "2", "--batch-size", "32", "--checkpoint-every", "7", "--augment", "--seed", "5", "--quiet"]
TOTAL_STEPS = 82
ENV = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def cnnkit_train(*args, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "cnnkit.cli", "train", *args], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def steps_logged(run_dir) -> int:
    try:
        return (run_dir / "metrics.jsonl").read_text().count('"kind": "step"')
    except FileNotFoundError:
        return 0


def stop_at_random_step(run_dir, sig: int) -> tuple[subprocess.Popen, int, str]:
    """Start a run, wait until its first checkpoint exists and a random step is logged, send sig."""
    target = random.randrange(8, TOTAL_STEPS - 10)
    proc = cnnkit_train(*ARGS, "--out", str(run_dir))
    deadline = time.monotonic() + 60
    while not ((run_dir / CHECKPOINT).exists() and steps_logged(run_dir) >= target):
        assert proc.poll() is None, f"the run ended before step {target}: {proc.communicate()}"
        assert time.monotonic() < deadline
        time.sleep(0.001)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    return proc, target, err


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    proc = cnnkit_train(*ARGS, "--out", str(run_dir))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "test accuracy:" in out
    return load_checkpoint(run_dir / CHECKPOINT)


def assert_same_bits(a, b):
    for state_a, state_b in ((a.model_state, b.model_state), (a.optimizer_state, b.optimizer_state)):
        assert state_a.keys() == state_b.keys()
        for k in state_a:
            assert state_a[k].tobytes() == state_b[k].tobytes(), k


def resume(run_dir) -> None:
    """The same command line with --resume appended; afterwards the log holds every step once."""
    proc = cnnkit_train(*ARGS, "--out", str(run_dir), "--resume")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "test accuracy:" in out
    assert "Traceback" not in err and all(line.startswith("cnnkit train: warning: ") for line in err.splitlines())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the resumed run left no torn line behind
        records = read_metrics(run_dir / "metrics.jsonl")
    assert [r["step"] for r in records if r["kind"] == "step"] == list(range(1, TOTAL_STEPS + 1))
    assert [r["epoch"] for r in records if r["kind"] == "epoch"] == [1, 2]


@pytest.mark.slow
def test_sigkill_at_a_random_step_then_resume_gives_the_same_weights(uninterrupted, tmp_path):
    proc, target, _ = stop_at_random_step(tmp_path, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    saved = load_checkpoint(tmp_path / CHECKPOINT)  # whatever the kill interrupted, the file is whole
    assert 7 <= saved.step < TOTAL_STEPS, (target, saved.step)
    resume(tmp_path)
    final = load_checkpoint(tmp_path / CHECKPOINT)
    assert final.step == TOTAL_STEPS and final.epoch == 2
    assert_same_bits(final, uninterrupted)


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_and_exits_cleanly_then_resumes_exactly(uninterrupted, tmp_path):
    proc, target, err = stop_at_random_step(tmp_path, signal.SIGINT)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("cnnkit train: interrupted at step")
    assert "--resume" in err
    saved = load_checkpoint(tmp_path / CHECKPOINT)
    assert saved.step >= target  # saved at the step it stopped at, not at the last periodic checkpoint
    assert f"interrupted at step {saved.step} " in err
    resume(tmp_path)
    assert_same_bits(load_checkpoint(tmp_path / CHECKPOINT), uninterrupted)
