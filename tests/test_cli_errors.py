"""Every subcommand, walked with bad inputs: exit 1 (2 for usage), one line on stderr naming
the command, no traceback; and the first hour's friction (unknown model names, `cnnkit
models`, a closed pipe)."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest

from cnnkit import models
from cnnkit.cli import SUBCOMMANDS, build_parser, main

TINY = "INPUT[8x8x1] -> CONV3-4 -> RELU -> POOL2 -> FC10"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A trained run folder, a text file, an image of the wrong size, one of the right size."""
    from PIL import Image

    root = tmp_path_factory.mktemp("cli")
    assert main(["train", "--model", TINY, "--epochs", "1", "--out", str(root / "run"), "--quiet"]) == 0
    (root / "notes.txt").write_text("not an image, not a checkpoint")
    Image.fromarray(np.zeros((16, 12), np.uint8)).save(root / "big.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "ok.png")
    return root


# (argv with {run}, {txt}, {big}, {ok}, {tmp} placeholders, exit code, a phrase of the message)
BAD = [
    (["frobnicate"], 2, "invalid choice"),
    (["--bogus"], 2, "unrecognized arguments"),
    # train / eval (part C's commands: only inputs whose checks already exist)
    (["train", "--epochs", "x"], 2, "invalid int value"),
    (["train", "--epochs", "0", "--out", "{tmp}/t1"], 1, "epochs must be a positive integer"),
    (["train", "--seed", "-1", "--out", "{tmp}/t2"], 1, "seed"),
    (["train", "--model", "resnet101", "--out", "{tmp}/t3"], 1, "unknown model 'resnet101'"),
    (["train", "--model", "INPUT[8x8x1] -> CONV3-8/0 -> FC10", "--out", "{tmp}/t4"], 1, "CONV3-8/0"),
    (["train", "--model", "INPUT[8x8x1] -> CONV3-100000000 -> FC10", "--out", "{tmp}/t5"], 1, "over the limit"),
    (["train", "--model", "INPUT[8x8x1] -> [[[RELU]*1000]*1000]*1000 -> FC10", "--out", "{tmp}/t6"], 1,
     "1,000,000,001 layers"),
    (["train", "--out", "{txt}"], 1, "is a file"),
    (["eval", "{tmp}/missing.safetensors"], 1, "no such checkpoint"),
    (["eval", "--batch-size", "0", "{run}"], 1, "batch-size"),
    (["eval", "--split", "bogus", "{run}"], 2, "invalid choice"),
    (["eval", "--data", "imagenet", "{run}"], 1, "unknown dataset"),
    # predict
    (["predict", "{tmp}/missing", "{ok}"], 1, "no such checkpoint"),
    (["predict", "{run}", "{big}"], 1, "the model takes 8x8 grayscale (1-channel) images, white digits on"),
    (["predict", "{run}", "{txt}"], 1, "not an image Pillow can read"),
    (["predict", "{run}", "{tmp}/none.png"], 1, "no such image file"),
    (["predict", "{run}", "{ok}", "--top", "0"], 2, "--top: expected a whole number >= 1"),
    (["predict", "{run}"], 2, "required: IMAGE"),
    # summary
    (["summary"], 2, "required: MODEL_OR_SPEC"),
    (["summary", "cifar10", "--fit", "1.2.3GB"], 2, "expected a size like 4GB"),
    (["summary", "cifar10", "--batch", "0"], 2, "--batch: expected a whole number >= 1"),
    (["summary", "cifar10", "--input", "abc"], 2, "a volume is W x H x D"),
    (["summary", "resnet101"], 1, "unknown model 'resnet101': did you mean resnet18, resnet34, resnet50?"),
    (["summary", "vgg"], 1, "unknown model 'vgg': did you mean vgg11"),
    (["summary", "INPUT[32x32x3] -> BN(num_features=-1)"], 1, "num_features is inferred from the input"),
    (["summary", "INPUT[32x32x3] -> NORM(size='x')"], 1, "LRN: size must be an int >= 1, got 'x'"),
    (["summary", "INPUT[32x32x3] -> CONV3-8/0"], 1, "stride, dilation >= 1"),
    (["summary", "INPUT[32x32x3] -> POOL0"], 1, "need kernel_size"),
    (["summary", "INPUT[32x32x3] -> CONV3-8g0"], 1, "groups must be >= 1, got 0"),
    (["summary", "INPUT[32x32x3] -> NORM0"], 1, "LRN: size must be >= 1, got 0"),
    (["summary", "INPUT[32x32x3] -> DROPOUT(p='a')"], 1, "Dropout: p must be in [0, 1)"),
    (["summary", "INPUT[32x32x3] -> BN(eps=-1)"], 1, "eps must be a finite number >= 0.0"),
    (["summary", "INPUT[32x32x3] -> [[[RELU]*1000]*1000]*1000"], 1, "1,000,000,000 layers"),
    (["summary", "INPUT[32x32x3] -> " + "[" * 500 + "RELU" + "]" * 500], 1, "nest more than 64 deep"),
    (["summary", "INPUT[32x32x3] -> " + "RES[" * 500 + "RELU" + "]" * 500], 1, "nest more than 64 deep"),
    (["summary", "INPUT[32x32x3] -> CONV3-99999999999"], 1, "has 11 digits"),
    (["summary", "INPUT[32x32x3] -> FOO10"], 1, "expected a layer"),
    # lint
    (["lint", "INPUT[32x32x3] -> CONV3-8g3"], 1, "the spec does not build"),
    (["lint", "INPUT[32x32x3] -> CONV3-8/0"], 1, "the spec does not build"),
    (["lint", "INPUT[32x32x3] -> BN(num_features=-1)"], 1, "the spec does not build"),
    (["lint", "vgg"], 1, "unknown model 'vgg'"),
    (["lint", "cifar10", "--input", "0x0x3"], 2, "a volume is W x H x D"),
    # models
    (["models", "extra"], 2, "unrecognized arguments"),
    # the other parts' commands, with inputs their own checks handle
    (["slide", "{tmp}/missing", "{ok}"], 1, "no such checkpoint"),
    (["slide", "--stride", "0", "{run}", "{ok}"], 1, "--stride 0"),
    (["slide", "--scales", "abc", "{run}", "{ok}"], 1, "--scales"),
    (["slide", "{run}", "{txt}"], 1, "not an image Pillow can read"),
    (["viz", "{tmp}/missing"], 1, "no such checkpoint"),
    (["viz", "{run}", "{txt}", "--out", "{tmp}/v1"], 1, "not an image Pillow can read"),
    (["viz", "--index", "99999999", "{run}", "--out", "{tmp}/v2"], 1, "--index 99999999"),
    (["export", "{tmp}/missing", "{tmp}/o.onnx"], 1, "no such checkpoint"),
    (["export", "--opset", "x", "{run}", "{tmp}/o.onnx"], 2, "invalid int value"),
    (["export", "--opset", "1", "{run}", "{tmp}/o.onnx"], 1, "opset"),
    (["import-torch", "--model", "vgg", "{txt}", "{tmp}/w"], 1, "unknown model 'vgg'"),
    (["import-torch", "--model", "resnet18", "{tmp}/missing.pth", "{tmp}/w"], 1, "No such file"),
    (["import-torch", "{txt}", "{tmp}/w"], 2, "required: --model"),
    (["demo", "--port", "abc"], 2, "invalid int value"),
    (["demo", "--data", "imagenet", "--port", "1"], 1, "unknown dataset"),
    (["demo", "--model", "resnet101", "--port", "1"], 1, "unknown model 'resnet101'"),
    (["bench", "--threads", "0"], 1, "--threads"),
    (["bench", "nosuchsection"], 1, "unknown section"),
    (["bench", "profile", "resnet101"], 1, "unknown model 'resnet101'"),
]


def run_cli(argv):
    """(exit code, stderr) of cnnkit argv run in this process (argparse's exit included)."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


@pytest.mark.parametrize("argv, code, phrase", BAD, ids=[" ".join(a)[:60] for a, _, _ in BAD])
def test_bad_input_is_one_line_and_an_exit_code(argv, code, phrase, files, capsys):
    slots = dict(run=files / "run", txt=files / "notes.txt", big=files / "big.png", ok=files / "ok.png", tmp=files)
    argv = [a.format(**slots) if "{" in a else a for a in argv]
    capsys.readouterr()
    assert run_cli(argv) == code
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    # argparse reports arguments no subcommand took from the top: 'cnnkit: error: unrecognized ...'
    prog = f"cnnkit {argv[0]}" if argv[0] in SUBCOMMANDS and "unrecognized" not in phrase else "cnnkit"
    assert lines[0].startswith(f"{prog}: error: "), lines[0]
    assert phrase in lines[0]
    assert "Traceback" not in err


def test_the_table_walks_every_subcommand_that_help_lists():
    listed = set(re.findall(r"^    ([a-z][a-z-]*)\s", build_parser().format_help(), re.M))
    assert listed == set(SUBCOMMANDS)
    assert listed <= {argv[0] for argv, _, _ in BAD}


def cli(*argv, **kw):
    return subprocess.run([sys.executable, "-m", "cnnkit.cli", *argv], capture_output=True, text=True,
                          timeout=120, **kw)


def test_installed_command_no_traceback_on_bad_specs():
    for spec in ("INPUT[32x32x3] -> " + "[" * 500 + "RELU" + "]" * 500, "resnet101",
                 "INPUT[32x32x3] -> BN(num_features=-1)"):
        proc = cli("summary", spec)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1


def test_a_closed_pipe_ends_quietly():
    """`cnnkit summary --all googlenet | head -1`: the reader leaves early; exit 0, nothing on stderr."""
    proc = subprocess.Popen([sys.executable, "-m", "cnnkit.cli", "summary", "--all", "googlenet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 0
    assert err == b""


def test_models_lists_the_zoo_with_parameter_counts(capsys):
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line.split()[1:4] for line in lines[1:] if line and line.split()[0] in models.names()}
    assert sorted(rows) == models.names()
    for name, published in models.PUBLISHED_PARAMS.items():
        assert rows[name][0] == f"{published:,}"
    assert rows["lenet5"] == ["61,706", "32x32x1", "10"]
    assert rows["vgg16"][1:] == ["224x224x3", "1000"]


def test_summary_of_a_net_too_big_to_build_prints_its_figures(capsys):
    assert main(["summary", "INPUT[32x32x3] -> CONV3-100000000"]) == 0
    out = capsys.readouterr().out
    assert "(3*3*3)*100000000 = 2,700,000,000" in out and "TOTAL params: 2.8G (2,800,000,000)" in out
    assert "cnnkit.build refuses to build this network for real" in out


def test_lint_of_a_spec_that_builds_still_says_no_warnings(capsys):
    assert main(["lint", "cifar10"]) == 0
    assert "no warnings" in capsys.readouterr().out
