"""`cnnkit eval CHECKPOINT`: accuracy and the confusion matrix of a trained network on a data split."""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ..checkpoint import Checkpoint


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "eval", help="accuracy and confusion matrix of a checkpoint",
        description="Evaluate a checkpoint (a file, or a run folder holding checkpoint.safetensors) "
                    "in eval mode, with the normalisation it was trained with.")
    p.add_argument("checkpoint", metavar="CHECKPOINT")
    p.add_argument("--data", default=None, metavar="SPEC", help="data set (default: the one it was trained on)")
    p.add_argument("--split", choices=("test", "val", "train"), default="test")
    p.add_argument("--batch-size", type=int, default=500, help="images per forward pass (default 500)")
    p.set_defaults(func=run)


def load_trained(path: str) -> tuple[Checkpoint, Any, dict[str, Any]]:
    """(checkpoint, net, extra) from a checkpoint file or run folder written by cnnkit train."""
    from ..checkpoint import CheckpointError, load_checkpoint
    from ..train.trainer import CHECKPOINT

    if os.path.isdir(path):
        path = os.path.join(path, CHECKPOINT)
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: no such checkpoint")
    ckpt = load_checkpoint(path)
    extra = ckpt.meta.get("extra") or {}
    if "input_shape" not in extra or "classes" not in extra:
        raise CheckpointError(f"{path}: the checkpoint does not say its input size and classes "
                              "(it was not written by cnnkit train)")
    ckpt.net.input_shape = tuple(extra["input_shape"])
    return ckpt, ckpt.net, extra


def data_spec(path: str, extra: dict[str, Any], given: str | None) -> str:
    """The data set to score a trained checkpoint on: given (--data) when there is one, else the
    spec the run was trained on. A run trained from Python on arrays given to the Trainer, or
    one that does not say, has no spec to reload: a CheckpointError says what data it needs."""
    from ..checkpoint import CheckpointError
    from ..layers import format_volume

    if given:
        return given
    info: dict[str, Any] = extra["dataset"] if isinstance(extra.get("dataset"), dict) else {}
    needs = f"{format_volume(tuple(extra['input_shape']))} images in {len(extra['classes'])} classes"
    if info.get("source") == "python":
        raise CheckpointError(f"{path} was trained from Python on a dataset given to the Trainer ({info.get('name')!r}, "
                              f"{info.get('train')} training images: {needs}), which cnnkit cannot load by name; "
                              "say which data to use with --data SPEC")
    spec = extra.get("data")
    if not isinstance(spec, str) or not spec:
        raise CheckpointError(f"{path} does not say which data it was trained on; say which data to use "
                              f"({needs}) with --data SPEC")
    return spec


def format_confusion(m: np.ndarray, classes: list[str]) -> str:
    """Rows: true class; columns: predicted class (numbered as the rows)."""
    width = max(4, len(str(int(m.max(initial=0)))) + 1)
    # a row names its class once: '3' for digits, '3 cat' where names are words
    names = [c if c == str(i) else f"{i} {c}" for i, c in enumerate(classes)]
    name_w = max(len(n) for n in names) + 2
    head = " " * name_w + "".join(f"{j:>{width}}" for j in range(len(classes)))
    rows = [f"{n:<{name_w}}" + "".join(f"{v:>{width}}" for v in row) for n, row in zip(names, m)]
    return "\n".join(["confusion matrix (rows: true class, columns: predicted class)", head, *rows])


def run(args: argparse.Namespace) -> int:
    from ..data import load
    from ..train import TrainError, confusion_matrix, predict_scores

    if args.batch_size < 1:  # before anything is read: range(0, N, 0) would be a raw ValueError
        raise TrainError(f"--batch-size must be a positive integer, got {args.batch_size}")
    ckpt, net, extra = load_trained(args.checkpoint)
    spec = data_spec(ckpt.path, extra, args.data)
    ds = load(spec)
    ds.check_fits(str(ckpt.path), net.input_shape, len(extra["classes"]), spec)
    split = getattr(ds, args.split)
    if len(split.y) == 0:
        raise TrainError(f"{spec!r} has no {args.split} images")
    pred = predict_scores(net, split.X, ckpt.meta.get("normalization"), args.batch_size).argmax(1)
    correct = int((pred == split.y).sum())
    print(f"{spec} {args.split}: accuracy {correct / len(split.y):.2%} ({correct}/{len(split.y)})")
    print(format_confusion(confusion_matrix(split.y, pred, len(ds.classes)), list(ds.classes)))
    return 0
