"""GFLOP counts against known answers: the CONV and FC formulas, the zoo's published MAC counts."""

from __future__ import annotations

import pytest

import cnnkit as ck
from cnnkit.bench import layer_flops, net_flops


def test_conv_is_2_K_C_F_F_H2_W2_N():
    N, C, K, F, H, S, P = 3, 5, 7, 3, 11, 2, 1
    H2 = (H - F + 2 * P) // S + 1          # the notes' formula: 6
    layer = ck.Conv2D(C, K, F, S, P)
    assert layer_flops(layer, (C, H, H), N) == 2 * K * C * F * F * H2 * H2 * N == 2 * 7 * 5 * 9 * 36 * 3


def test_grouped_and_rectangular_conv_and_fc():
    grouped = ck.Conv2D(8, 12, (3, 5), padding=(1, 2), groups=4)   # each filter sees 8/4 channels
    assert layer_flops(grouped, (8, 10, 10), 2) == 2 * 12 * 2 * 3 * 5 * 10 * 10 * 2
    assert layer_flops(ck.FC(300, 40), (3, 10, 10), 5) == 2 * 300 * 40 * 5
    assert layer_flops(ck.MaxPool2D(2), (3, 8, 8), 4) == 0
    assert layer_flops(ck.ReLU(), (3, 8, 8), 4) == 0


def test_net_flops_forward_and_backward_by_hand():
    net = ck.build("INPUT[8x8x3] -> CONV3-4p1 -> RELU -> POOL2 -> FC10")
    conv, fc = 2 * 4 * 3 * 9 * 8 * 8, 2 * (4 * 4 * 4) * 10
    assert net_flops(net, batch=2) == 2 * (conv + fc)
    assert net_flops(net, batch=2, backward=True) == 3 * 2 * (conv + fc)      # dW and dX: two more forwards
    net.input_grad = False                                                   # the image needs no dX
    assert net_flops(net, batch=2, backward=True) == 3 * 2 * (conv + fc) - 2 * conv


BIG = pytest.mark.slow   # hundreds of MB of FC weights to build
@pytest.mark.parametrize("name, gmacs", [pytest.param("vgg16", 15.47, marks=BIG), ("resnet18", 1.814),
                                         ("resnet50", 4.089), pytest.param("alexnet", 0.714, marks=BIG),
                                         ("googlenet", 1.498)])
def test_zoo_matches_published_multiply_adds(name, gmacs):
    # published MACs at 224x224 (torchvision / fvcore counts, CONV and FC layers)
    net = ck.models.get(name)
    assert net_flops(net) / 2e9 == pytest.approx(gmacs, rel=2e-3)
