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


def test_layout_section_is_generated_from_the_tree():
    import subprocess
    import sys
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_layout.py"), "--check"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_how_to_read_the_engine_reaches_the_gemm_in_three_hops():
    """The README walks from Conv2D.forward to the GEMM; every name it cites exists."""
    import importlib
    section = README.split("## How to read the engine", 1)[1].split("\n## ", 1)[0]
    hops = re.findall(r"^\d\. `([\w.]+)`", section, re.M)
    assert 2 <= len(hops) <= 4 and hops[0] == "cnnkit.layers.conv.Conv2D.forward"
    for dotted in hops:
        parts = dotted.split(".")
        for cut in range(len(parts), 0, -1):
            try:
                obj = importlib.import_module(".".join(parts[:cut]))
                break
            except ModuleNotFoundError:
                continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
    assert "np.matmul" in __import__("inspect").getsource(obj)     # the last hop is the GEMM


def test_no_module_imports_another_modules_private_names():
    """Modules share only public names (the redesign's rule), checked on the source."""
    import ast
    offenders = []
    for path in (ROOT / "cnnkit").rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("cnnkit")):
                offenders += [f"{path.relative_to(ROOT)}: {a.name}" for a in node.names
                              if a.name.startswith("_") and not a.name.startswith("__")]
                if any(part.startswith("_") for part in (node.module or "").split(".")):
                    offenders.append(f"{path.relative_to(ROOT)}: from {node.module}")
    assert not offenders, offenders
