"""The README's promises: CI runs its test command, and its code example runs."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def quickstart_commands():
    block = README.split("## Quickstart", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line and not line.startswith("#")]


def test_quickstart_has_two_commands_and_ci_runs_the_test_one():
    run, test = quickstart_commands()
    assert "cnnkit train" in run and "pytest" in test
    ci = (ROOT / ".ci" / "run").read_text()
    assert test.split("&& ", 2)[-1] in ci   # the install-and-test part, verbatim


def test_engine_example_runs():
    code = README.split("## The engine in one screen", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["scores"].shape == (8, 10)
    assert namespace["dx"].shape == (8, 3, 32, 32)
    assert re.search(r"max relative error", code)
