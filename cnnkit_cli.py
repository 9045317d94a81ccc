"""The ``cnnkit`` command's entry point. It lives outside the package so that even Ctrl-C
while cnnkit itself is still being imported ends with one line, not a traceback."""

from __future__ import annotations

import sys


def main() -> int:
    try:
        from cnnkit.cli import main as cli_main
    except KeyboardInterrupt:
        print("cnnkit: interrupted while starting; nothing was done", file=sys.stderr)
        return 130
    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
