"""FC -> CONV: every zoo model and the notes' CIFAR patterns give the same scores after conversion."""

import re

import numpy as np
import pytest

import cnnkit as ck
from cnnkit import models
from cnnkit.convert import ConvertError, convolutionalize, total_stride
from cnnkit.layers import default_rng

# The smallest inputs each zoo model takes (the sizes tests/test_models.py uses), and larger
# ones where the FC sees more than a 1x1 volume, so the weight layout is exercised.
SMALL = {"alexnet": 63, "alexnet_original": 67, "zfnet": 63}
WIDE = {"alexnet": 95, "alexnet_original": 99, "zfnet": 95, "lenet5": 32}


def small_size(name):
    return SMALL.get(name, 32)


def shrink(spec, by=16):
    """The same architecture with 1/by of the filters and hidden FC neurons (kept >= 1; groups
    of 2 stay even): fast enough for every zoo model in the default test run."""
    spec = re.sub(r"CONV(\d+)-(\d+)", lambda m: f"CONV{m[1]}-{max(2, int(m[2]) // by)}", spec)
    head, last = spec.rsplit("FC", 1)                    # the class scores keep their number
    return re.sub(r"FC(\d+)", lambda m: f"FC{max(2, int(m[1]) // by)}", head) + "FC" + last


def scores_agree(net, shape, n=2, seed=0):
    """Max |original - converted| over a batch at the training size, and the score scale."""
    net.eval()
    x = np.random.default_rng(seed).standard_normal((n, *shape)).astype(np.float32)
    conv = convolutionalize(net, shape)
    ref = net.forward(x)
    out = conv.forward(x)
    assert out.shape == (n, ref.shape[1], 1, 1)
    return float(np.abs(out.reshape(ref.shape) - ref).max()), float(np.abs(ref).max())


@pytest.mark.parametrize("name", models.names())
def test_every_zoo_architecture_converts_to_the_same_scores(name):
    size = WIDE.get(name, 64 if name.startswith(("vgg", "resnet", "googlenet")) else small_size(name))
    ck.manual_seed(0)   # the same weights every run: the bound is checked on known nets, not on luck
    net = ck.build(shrink(models.spec(name, num_classes=7, input_size=size)))
    diff, scale = scores_agree(net, net.input_shape)
    assert scale > 1e-3          # the scores are not all zero, so the comparison means something
    assert diff <= 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("name", models.names())
def test_every_zoo_model_at_full_width(name):
    ck.manual_seed(0)
    net = models.get(name, num_classes=7, input_size=small_size(name))
    diff, scale = scores_agree(net, net.input_shape, n=1)
    assert scale > 1e-3 and diff <= 1e-5


@pytest.mark.parametrize("N,M,K", [(0, 0, 0), (1, 0, 1), (1, 1, 0), (2, 1, 1), (1, 2, 2), (2, 3, 2), (3, 2, 1),
                                   (1, 3, 0)])
def test_the_notes_cifar_patterns(N, M, K):
    ck.manual_seed(0)
    net = ck.build(models.pattern(N, M, K, width=8, hidden=32))
    diff, scale = scores_agree(net, (3, 32, 32))
    assert scale > 1e-3 and diff <= 1e-5
    assert total_stride(convolutionalize(net, (3, 32, 32))) == (2 ** M, 2 ** M)


def test_the_notes_7x7x512_example_becomes_a_7x7_conv():
    # VGG's first FC looks at 7x7x512: F = 7, S = 1, P = 0, K = 4096 (here 1/16 of the depth).
    net = ck.build(shrink(models.spec("vgg16")))
    conv = convolutionalize(net, (3, 224, 224))
    convs = [l for l in conv.layers() if isinstance(l, ck.Conv2D)]
    first_fc, second, last = convs[-3:]
    assert (first_fc.in_channels, first_fc.out_channels) == (32, 256)
    assert first_fc.kernel_size == (7, 7) and first_fc.stride == (1, 1) and first_fc.padding == (0, 0)
    assert second.kernel_size == (1, 1) and last.kernel_size == (1, 1) and last.out_channels == 1000
    assert not any(isinstance(l, (ck.FC, ck.Flatten)) for l in conv.layers())
    assert sum(isinstance(l, ck.Dropout) for l in conv.layers()) == 2     # dropout stays
    assert conv.output_shape((3, 224, 224)) == (1000, 1, 1)
    body = conv[:[i for i, l in enumerate(conv.children()) if l is first_fc][0]]
    assert body.output_shape((3, 224, 224)) == (32, 7, 7)               # 224/2/2/2/2/2 = 7
    assert body.output_shape((3, 384, 384)) == (32, 12, 12)             # 384/2/2/2/2/2 = 12
    assert conv.output_shape((3, 384, 384)) == (1000, 6, 6)             # (12 - 7)/1 + 1 = 6
    assert conv.total_stride == (32, 32) and conv.input_shape == (3, 224, 224)


def test_fc_weights_are_reshaped_in_c_h_w_order():
    ck.manual_seed(3)
    fc = ck.FC(2 * 3 * 4, 5)
    conv = convolutionalize(ck.Sequential(ck.Flatten(), fc), (2, 3, 4)).children()[0]
    w, cw = fc.params["weight"], conv.params["weight"]
    assert cw.shape == (5, 2, 3, 4)                                      # (K, C, Fh, Fw)
    for k, c, h, x in [(0, 0, 0, 0), (4, 1, 2, 3), (2, 1, 0, 2), (3, 0, 2, 1)]:
        assert cw[k, c, h, x] == w[k, c * 12 + h * 4 + x]
    np.testing.assert_array_equal(conv.params["bias"], fc.params["bias"])


def test_gap_becomes_an_average_pool_of_its_training_window():
    net = ck.build("INPUT[12x12x3] -> CONV3-8p0 -> RELU -> POOL2 -> GAP -> FC5")
    conv = convolutionalize(net)
    pool = [l for l in conv.layers() if isinstance(l, ck.AvgPool2D)]
    assert len(pool) == 1 and pool[0].kernel_size == (5, 5) and pool[0].stride == (1, 1)
    diff, _ = scores_agree(net, (3, 12, 12))
    assert diff <= 1e-6
    resnet = ck.build(shrink(models.spec("resnet18", input_size=224)))
    pools = [l for l in convolutionalize(resnet).layers() if isinstance(l, ck.AvgPool2D)]
    assert [p.kernel_size for p in pools] == [(7, 7)]                    # the 7x7, stride 1


def test_the_original_is_untouched_and_the_copy_is_independent():
    net = ck.build("INPUT[8x8x1] -> CONV3-4 -> BN -> RELU -> POOL2 -> DROPOUT -> FC6 -> RELU -> FC3")
    net.train()
    x = np.random.default_rng(0).standard_normal((4, 1, 8, 8)).astype(np.float32)
    net.forward(x)                                   # training caches and batch-norm statistics
    before = {k: v.copy() for k, v in net.state_dict().items()}
    config = net.config()
    ck.manual_seed(11)
    conv = convolutionalize(net, (1, 8, 8))
    drawn = default_rng().random()
    ck.manual_seed(11)
    assert default_rng().random() == drawn           # conversion draws nothing from the seeded stream
    assert net.config() == config and net.training and not conv.training
    after = net.state_dict()
    assert before.keys() == after.keys() and all(np.array_equal(before[k], after[k]) for k in before)
    for _, p in conv.named_parameters():
        p += 1.0                                     # the converted net's arrays are its own
    assert all(np.array_equal(before[k], net.state_dict()[k]) for k in before)


def test_what_cannot_slide_is_refused_naming_the_layer():
    with pytest.raises(ConvertError, match=r"layer 0 \(LocallyConnected2D.*locally-connected.*cannot slide"):
        convolutionalize(ck.build("INPUT[8x8x1] -> LC3-4 -> RELU -> FC10"))
    with pytest.raises(ConvertError, match=r"\(C, H, W\) image volume.*flat"):
        convolutionalize(ck.Sequential(ck.FC(10, 3)), (10,))
    with pytest.raises(ConvertError, match=r"input_shape"):
        convolutionalize(ck.Sequential(ck.Conv2D(1, 2, 3), ck.FC(2, 3)))
    branches = ck.Sequential(ck.Conv2D(1, 2, 3, padding=1), ck.Concat(ck.FC(2 * 4 * 4, 3), ck.FC(2 * 4 * 4, 3)))
    with pytest.raises(ConvertError, match=r"layer 1 \(Concat.*holds FC.*inside a branch"):
        convolutionalize(branches, (1, 4, 4))
    with pytest.raises(ConvertError, match=r"does not take 9x9x1"):
        convolutionalize(ck.build("INPUT[8x8x1] -> CONV3-4 -> FC10"), (1, 9, 9))

    class Scale(ck.Layer):  # a user's layer on flat vectors: cnnkit cannot know it is elementwise
        def forward(self, x):
            return 2 * x

    net = ck.Sequential(ck.Flatten(), Scale(), ck.FC(16, 2))
    with pytest.raises(ConvertError, match=r"layer 1 \(Scale\(\)\).*flattened.*ReLU, Dropout"):
        convolutionalize(net, (1, 4, 4))


def test_a_fully_convolutional_net_is_copied_as_it_is():
    net = ck.build("INPUT[8x8x2] -> CONV3-4 -> RELU -> POOL2 -> CONV4-3p0")
    conv = convolutionalize(net)
    assert conv.config() == net.config()
    x = np.random.default_rng(1).standard_normal((2, 2, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(conv.forward(x), net.eval().forward(x))
