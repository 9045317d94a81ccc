"""The notes' VGG table row by row, the memory estimate against tracemalloc, streaming
inference, the CLI, and the generated case-study pages."""

import numpy as np
import pytest

import cnnkit.models as models
from cnnkit.notation import build
from cnnkit.summary import (
    human,
    inference_bound,
    largest_batch,
    measure_inference_peak,
    measure_training_peak,
    summary,
    training_memory,
)

# The notes' VGG-16 table: (layer, volume, memory, weights), as printed there.
NOTES_VGG16 = [
    ("INPUT", "[224x224x3]", "224*224*3=150K", "0"),
    ("CONV3-64", "[224x224x64]", "224*224*64=3.2M", "(3*3*3)*64 = 1,728"),
    ("CONV3-64", "[224x224x64]", "224*224*64=3.2M", "(3*3*64)*64 = 36,864"),
    ("POOL2", "[112x112x64]", "112*112*64=800K", "0"),
    ("CONV3-128", "[112x112x128]", "112*112*128=1.6M", "(3*3*64)*128 = 73,728"),
    ("CONV3-128", "[112x112x128]", "112*112*128=1.6M", "(3*3*128)*128 = 147,456"),
    ("POOL2", "[56x56x128]", "56*56*128=400K", "0"),
    ("CONV3-256", "[56x56x256]", "56*56*256=800K", "(3*3*128)*256 = 294,912"),
    ("CONV3-256", "[56x56x256]", "56*56*256=800K", "(3*3*256)*256 = 589,824"),
    ("CONV3-256", "[56x56x256]", "56*56*256=800K", "(3*3*256)*256 = 589,824"),
    ("POOL2", "[28x28x256]", "28*28*256=200K", "0"),
    ("CONV3-512", "[28x28x512]", "28*28*512=400K", "(3*3*256)*512 = 1,179,648"),
    ("CONV3-512", "[28x28x512]", "28*28*512=400K", "(3*3*512)*512 = 2,359,296"),
    ("CONV3-512", "[28x28x512]", "28*28*512=400K", "(3*3*512)*512 = 2,359,296"),
    ("POOL2", "[14x14x512]", "14*14*512=100K", "0"),
    ("CONV3-512", "[14x14x512]", "14*14*512=100K", "(3*3*512)*512 = 2,359,296"),
    ("CONV3-512", "[14x14x512]", "14*14*512=100K", "(3*3*512)*512 = 2,359,296"),
    ("CONV3-512", "[14x14x512]", "14*14*512=100K", "(3*3*512)*512 = 2,359,296"),
    ("POOL2", "[7x7x512]", "7*7*512=25K", "0"),
    ("FC", "[1x1x4096]", "4096", "7*7*512*4096 = 102,760,448"),
    ("FC", "[1x1x4096]", "4096", "4096*4096 = 16,777,216"),
    ("FC", "[1x1x1000]", "1000", "4096*1000 = 4,096,000"),
]


@pytest.fixture(scope="module")
def vgg16_summary():
    return summary(models.get("vgg16"))


@pytest.mark.slow
def test_vgg16_every_row_equals_the_notes(vgg16_summary):
    rows = vgg16_summary.rows
    assert len(rows) == len(NOTES_VGG16)
    for row, (layer, volume, memory, weights) in zip(rows, NOTES_VGG16):
        assert row.layer.startswith(layer)
        assert (row.volume, row.memory, row.weights_text) == (volume, memory, weights)
        assert row.notes_line().startswith(f"{row.layer}: {volume} memory: {memory} weights: {weights}")


def test_vgg16_totals_and_the_notes_wrong_total(vgg16_summary):
    s = vgg16_summary
    assert s.total_params == 138_357_544
    assert s.total_activations == 15_237_608            # the notes print 24M
    assert s.forward_bytes == 15_237_608 * 4 and s.forward_backward_bytes == 2 * s.forward_bytes
    text = str(s)
    assert "TOTAL activations: 15.2M (15,237,608)" in text and "TOTAL params: 138M (138,357,544)" in text
    assert sum("24M" in line for line in text.splitlines()) == 1


def test_human_counts_like_the_notes():
    assert [human(n) for n in (150528, 3211264, 802816, 25088, 4096)] == ["150K", "3.2M", "800K", "25K", "4096"]


def test_three_conv3_64_memory_example():
    # A3: three CONV3-64 on 224x224x3 -> ~9.6M activations, ~72 MB with their gradients
    s = summary("INPUT[224x224x3] -> [CONV3-64 -> RELU]*3")
    conv_acts = sum(r.activations for r in s.rows if r.kind == "Conv2D")
    assert conv_acts == 3 * 224 * 224 * 64 == 9_633_792
    assert 70 < conv_acts * 4 * 2 / 2**20 < 75


def test_optimizer_slots_scale_parameter_memory():
    net = build("INPUT[32x32x3] -> FC100")
    P = net.num_params() * 4
    for opt, slots in [("sgd", 0), ("momentum", 1), ("adam", 2)]:
        m = training_memory(net, batch=1, optimizer=opt)
        assert (m.params, m.param_grads, m.slots) == (P, P, slots * P)


@pytest.mark.parametrize("name,size,batch,opt", [
    ("cifar10", 32, 8, "sgd"), ("cifar10", 32, 16, "adam"),
    ("vgg11", 64, 2, "sgd"), ("resnet18", 64, 4, "momentum"),
])
@pytest.mark.slow
def test_training_estimate_within_10_percent_of_tracemalloc(name, size, batch, opt):
    net = models.get(name, num_classes=10, input_size=size)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, *net.input_shape)).astype(np.float32)
    y = rng.integers(0, 10, batch)
    est = training_memory(net, batch=batch, optimizer=opt).total
    measured = measure_training_peak(net, x, y, opt)
    assert abs(est - measured) <= 0.10 * measured, (est, measured)


@pytest.mark.slow
@pytest.mark.parametrize("name,size", [("cifar10", 32), ("vgg11", 64), ("resnet18", 64)])
def test_streaming_inference_holds_two_activations(name, size):
    net = models.get(name, num_classes=10, input_size=size)
    x = np.random.default_rng(0).standard_normal((4, *net.input_shape)).astype(np.float32)
    peak = measure_inference_peak(net, x)
    bound = inference_bound(net, batch=4)
    train = training_memory(net, batch=4).total
    # 1% for Python's own small objects, which tracemalloc also counts
    assert peak <= 1.01 * bound
    assert peak < train


def test_largest_batch_fits():
    net = models.get("cifar10")
    budget = 100 * 2**20
    n = largest_batch(net, budget, optimizer="adam")
    assert n > 1
    assert training_memory(net, batch=n, optimizer="adam").total <= budget
    assert training_memory(net, batch=n + 1, optimizer="adam").total > budget
    assert largest_batch(net, 1000) == 0


def test_summary_cli(capsys):
    from cnnkit.cli import main
    assert main(["summary", "INPUT[32x32x3] -> CONV3-12 -> RELU -> POOL2 -> FC10", "--batch", "4",
                 "--optimizer", "adam", "--fit", "64MB"]) == 0
    out = capsys.readouterr().out
    assert "CONV3-12" in out and "32*32*12=12K" in out and "(3*3*3)*12 = 324" in out
    assert "16*16*12*10 = 30,720" in out and "largest batch that fits" in out
    assert main(["summary", "cifar10", "--input", "64x64x3"]) == 0
    assert "[64x64x32]" in capsys.readouterr().out
    assert main(["summary", "INPUT[10x10x3] -> CONV3-16/2p0"]) == 1
    assert "4.5" in capsys.readouterr().err


@pytest.mark.slow
def test_case_study_pages_are_generated():
    import importlib.util
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("make_case_studies", root / "scripts" / "make_case_studies.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    pages = mod.generate()
    assert set(pages) >= {"lenet.md", "alexnet.md", "zfnet.md", "googlenet.md", "vgg.md", "resnet.md"}
    for name, text in pages.items():
        assert (root / "docs" / "case_studies" / name).read_text() == text, f"regenerate docs/case_studies/{name}"


def test_blocks_and_all_layers_rows():
    s = summary("INPUT[8x8x4] -> RES[CONV3-4 -> RELU -> CONV3-4] -> RELU -> CAT[CONV1-2 | CONV3-3]")
    assert [r.layer for r in s.rows] == ["INPUT", "CONV3-4", "CONV3-4", "RES (add)", "CONV1-2", "CONV3-3",
                                         "CAT (join)"]
    assert [r.depth for r in s.rows] == [0, 1, 1, 0, 1, 1, 0]
    assert s.rows[-1].volume == "[8x8x5]" and s.hidden == 2
    full = summary("INPUT[8x8x4] -> RES[CONV3-4 -> RELU -> CONV3-4] -> RELU", all_layers=True)
    assert [r.layer for r in full.rows].count("RELU") == 2
    assert s.total_params == 2 * (3 * 3 * 4 * 4 + 4) + (4 * 2 + 2) + (3 * 3 * 4 * 3 + 3)
    lenet = summary(models.get("lenet5"))
    assert lenet.total_params == 61_706 and "(5*5*6)*16 = 2,400" in str(lenet)


def test_bad_requests_are_cnnkit_errors(capsys):
    from cnnkit.cli import main
    from cnnkit.errors import CnnkitError
    from cnnkit.layers import ReLU, Sequential
    from cnnkit.summary import parse_bytes
    assert parse_bytes("4GB") == 4 * 2**30 and parse_bytes("512 MB") == 512 * 2**20
    with pytest.raises(CnnkitError):
        parse_bytes("lots")
    with pytest.raises(CnnkitError):
        summary(Sequential(ReLU()))
    with pytest.raises(SystemExit) as usage:      # a bad --fit is a usage error, seen before any work
        main(["summary", "cifar10", "--fit", "lots"])
    assert usage.value.code == 2
    err = capsys.readouterr().err
    assert "4GB" in err and len(err.strip().splitlines()) == 1


# The notes' VGG-16 listing exactly as the seed prints it (its PDF extraction wraps the
# weights onto their own lines and cuts some numbers short): build() reads it as printed.
SEED_LISTING = """\
INPUT: [224x224x3]
                         memory: 224*224*3=150K weights: 0
CONV3-64: [224x224x64] memory: 224*224*64=3.2M
                                                weights: (3*3*3)*64 = 1,728
CONV3-64: [224x224x64] memory: 224*224*64=3.2M
                                                weights: (3*3*64)*64 = 36,8
POOL2: [112x112x64] memory: 112*112*64=800K weights: 0
CONV3-128: [112x112x128] memory: 112*112*128=1.6M
                                                   weights: (3*3*64)*128 =
CONV3-128: [112x112x128] memory: 112*112*128=1.6M
                                                   weights: (3*3*128)*128 =
POOL2: [56x56x128] memory: 56*56*128=400K weights: 0
CONV3-256: [56x56x256] memory: 56*56*256=800K
                                                weights: (3*3*128)*256 = 294
CONV3-256: [56x56x256] memory: 56*56*256=800K
                                                weights: (3*3*256)*256 = 589
CONV3-256: [56x56x256]
                                                weights: (3*3*256)*256 = 589
                      memory: 56*56*256=800K
POOL2: [28x28x256] memory: 28*28*256=200K weights: 0
CONV3-512: [28x28x512] memory: 28*28*512=400K
                                                weights: (3*3*256)*512 = 1,1
CONV3-512: [28x28x512] memory: 28*28*512=400K
                                                weights: (3*3*512)*512 = 2,3
CONV3-512: [28x28x512] memory: 28*28*512=400K
                                                weights: (3*3*512)*512 = 2,3
POOL2: [14x14x512] memory: 14*14*512=100K weights: 0
CONV3-512: [14x14x512] memory: 14*14*512=100K
                                                weights: (3*3*512)*512 = 2,3
CONV3-512: [14x14x512] memory: 14*14*512=100K
                                                weights: (3*3*512)*512 = 2,3
CONV3-512: [14x14x512] memory: 14*14*512=100K
                                                weights: (3*3*512)*512 = 2,3
POOL2: [7x7x512] memory: 7*7*512=25K weights: 0
FC: [1x1x4096] memory: 4096 weights: 7*7*512*4096 = 102,760,448
FC: [1x1x4096] memory: 4096 weights: 4096*4096 = 16,777,216
FC: [1x1x1000] memory: 1000 weights: 4096*1000 = 4,096,000
TOTAL memory: 24M * 4 bytes ~= 93MB / image (only forward! ~*2 for bwd)
TOTAL params: 138M parameters
"""


def test_the_notes_listing_as_printed_builds_vgg16_without_relus():
    net = build(SEED_LISTING)
    s = summary(net)
    assert s.total_params == 138_357_544 and s.hidden == 0
    assert [(r.volume, r.memory, r.weights_text) for r in s.rows] == [n[1:] for n in NOTES_VGG16]
    assert any("24M" in r for r in s.remarks)


def test_summary_takes_zoo_names_as_the_cli_does():
    s = summary("vgg16")
    assert s.total_params == 138_357_544 and s.rows[0].shape == (3, 224, 224)
    assert summary("resnet18", (3, 64, 64)).rows[0].shape == (3, 64, 64)


@pytest.mark.parametrize("F,S,P,size", [(7, 2, 3, 65), (11, 4, 0, 67)])
def test_estimate_of_an_image_layers_dx_by_cells_within_10_percent(F, S, P, size):
    """A strided first CONV whose dX is wanted (by the flipped convolution of S x S cells)."""
    import cnnkit as ck
    net = ck.Sequential(ck.Conv2D(3, 16, F, stride=S, padding=P), ck.ReLU(), ck.GlobalAvgPool2D(), ck.Flatten(),
                        ck.FC(16, 10))
    rng = np.random.default_rng(1)
    x = rng.standard_normal((8, 3, size, size)).astype(np.float32)
    est = training_memory(net, batch=8, optimizer="sgd", input_shape=(3, size, size)).total
    measured = measure_training_peak(net, x, rng.integers(0, 10, 8), "sgd")
    assert abs(est - measured) <= 0.10 * measured, (est, measured)
