"""`cnnkit train`: train a ConvNet into a run folder; bare `cnnkit train` trains the default one on digits.

Nothing of the user's is lost: without --out a run goes to runs/<data>, or to the first
of runs/<data>-2, -3, ... that holds no run yet (so the Quickstart's `cnnkit train` can be
run again and again); --resume without --out continues the latest of them. An --out that
already holds a run is refused unless --resume or --overwrite says what to do with it.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from ..train.trainer import DEFAULT_SPEC, OPTIMIZERS, TrainConfig

if TYPE_CHECKING:
    from ..parallel import Comm
    from ..train import Trainer


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    d = TrainConfig()
    p = subparsers.add_parser(
        "train", help="train a network; prints the final test accuracy",
        description="Train a ConvNet with mini-batch SGD (or another update rule) and softmax loss. "
                    "The run folder gets checkpoint.safetensors (every epoch, every --checkpoint-every "
                    "steps and on Ctrl-C), metrics.jsonl, metrics.png and config.json. Validation accuracy "
                    "is measured after every epoch, test accuracy once, at the end.")
    p.add_argument("--data", default=None, metavar="SPEC",
                   help=f"digits | cifar10[:PATH] | mnist[:PATH] | fashion-mnist[:PATH] | folder:PATH "
                        f"(default {d.data})")
    p.add_argument("--model", default=None, metavar="NAME_OR_SPEC",
                   help=f"a zoo name (cnnkit.models.names()) or a spec; default: {DEFAULT_SPEC} "
                        "(INPUT set to the data's size)")
    p.add_argument("--epochs", type=int, default=None, help=f"passes over the training set (default {d.epochs})")
    p.add_argument("--batch-size", type=int, default=None, help=f"images per step (default {d.batch_size})")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default=None, help=f"update rule (default {d.optimizer})")
    p.add_argument("--lr", type=float, default=None,
                   help="learning rate (default 1e-3 for adam and rmsprop, 0.01 otherwise)")
    p.add_argument("--momentum", type=float, default=None, help=f"for momentum and nesterov (default {d.momentum})")
    p.add_argument("--weight-decay", type=float, default=None, help="L2 decay added to the gradient (default 0)")
    p.add_argument("--schedule", default=None, metavar="NAME",
                   help=f"constant | cosine | step[:EPOCHS[:GAMMA]] (default {d.schedule})")
    p.add_argument("--seed", type=int, default=None,
                   help=f"weights, data order, augmentation; an integer >= 0 (default {d.seed})")
    aug = p.add_mutually_exclusive_group()
    aug.add_argument("--augment", dest="augment", action="store_true", default=None,
                     help="random crop with padding and horizontal flip (default: on for cifar10 only)")
    aug.add_argument("--no-augment", dest="augment", action="store_false")
    p.add_argument("--checkpoint-every", type=int, default=None, metavar="K",
                   help=f"also checkpoint every K steps inside an epoch; 0: epoch ends only (default {d.checkpoint_every})")
    p.add_argument("--out", default=None, metavar="RUN_DIR",
                   help="run folder (default runs/<data>, or the first of runs/<data>-2, -3, ... holding no run; "
                        "a folder: data set gets runs/folder-<name>-<hash of its path>)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true",
                      help="continue the run in --out (default: the latest run of this data) from its checkpoint; "
                           "options given again must match the run's, --epochs may extend it")
    mode.add_argument("--overwrite", action="store_true",
                      help="replace the run that --out holds (checkpoint, metrics, plot, config) with a new one")
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="threads for CONV layers (default: NumPy's BLAS thread count, so "
                        "OPENBLAS_NUM_THREADS / OMP_NUM_THREADS set it); results depend on it")
    p.set_defaults(func=run)


SETTINGS = ("data", "model", "epochs", "batch_size", "optimizer", "lr", "momentum", "weight_decay",
            "schedule", "seed", "augment", "checkpoint_every")


@contextmanager
def one_line_warnings(prefix: str) -> Iterator[None]:
    """Warnings (a torn metrics line dropped, NumPy's) as one 'PREFIX: warning: ...' line each."""
    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int,
             file: TextIO | None = None, line: str | None = None) -> None:
        print(f"{prefix}: warning: {message}", file=sys.stderr, flush=True)

    with warnings.catch_warnings():  # restores showwarning afterwards
        warnings.showwarning = show
        yield


def run(args: argparse.Namespace) -> int:
    from ..layers.runtime import engine, runtime
    from ..parallel import guard, world
    from ..train import DivergedError, TrainError, TrainingInterrupted

    if args.threads is not None and args.threads < 1:
        raise TrainError(f"--threads must be a positive integer, got {args.threads}")
    comm = world()  # None for one process; one of several ranks under mpiexec / srun
    # under MPI an error on one rank ends every rank (cnnkit.parallel.failure), never a hang
    threads = args.threads if args.threads is not None else runtime.blas_threads()
    with guard(comm, agreed=(DivergedError, TrainingInterrupted), prefix="cnnkit train"), engine(threads=threads), \
            one_line_warnings("cnnkit train"):
        return _train(args, comm)


def run_folder(args: argparse.Namespace, data: str) -> tuple[Path, Path | None]:
    """(the run folder, the default one it moved away from or None): --out as given; else
    runs/<data> for --overwrite, its latest run for --resume, a fresh runs/<data>[-k] otherwise."""
    from ..train.trainer import default_run_dir, fresh_run_dir, latest_run_dir

    if args.out is not None:
        return Path(args.out), None
    base = default_run_dir(data)
    if args.resume:
        return latest_run_dir(base), None
    out = base if args.overwrite else fresh_run_dir(base)
    return out, (base if out != base else None)


def _train(args: argparse.Namespace, comm: Comm | None = None) -> int:
    from ..parallel import agree
    from ..train import RunExistsError, Trainer, TrainingInterrupted

    given = {k: getattr(args, k) for k in SETTINGS if getattr(args, k) is not None}
    out, moved_from = run_folder(args, given.get("data") or TrainConfig.data)
    if comm is not None:  # every rank goes where rank 0 looked: one folder for the one run
        out = Path(comm.allgather_text(str(out), "choosing the run folder")[0])
    speaks = comm is None or comm.rank == 0
    if moved_from is not None and speaks and not args.quiet:
        print(f"cnnkit train: {moved_from} holds an earlier run, so this one goes to {out} "
              f"(continue the latest with --resume, or choose with --out)", file=sys.stderr, flush=True)

    def make_trainer() -> Trainer:
        try:
            if args.resume:
                return Trainer.resume(out, settings=given, progress=not args.quiet)
            return Trainer(TrainConfig(**given), out, progress=not args.quiet, overwrite=args.overwrite)
        except RunExistsError as e:
            raise RunExistsError(f"{e.run_dir} already holds a run ({', '.join(e.files)}); add --resume to "
                                 "continue it, --overwrite to replace it, or choose another --out",
                                 e.run_dir, e.files) from None
        except KeyboardInterrupt:  # Ctrl-C while loading data or building the model
            raise TrainingInterrupted("interrupted while starting (loading the data, building the model); "
                                      "nothing was written") from None

    try:
        trainer = agree(comm, make_trainer)  # several ranks: all start, or all stop with the reason
        result = trainer.fit()
    except TrainingInterrupted as e:
        if speaks:
            print(f"cnnkit train: {e}", file=sys.stderr)
        return 130
    if not speaks:
        return 0  # rank 0 reports for the run
    print(f"test accuracy: {result.test_acc:.2%} ({len(trainer.dataset.test.y)} images, "
          f"{result.epochs} epoch{'s' if result.epochs != 1 else ''}, {result.seconds:.1f} s); run folder: {result.run_dir}")
    return 0
