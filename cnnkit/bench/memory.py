"""Peak memory of a training step, cnnkit against PyTorch, each side in a fresh process.

A child process (``python -m cnnkit.bench.memory SIDE MODEL BATCH SIZE THREADS``) builds
the network and a batch, notes its resident set (``setup``: code, weights, batch; with
cnnkit[fast] its compiled loops loaded), resets
the kernel's high-water mark (/proc/self/clear_refs, Linux) and runs two SGD steps
(forward, softmax loss, backward, update); ``peak`` is the resident high-water mark of
those steps and ``step`` = peak - setup is what a training step adds, the figure the
ratio compares (the libraries' own code, hundreds of MB for PyTorch, cancels out). On the
cnnkit side tracemalloc also counts every NumPy array alive at the worst moment of a
steady-state step (parameters, gradients, caches, workspaces), as
``cnnkit.summary``'s measurement does, but on the suite's threads.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import tracemalloc
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import BenchError

MB = 1 << 20
#: the model name that means the CIFAR-10 net of the train section
CIFAR = "cifar10-step"


def _status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_bytes() -> int:
    """This process's resident set now (VmRSS); the peak so far where /proc is missing."""
    kb = _status_kb("VmRSS")
    return kb * 1024 if kb is not None else peak_rss_bytes()


def reset_peak_rss() -> bool:
    """Reset the resident high-water mark to the current resident set (Linux >= 4.0);
    False where the kernel doesn't allow it (the peak then counts from process start)."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """The resident high-water mark (VmHWM, since the last reset), else getrusage's."""
    kb = _status_kb("VmHWM")
    if kb is not None:
        return kb * 1024
    import resource
    scale = 1 if sys.platform == "darwin" else 1024   # macOS reports bytes, Linux KiB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def _build(model: str, batch: int, size: int) -> tuple[Any, np.ndarray, np.ndarray]:
    import cnnkit as ck

    from .cases import cifar_net
    if model == CIFAR:
        return cifar_net(batch)
    ck.manual_seed(0)
    net = ck.models.get(model, input_size=size)
    net.input_grad = False
    rng = np.random.default_rng(0)
    X = rng.standard_normal((batch, *net.input_shape), dtype=np.float32)
    y = rng.integers(0, net.output_shape(net.input_shape)[0], batch)
    return net, X, y


def measure(side: str, model: str, batch: int, size: int, threads: int) -> dict[str, Any]:
    """Run in a fresh process: the memory of two training steps of model on one side
    ('cnnkit' or 'torch'), in bytes: setup, peak, step (and cnnkit's tracemalloc)."""
    from .cases import torch_train_step, train_step_functions
    from .timing import set_threads

    set_threads(threads, side == "torch")
    net, X, y = _build(model, batch, size)
    if side == "torch":
        from .twins import torch_twin
        model_t = torch_twin(net)
        del net                    # the cnnkit weights go before the torch side is measured
        gc.collect()
        step = torch_train_step(model_t, X, y)
    else:
        from cnnkit.layers import kernels
        kernels.compiled.warm_up()    # cnnkit[fast]'s loops are the library's code, as PyTorch's is
        step = train_step_functions(net, X, y)
    setup = rss_bytes()
    exact = reset_peak_rss()
    step()
    step()
    result: dict[str, Any] = dict(side=side, model=model, batch=batch, size=size, threads=threads,
                                  setup=setup, peak=peak_rss_bytes(), peak_from_reset=exact)
    result["step"] = result["peak"] - setup
    if side == "cnnkit":
        from cnnkit.layers import release_workspace
        alive = sum(a.nbytes for layer in net.layers() for store in (layer.params, layer.buffers)
                    for a in store.values()) + X.nbytes + y.nbytes
        release_workspace()          # so the traced steps allocate the CONV scratch where it is counted
        tracemalloc.start()
        step()                       # from here on every array the measured step frees was traced
        tracemalloc.reset_peak()
        step()
        result["tracemalloc"] = alive + tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    result["torch_loaded"] = "torch" in sys.modules     # cnnkit's side must not carry PyTorch's libraries
    return result


@dataclass
class MemoryRow:
    """One network's training-step memory on both sides (dicts from ``measure``)."""

    case: str
    batch: int
    cnnkit: dict[str, Any]
    torch: dict[str, Any] | None

    @property
    def ratio(self) -> float | None:
        """cnnkit's step memory over PyTorch's (peak minus setup resident set)."""
        if not self.torch or self.torch["step"] <= 0:
            return None
        return self.cnnkit["step"] / self.torch["step"]

    def as_dict(self) -> dict[str, Any]:
        return dict(case=self.case, batch=self.batch, cnnkit=self.cnnkit, torch=self.torch, ratio=self.ratio)


def run_child(side: str, model: str, batch: int, size: int, threads: int, timeout: float = 1800) -> dict[str, Any]:
    """``measure`` in a fresh Python process; its one line of JSON back as a dict."""
    cmd = [sys.executable, "-m", "cnnkit.bench.memory", side, model, str(batch), str(size), str(threads)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=os.environ.copy())
    except subprocess.TimeoutExpired:
        raise BenchError(f"memory: the {side} process for {model} (batch {batch}) ran past {timeout:.0f} s") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise BenchError(f"memory: the {side} process for {model} (batch {batch}) failed: {last}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def format_memory(rows: list[MemoryRow]) -> str:
    """The memory table in MB: per side setup, peak and step resident set, cnnkit's
    tracemalloc peak, and the ratio of the step figures."""
    width = max([len(r.case) for r in rows] + [20])
    lines = [f"{'case':<{width}} {'batch':>5} {'cnnkit setup':>12} {'peak':>8} {'step':>8} {'tracemalloc':>11} "
             f"{'torch setup':>11} {'peak':>8} {'step':>8} {'ratio':>6}"]
    for r in rows:
        c, t = r.cnnkit, r.torch
        line = (f"{r.case:<{width}} {r.batch:>5} {c['setup'] / MB:>12.1f} {c['peak'] / MB:>8.1f} "
                f"{c['step'] / MB:>8.1f} {c['tracemalloc'] / MB:>11.1f}")
        if t is not None:
            ratio = "-" if r.ratio is None else f"{r.ratio:.2f}"
            line += f" {t['setup'] / MB:>11.1f} {t['peak'] / MB:>8.1f} {t['step'] / MB:>8.1f} {ratio:>6}"
        lines.append(line)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """The child's entry point: measure and print one line of JSON."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 5 or args[0] not in ("cnnkit", "torch"):
        print("usage: python -m cnnkit.bench.memory cnnkit|torch MODEL BATCH SIZE THREADS", file=sys.stderr)
        return 2
    side, model, batch, size, threads = args
    print(json.dumps(measure(side, model, int(batch), int(size), int(threads))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
