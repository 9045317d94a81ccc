"""`cnnkit summary MODEL_OR_SPEC`: the notes' VGG table and a training-memory estimate."""

from __future__ import annotations

import argparse

from ..optim import RULES


def positive(text: str) -> int:
    """An argparse type: an int >= 1 (a batch size)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value}")
    return value


def size(text: str) -> int:
    """An argparse type: a size in bytes such as 4GB or 512MB."""
    from ..summary import SummaryError, parse_bytes
    try:
        return parse_bytes(text)
    except SummaryError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def volume(text: str) -> str:
    """An argparse type: the notes' W x H x D (or a flat size), checked."""
    from ..notation import SpecError, parse_volume
    try:
        parse_volume(text)
    except SpecError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "summary", help="per-layer volumes, activations, weights and memory (the notes' VGG table)",
        description="Print the notes' table for a zoo model or a spec: output volume, activations "
                    "and weights per layer, totals, and the memory one training step needs. Nothing is "
                    "allocated: shapes, counts and memory are computed, in the same time for any image size.")
    p.add_argument("model", metavar="MODEL_OR_SPEC",
                   help="a zoo name (cnnkit models lists them) or a spec such as "
                        "'INPUT[32x32x3] -> [CONV3-16 -> RELU -> POOL2]*2 -> FC10'")
    p.add_argument("--input", metavar="WxHxD", type=volume,
                   help="input volume, the notes' W x H x D (e.g. 224x224x3)")
    p.add_argument("--batch", type=positive, default=1, help="batch size for the memory estimate (default 1)")
    p.add_argument("--optimizer", default="sgd", choices=list(RULES),
                   help="optimizer slots per parameter: sgd 0, momentum 1, adam 2")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64", "float16"])
    p.add_argument("--fit", metavar="SIZE", type=size,
                   help="answer the largest batch whose training step fits, e.g. 4GB")
    p.add_argument("--all", action="store_true", help="also list RELU, DROPOUT and FLATTEN rows")
    p.set_defaults(func=run)


def resolve(model: str, input_size: str | None) -> str:
    """A zoo name or a spec -> a spec string (the zoo's at input_size if given); a bare
    word that is neither is an 'unknown model' error listing the zoo."""
    from .. import models
    if models.canonical(model) is not None:
        return models.spec(model, input_size=input_size)
    if input_size:
        from ..notation import parse, parse_volume
        parse_volume(input_size)
        tree = parse(model)
        if tree.input_shape is not None:
            return model[:tree.input_pos] + _replace_input(model[tree.input_pos:], input_size)
        return f"INPUT[{input_size}] -> {model}"
    return model


def _replace_input(text: str, input_size: str) -> str:
    end = text.index("]") + 1
    return f"INPUT[{input_size}]" + text[end:]


def run(args: argparse.Namespace) -> int:
    from ..layers import engine
    from ..notation import build
    from ..summary import human_bytes, largest_batch, summary, training_memory
    spec = resolve(args.model, args.input)
    with engine(allocate=False):   # shapes and counts only: nothing is allocated
        net = build(spec)
    s = summary(net, batch=args.batch, optimizer=args.optimizer, dtype=args.dtype, all_layers=args.all)
    print(s)
    print()
    print("batch   estimated peak of one training step")
    for n in sorted({1, 8, 32, 128, args.batch}):
        print(f"{n:>5}   {human_bytes(training_memory(net, batch=n, optimizer=args.optimizer, dtype=args.dtype).total)}")
    if args.fit is not None:
        fit = human_bytes(args.fit)
        n = largest_batch(net, args.fit, optimizer=args.optimizer, dtype=args.dtype)
        if n == 0:
            need = training_memory(net, batch=1, optimizer=args.optimizer, dtype=args.dtype).total
            print(f"--fit {fit}: not even a batch of 1 fits (it needs {human_bytes(need)})")
        else:
            peak = training_memory(net, batch=n, optimizer=args.optimizer, dtype=args.dtype).total
            print(f"--fit {fit}: the largest batch that fits is {n} ({human_bytes(peak)})")
    return 0
