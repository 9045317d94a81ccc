"""GoogLeNet (Inception v1) and ResNet, in torchvision's layout, as specs.

Inception modules are CAT[...] blocks, residual blocks RES[body | shortcut]. Convs
followed by batch norm have no bias (nb), as in torchvision.
"""

from __future__ import annotations

# --- GoogLeNet ---------------------------------------------------------------

# (1x1, 3x3 reduce, 3x3, "5x5" reduce, "5x5", pool proj) of the nine modules.
INCEPTION = {
    "3a": (64, 96, 128, 16, 32, 32), "3b": (128, 128, 192, 32, 96, 64),
    "4a": (192, 96, 208, 16, 48, 64), "4b": (160, 112, 224, 24, 64, 64),
    "4c": (128, 128, 256, 24, 64, 64), "4d": (112, 144, 288, 32, 64, 64),
    "4e": (256, 160, 320, 32, 128, 128),
    "5a": (256, 160, 320, 32, 128, 128), "5b": (384, 192, 384, 48, 128, 128),
}


def _bconv(conv: str) -> str:
    """torchvision's BasicConv2d: CONV without bias -> BN(eps=0.001) -> RELU."""
    return f"{conv}nb -> BN(eps=0.001) -> RELU"


def inception(c1: int, r3: int, c3: int, r5: int, c5: int, pp: int) -> str:
    """One Inception module: four branches joined along depth. torchvision's "5x5"
    branch uses a 3x3 filter (a known quirk kept for its weights); so does this one."""
    return ("CAT[" + _bconv(f"CONV1-{c1}")
            + " | " + _bconv(f"CONV1-{r3}") + " -> " + _bconv(f"CONV3-{c3}")
            + " | " + _bconv(f"CONV1-{r5}") + " -> " + _bconv(f"CONV3-{c5}")
            + " | POOL3/1p1ceil -> " + _bconv(f"CONV1-{pp}") + "]")


def googlenet(num_classes: int = 1000, input_size: str = "224x224x3") -> str:
    """GoogLeNet (Szegedy et al. 2014) without the auxiliary heads, as torchvision builds
    it: BN after every conv, ceil-mode pools, nine Inception modules, global average
    pooling instead of FC layers (the notes' point), dropout 0.2, one FC. 6,624,904 params."""
    m = {k: inception(*v) for k, v in INCEPTION.items()}
    return (f"INPUT[{input_size}] -> " + _bconv("CONV7-64/2floor") + " -> POOL3/2ceil"
            + " -> " + _bconv("CONV1-64") + " -> " + _bconv("CONV3-192") + " -> POOL3/2ceil"
            + f" -> {m['3a']} -> {m['3b']} -> POOL3/2ceil"
            + f" -> {m['4a']} -> {m['4b']} -> {m['4c']} -> {m['4d']} -> {m['4e']} -> POOL2ceil"
            + f" -> {m['5a']} -> {m['5b']} -> GAP -> DROPOUT0.2 -> FC{num_classes}")


# --- ResNet ------------------------------------------------------------------

RESNET_BLOCKS = {18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)), 50: ("bottleneck", (3, 4, 6, 3))}


def _stride(s: int) -> str:
    return f"/{s}floor" if s > 1 else ""


def basic_block(planes: int, stride: int, project: bool) -> str:
    """Two 3x3 CONV-BN with a skip: RES[...] -> RELU; a 1x1 projection when shapes change."""
    body = f"CONV3-{planes}{_stride(stride)}nb -> BN -> RELU -> CONV3-{planes}nb -> BN"
    short = f" | CONV1-{planes}{_stride(stride)}nb -> BN" if project else ""
    return f"RES[{body}{short}] -> RELU"


def bottleneck(planes: int, stride: int, project: bool) -> str:
    """1x1 reduce, 3x3 (carrying the stride, ResNet v1.5 as torchvision), 1x1 expand x4."""
    body = (f"CONV1-{planes}nb -> BN -> RELU -> CONV3-{planes}{_stride(stride)}nb -> BN -> RELU"
            f" -> CONV1-{4 * planes}nb -> BN")
    short = f" | CONV1-{4 * planes}{_stride(stride)}nb -> BN" if project else ""
    return f"RES[{body}{short}] -> RELU"


def resnet(depth: int, num_classes: int = 1000, input_size: str = "224x224x3") -> str:
    """ResNet (He et al. 2015), torchvision's layout: 7x7/2 stem, max pool, four stages
    of residual blocks (the first block of stages 2-4 halves the size), global average
    pooling, one FC. ResNet-18: 11,689,512 params; ResNet-50: 25,557,032."""
    kind, counts = RESNET_BLOCKS[depth]
    block, expansion = (basic_block, 1) if kind == "basic" else (bottleneck, 4)
    parts = [f"INPUT[{input_size}] -> CONV7-64/2floornb -> BN -> RELU -> POOL3/2p1floor"]
    channels = 64
    for stage, (n, planes) in enumerate(zip(counts, (64, 128, 256, 512))):
        stride = 1 if stage == 0 else 2
        for i in range(n):
            s = stride if i == 0 else 1
            parts.append(block(planes, s, project=(s != 1 or channels != planes * expansion)))
            channels = planes * expansion
    parts.append(f"GAP -> FC{num_classes}")
    return " -> ".join(parts)
