"""Run `cnnkit train` on one rank of an MPI job with a failure injected on rank 1 (tests only).

    mpiexec -n 2 python -m mpi4py tests/parallel/inject.py MODE STEP -- TRAIN ARGS...

MODE: raise (an exception in the loss of step STEP), kill (SIGKILL there), hang (sleep
there for 60 s, as a rank on a lost node would stay silent) or save (an exception while
writing the checkpoint after step STEP, outside the step's Allreduce).
The moment of the failure is printed as ``injected at <time.time()>`` on stderr.
"""

from __future__ import annotations

import os
import signal
import sys
import time

from mpi4py import MPI

from cnnkit.cli import main
from cnnkit.parallel import replicas
from cnnkit.train import Trainer

mode, step, args = sys.argv[1], int(sys.argv[2]), sys.argv[sys.argv.index("--") + 1:]
rank = MPI.COMM_WORLD.Get_rank()


def fail(what: str) -> None:
    print(f"injected at {time.time():.3f}: {what} on rank {rank}", file=sys.stderr, flush=True)
    if mode == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if mode == "hang":
        time.sleep(60)
    raise RuntimeError(f"injected failure ({what})")


if rank == 1 and mode in ("raise", "kill", "hang"):
    calls = 0
    real_loss = replicas.softmax_loss

    def softmax_loss(scores, y):
        global calls
        calls += 1
        if calls == step:
            fail(f"step {step}")
        return real_loss(scores, y)

    replicas.softmax_loss = softmax_loss

if rank == 1 and mode == "save":
    real_save = Trainer.save

    def save(self, epoch_rng_state):
        if self.optimizer.steps >= step:
            fail(f"checkpoint after step {self.optimizer.steps}")
        return real_save(self, epoch_rng_state)

    Trainer.save = save

sys.exit(main(["train", *args]))
