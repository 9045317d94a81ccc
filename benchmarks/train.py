"""Images per second of one training step of the notes' CIFAR-10 net: cnnkit vs PyTorch on the CPU.

The net is ``INPUT[32x32x3] -> [[CONV3-32 -> RELU]*2 -> POOL2]*2 -> FC512 -> RELU -> FC10``;
a step is forward, softmax loss, backward and a plain SGD update, on a batch of 64. Both
run in this process with the same thread count (``cnnkit.set_num_threads``,
``torch.set_num_threads``), PyTorch starting from cnnkit's initial weights.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/train.py   # see README
    python benchmarks/train.py --steps 5 --threads 1

On machines where OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE are set to work around old
OpenBLAS bugs they also slow a current NumPy down: unset both for this command alone.

The step and its timing live in cnnkit.bench (``cnnkit bench train``); this script
prints their figures as it always has.
"""

from __future__ import annotations

import argparse
import os

from cnnkit.bench import CIFAR_SPEC as SPEC
from cnnkit.bench import run_train
from cnnkit.bench.timing import set_threads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per framework (median reported)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="threads for both (default: all cores)")
    args = parser.parse_args()

    set_threads(args.threads, torch_too=True)   # cnnkit's threads for CONV/FC, BLAS on one thread inside
    r = run_train(args.batch, args.steps)
    ck_ms, t_ms = r.cnnkit_ms, r.torch_ms
    print(f"net: {SPEC}")
    print(f"batch {args.batch}, {args.threads} threads (cnnkit.set_num_threads and torch), median of {args.steps} steps; "
          f"first loss cnnkit {r.cnnkit_loss:.5f} vs torch {r.torch_loss:.5f}")
    print(f"{'':10}{'ms/step':>10}{'images/s':>12}")
    print(f"{'cnnkit':10}{ck_ms:>10.1f}{args.batch / ck_ms * 1e3:>12.0f}")
    print(f"{'pytorch':10}{t_ms:>10.1f}{args.batch / t_ms * 1e3:>12.0f}")
    print(f"ratio cnnkit / pytorch images/s: {t_ms / ck_ms:.2f} (PyTorch is {ck_ms / t_ms:.1f}x faster)")


if __name__ == "__main__":
    main()
