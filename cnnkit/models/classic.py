"""The notes' case studies before Inception: LeNet-5, AlexNet, ZFNet, VGGNet, as specs.

Each function returns the spec string; ``cnnkit.models.get`` builds it.
"""

from __future__ import annotations


def lenet5(num_classes: int = 10, input_size: str = "32x32x1") -> str:
    """LeNet-5 (LeCun et al. 1998) as commonly reimplemented: ReLU for the scaled tanh,
    average pooling for the trainable subsampling, a fully connected C3 (the paper's
    sparse table has 1,516 weights there) and FC for the RBF output. 61,706 params."""
    return (f"INPUT[{input_size}] -> CONV5-6p0 -> RELU -> AVGPOOL2 -> CONV5-16p0 -> RELU -> AVGPOOL2"
            f" -> FC120 -> RELU -> FC84 -> RELU -> FC{num_classes}")


def alexnet(num_classes: int = 1000, input_size: str = "224x224x3") -> str:
    """AlexNet, single tower, with exactly torchvision's shapes (61,100,840 params).

    torchvision's conv1 is 11x11/4 with P=2 on 224: (224 - 11 + 4)/4 + 1 = 55.25, floored
    to 55 (the notes would say: use 227 and P=0). Its AdaptiveAvgPool2d((6, 6)) is the
    identity on the 6x6 map a 224 input gives; here it is AVGPOOL1 (1x1 window, stride 1),
    the identity at every size."""
    return (f"INPUT[{input_size}] -> CONV11-64/4p2floor -> RELU -> POOL3/2 -> CONV5-192 -> RELU -> POOL3/2"
            f" -> CONV3-384 -> RELU -> CONV3-256 -> RELU -> CONV3-256 -> RELU -> POOL3/2 -> AVGPOOL1"
            f" -> DROPOUT -> FC4096 -> RELU -> DROPOUT -> FC4096 -> RELU -> FC{num_classes}")


def alexnet_original(num_classes: int = 1000, input_size: str = "227x227x3") -> str:
    """AlexNet as in Krizhevsky et al. 2012 / Caffe's bvlc_alexnet: 227x227 input (the
    notes' conv1 arithmetic: (227 - 11)/4 + 1 = 55), LRN after conv1 and conv2, and
    conv2, conv4, conv5 split into two groups (the two GPUs). 60,965,224 params."""
    return (f"INPUT[{input_size}] -> CONV11-96/4p0 -> RELU -> NORM -> POOL3/2 -> CONV5-256g2 -> RELU -> NORM"
            f" -> POOL3/2 -> CONV3-384 -> RELU -> CONV3-384g2 -> RELU -> CONV3-256g2 -> RELU -> POOL3/2"
            f" -> FC4096 -> RELU -> DROPOUT -> FC4096 -> RELU -> DROPOUT -> FC{num_classes}")


def zfnet(num_classes: int = 1000, input_size: str = "224x224x3") -> str:
    """ZFNet (Zeiler & Fergus 2013): AlexNet with a 7x7 stride-2 first layer (the notes'
    memory compromise) and wider conv3-5 (384, 384, 256). The paper's sizes
    (110 -> 55 -> 26 -> 13 -> 6) need floor rounding on conv1 and ceil on two pools:
    `cnnkit lint` points them out."""
    return (f"INPUT[{input_size}] -> CONV7-96/2p1floor -> RELU -> POOL3/2ceil -> NORM -> CONV5-256/2p0 -> RELU"
            f" -> POOL3/2ceil -> NORM -> CONV3-384 -> RELU -> CONV3-384 -> RELU -> CONV3-256 -> RELU -> POOL3/2"
            f" -> FC4096 -> RELU -> DROPOUT -> FC4096 -> RELU -> DROPOUT -> FC{num_classes}")


# Convs per stage for VGG-11/13/16/19 (Simonyan & Zisserman's configurations A, B, D, E).
VGG_STAGES = {11: (1, 1, 2, 2, 2), 13: (2, 2, 2, 2, 2), 16: (2, 2, 3, 3, 3), 19: (2, 2, 4, 4, 4)}
VGG_WIDTHS = (64, 128, 256, 512, 512)


def vgg(depth: int, batch_norm: bool = False, num_classes: int = 1000, input_size: str = "224x224x3") -> str:
    """VGGNet: stages of CONV3 (stride 1, P=1) -> RELU, each closed by POOL2, then three FC.

    torchvision's layout (dropout after the first two FC; BN after each CONV in the _bn
    variants); its AdaptiveAvgPool2d((7, 7)) is the identity at 224 and is left out.
    VGG-16: 138,357,544 params."""
    unit = "CONV3-{w} -> BN -> RELU" if batch_norm else "CONV3-{w} -> RELU"
    stages = []
    for n, w in zip(VGG_STAGES[depth], VGG_WIDTHS):
        conv = unit.format(w=w)
        stages.append(f"[{conv}]*{n} -> POOL2" if n > 1 else f"{conv} -> POOL2")
    return (f"INPUT[{input_size}] -> " + " -> ".join(stages)
            + f" -> FC4096 -> RELU -> DROPOUT -> FC4096 -> RELU -> DROPOUT -> FC{num_classes}")
