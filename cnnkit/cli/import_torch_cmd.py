"""`cnnkit import-torch STATE_FILE --model NAME OUT`: PyTorch / torchvision weights into a cnnkit checkpoint."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "import-torch", help="load a PyTorch state dict (.pth, .safetensors) into a zoo model",
        description="Read a state dict with torchvision's key names (or cnnkit's) into the matching zoo "
                    "model, without torch and without running code from the file, and write a cnnkit "
                    "checkpoint (or an .onnx file, or a .pth/.safetensors state dict back).")
    p.add_argument("state_file", metavar="STATE_FILE", help=".pth/.pt (torch.save) or .safetensors")
    p.add_argument("--model", required=True, metavar="NAME", help="zoo model: alexnet, vgg11..vgg19[_bn], "
                   "resnet18/34/50, googlenet (cnnkit.models.names())")
    p.add_argument("output", metavar="OUT", help="checkpoint.safetensors (cnnkit), model.onnx, or weights.pth")
    p.add_argument("--num-classes", type=int, default=None,
                   help="classes of the last FC (default: read from the state dict)")
    p.add_argument("--input", metavar="WxHxD", help="input volume (default: the model's, e.g. 224x224x3)")
    p.set_defaults(func=run)


def num_classes(name: str, state: Mapping[str, np.ndarray], input_size: str | None) -> int | None:
    """The rows of the state dict's last FC weight, found through the zoo model's torchvision names."""
    from .. import models
    from ..interop import torchvision_names
    from ..layers import FC

    net = models.get(name, input_size=input_size)
    fcs = [k for k in net.state_dict() if k.endswith(".weight")
           and isinstance(net[int(k.split(".")[0])], FC)]
    if not fcs:
        return None
    # torchvision's name first, then cnnkit's own
    keys = [k for k in (torchvision_names(net).get(fcs[-1]), fcs[-1]) if k is not None and k in state]
    return int(state[keys[0]].shape[0]) if keys else None


def run(args: argparse.Namespace) -> int:
    from .. import models
    from ..interop import (
        WeightsError,
        load_torch_weights,
        read_state_dict,
        save_torch_weights,
    )

    if models.canonical(args.model) is None:
        raise WeightsError(f"--model: unknown model {args.model!r}; known: {', '.join(models.names())}")
    state = read_state_dict(args.state_file)
    classes = args.num_classes or num_classes(args.model, state, args.input)
    net = models.get(args.model, num_classes=classes, input_size=args.input)
    load_torch_weights(net, state, source=args.state_file)
    out = args.output
    if out.endswith(".onnx"):
        from ..onnx import export
        export(net.eval(), out)
    elif out.endswith((".pth", ".pt")):
        save_torch_weights(net, out)
    else:
        from ..checkpoint import save_checkpoint
        save_checkpoint(out, net, extra={"input_shape": list(net.input_shape), "model": net.name,
                                         "source": args.state_file})
    print(f"{args.state_file} -> {out}: {net.name}, {net.num_params():,} parameters, {classes or 'default'} classes")
    return 0
