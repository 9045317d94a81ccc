"""Winograd F(2x2, 3x3) and F(4x4, 3x3) against blocked im2col and PyTorch, layer by layer.

The rule (``cnnkit.layers.kernels.conv_lowering``) picks F(2x2, 3x3) for 3x3 stride-1
CONVs of at least 64 input and output channels with at least max(D1, K)/4 tiles per image;
this script shows why: per case, forward and forward+backward ms of PyTorch and of each
lowering forced with ``cnnkit.engine(conv=...)``, their ratios to PyTorch, and the
largest output difference relative to blocked im2col's.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/winograd.py
    python benchmarks/winograd.py --batch 8 --lowerings blocked,winograd2

On machines where OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE are set to work around old
OpenBLAS bugs they also slow a current NumPy down: unset both for this command alone.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import cnnkit as ck

CASES = [  # (D1, K, H = W): ResNet's and VGG's 3x3 layers, and the CIFAR net's narrow one
    (64, 64, 56), (128, 128, 28), (256, 256, 28), (256, 256, 14), (512, 512, 7), (32, 32, 32),
]


def best_ms(fn, calls: int = 5, seconds: float = 0.5) -> float:
    fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < calls or time.perf_counter() - start < seconds:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--lowerings", default="blocked,winograd2,winograd4")
    args = parser.parse_args()
    import torch

    ck.set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    lowerings = args.lowerings.split(",")
    print(f"batch {args.batch}, {args.threads} threads; ms forward / forward+backward, (ratio to PyTorch)")
    for C, K, H in CASES:
        print(f"{C}->{K} @{H}x{H}: " + " | ".join(case(C, K, H, args.batch, lowerings)), flush=True)


def case(C: int, K: int, H: int, batch: int, lowerings: list[str]) -> list[str]:
    """One layer's cells: PyTorch, then each lowering."""
    import torch

    rng = np.random.default_rng(0)
    conv = ck.Conv2D(C, K, 3, padding=1)
    x = rng.standard_normal((batch, C, H, H)).astype(np.float32)
    d = rng.standard_normal((batch, K, H, H)).astype(np.float32)
    xt = torch.from_numpy(x).requires_grad_(True)
    wt = torch.from_numpy(conv.params["weight"].copy()).requires_grad_(True)
    bt = torch.from_numpy(conv.params["bias"].copy()).requires_grad_(True)
    dt = torch.from_numpy(d)

    def torch_forward() -> None:
        with torch.no_grad():
            torch.nn.functional.conv2d(xt, wt, bt, padding=1)

    def torch_both() -> None:
        torch.nn.functional.conv2d(xt, wt, bt, padding=1).backward(dt)

    ref = (best_ms(torch_forward), best_ms(torch_both))
    cells = [f"torch {ref[0]:.1f} / {ref[1]:.1f}"]
    exact = None
    for name in lowerings:
        with ck.engine(conv=name):
            out = conv.forward(x)
            ms = (best_ms(lambda: conv.forward(x)), best_ms(lambda: (conv.forward(x), conv.backward(d))))
        exact = out if exact is None else exact
        err = float(np.abs(out - exact).max() / np.abs(exact).max())
        cells.append(f"{name} {ms[0]:.1f} / {ms[1]:.1f} ({ms[0] / ref[0]:.2f}x / {ms[1] / ref[1]:.2f}x, "
                     f"diff {err:.0e})")
    return cells

if __name__ == "__main__":
    main()
