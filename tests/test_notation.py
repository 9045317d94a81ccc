"""The model language: parse, build, to_spec round trips, errors with carets, lint."""

import numpy as np
import pytest

from cnnkit.errors import CnnkitError, ShapeError
from cnnkit.notation import SpecError, SpecShapeError, build, lint, parse, to_spec

BRIEF = "INPUT[32x32x3] -> [[CONV3-32 -> RELU]*2 -> POOL2]*3 -> [FC512 -> RELU]*2 -> FC10"


def kinds(net):
    return [type(l).__name__ for l in net.children()]


def test_brief_example_shapes_and_round_trip():
    net = build(BRIEF)
    assert kinds(net)[:5] == ["Conv2D", "ReLU", "Conv2D", "ReLU", "MaxPool2D"]
    assert net.output_shape((3, 32, 32)) == (10,)
    convs = [l for l in net.children() if type(l).__name__ == "Conv2D"]
    assert [c.in_channels for c in convs] == [3, 32, 32, 32, 32, 32]   # inferred, never written
    assert all(c.padding == (1, 1) and c.stride == (1, 1) for c in convs)  # P = (F-1)/2
    fcs = [l for l in net.children() if type(l).__name__ == "FC"]
    assert [f.in_features for f in fcs] == [4 * 4 * 32, 512, 512]
    assert to_spec(net) == BRIEF
    assert build(to_spec(net)).config() == net.config()


def test_notes_first_example_volumes():
    # S2: 32x32x3 -> 32x32x12 -> 32x32x12 -> 16x16x12 -> 1x1x10
    net = build("INPUT[32x32x3] -> CONV3-12 -> RELU -> POOL2 -> FC10")
    shapes, s = [], (3, 32, 32)
    for layer in net.children():
        s = layer.output_shape(s)
        shapes.append(s)
    assert shapes == [(12, 32, 32), (12, 32, 32), (12, 16, 16), (10,)]


def test_explicit_stride_padding_dilation_groups():
    net = build("INPUT[227x227x3] -> CONV11-96/4p0 -> CONV5-256g2 -> CONV3-8d2 -> CONV3-8/2p1floor")
    c1, c2, c3, c4 = net.children()
    assert (c1.kernel_size, c1.stride, c1.padding) == ((11, 11), (4, 4), (0, 0))
    assert c1.output_shape((3, 227, 227)) == (96, 55, 55)       # S6
    assert c1.num_params() == 34_944                              # S6: 34,848 weights + 96 biases
    assert c2.groups == 2 and c2.params["weight"].shape == (256, 48, 5, 5)
    assert c3.dilation == (2, 2) and c3.padding == (2, 2)         # size preserving with the gaps
    assert c4.rounding == "floor"
    assert net.output_shape((3, 227, 227)) == (8, 28, 28)
    assert build(to_spec(net)).config() == net.config()


def test_pools_and_other_layers():
    net = build("INPUT[32x32x3] -> CONV3-8nb -> BN -> RELU -> POOL3/2ceil -> NORM -> AVGPOOL2 -> "
                "L2POOL2 -> LC3-4 -> GAP -> FLATTEN -> DROPOUT0.25 -> FC10nb")
    assert kinds(net) == ["Conv2D", "BatchNorm2D", "ReLU", "MaxPool2D", "LRN", "AvgPool2D", "L2Pool2D",
                          "LocallyConnected2D", "GlobalAvgPool2D", "Flatten", "Dropout", "FC"]
    c = net.children()
    assert "bias" not in c[0].params and c[1].num_features == 8
    assert c[3].output_shape((8, 32, 32)) == (8, 16, 16)     # (32-3)/2+1 = 15.5 -> ceil 16
    assert c[7].input_size == (4, 4)
    assert c[10].p == 0.25 and "bias" not in c[11].params
    assert net.output_shape((3, 32, 32)) == (10,)
    assert build(to_spec(net)).config() == net.config()


def test_keyword_settings_and_nested_seq():
    net = build("INPUT[8x8x2] -> BN(eps=0.001, momentum=0.5) -> NORM3(k=1.0) -> SEQ[CONV1-4 -> RELU]"
                " -> DROPOUT(seed=7)")
    bn, lrn, seq, drop = net.children()
    assert (bn.eps, bn.momentum, lrn.size, lrn.k, drop.seed) == (0.001, 0.5, 3, 1.0, 7)
    tiny = build("INPUT[4] -> DROPOUT0.00001 -> FC2")
    assert to_spec(tiny) == "INPUT[4] -> DROPOUT0.00001 -> FC2"
    assert type(seq).__name__ == "Sequential" and len(seq) == 2
    assert build(to_spec(net)).config() == net.config()


def test_repeat_zero_is_the_notes_optional_pool():
    with_pool = build("INPUT[16x16x3] -> [[CONV3-4 -> RELU]*1 -> [POOL2]*1]*2 -> FC10")
    without = build("INPUT[16x16x3] -> [[CONV3-4 -> RELU]*1 -> [POOL2]*0]*2 -> FC10")
    assert kinds(with_pool).count("MaxPool2D") == 2 and "MaxPool2D" not in kinds(without)
    linear = build("INPUT[32x32x3] -> [[CONV3-4 -> RELU]*0]*0 -> [FC5 -> RELU]*0 -> FC10")
    assert kinds(linear) == ["FC"] and linear.num_params() == 3072 * 10 + 10   # S1: 3,072 weights


def test_residual_and_concat_blocks():
    net = build("INPUT[8x8x4] -> RES[CONV3-4 -> RELU -> CONV3-4] -> RES[CONV3-8/2p1floor | CONV1-8/2floor]"
                " -> CAT[CONV1-2 | CONV3-3 -> RELU | POOL3/1p1 -> CONV1-5]")
    r1, r2, cat = net.children()
    assert type(r1).__name__ == "Residual" and r1.shortcut is None
    assert type(r2.shortcut).__name__ == "Conv2D"
    assert cat.output_shape((8, 4, 4)) == (10, 4, 4)
    assert net.output_shape((4, 8, 8)) == (10, 4, 4)
    x = np.random.default_rng(0).standard_normal((2, 4, 8, 8)).astype(np.float32)
    assert net.forward(x).shape == (2, 10, 4, 4)
    assert build(to_spec(net)).config() == net.config()


def test_notes_vgg16_listing_builds_as_printed():
    listing = """
INPUT: [224x224x3]        memory:  224*224*3=150K   weights: 0
CONV3-64: [224x224x64]  memory:  224*224*64=3.2M   weights: (3*3*3)*64 = 1,728
CONV3-64: [224x224x64]  memory:  224*224*64=3.2M   weights: (3*3*64)*64 = 36,864
POOL2: [112x112x64]  memory:  112*112*64=800K   weights: 0
CONV3-128: [112x112x128]  memory:  112*112*128=1.6M   weights: (3*3*64)*128 = 73,728
CONV3-128: [112x112x128]  memory:  112*112*128=1.6M   weights: (3*3*128)*128 = 147,456
POOL2: [56x56x128]  memory:  56*56*128=400K   weights: 0
CONV3-256: [56x56x256]  memory:  56*56*256=800K   weights: (3*3*128)*256 = 294,912
CONV3-256: [56x56x256]  memory:  56*56*256=800K   weights: (3*3*256)*256 = 589,824
CONV3-256: [56x56x256]  memory:  56*56*256=800K   weights: (3*3*256)*256 = 589,824
POOL2: [28x28x256]  memory:  28*28*256=200K   weights: 0
CONV3-512: [28x28x512]  memory:  28*28*512=400K   weights: (3*3*256)*512 = 1,179,648
CONV3-512: [28x28x512]  memory:  28*28*512=400K   weights: (3*3*512)*512 = 2,359,296
CONV3-512: [28x28x512]  memory:  28*28*512=400K   weights: (3*3*512)*512 = 2,359,296
POOL2: [14x14x512]  memory:  14*14*512=100K   weights: 0
CONV3-512: [14x14x512]  memory:  14*14*512=100K   weights: (3*3*512)*512 = 2,359,296
CONV3-512: [14x14x512]  memory:  14*14*512=100K   weights: (3*3*512)*512 = 2,359,296
CONV3-512: [14x14x512]  memory:  14*14*512=100K   weights: (3*3*512)*512 = 2,359,296
POOL2: [7x7x512]  memory:  7*7*512=25K   weights: 0
FC: [1x1x4096]  memory:  4096   weights: 7*7*512*4096 = 102,760,448
FC: [1x1x4096]  memory:  4096   weights: 4096*4096 = 16,777,216
FC: [1x1x1000]  memory:  1000   weights: 4096*1000 = 4,096,000
TOTAL memory: 24M * 4 bytes ~= 93MB / image (only forward! ~*2 for bwd)
TOTAL params: 138M parameters
"""
    tree = parse(listing)
    assert tree.input_shape == (3, 224, 224) and len(tree.items) == 21
    # Parsing is cheap; building allocates 553 MB, which test_summary does once.
    assert [a.K for a in tree.items if a.kind == "FC"] == [4096, 4096, 1000]


def test_listing_volume_mismatch_is_reported():
    with pytest.raises(SpecShapeError) as e:
        build("INPUT: [32x32x3]\nCONV3-8: [32x32x8]\nPOOL2: [15x15x8]\n")
    assert "[15x15x8]" in str(e.value) and "[16x16x8]" in str(e.value) and "line 3" in str(e.value)


def test_syntax_error_has_position_and_caret():
    spec = "INPUT[32x32x3] -> CONV3-16 -> RELU -> PUOL2 -> FC10"
    with pytest.raises(SpecError) as e:
        build(spec)
    err = e.value
    assert isinstance(err, CnnkitError) and err.pos == spec.index("PUOL2")
    lines = str(err).splitlines()
    assert lines[-1].index("^") - 2 == spec.index("PUOL2") and lines[-2].strip() == spec
    assert "column 39" in lines[0]
    for bad, where in [("INPUT[32x32x3] -> CONV3 -> FC10", "CONV3"), ("INPUT[32x32x3] -> [CONV3-4 -> RELU", None),
                       ("INPUT[32x32x3] -> POOL2g2", "g2"), ("INPUT[32x32] -> FC10", "32x32"),
                       ("CONV3-4", None), ("INPUT[8x8x3] -> CONV2-4", "CONV2")]:
        with pytest.raises(SpecError) as e:
            build(bad)
        if where:
            assert e.value.pos == bad.index(where), (bad, e.value)


def test_sizes_that_do_not_fit_name_layer_and_numbers():
    # S5: W = 10, F = 3, S = 2, P = 0 gives 4.5
    spec = "INPUT[10x10x3] -> CONV3-16/2p0 -> RELU"
    with pytest.raises(SpecShapeError) as e:
        build(spec)
    assert isinstance(e.value, ShapeError) and e.value.pos == spec.index("CONV3-16/2p0")
    assert "CONV3-16/2p0" in str(e.value) and "(10 - 3 + 0)/2 + 1 = 4.5" in str(e.value)
    with pytest.raises(SpecShapeError, match="needs a W x H x D volume"):
        build("INPUT[8x8x3] -> FC10 -> CONV3-4")
    with pytest.raises(SpecShapeError, match="RES"):
        build("INPUT[8x8x3] -> RES[CONV3-4]")


def test_to_spec_needs_or_takes_input_shape():
    from cnnkit.layers import FC, Conv2D, ReLU, Sequential
    assert to_spec(Sequential(FC(10, 3))) == "INPUT[10] -> FC3"
    net = Sequential(Conv2D(3, 8, 3, padding=1), ReLU())
    with pytest.raises(SpecError):
        to_spec(net)
    assert to_spec(net, (3, 16, 16)) == "INPUT[16x16x3] -> CONV3-8 -> RELU"
    assert to_spec(net, "16x16x3") == "INPUT[16x16x3] -> CONV3-8 -> RELU"


def test_build_input_shape_argument_replaces_input():
    net = build("[CONV3-4 -> RELU]*2 -> FC10", input_shape="8x8x3")
    assert net.output_shape((3, 8, 8)) == (10,)
    with pytest.raises(SpecError, match="INPUT"):
        build("CONV3-4 -> FC10")


def rules(spec):
    return [w.rule for w in lint(spec)]


def test_lint_each_rule_quotes_the_notes():
    assert rules(BRIEF) == []
    assert "input-div2" in rules("INPUT[30x30x3] -> [CONV3-8 -> RELU -> POOL2]*2 -> FC10")
    assert rules("INPUT[32x32x3] -> CONV3-8p0 -> FC10") == ["conv-preserve"]
    assert rules("INPUT[32x32x3] -> CONV7-8/2p3floor -> CONV7-8 -> FC10").count("small-filters") == 1
    assert "pool-size" in rules("INPUT[32x32x3] -> CONV3-8 -> POOL4 -> FC10")
    ws = lint("INPUT[10x10x3] -> CONV3-16/2p0")
    assert [w.rule for w in ws] == ["tiling"] and "4.5" in ws[0].message and ws[0].pos == 18
    assert "drops the last 1 input pixel" in lint("INPUT[10x10x3] -> CONV3-16/2p0floor")[0].message
    assert "no input lost" in lint("INPUT[56x56x3] -> CONV3-16/2p1floor")[0].message
    import cnnkit.models as models
    assert "input-div2" not in rules(models.spec("resnet18"))   # RES branches count once
    w = lint("INPUT[32x32x3] -> CONV3-8 -> POOL4 -> FC10")[0]
    assert "receptive field sizes for max pooling larger than 3" in str(w)


def test_lint_zoo_alexnet_227():
    import cnnkit.models as models
    assert "input-div2" in rules(models.spec("alexnet_original"))
    assert rules(models.spec("vgg16")) == []


def test_lint_cli(capsys):
    from cnnkit.cli import main
    assert main(["lint", "INPUT[32x32x3] -> CONV3-8p0 -> FC10"]) == 1
    out = capsys.readouterr().out
    assert "P = (F - 1)/2" in out and "1 warning" in out
    assert main(["lint", "cifar10"]) == 0


# --- property: any chain the grammar can write round-trips ---------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_SPATIAL = st.sampled_from(["CONV3-{k}", "CONV1-{k}nb", "CONV5-{k}", "CONV3-{k}d2", "RELU", "BN", "NORM",
                            "POOL2", "POOL3/2ceil", "AVGPOOL2", "DROPOUT0.25", "CONV3-{k}/2p1floor",
                            "RES[CONV3-{c} -> RELU]", "CAT[CONV1-{k} | POOL3/1p1]"])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(_SPATIAL, st.integers(1, 4), st.integers(1, 2)), max_size=6),
       st.integers(0, 2), st.integers(1, 3))
def test_random_chains_round_trip(items, hidden, depth):
    shape, parts = [depth, 16, 16], []
    for token, k, rep in items:
        c = shape[0]
        text = token.format(k=k, c=c)
        if ("POOL" in text and "CAT" not in text or "/2" in text) and shape[1] < 4:
            continue
        parts.append(f"[{text}]*{rep}" if rep > 1 and not any(s in text for s in ("POOL", "/2", "RES")) else text)
        net = build(f"INPUT[{shape[2]}x{shape[1]}x{shape[0]}] -> {parts[-1]}")
        shape = list(net.output_shape(tuple(shape)))
    spec = "INPUT[16x16x%d] -> " % depth + " -> ".join(parts + [f"FC{hidden + 2}"] * (hidden + 1))
    net = build(spec)
    again = build(to_spec(net))
    assert again.config() == net.config()
    assert to_spec(again) == to_spec(net)


def test_a_network_knows_its_spec():
    import cnnkit as ck
    text = "INPUT[32x32x3] -> [[CONV3-32 -> RELU]*2 -> POOL2]*3 -> [FC512 -> RELU]*2 -> FC10"
    net = ck.build(text)
    assert net.spec == text
    again = ck.build(net.spec)
    assert again.config() == net.config() and again.num_params() == net.num_params()


def test_zero_options_are_errors_not_defaults():
    """g0 and NORM0 were read as 'not given' (groups 1, size 5); now they are refused."""
    with pytest.raises(SpecShapeError, match="groups must be >= 1, got 0"):
        build("INPUT[8x8x4] -> CONV3-8g0")
    with pytest.raises(SpecShapeError, match="LRN: size must be >= 1, got 0"):
        build("INPUT[8x8x4] -> NORM0")
    assert build("INPUT[8x8x4] -> NORM3")[0].size == 3 and build("INPUT[8x8x4] -> CONV3-8g2")[0].groups == 2


@pytest.mark.parametrize("spec, message", [
    ("INPUT[8x8x4] -> BN(num_features=-1)", "num_features is inferred from the input [8x8x4] (num_features=4)"),
    ("INPUT[8x8x4] -> NORM(size='x')", "LRN: size must be an int >= 1, got 'x'"),
    ("INPUT[8x8x4] -> NORM(alpha='x')", "LRN: alpha must be a finite number, got 'x'"),
    ("INPUT[8x8x4] -> BN(momentum=2.0)", "momentum must be a finite number in [0.0, 1.0], got 2.0"),
    ("INPUT[8x8x4] -> CONV3-8/0", "S=(0, 0)"),
    ("INPUT[8x8x4] -> POOL0", "F=(0, 0)"),
    ("INPUT[8x8x4] -> CONV3-8d0", "dilation=(0, 0)"),
    ("INPUT[8x8x4] -> DROPOUT(seed=-3)", "seed must be None or an int >= 0, got -3"),
])
def test_bad_settings_name_the_layer_and_the_argument(spec, message):
    with pytest.raises(SpecError) as e:
        build(spec)
    assert message in str(e.value)
    assert "\n" not in e.value.one_line() and spec[len("INPUT[8x8x4] -> "):] in e.value.one_line()


@pytest.mark.parametrize("make, message", [
    (lambda L: L.Conv2D(0, 8, 3), "Conv2D: in_channels must be >= 1, got 0"),
    (lambda L: L.Conv2D(3, -8, 3), "Conv2D: out_channels must be >= 1, got -8"),
    (lambda L: L.Conv2D(3, 8, 3, groups=0), "Conv2D: groups must be >= 1, got 0"),
    (lambda L: L.Conv2D(3, 8, 0), "need kernel_size"),
    (lambda L: L.LocallyConnected2D(3, 0, 3, (8, 8)), "LocallyConnected2D: out_channels must be >= 1, got 0"),
    (lambda L: L.FC(0, 10), "FC: in_features must be >= 1, got 0"),
    (lambda L: L.FC(10, 2.5), "FC: out_features must be an int >= 1, got 2.5"),
    (lambda L: L.BatchNorm2D(-1), "BatchNorm2D: num_features must be >= 1, got -1"),
    (lambda L: L.BatchNorm2D(4, eps=float("nan")), "BatchNorm2D: eps must be a finite number >= 0.0"),
    (lambda L: L.LRN(size=0), "LRN: size must be >= 1, got 0"),
    (lambda L: L.MaxPool2D(2, stride=-1), "need kernel_size, stride"),
    (lambda L: L.Dropout(p=1.0), "Dropout: p must be in [0, 1), got 1.0"),
])
def test_layer_constructors_refuse_zero_and_negative_sizes(make, message):
    from cnnkit import layers
    with pytest.raises(ShapeError) as e:
        make(layers)
    assert message in str(e.value)


def test_as_input_shape_says_what_an_obvious_mistake_is():
    from cnnkit.notation import as_input_shape
    assert as_input_shape((3, 224, 224)) == (3, 224, 224) and as_input_shape("224x224x3") == (3, 224, 224)
    assert as_input_shape((64, 1, 1)) == (64, 1, 1) and as_input_shape([784]) == (784,)
    with pytest.raises(SpecError, match=r"\(224, 224, 3\) looks like \(H, W, C\).*pass \(3, 224, 224\)"):
        build(BRIEF, (224, 224, 3))
    with pytest.raises(SpecError, match=r"looks like a batch \(N, C, H, W\).*pass \(C, H, W\) = \(3, 32, 32\)"):
        build(BRIEF, (16, 3, 32, 32))
    with pytest.raises(SpecError, match=r"input_shape: expected .* sizes from 1 to 999,999,999, got \(3, 0, 32\)"):
        build(BRIEF, (3, 0, 32))
    with pytest.raises(SpecError, match="a volume is W x H x D"):
        build(BRIEF, "32x32")
    with pytest.raises(SpecError, match="looks like"):
        lint(BRIEF, (32, 32, 3))
    with pytest.raises(SpecError, match="looks like"):
        to_spec(build(BRIEF), (32, 32, 3))


def test_one_line_form_of_a_spec_error():
    with pytest.raises(SpecError) as e:
        parse("INPUT[32x32x3] -> CONV3 -> RELU")
    assert e.value.one_line() == ("CONV needs a number of filters: CONV3-K, e.g. CONV3-64 (at column 19: "
                                  "'CONV3 -> RELU')")
    assert str(e.value).count("\n") == 2   # the Python API keeps the caret


def _compress_by_search(tokens):
    """compress() as first written: every period L tried at every position (cubic time)."""
    out, i, n = [], 0, len(tokens)
    while i < n:
        best = (1, 1)
        for L in range(1, (n - i) // 2 + 1):
            k = 1
            while tokens[i + k * L:i + (k + 1) * L] == tokens[i:i + L]:
                k += 1
            if k > 1 and L * k > best[0] * best[1]:
                best = (L, k)
        L, k = best
        out.append("[" + " -> ".join(_compress_by_search(tokens[i:i + L])) + f"]*{k}" if k > 1 else tokens[i])
        i += L * k
    return out


def test_compress_tries_only_periods_that_can_repeat():
    import time

    from cnnkit.notation.write import compress
    rng = np.random.default_rng(0)
    for _ in range(300):
        tokens = [str(t) for t in rng.integers(0, 3, rng.integers(0, 30))]
        assert compress(tokens) == _compress_by_search(tokens)
    t = time.perf_counter()
    assert compress([f"FC{i}" for i in range(10_000)]) == [f"FC{i}" for i in range(10_000)]
    assert time.perf_counter() - t < 2   # the search took minutes on 10,000 distinct layers
