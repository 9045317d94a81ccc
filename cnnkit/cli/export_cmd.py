"""`cnnkit export CHECKPOINT_OR_RUN model.onnx`: a trained network (or a zoo model) as an ONNX file."""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..layers import Layer


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "export", help="write a checkpoint, run folder or zoo model as an ONNX file",
        description="Export a network to ONNX (inference form: batch norm's running statistics, dropout "
                    "off) with a dynamic batch axis, checked with onnx.checker. Needs cnnkit[onnx].")
    p.add_argument("source", metavar="CHECKPOINT_OR_RUN",
                   help="a checkpoint file, a run folder holding checkpoint.safetensors, or a zoo model name")
    p.add_argument("output", metavar="OUT.onnx")
    p.add_argument("--input", metavar="WxHxD", help="input volume (default: the one the network was trained on)")
    p.add_argument("--weights", metavar="STATE_FILE", help="for a zoo model: a PyTorch state dict to load first")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default 18)")
    p.set_defaults(func=run)


def volume(text: str) -> tuple[int, int, int]:
    """The notes' 'WxHxD' -> (C, H, W)."""
    from ..checkpoint import CheckpointError

    try:
        W, H, D = (int(d) for d in text.lower().split("x"))
    except ValueError:
        raise CheckpointError(f"--input: expected the notes' WxHxD (e.g. 32x32x3), got {text!r}") from None
    return D, H, W


def load_network(source: str, input_size: str | None,
                 weights: str | None = None) -> tuple[Layer, tuple[int, ...], dict | None]:
    """(net, input_shape, normalization) from a checkpoint, run folder or zoo name."""
    from .. import models
    from ..checkpoint import CheckpointError, load_checkpoint
    from ..train.trainer import CHECKPOINT

    if not os.path.exists(source) and models.canonical(source) is not None:
        net = models.get(source, input_size=input_size, weights=weights)
        return net, net.input_shape, None
    if weights is not None:
        raise CheckpointError("--weights: only for a zoo model; a checkpoint holds its own weights")
    path = os.path.join(source, CHECKPOINT) if os.path.isdir(source) else source
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: no such checkpoint (and {source!r} is not a zoo model)")
    ckpt = load_checkpoint(path)
    extra = ckpt.meta.get("extra") or {}
    shape = volume(input_size) if input_size else extra.get("input_shape")
    if shape is None:
        raise CheckpointError(f"{path}: the checkpoint does not say its input size; pass --input WxHxD")
    return ckpt.net, tuple(int(d) for d in shape), ckpt.meta.get("normalization")


def run(args: argparse.Namespace) -> int:
    from ..onnx import export
    from ..onnx.export import DEFAULT_OPSET

    net, shape, normalization = load_network(args.source, args.input, args.weights)
    export(net.eval(), args.output, shape, opset=args.opset or DEFAULT_OPSET)
    C, H, W = shape
    print(f"wrote {args.output}: input 'input' (N, {C}, {H}, {W}) float32, output 'scores', "
          f"opset {args.opset or DEFAULT_OPSET}")
    if normalization:
        print(f"the network was trained on normalised inputs: {normalization}; apply it before running the model")
    return 0
