"""`cnnkit bench [layers|nets|train|memory|all] [--threads N] [--json PATH]`, `cnnkit bench profile MODEL`."""

from __future__ import annotations

import argparse
import os
import sys

from ..bench.errors import BenchError


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "bench", help="time cnnkit against PyTorch: layers, whole networks, the training step, memory",
        description="Run cnnkit's benchmark suite: each case on both sides in this process with the same "
                    "thread count (ms, GFLOP/s, % of the measured sgemm peak, cnnkit/PyTorch), or profile "
                    "one training step of MODEL layer by layer. Unset OPENBLAS_CORETYPE and "
                    "OPENBLAS_L2_SIZE for this command: env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE cnnkit bench")
    p.add_argument("section", nargs="?", default="all", metavar="SECTION",
                   help="layers, nets, train, memory, all (default) or profile")
    p.add_argument("model", nargs="?", metavar="MODEL",
                   help="profile only: a zoo name (cnnkit.models.names()) or a spec")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="threads for both libraries (default: all cores)")
    p.add_argument("--json", metavar="PATH", help="also write every figure to PATH as JSON")
    p.add_argument("--compare", default=None, metavar="torch|none",
                   help="compare with PyTorch (default when torch is installed) or time cnnkit alone")
    p.add_argument("--quick", action="store_true", help="fewer calls per cell: a first look, not figures to quote")
    p.add_argument("--cases", default="", metavar="TEXT", help="only the cases whose name contains TEXT")
    p.add_argument("--batch", type=int, help="one batch size for every case (default: each case's own)")
    p.add_argument("--size", type=int, help="input size of the whole networks (default 224)")
    p.add_argument("--input", metavar="WxHxD", help="profile: the model's input volume (default its own)")
    p.add_argument("--repeat", type=int, help="layer cases: at least this many calls per cell (default 5)")
    p.add_argument("--steps", type=int, help="timed steps of the train section and the profile (default 20 / 5)")
    p.add_argument("--rounds", type=int, help="alternating blocks of calls per side, each side keeping its best "
                                              "(default 2; --quick 1)")
    p.set_defaults(func=run)


def _compare(value: str | None) -> bool:
    from ..bench import torch_available
    if value is None:
        return torch_available()
    if value not in ("torch", "none"):
        raise BenchError(f"--compare: expected torch or none, got {value!r}")
    if value == "torch" and not torch_available():
        raise BenchError("--compare torch: PyTorch is not installed (pip install torch), or use --compare none")
    return value == "torch"


def _positive(name: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise BenchError(f"{name}: expected an int >= 1, got {value}")


def run(args: argparse.Namespace) -> int:
    from ..bench import Settings, openblas_warning, suite, write_json
    for name in ("threads", "batch", "size", "repeat", "steps", "rounds"):
        _positive(f"--{name}", getattr(args, name))
    if args.json and not os.path.isdir(os.path.dirname(os.path.abspath(args.json))):
        raise BenchError(f"--json {args.json}: the folder {os.path.dirname(os.path.abspath(args.json))} does not exist")
    if args.section == "profile":
        return _profile(args)
    if args.model is not None:
        raise BenchError(f"unexpected argument {args.model!r}: only 'cnnkit bench profile MODEL' takes a model")
    if args.input:
        raise BenchError("--input is for 'cnnkit bench profile MODEL'; the suite's nets take --size")
    sections = suite.check_sections([args.section])
    compare = _compare(args.compare)
    warning = openblas_warning()
    if warning:
        print(warning, file=sys.stderr)
    changes = {k: v for k, v in (("repeat", args.repeat), ("steps", args.steps), ("rounds", args.rounds))
               if v is not None}
    make = Settings.quick if args.quick else Settings
    settings = make(args.threads, compare, batch=args.batch, size=args.size, cases=args.cases, **changes)
    options = {k: v for k, v in vars(args).items() if k not in ("func", "command") and not callable(v)}
    report = suite.run(sections, settings, options=options)
    if args.json:
        write_json(args.json, report.as_dict())
        print(f"wrote {args.json}")
    return 0


def _profile(args: argparse.Namespace) -> int:
    import numpy as np

    from .. import models
    from ..bench import NET_CASES, openblas_warning, profile_step, write_json
    from ..bench.timing import set_threads
    from ..notation import SpecError, build
    from .summary_cmd import resolve
    if not args.model:
        raise BenchError("profile: which model? e.g. cnnkit bench profile resnet18 (a zoo name or a spec)")
    if args.size:
        raise BenchError("--size is for the suite's nets; profile takes --input WxHxD")
    set_threads(args.threads, torch_too=False)
    warning = openblas_warning()
    if warning:
        print(warning, file=sys.stderr)
    try:
        net = build(resolve(args.model, args.input))
    except SpecError as exc:   # its caret lines would make the error more than one line
        raise BenchError(f"profile {args.model!r}: not a zoo name (cnnkit.models.names()) nor a spec: "
                         f"{str(exc).splitlines()[0]}") from None
    if not hasattr(net, "input_shape"):
        raise BenchError(f"profile {args.model!r}: the spec has no INPUT[WxHxD]; add one or pass --input WxHxD")
    key = models.canonical(args.model)
    default = next((c.batch for c in NET_CASES if c.model == key), 64 if net.input_shape[1:] == (32, 32) else 8)
    batch = args.batch or default
    rng = np.random.default_rng(0)
    X = rng.standard_normal((batch, *net.input_shape), dtype=np.float32)
    classes = net.output_shape(net.input_shape)
    if len(classes) != 1:
        raise BenchError(f"profile {args.model}: the net ends in a {'x'.join(map(str, classes))} volume; "
                         "a training step needs class scores (N, K)")
    y = rng.integers(0, classes[0], batch)
    net.input_grad = False
    result = profile_step(net, X, y, steps=args.steps or 5)
    result.spec = net.spec
    print(f"{args.model}: {'x'.join(map(str, net.input_shape))} input, {args.threads} threads")
    print(result.format())
    if args.json:
        write_json(args.json, dict(profile=result.as_dict(), threads=args.threads))
        print(f"wrote {args.json}")
    return 0
