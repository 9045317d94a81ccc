"""The ``cnnkit`` command: one subcommand per module in this package.

Each subcommand module defines ``add_parser(subparsers)`` (registering its arguments and
``func``) and lives beside this file; errors a user can make end with one line and exit 1.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ..errors import CnnkitError

# Packages of the optional extras (pyproject's), by the extra that brings them; the core
# needs NumPy only.
EXTRAS = {"tqdm": "train", "matplotlib": "train", "safetensors": "train", "PIL": "train", "threadpoolctl": "train",
          "onnx": "onnx", "onnxruntime": "onnx", "mpi4py": "mpi", "starlette": "demo", "uvicorn": "demo"}
OPTIONAL = set(EXTRAS)

# Subcommand modules, in the order `cnnkit --help` lists them.
# A name with a hyphen lives in a module with an underscore (import-torch: import_torch_cmd).
SUBCOMMANDS = ["train", "eval", "predict", "summary", "lint", "slide", "viz", "demo", "export", "bench",
               "import-torch"]


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(prog="cnnkit", description="ConvNets from the CS231n notes, on NumPy.")
    parser.add_argument("--version", action="version", version=f"cnnkit {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        try:
            module_name = f"{__name__}.{name.replace('-', '_')}_cmd"
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue  # subcommand not built yet
        module.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except CnnkitError as exc:
        print(f"cnnkit {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except ModuleNotFoundError as exc:
        if exc.name not in OPTIONAL:
            raise
        extra = EXTRAS[exc.name]
        print(f"cnnkit {args.command}: error: this needs {exc.name}, which comes with the {extra} extra: "
              f"pip install 'cnnkit[{extra}]'", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # `cnnkit summary vgg16 | head`: the reader left; stop quietly, as head expects
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print(f"cnnkit {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
