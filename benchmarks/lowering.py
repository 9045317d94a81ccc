"""Why cnnkit's CONV lowers im2col in cache-sized blocks instead of once per call.

The notes lower a whole batch into one X_col and run one GEMM. For 32 images of
56x56x64 and F=3 that X_col is 231 MB, far beyond any cache: writing it and reading it
back costs as much as the arithmetic. cnnkit cuts the same lowering into blocks of whole
images (or bands of rows) of at most ``cnnkit.engine(block_bytes=...)`` (8 MB) and runs
one GEMM per block, while the block is still in cache. A block budget above the size of X_col
gives exactly the notes' recipe (one lowering and one GEMM per call and thread), so this
script times both on the same layer and prints the ratio.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/lowering.py   # see README
    python benchmarks/lowering.py --threads 1 --batch 8

On machines where OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE are set to work around old
OpenBLAS bugs they also slow a current NumPy down: unset both for this command alone.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

import cnnkit as ck
from cnnkit.layers import Options, release_workspace
from cnnkit.layers.kernels.blocked import blocks as cut_blocks

CASES = [  # (name, C, K, H, F, padding): the notes-sized layers that the block size matters for
    ("conv 64->64 3x3 p1 @56x56", 64, 64, 56, 3, 1),
    ("conv 256->256 3x3 p1 @28x28", 256, 256, 28, 3, 1),
]


def best(fn, seconds=1.0, repeat=3):
    fn()
    times, start = [], time.perf_counter()
    while len(times) < repeat or time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    ck.set_num_threads(args.threads)
    print(f"threads={args.threads} batch={args.batch} numpy {np.__version__}  "
          f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '')!r} OPENBLAS_L2_SIZE={os.environ.get('OPENBLAS_L2_SIZE', '')!r}")
    print(f"{'case':<30} {'lowering':<26} {'GEMMs':>5} {'X_col MB':>8} {'fwd ms':>8} {'f+b ms':>8}")
    rng = np.random.default_rng(0)
    blocked = Options().block_bytes
    for name, C, K, H, F, P in CASES:
        x = rng.standard_normal((args.batch, C, H, H), dtype=np.float32)
        layer = ck.Conv2D(C, K, F, padding=P)
        dout = rng.standard_normal((args.batch, K, H, H), dtype=np.float32)
        row_bytes = H * F * F * C * 4
        whole = args.batch * H * row_bytes
        rows = {}
        for label, budget in (("blocks (cnnkit)", blocked), ("one X_col per call (notes)", 2 * whole)):
            release_workspace()
            with ck.engine(block_bytes=budget):
                blocks = cut_blocks(args.batch, H, row_bytes, args.threads)
                largest = max((n1 - n0) * (h1 - h0) for n0, n1, h0, h1 in blocks) * row_bytes

                def fwd_bwd(layer=layer, x=x, dout=dout):
                    layer.train().forward(x)
                    layer.backward(dout)

                fwd = best(lambda layer=layer, x=x: layer.eval().forward(x))
                rows[label] = (fwd, best(fwd_bwd))
            print(f"{name:<30} {label:<26} {len(blocks):>5} {largest / 2**20:>8.1f} "
                  f"{rows[label][0] * 1e3:>8.1f} {rows[label][1] * 1e3:>8.1f}", flush=True)
        (bf, bb), (of, ob) = rows.values()
        print(f"{'':<30} {'one X_col / blocks':<26} {'':>5} {'':>8} {of / bf:>7.2f}x {ob / bb:>7.2f}x")
        release_workspace()


if __name__ == "__main__":
    main()
