"""The zoo: published parameter counts, shapes, and spec round trips for every model."""

import numpy as np
import pytest

import cnnkit.models as models
from cnnkit.notation import SpecError, build, to_spec

BIG = {"alexnet", "alexnet_original", "zfnet"} | {n for n in models.names() if n.startswith("vgg")}


@pytest.mark.slow
@pytest.mark.parametrize("name,count", sorted(models.PUBLISHED_PARAMS.items()))
def test_published_parameter_counts(name, count):
    net = models.get(name)
    assert net.num_params() == count
    assert net.output_shape(net.input_shape) == (1000,)
    if name not in BIG:   # big ones round-trip at a small input below (their weights are 0.25-0.6 GB)
        assert build(to_spec(net)).config() == net.config()


def test_other_counts():
    # Caffe's bvlc_alexnet (two groups): 60,965,224; LeNet-5 with full C3: 61,706.
    assert models.get("alexnet_original").num_params() == 60_965_224
    assert models.get("lenet5").num_params() == 61_706
    assert models.get("resnet34").num_params() == 21_797_672


@pytest.mark.parametrize("name", models.names())
def test_every_model_round_trips(name):
    # Big models at a small input: the same layers, smaller FC weights.
    size = {"alexnet": 63, "alexnet_original": 67, "zfnet": 63}.get(name, 32 if name in BIG else None)
    net = models.get(name, num_classes=7, input_size=size)
    spec = to_spec(net)
    assert build(spec).config() == net.config()
    assert net.output_shape(net.input_shape) == (7,)


def test_shapes_along_the_way():
    alex = models.get("alexnet_original", input_size=227)
    s, shapes = alex.input_shape, []
    for layer in alex.children():
        s = layer.output_shape(s)
        shapes.append(s)
    assert (96, 55, 55) in shapes and (256, 27, 27) in shapes and (256, 6, 6) in shapes
    # torchvision's AlexNet: 64x55x55, 192x27x27, 256x6x6; the adaptive pool is the identity
    tv = build(models.spec("alexnet", input_size=224).split(" -> FC4096")[0].rsplit(" -> DROPOUT", 1)[0])
    assert tv.output_shape((3, 224, 224)) == (256, 6, 6)
    assert type(tv.children()[-1]).__name__ == "AvgPool2D"
    zf = build(models.spec("zfnet").split(" -> FC4096")[0])
    first = zf.children()[0]
    assert first.kernel_size == (7, 7) and first.stride == (2, 2)
    assert first.output_shape((3, 224, 224)) == (96, 110, 110) and zf.output_shape((3, 224, 224)) == (256, 6, 6)


def test_googlenet_layout():
    spec = models.spec("googlenet")
    assert spec.count("CAT[") == 9 and "GAP" in spec and spec.count("FC") == 1
    net = models.get("googlenet", num_classes=10, input_size=64)
    cats = [l for l in net.layers() if type(l).__name__ == "Concat"]
    assert len(cats) == 9
    assert all("bias" not in l.params for l in net.layers() if type(l).__name__ == "Conv2D")


def test_resnet_layout_and_forward():
    net = models.get("resnet18", num_classes=10, input_size=32)
    res = [l for l in net.layers() if type(l).__name__ == "Residual"]
    assert len(res) == 8 and sum(r.shortcut is not None for r in res) == 3
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    assert net.forward(x).shape == (2, 10)
    assert len([l for l in models.get("resnet50", input_size=32).layers() if type(l).__name__ == "Residual"]) == 16


def test_cifar_patterns_and_names():
    assert models.pattern(2, 3, 2) == ("INPUT[32x32x3] -> [[CONV3-32 -> RELU]*2 -> [POOL2]*1]*3"
                                       " -> [FC512 -> RELU]*2 -> FC10")
    assert build(models.pattern(0, 0, 0)).num_params() == 30_730      # INPUT -> FC, linear classifier
    assert to_spec(models.get("cifar10")) == models.spec("cifar10")
    names = models.names()
    for n in ["lenet5", "alexnet", "alexnet_original", "zfnet", "vgg11", "vgg13", "vgg16", "vgg19", "vgg16_bn",
              "googlenet", "resnet18", "resnet34", "resnet50", "cifar10"]:
        assert n in names
    assert models.get("VGG-11", input_size=(32, 32)).input_shape == (3, 32, 32)
    with pytest.raises(SpecError, match="unknown model"):
        models.get("vgg17")


def test_unknown_names_list_the_zoo_everywhere():
    from cnnkit.summary import summary
    for call in (lambda: models.get("resnet101"), lambda: build("resnet101"), lambda: summary("resnet101")):
        with pytest.raises(SpecError) as e:
            call()
        assert "unknown model 'resnet101': did you mean resnet18, resnet34, resnet50?" in str(e.value)
        assert ", ".join(models.names()) in str(e.value)
    with pytest.raises(SpecError, match="did you mean vgg11, vgg11_bn, vgg13"):
        build("vgg")
    with pytest.raises(SpecError, match="CONV needs a number of filters"):
        build("CONV3")       # a layer's name is a spec, not a model name


def test_info_counts_a_dry_build():
    info = models.info("VGG-16")
    assert (info.name, info.params, info.input, info.classes) == ("vgg16", 138_357_544, "224x224x3", 1000)
    assert info.about.startswith("VGGNet")
    assert models.info("lenet5").params == 61_706


def test_input_size_in_hwc_is_refused_with_the_right_form():
    with pytest.raises(SpecError, match=r"input_size: \(64, 64, 3\) looks like \(H, W, C\).*pass \(3, 64, 64\)"):
        models.get("cifar10", input_size=(64, 64, 3))
    assert models.get("cifar10", input_size=(3, 64, 64)).input_shape == (3, 64, 64)
