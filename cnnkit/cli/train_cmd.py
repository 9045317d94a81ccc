"""`cnnkit train`: train a ConvNet into a run folder; bare `cnnkit train` trains the default one on digits."""

from __future__ import annotations

import argparse
import sys

from ..train.trainer import DEFAULT_SPEC, OPTIMIZERS, TrainConfig


def add_parser(subparsers) -> None:
    d = TrainConfig()
    p = subparsers.add_parser(
        "train", help="train a network; prints the final test accuracy",
        description="Train a ConvNet with mini-batch SGD (or another update rule) and softmax loss. "
                    "The run folder gets checkpoint.safetensors (every epoch, every --checkpoint-every "
                    "steps and on Ctrl-C), metrics.jsonl, metrics.png and config.json.")
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
    p.add_argument("--seed", type=int, default=None, help=f"weights, data order, augmentation (default {d.seed})")
    aug = p.add_mutually_exclusive_group()
    aug.add_argument("--augment", dest="augment", action="store_true", default=None,
                     help="random crop with padding and horizontal flip (default: on for cifar10 only)")
    aug.add_argument("--no-augment", dest="augment", action="store_false")
    p.add_argument("--checkpoint-every", type=int, default=None, metavar="K",
                   help=f"also checkpoint every K steps inside an epoch; 0: epoch ends only (default {d.checkpoint_every})")
    p.add_argument("--out", default=None, metavar="RUN_DIR", help="run folder (default runs/<data>)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its checkpoint, with its saved settings "
                        "(--epochs may extend it)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="threads for CONV layers (default: NumPy's BLAS thread count, so "
                        "OPENBLAS_NUM_THREADS / OMP_NUM_THREADS set it); results depend on it")
    p.set_defaults(func=run)


SETTINGS = ("data", "model", "epochs", "batch_size", "optimizer", "lr", "momentum", "weight_decay",
            "schedule", "seed", "augment", "checkpoint_every")


def run(args: argparse.Namespace) -> int:
    from ..layers.runtime import engine, runtime
    from ..parallel import guard, world
    from ..train import DivergedError, TrainingInterrupted

    comm = world()  # None for one process; one of several ranks under mpiexec / srun
    # under MPI an error on one rank ends every rank (cnnkit.parallel.failure), never a hang
    threads = args.threads if args.threads is not None else runtime.blas_threads()
    with guard(comm, agreed=(DivergedError, TrainingInterrupted), prefix="cnnkit train"), engine(threads=threads):
        return _train(args, comm)


def _train(args: argparse.Namespace, comm=None) -> int:
    from ..parallel import agree
    from ..train import Trainer, TrainError, TrainingInterrupted

    given = {k: getattr(args, k) for k in SETTINGS if getattr(args, k) is not None}
    out = args.out or f"runs/{(given.get('data') or TrainConfig.data).split(':')[0]}"

    def make_trainer() -> Trainer:
        if args.resume:
            ignored = sorted(k for k in given if k != "epochs")
            if ignored:
                raise TrainError(f"--resume continues with the run's saved settings; drop "
                                 f"{', '.join('--' + k.replace('_', '-') for k in ignored)} (only --epochs may change)")
            return Trainer.resume(out, epochs=given.get("epochs"), progress=not args.quiet)
        return Trainer(TrainConfig(**given), out, progress=not args.quiet)

    trainer = agree(comm, make_trainer)  # several ranks: all start, or all stop with the reason
    try:
        result = trainer.fit()
    except TrainingInterrupted as e:
        if comm is None or comm.rank == 0:
            print(f"cnnkit train: {e}", file=sys.stderr)
        return 130
    if comm is not None and comm.rank != 0:
        return 0  # rank 0 reports for the run
    print(f"test accuracy: {result.test_acc:.2%} ({len(trainer.dataset.test.y)} images, "
          f"{result.epochs} epoch{'s' if result.epochs != 1 else ''}, {result.seconds:.1f} s); run folder: {result.run_dir}")
    return 0
