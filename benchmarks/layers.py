"""Time cnnkit's layers against torch.nn.functional in the same process and thread count.

Prints, per case, milliseconds for forward and forward+backward (the best of many calls of
each), GFLOP/s and the ratio cnnkit / PyTorch (below 1.0
means cnnkit is faster).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/layers.py   # see README
    python benchmarks/layers.py --quick --cases "conv 64"

On machines where OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE are set to work around old
OpenBLAS bugs they also slow a current NumPy down: unset both for this command alone.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

import cnnkit as ck


def conv_case(name, N, C, K, H, F, S=1, P=0, D=1):
    flops = 2 * N * K * C * F * F * ((H + 2 * P - D * (F - 1) - 1) // S + 1) ** 2
    return dict(name=name, kind="conv", shape=(N, C, H, H), layer=lambda: ck.Conv2D(C, K, F, S, P, D),
                torch=lambda F_, x, l: F_.conv2d(x, t(l.params["weight"]), t(l.params["bias"]), S, P, D),
                flops=flops)


def pool_case(name, N, C, H, F, S):
    return dict(name=name, kind="pool", shape=(N, C, H, H), layer=lambda: ck.MaxPool2D(F, S, rounding="floor"),
                torch=lambda F_, x, l: F_.max_pool2d(x, F, S), flops=0)


def fc_case(name, N, D, K):
    return dict(name=name, kind="fc", shape=(N, D), layer=lambda: ck.FC(D, K),
                torch=lambda F_, x, l: F_.linear(x, t(l.params["weight"]), t(l.params["bias"])),
                flops=2 * N * D * K)


CASES = [
    conv_case("conv 3->16 5x5 p2 @32x32", 32, 3, 16, 32, 5, P=2),
    conv_case("conv 64->64 3x3 p1 @56x56", 32, 64, 64, 56, 3, P=1),
    conv_case("conv 256->256 3x3 p1 @28x28", 32, 256, 256, 28, 3, P=1),
    conv_case("conv 3->96 11x11 s4 @227x227", 32, 3, 96, 227, 11, S=4),
    conv_case("conv 256->64 1x1 @28x28", 32, 256, 64, 28, 1),
    conv_case("conv 64->64 3x3 d2 p2 @56x56", 32, 64, 64, 56, 3, P=2, D=2),
    pool_case("maxpool 2/2 64x112x112", 32, 64, 112, 2, 2),
    pool_case("maxpool 3/2 64x112x112", 32, 64, 112, 3, 2),
    fc_case("fc 25088->4096", 32, 25088, 4096),
]


def t(a):
    import torch
    return torch.from_numpy(np.ascontiguousarray(a))


def best_of(fn, repeat, min_seconds=0.5):
    """Best time of fn called back to back, as a training loop calls it: at least
    `repeat` calls, and more until min_seconds have passed (hundreds for the short
    cases, whose single calls this shared machine makes noisy). The libraries are not
    interleaved: PyTorch's OpenMP threads spin for a while after each call and would
    take the cores from whatever runs next."""
    fn()  # warm up caches and allocators
    best, start, calls = float("inf"), time.perf_counter(), 0
    while calls < repeat or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
        calls += 1
    return best


def run_case(case, repeat):
    import torch
    import torch.nn.functional as F_

    rng = np.random.default_rng(0)
    x = rng.standard_normal(case["shape"], dtype=np.float32)
    layer = case["layer"]()
    out = layer.forward(x)
    dout = rng.standard_normal(out.shape, dtype=np.float32)

    def ck_fwd():
        layer.eval().forward(x)

    def ck_fwd_bwd():
        layer.train().forward(x)
        layer.backward(dout)

    xt = torch.from_numpy(x)
    dt = torch.from_numpy(dout)
    params = [torch.from_numpy(np.ascontiguousarray(p)).requires_grad_() for p in layer.params.values()]

    def torch_fwd():
        with torch.no_grad():
            case["torch"](F_, xt, layer)

    def torch_fwd_bwd():
        xg = xt.detach().requires_grad_()
        if case["kind"] == "pool":
            y = F_.max_pool2d(xg, *layer.kernel_size[:1], layer.stride[0])
        else:
            y = _torch_with(case, F_, xg, params)
        y.backward(dt)

    rows = []
    for label, mine, theirs in (("fwd", ck_fwd, torch_fwd), ("fwd+bwd", ck_fwd_bwd, torch_fwd_bwd)):
        a, b = best_of(mine, repeat), best_of(theirs, repeat)
        flops = case["flops"] * (1 if label == "fwd" else 3)
        gflops = f"{flops / a / 1e9:7.1f}" if flops else "      -"
        rows.append(f"{case['name']:<32} {label:<8} {a * 1e3:9.2f} {b * 1e3:9.2f} {gflops} {a / b:7.2f}")
    return rows


def _torch_with(case, F_, xg, params):
    layer = case["layer_obj"]
    if case["kind"] == "conv":
        return F_.conv2d(xg, params[0], params[1], layer.stride, layer.padding, layer.dilation)
    return F_.linear(xg, params[0], params[1])


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
    for case in CASES:
        if args.cases and args.cases not in case["name"]:
            continue
        case["layer_obj"] = case["layer"]()
        case["layer"] = lambda c=case: c["layer_obj"]
        for row in run_case(case, 2 if args.quick else args.repeat):
            print(row, flush=True)


if __name__ == "__main__":
    main()
