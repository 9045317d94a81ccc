"""The ``cnnkit`` command: one subcommand per module in this package.

Each subcommand module defines ``add_parser(subparsers)`` (registering its arguments and
``func``) and lives beside this file; errors a user can make end with one line and exit 1.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import NoReturn

from ..errors import CnnkitError

# Packages of the optional extras (pyproject's), by the extra that brings them; the core
# needs NumPy only.
EXTRAS = {"tqdm": "train", "matplotlib": "train", "safetensors": "train", "PIL": "train", "threadpoolctl": "train",
          "onnx": "onnx", "onnxruntime": "onnx", "mpi4py": "mpi", "starlette": "demo", "uvicorn": "demo"}
OPTIONAL = set(EXTRAS)

# Subcommand modules, in the order `cnnkit --help` lists them.
# A name with a hyphen lives in a module with an underscore (import-torch: import_torch_cmd).
SUBCOMMANDS = ["train", "eval", "predict", "summary", "lint", "models", "slide", "viz", "demo", "export", "bench",
               "import-torch"]


class Parser(argparse.ArgumentParser):
    """argparse with a one-line usage error (exit 2) that points at --help."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = Parser(prog="cnnkit", description="ConvNets from the CS231n notes, on NumPy.")
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


def one_line(exc: BaseException) -> str:
    """An error as the one line the CLI prints: a spec error's caret becomes 'at column N: text'."""
    render = getattr(exc, "one_line", None)
    text = render() if callable(render) else str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        text = f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    return "; ".join(part.strip() for part in text.splitlines() if part.strip()) or type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    command = "cnnkit"
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        command = f"cnnkit {args.command}" if getattr(args, "command", None) else command
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
        code = int(args.func(args) or 0)
        sys.stdout.flush()   # inside the try: a reader that left (| head) is seen here, not at exit
        return code
    except CnnkitError as exc:
        print(f"{command}: error: {one_line(exc)}", file=sys.stderr)
        return 1
    except ModuleNotFoundError as exc:
        if exc.name not in OPTIONAL:
            raise
        extra = EXTRAS[exc.name]
        print(f"{command}: error: this needs {exc.name}, which comes with the {extra} extra: "
              f"pip install 'cnnkit[{extra}]'", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # `cnnkit summary vgg16 | head`: the reader left; stop quietly, as head expects, and
        # point stdout at /dev/null so the interpreter's last flush finds no closed pipe
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except OSError as exc:
        # a file the user named that cannot be read or written: one line, not a traceback
        print(f"{command}: error: {one_line(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
