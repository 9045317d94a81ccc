"""Time cnnkit's layers against torch.nn.functional in the same process and thread count.

Prints, per case, milliseconds for forward and forward+backward (the best of many calls of
each), GFLOP/s and the ratio cnnkit / PyTorch (below 1.0
means cnnkit is faster).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/layers.py   # see README
    python benchmarks/layers.py --quick --cases "conv 64"

On machines where OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE are set to work around old
OpenBLAS bugs they also slow a current NumPy down: unset both for this command alone.

The cases and the timing live in cnnkit.bench (``cnnkit bench layers`` runs these and
more, with %peak); this script prints their table as it always has.
"""

from __future__ import annotations

import argparse
import os

import numpy as np

import cnnkit as ck
from cnnkit.bench import SCRIPT_CASES, run_layer_case


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="2 repeats")
    parser.add_argument("--cases", default="", help="substring filter on case names")
    args = parser.parse_args()
    import threadpoolctl
    import torch

    threads = int(os.environ.get("CNNKIT_BENCH_THREADS", os.cpu_count() or 1))
    torch.set_num_threads(threads)
    threadpoolctl.threadpool_limits(threads)
    blas = threadpoolctl.threadpool_info()
    ck.set_num_threads(threads)   # cnnkit's threads for CONV/FC, BLAS on one thread inside
    kernels = ", ".join(f"{i['internal_api']} {i.get('architecture', '')}".strip() for i in blas if i["user_api"] == "blas")
    print(f"threads={threads} (torch.set_num_threads, cnnkit.set_num_threads)  torch {torch.__version__}  numpy {np.__version__}  BLAS: {kernels}")
    print(f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '')!r} OPENBLAS_L2_SIZE={os.environ.get('OPENBLAS_L2_SIZE', '')!r}")
    print(f"{'case (batch 32)':<32} {'pass':<8} {'cnnkit ms':>9} {'torch ms':>9} {'GFLOP/s':>7} {'ratio':>7}")
    for case in SCRIPT_CASES:
        if args.cases and args.cases not in case.name:
            continue
        for r in run_layer_case(case, 2 if args.quick else args.repeat):
            gflops = f"{r.gflops():7.1f}" if r.flops else "      -"
            print(f"{r.case:<32} {r.pass_:<8} {r.cnnkit_s * 1e3:9.2f} {r.torch_s * 1e3:9.2f} {gflops} {r.ratio:7.2f}",
                  flush=True)


if __name__ == "__main__":
    main()
