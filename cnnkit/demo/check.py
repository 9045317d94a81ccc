"""Check a model typed into the demo page before the server spends memory on it.

A short spec can ask for a huge net ('[CONV3-4096]*50' is 30 GB of weights), and sizes are
only known once the spec is built. So the page's model is built first in a child process
whose address space is capped: a net over budget fails there, with a clear message, and
the server never allocates it. The child answers the parameter count and the estimated
memory of one training step (cnnkit.summary), checked against the demo's limits.

The child runs ``cnnkit.demo.check.main`` with a JSON request on stdin; it prints one JSON
answer: {"ok": true, "params": N, "train_bytes": B} or {"ok": false, "error": message}.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from ..errors import CnnkitError

MAX_SPEC_CHARS = 4000
MAX_PARAMS = 20_000_000          # 80 MB of float32 weights
MAX_TRAIN_BYTES = 2 * 1024 ** 3  # estimated peak of one training step
CHECK_SECONDS = 60


class ModelCheckError(CnnkitError, ValueError):
    """A model the demo will not train: bad spec, wrong sizes, or over the demo's budget."""


def check_model(model: str, input_shape: tuple[int, ...], num_classes: int, batch_size: int, *,
                max_params: int = MAX_PARAMS, max_train_bytes: int = MAX_TRAIN_BYTES,
                timeout: float = CHECK_SECONDS) -> dict:
    """Build model (zoo name or spec) for images (C, H, W) in a memory-capped child process.

    Returns {"params": N, "train_bytes": B}; raises ModelCheckError with the build's own
    message (a SpecError keeps its caret) or the budget that was exceeded.
    """
    if not isinstance(model, str) or not model.strip():
        raise ModelCheckError("the model is empty: type a spec such as INPUT[8x8x1] -> CONV3-8 -> RELU -> FC10")
    if len(model) > MAX_SPEC_CHARS:
        raise ModelCheckError(f"the spec is {len(model)} characters; the demo takes at most {MAX_SPEC_CHARS}")
    request = {"model": model, "input_shape": list(input_shape), "num_classes": int(num_classes),
               "batch_size": int(batch_size), "max_params": int(max_params),
               "max_train_bytes": int(max_train_bytes)}
    root = str(Path(__file__).resolve().parents[2])  # the folder holding the cnnkit package
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    try:
        proc = subprocess.run([sys.executable, "-c", "from cnnkit.demo.check import main; main()"],
                              input=json.dumps(request), check=False,
                              capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        raise ModelCheckError(f"building the model took over {timeout:.0f} s; the demo wants a smaller net") from None
    try:
        answer = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        # killed by the memory cap before it could answer (or crashed): never echo its stderr
        raise ModelCheckError(f"the model could not be built within the demo's memory budget "
                              f"(at most {max_params:,} parameters)") from None
    if not answer.get("ok"):
        raise ModelCheckError(str(answer.get("error", "the model could not be built")))
    return {"params": int(answer["params"]), "train_bytes": int(answer["train_bytes"])}


def _vm_bytes() -> int:
    """This process's current virtual size (Linux), the base the cap is added to."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def main() -> None:
    """The child: read the request on stdin, build, print the answer as one JSON line."""
    req = json.loads(sys.stdin.read())

    def answer(**kw: Any) -> None:
        print(json.dumps(kw), flush=True)

    from .. import summary
    from ..train import make_model
    try:
        import resource
        # room for the weights allowed and their temporaries while initialised, not more
        cap = _vm_bytes() + 3 * 4 * req["max_params"] + 256 * 2 ** 20
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    except (ImportError, OSError, ValueError):
        pass  # no cap on this platform: the parameter limit below still applies after building
    try:
        net = make_model(req["model"], tuple(req["input_shape"]), req["num_classes"])
        params = net.num_params()
        if params > req["max_params"]:
            return answer(ok=False, error=f"the model has {params:,} parameters; the demo trains at most "
                                          f"{req['max_params']:,}")
        estimate = summary(net, net.input_shape, batch=req["batch_size"]).memory
        mem = estimate.total if estimate is not None else 0
        if mem > req["max_train_bytes"]:
            return answer(ok=False, error=f"one training step at batch {req['batch_size']} needs about "
                                          f"{mem / 2 ** 30:.1f} GB; the demo allows "
                                          f"{req['max_train_bytes'] / 2 ** 30:.1f} GB")
        answer(ok=True, params=params, train_bytes=int(mem))
    except MemoryError:
        answer(ok=False, error=f"the model's weights need more memory than the demo allows (it trains at "
                               f"most {req['max_params']:,} parameters)")
    except CnnkitError as e:
        answer(ok=False, error=str(e))
    except RecursionError:
        answer(ok=False, error="the spec nests too deeply to read")
    except Exception as e:  # noqa: BLE001 - any other build failure is the model's fault: say so in one line
        answer(ok=False, error=f"the model could not be built: {type(e).__name__}: {e}")


if __name__ == "__main__":
    main()
