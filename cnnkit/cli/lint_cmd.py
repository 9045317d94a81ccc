"""`cnnkit lint SPEC`: check a spec against the notes' layer sizing rules."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "lint", help="check a spec against the notes' sizing rules",
        description="Warn, quoting the notes, where a spec breaks their sizing rules: input "
                    "divisible by 2, size-preserving stride-1 CONV, filters <= 5x5 past the first "
                    "layer, pools <= 3, receptive fields that tile the input. Exits 1 if it warns.")
    p.add_argument("spec", metavar="SPEC", help="a spec string or a zoo model name")
    p.add_argument("--input", metavar="WxHxD", help="input volume, the notes' W x H x D")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..notation import lint
    from .summary_cmd import resolve
    spec = resolve(args.spec, args.input)
    warnings = lint(spec)
    for w in warnings:
        print(f"warning: {w}")
    print(f"{len(warnings)} warning(s)" if warnings else "no warnings: the spec follows the notes' sizing rules")
    return 1 if warnings else 0
