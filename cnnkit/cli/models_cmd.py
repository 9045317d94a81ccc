"""`cnnkit models`: the zoo, with each model's parameter count, input and classes."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "models", help="list the model zoo with parameter counts",
        description="List the zoo's models (cnnkit.models.names()): parameters (counted from a dry "
                    "build, nothing allocated), input volume (the notes' W x H x D), classes, and what "
                    "each is. Use a name wherever a spec is taken: cnnkit summary vgg16, cnnkit train "
                    "--model cifar10.")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .. import models
    rows = [models.info(name) for name in models.names()]
    head = ("model", "params", "input", "classes", "")
    body = [(m.name, f"{m.params:,}", m.input, str(m.classes), _clip(m.about, 72)) for m in rows]
    widths = [max(len(r[i]) for r in [head] + body) for i in range(4)]
    for r in [head] + body:
        print("  ".join([r[0].ljust(widths[0]), r[1].rjust(widths[1]), r[2].ljust(widths[2]),
                         r[3].rjust(widths[3]), r[4]]).rstrip())
    print(f"\n{len(rows)} models; cnnkit summary NAME shows one layer by layer.")
    return 0


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 3].rstrip() + "..."
