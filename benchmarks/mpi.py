"""Data-parallel training over MPI: images/s on 1 and 2 ranks, and what the Allreduce costs.

Part 1 runs training steps (forward, softmax loss, backward, the one gradient Allreduce,
Adam update: what ``cnnkit train`` does per step) with one BLAS thread per rank, on
the notes' CIFAR-10 net (32x32x3, global batch 64) and on ResNet-18 at 64x64 (global
batches of 32, 64 and 128: 16, 32 and 64 images per rank on 2 ranks, so the Allreduce's
share of a step shrinks from case to case). The global batch stays the same on 2 ranks (as ``--batch-size`` does), so each
rank does half the work; scaling efficiency = images/s on 2 ranks / (2 x images/s on 1).
The Allreduce share counts the time from a rank entering the step's Allreduce to its end,
waiting for the slower rank included.

Part 2 times one in-place Allreduce of the gradients of ResNet-50 and VGG-16 (float32) on
2 ranks here (shared memory), then applies the ring-allreduce cost model to a cluster:
each of p ranks sends and receives 2 (p - 1) / p of the S gradient bytes, so one
Allreduce takes T = 2 (p - 1) / p * S / bandwidth + 2 (p - 1) * latency; with no overlap of
communication and computation (cnnkit reduces after backward), efficiency =
compute / (compute + T).

    python benchmarks/mpi.py                 # launches itself with the venv's mpiexec
    python benchmarks/mpi.py --steps 3 --repeat 1 --skip-resnet
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

CASES = {  # name: (model, input (C, H, W), global batch)
    "cifar10": ("cifar10", (3, 32, 32), 64),
    "resnet18@64": ("resnet18", (3, 64, 64), 32),
    # 32 images per rank on 2 ranks: the per-worker batch of Goyal et al. (2017), whose
    # ResNet runs scale a global batch with the workers
    "resnet18@64/b64": ("resnet18", (3, 64, 64), 64),
    # 64 per rank: a 64x64 image is 1/12 of a 224x224 one, so this is the per-rank work of
    # about 5 images at 224 (downsampled-ImageNet training runs use global batches of 128+)
    "resnet18@64/b128": ("resnet18", (3, 64, 64), 128),
}
# multiply-adds of one forward pass at 224x224 (He et al. 2016, Table 1; VGG-16 from the same
# table's comparison), used to turn a measured rate into the compute time of a larger net
MACS_224 = {"resnet18": 1.8e9, "resnet50": 3.8e9, "vgg16": 15.3e9}
LATENCY = 5e-6  # seconds per message on a cluster network (typical for Ethernet/IB with MPI)
ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


# --- the worker: runs on every rank under mpiexec ------------------------------------

def worker(case: str, steps: int) -> None:
    import cnnkit as ck
    from cnnkit import models
    from cnnkit.optim import Adam
    from cnnkit.parallel import DataParallel, world

    ck.set_num_threads(1)
    comm = world()
    model, shape, batch = CASES[case]
    ck.manual_seed(0)
    net = models.get(model, num_classes=10, input_size=shape)
    net.input_grad = False
    opt = Adam(net, lr=1e-3)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((batch, *shape)).astype(np.float32)
    y = rng.integers(0, 10, size=batch)
    dp = None if comm is None else DataParallel(comm, batch)

    def step() -> None:
        if dp is None:  # one process: the trainer's own path, no MPI
            _, dscores = ck.softmax_loss(net.forward(X), y)
            net.backward(dscores)
        else:
            dp.step(net, dp.shard(X), dp.shard(y), batch)
        opt.step()

    step()  # warm-up: workspaces, the flat buffer
    if dp is not None:
        comm.barrier()
        dp.allreduce_seconds = 0.0
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = time.perf_counter() - t0
    result = {"case": case, "ranks": 1 if comm is None else comm.size, "images_per_s": steps * batch / seconds,
              "step_s": seconds / steps, "params": net.num_params()}
    if dp is not None:
        result["allreduce_share"] = dp.allreduce_seconds / seconds
        flat = np.ones(net.num_params(), np.float32)
        result["allreduce_s"] = min(_timed_sum(comm, flat) for _ in range(3))
    if comm is None or comm.rank == 0:
        print("RESULT " + json.dumps(result), flush=True)


def _timed_sum(comm, flat: np.ndarray) -> float:
    comm.barrier()  # time the transfer alone, not the wait for the other rank
    t0 = time.perf_counter()
    comm.sum_(flat)
    return time.perf_counter() - t0


def allreduce_worker(sizes: list[int]) -> None:
    from cnnkit.parallel import world

    comm = world()
    out = {}
    for n in sizes:
        flat = np.ones(n, np.float32)
        out[n] = min(_timed_sum(comm, flat) for _ in range(3))
        del flat
    if comm.rank == 0:
        print("RESULT " + json.dumps(out), flush=True)


# --- the driver -----------------------------------------------------------------------

def launch(ranks: int, *args: str, timeout: float = 900) -> dict:
    mpiexec = Path(sys.executable).with_name("mpiexec")
    cmd = [str(mpiexec), "-n", str(ranks), sys.executable, "-m", "mpi4py", __file__, *args]
    env = {**os.environ, **ENV, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return json.loads(lines[-1][len("RESULT "):])


def ring_seconds(nbytes: float, ranks: int, gbit_per_s: float) -> float:
    """Ring allreduce: 2 (p-1)/p * S / bandwidth + 2 (p-1) * latency."""
    return 2 * (ranks - 1) / ranks * nbytes / (gbit_per_s * 1e9 / 8) + 2 * (ranks - 1) * LATENCY


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8, help="timed steps per run (default 8)")
    parser.add_argument("--repeat", type=int, default=2,
                        help="runs of each case, alternating 1 and 2 ranks; the fastest counts (default 2)")
    parser.add_argument("--skip-resnet", action="store_true", help="only the CIFAR-10 net")
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES),
                        help="the cases to run (default: all)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--allreduce", nargs="*", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.steps)
    if args.allreduce:
        return allreduce_worker(args.allreduce)

    print(f"one BLAS thread per rank; {os.cpu_count()} cores on this machine, load average "
          f"{os.getloadavg()[0]:.1f}; global batch the same on 1 and 2 ranks; fastest of {args.repeat} runs")
    print(f"{'net':<15} {'ranks':>5} {'images/s':>9} {'step ms':>8} {'efficiency':>10} {'allreduce':>9} "
          f"{'pure allreduce':>15}")
    rate_macs = None
    for case in args.cases:
        if args.skip_resnet and case != "cifar10":
            continue
        # alternate, keep the fastest of each: on a shared machine other jobs only ever slow a run down
        runs = {1: [], 2: []}
        for _ in range(args.repeat):
            for ranks in (1, 2):
                runs[ranks].append(launch(ranks, "--worker", case, "--steps", str(args.steps)))
        one, two = (max(runs[r], key=lambda res: res["images_per_s"]) for r in (1, 2))
        eff = two["images_per_s"] / (2 * one["images_per_s"])
        mb = two["params"] * 4 / 1e6
        print(f"{case:<15} {1:>5} {one['images_per_s']:>9.1f} {one['step_s'] * 1e3:>8.1f}")
        print(f"{case:<15} {2:>5} {two['images_per_s']:>9.1f} {two['step_s'] * 1e3:>8.1f} {eff:>10.1%} "
              f"{two['allreduce_share']:>9.1%} {two['allreduce_s'] * 1e3:>7.1f} ms/{mb:.1f} MB")
        if case == "resnet18@64":  # multiply-adds per second of one rank, from the 1-rank run
            rate_macs = one["images_per_s"] * 3 * MACS_224["resnet18"] * (64 / 224) ** 2

    from cnnkit import models
    sizes = {name: models.get(name, num_classes=1000, input_size=(3, 224, 224)).num_params()
             for name in ("resnet50", "vgg16")}
    here = launch(2, "--allreduce", *map(str, sizes.values()))
    print("\nAllreduce of all gradients (float32), measured on 2 ranks here, and the ring model for a cluster")
    print(f"(latency {LATENCY * 1e6:.0f} us per message; no overlap with backward; per-rank batch 32 at 224x224"
          + (f"; compute at the rate measured for ResNet-18 here, {rate_macs / 1e9:.1f} GMAC/s per rank)"
             if rate_macs else ")"))
    for name, n in sizes.items():
        nbytes = n * 4
        print(f"\n{name}: {n:,} parameters = {nbytes / 1e6:.0f} MB; 2 ranks here: "
              f"{here[str(n)] * 1e3:.0f} ms ({nbytes / here[str(n)] / 1e9:.2f} GB/s)")
        compute = 32 * 3 * MACS_224[name] / rate_macs if rate_macs else None
        if compute:
            print(f"  compute of one step (3 x forward multiply-adds): {compute:.1f} s per rank")
        for gbit in (10, 100):
            cells = []
            for p in (2, 8, 64):
                t = ring_seconds(nbytes, p, gbit)
                cell = f"p={p}: {t * 1e3:.0f} ms"
                if compute:
                    cell += f" ({compute / (compute + t):.1%})"
                cells.append(cell)
            limit = ring_seconds(nbytes, 64, gbit)
            print(f"  {gbit:>3} Gb/s: " + ", ".join(cells) + f"; 85% efficiency on 64 ranks needs "
                  f">= {limit * 0.85 / 0.15:.2f} s of compute per step")


if __name__ == "__main__":
    main()
