"""`cnnkit demo`: train in the background and watch it live in the browser (a local web server)."""

from __future__ import annotations

import argparse
import os
import sys

from ..errors import CnnkitError
from ..train.trainer import OPTIMIZERS, TrainConfig

DEMO_EPOCHS = 50


class DemoSetupError(CnnkitError):
    """The demo cannot start (missing extra, bad address)."""


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "demo", help="train live in the browser: curves, activations, filters, predictions",
        description="Start a local web server that trains a ConvNet in a background thread and streams its "
                    "progress to a page (the notes' ConvNetJS demo, offline): live loss and accuracy curves, "
                    "the network's layers and volumes, one test image's activations and the first layer's "
                    "filters as training goes, a grid of test predictions; pause / resume, change the "
                    "learning rate, type a spec to train another net. Ctrl-C stops the server and saves a "
                    "checkpoint, as in cnnkit train; --resume continues it.")
    p.add_argument("--data", default=None, metavar="SPEC",
                   help="digits | cifar10[:PATH] | mnist[:PATH] | fashion-mnist[:PATH] | folder:PATH (default digits)")
    p.add_argument("--model", default=None, metavar="NAME_OR_SPEC",
                   help="a zoo name or a spec (INPUT may be left out); default: the default ConvNet")
    p.add_argument("--epochs", type=int, default=None, help=f"passes over the training set (default {DEMO_EPOCHS})")
    p.add_argument("--batch-size", type=int, default=None, help="images per step (default 32)")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default=None, help="update rule (default adam)")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default 1e-3 for adam, 0.01 for sgd)")
    p.add_argument("--seed", type=int, default=None, help="weights and data order (default 0)")
    p.add_argument("--out", default=None, metavar="RUN_DIR",
                   help="run folder (default: runs/demo, or the first of runs/demo-2, -3, ... that holds no run, "
                        "as cnnkit train does); nets started from the page go to RUN_DIR-2, -3, ...")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 opens it to the network)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument("--threads", type=int, default=None, metavar="N", help="threads for CONV layers (default 1)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        from ..demo import DemoSession
        from ..demo.app import DemoServer
    except ModuleNotFoundError as e:
        if e.name not in ("starlette", "uvicorn") and not str(e.name).startswith(("starlette.", "uvicorn.")):
            raise
        raise DemoSetupError(f"cnnkit demo needs {e.name}, which comes with the demo extra: "
                             f"pip install 'cnnkit[demo]'") from None
    from .. import set_num_threads

    if not 0 <= args.port <= 65535:
        raise DemoSetupError(f"--port must be in 0..65535, got {args.port}")
    if args.threads is not None:
        set_num_threads(args.threads)
    given = {k: getattr(args, k) for k in ("data", "model", "epochs", "batch_size", "optimizer", "lr", "seed")
             if getattr(args, k) is not None}
    if args.out is None:   # a second `cnnkit demo` starts a fresh run instead of refusing the first one's folder
        from ..train.trainer import fresh_run_dir, numbered_runs
        latest = numbered_runs("runs/demo")
        args.out = str(latest[-1] if args.resume and latest else "runs/demo" if args.resume else fresh_run_dir("runs/demo"))
    if args.resume:
        ignored = sorted(k for k in given if k != "epochs")
        if ignored:
            raise DemoSetupError(f"--resume continues with the run's saved settings; drop "
                                 f"{', '.join('--' + k.replace('_', '-') for k in ignored)} (only --epochs may change)")
        session = DemoSession(None, args.out, resume=True, epochs=given.get("epochs"))
    else:
        # the learning rate is the user's to change from the page, so no schedule moves it
        config = TrainConfig(**{"epochs": DEMO_EPOCHS, "schedule": "constant", **given})
        session = DemoSession(config, args.out)
    server = DemoServer(session, args.host, args.port)
    print(f"cnnkit demo: training {session.base_config.model or 'the default ConvNet'} on "
          f"{session.base_config.data}; open {server.url} (Ctrl-C stops and saves a checkpoint)", flush=True)
    try:
        server.run()
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it handled; the shutdown below is what matters
        pass
    finally:
        saved = session.close()
    if saved:
        run_dir = os.path.dirname(saved)
        print(f"cnnkit demo: checkpoint saved to {saved}; continue with cnnkit demo --out {run_dir} --resume "
              f"(or cnnkit train --out {run_dir} --resume)", file=sys.stderr)
    return 0
