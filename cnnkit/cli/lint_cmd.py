"""`cnnkit lint SPEC`: check a spec against the notes' layer sizing rules."""

from __future__ import annotations

import argparse

from ..errors import CnnkitError
from .summary_cmd import volume


class LintError(CnnkitError):
    """A spec that does not build: linting it has no meaning."""


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "lint", help="check a spec against the notes' sizing rules",
        description="Warn, quoting the notes, where a spec breaks their sizing rules: input "
                    "divisible by 2, size-preserving stride-1 CONV, filters <= 5x5 past the first "
                    "layer, pools <= 3, receptive fields that tile the input. The spec is also built "
                    "(dry: nothing is allocated); one that does not build is an error. Exits 1 if it "
                    "warns or does not build.")
    p.add_argument("spec", metavar="SPEC", help="a spec string or a zoo model name")
    p.add_argument("--input", metavar="WxHxD", type=volume, help="input volume, the notes' W x H x D")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..layers import engine
    from ..notation import SpecError, build, lint, parse
    from .summary_cmd import resolve
    spec = resolve(args.spec, args.input)
    tree = parse(spec)
    warnings = lint(tree)
    for w in warnings:
        print(f"warning: {w}")
    try:
        with engine(allocate=False):   # shapes only: linting a big net costs nothing
            build(tree)
    except SpecError as exc:
        raise LintError(f"the spec does not build{f' ({len(warnings)} warning(s) above)' if warnings else ''}: "
                        f"{exc.one_line()}") from None
    print(f"{len(warnings)} warning(s)" if warnings else "no warnings: the spec follows the notes' sizing rules")
    return 1 if warnings else 0
