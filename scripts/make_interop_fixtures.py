"""Write tests/interop/fixtures/: real PyTorch weight files and torch's outputs, for the no-torch run.

    python scripts/make_interop_fixtures.py        # needs torch; rewrites the fixtures

The architectures are built here in plain torch.nn with torchvision's module names (no
torchvision needed): AlexNet, VGG (with and without BN), ResNet (basic and bottleneck
blocks), GoogLeNet. tests/interop imports this file for the builders and for TINY, the
small-width cases whose state dicts are committed: ``<case>.pth`` (torch.save) or
``<case>.safetensors`` (safetensors.torch), and ``<case>.npz`` with an input ``x`` and
torch's eval-mode output ``y``. Each case's cnnkit network is its ``spec``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "interop" / "fixtures"

VGG_CFGS = {11: (1, 1, 2, 2, 2), 13: (2, 2, 2, 2, 2), 16: (2, 2, 3, 3, 3), 19: (2, 2, 4, 4, 4)}
RESNETS = {18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)), 50: ("bottleneck", (3, 4, 6, 3))}
INCEPTION_ORDER = ("3a", "3b", "pool", "4a", "4b", "4c", "4d", "4e", "pool2", "5a", "5b")
GOOGLENET = {"3a": (64, 96, 128, 16, 32, 32), "3b": (128, 128, 192, 32, 96, 64),
             "4a": (192, 96, 208, 16, 48, 64), "4b": (160, 112, 224, 24, 64, 64),
             "4c": (128, 128, 256, 24, 64, 64), "4d": (112, 144, 288, 32, 64, 64),
             "4e": (256, 160, 320, 32, 128, 128), "5a": (256, 160, 320, 32, 128, 128),
             "5b": (384, 192, 384, 48, 128, 128)}


# --- plain torch.nn, torchvision's module names ----------------------------------

def torch_alexnet(num_classes: int = 1000, pool: int = 6, hidden: int = 4096):
    """torchvision.models.AlexNet; AdaptiveAvgPool2d(pool) (6 at 224: the identity)."""
    from torch import nn

    class AlexNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
                nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
                nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(inplace=True),
                nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(inplace=True),
                nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2))
            self.avgpool = nn.AdaptiveAvgPool2d(pool)
            self.classifier = nn.Sequential(
                nn.Dropout(), nn.Linear(256 * pool * pool, hidden), nn.ReLU(inplace=True),
                nn.Dropout(), nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, num_classes))

        def forward(self, x):
            return self.classifier(self.avgpool(self.features(x)).flatten(1))

    return AlexNet()


def torch_vgg(depth: int, batch_norm: bool = False, num_classes: int = 1000, pool: int = 7,
              widths=(64, 128, 256, 512, 512), hidden: int = 4096):
    """torchvision.models.VGG (make_layers of cfg A/B/D/E); AdaptiveAvgPool2d(pool)."""
    from torch import nn

    layers, c = [], 3
    for n, w in zip(VGG_CFGS[depth], widths):
        for _ in range(n):
            layers += [nn.Conv2d(c, w, 3, padding=1)] + ([nn.BatchNorm2d(w)] if batch_norm else []) + [nn.ReLU(True)]
            c = w
        layers.append(nn.MaxPool2d(2, 2))

    class VGG(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(*layers)
            self.avgpool = nn.AdaptiveAvgPool2d(pool)
            self.classifier = nn.Sequential(
                nn.Linear(c * pool * pool, hidden), nn.ReLU(True), nn.Dropout(),
                nn.Linear(hidden, hidden), nn.ReLU(True), nn.Dropout(), nn.Linear(hidden, num_classes))

        def forward(self, x):
            return self.classifier(self.avgpool(self.features(x)).flatten(1))

    return VGG()


def torch_resnet(depth: int, num_classes: int = 1000, widths=(64, 128, 256, 512), stem: int = 64, counts=None):
    """torchvision.models.ResNet with BasicBlock / Bottleneck (stride on the 3x3, v1.5)."""
    from torch import nn

    kind, default_counts = RESNETS[depth]
    counts = counts or default_counts
    expansion = 1 if kind == "basic" else 4

    class Block(nn.Module):
        def __init__(self, inplanes, planes, stride):
            super().__init__()
            out = planes * expansion
            if kind == "basic":
                self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
                self.bn1 = nn.BatchNorm2d(planes)
                self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
                self.bn2 = nn.BatchNorm2d(planes)
            else:
                self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
                self.bn1 = nn.BatchNorm2d(planes)
                self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
                self.bn2 = nn.BatchNorm2d(planes)
                self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
                self.bn3 = nn.BatchNorm2d(out)
            self.relu = nn.ReLU(inplace=True)
            self.downsample = (nn.Sequential(nn.Conv2d(inplanes, out, 1, stride, bias=False), nn.BatchNorm2d(out))
                               if stride != 1 or inplanes != out else None)

        def forward(self, x):
            y = self.relu(self.bn1(self.conv1(x)))
            y = self.bn2(self.conv2(y))
            if kind == "bottleneck":
                y = self.bn3(self.conv3(self.relu(y)))
            return self.relu(y + (x if self.downsample is None else self.downsample(x)))

    class ResNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, stem, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(stem)
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            c = stem
            for i, (n, planes) in enumerate(zip(counts, widths), start=1):
                blocks = []
                for j in range(n):
                    blocks.append(Block(c, planes, 2 if j == 0 and i > 1 else 1))
                    c = planes * expansion
                setattr(self, f"layer{i}", nn.Sequential(*blocks))
            self.stages = len(counts)
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(c, num_classes)

        def forward(self, x):
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            for i in range(1, self.stages + 1):
                x = getattr(self, f"layer{i}")(x)
            return self.fc(self.avgpool(x).flatten(1))

    return ResNet()


def torch_googlenet(num_classes: int = 1000, stem=(64, 64, 192), table=None):
    """torchvision.models.GoogLeNet(aux_logits=False, transform_input=False)."""
    import torch
    from torch import nn

    table = table or GOOGLENET

    class BasicConv2d(nn.Module):
        def __init__(self, cin, cout, kernel, stride=1, padding=0):
            super().__init__()
            self.conv = nn.Conv2d(cin, cout, kernel, stride, padding, bias=False)
            self.bn = nn.BatchNorm2d(cout, eps=0.001)

        def forward(self, x):
            return torch.relu(self.bn(self.conv(x)))

    class Inception(nn.Module):
        def __init__(self, cin, c1, r3, c3, r5, c5, pp):
            super().__init__()
            self.branch1 = BasicConv2d(cin, c1, 1)
            self.branch2 = nn.Sequential(BasicConv2d(cin, r3, 1), BasicConv2d(r3, c3, 3, padding=1))
            self.branch3 = nn.Sequential(BasicConv2d(cin, r5, 1), BasicConv2d(r5, c5, 3, padding=1))
            self.branch4 = nn.Sequential(nn.MaxPool2d(3, 1, 1, ceil_mode=True), BasicConv2d(cin, pp, 1))

        def forward(self, x):
            return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)

    class GoogLeNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = BasicConv2d(3, stem[0], 7, 2, 3)
            self.maxpool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
            self.conv2 = BasicConv2d(stem[0], stem[1], 1)
            self.conv3 = BasicConv2d(stem[1], stem[2], 3, padding=1)
            self.maxpool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
            c = stem[2]
            self.order = []
            for name in INCEPTION_ORDER:
                if name == "pool":
                    self.maxpool3 = nn.MaxPool2d(3, 2, ceil_mode=True)
                    self.order.append("maxpool3")
                elif name == "pool2":
                    self.maxpool4 = nn.MaxPool2d(2, 2, ceil_mode=True)
                    self.order.append("maxpool4")
                else:
                    w = table[name]
                    setattr(self, f"inception{name}", Inception(c, *w))
                    c = w[0] + w[2] + w[4] + w[5]
                    self.order.append(f"inception{name}")
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.dropout = nn.Dropout(0.2)
            self.fc = nn.Linear(c, num_classes)

        def forward(self, x):
            x = self.maxpool2(self.conv3(self.conv2(self.maxpool1(self.conv1(x)))))
            for name in self.order:
                x = getattr(self, name)(x)
            return self.fc(self.dropout(self.avgpool(x).flatten(1)))

    return GoogLeNet()


def randomize(model, seed: int = 0):
    """Random weights everywhere, including batch norm's running statistics (eval mode uses them)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("num_batches_tracked"):
                t.fill_(int(torch.randint(1, 1000, (), generator=g)))
            elif name.endswith("running_var") or (name.endswith(".weight") and t.ndim == 1):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif name.endswith(("running_mean", ".bias")):
                t.copy_(torch.randn(t.shape, generator=g) * 0.1)
            else:  # conv / linear weights, scaled by fan-in so activations stay near 1
                fan_in = t[0].numel()
                t.copy_(torch.randn(t.shape, generator=g) * (2.0 / fan_in) ** 0.5)
    return model.eval()


# --- the small committed cases: cnnkit spec and the matching torch model ---------------

def _bconv(conv: str) -> str:
    return f"{conv}nb -> BN(eps=0.001) -> RELU"


def googlenet_spec(stem, table, num_classes: int, size: int) -> str:
    """cnnkit's GoogLeNet layout (cnnkit.models.googlenet) at any widths."""
    def module(c1, r3, c3, r5, c5, pp):
        return ("CAT[" + _bconv(f"CONV1-{c1}") + " | " + _bconv(f"CONV1-{r3}") + " -> " + _bconv(f"CONV3-{c3}")
                + " | " + _bconv(f"CONV1-{r5}") + " -> " + _bconv(f"CONV3-{c5}")
                + " | POOL3/1p1ceil -> " + _bconv(f"CONV1-{pp}") + "]")
    parts = [f"INPUT[{size}x{size}x3]", _bconv(f"CONV7-{stem[0]}/2floor"), "POOL3/2ceil", _bconv(f"CONV1-{stem[1]}"),
             _bconv(f"CONV3-{stem[2]}"), "POOL3/2ceil"]
    for name in INCEPTION_ORDER:
        parts.append("POOL3/2ceil" if name == "pool" else "POOL2ceil" if name == "pool2" else module(*table[name]))
    return " -> ".join(parts + ["GAP", "DROPOUT0.2", f"FC{num_classes}"])


def resnet_spec(depth: int, widths, stem: int, counts, num_classes: int, size: int) -> str:
    """cnnkit's ResNet layout (cnnkit.models.resnet) at any widths."""
    kind, _ = RESNETS[depth]

    def s(st: int) -> str:
        return f"/{st}floor" if st > 1 else ""

    parts, c = [f"INPUT[{size}x{size}x3] -> CONV7-{stem}/2floornb -> BN -> RELU -> POOL3/2p1floor"], stem
    for i, (n, planes) in enumerate(zip(counts, widths)):
        for j in range(n):
            st = 2 if j == 0 and i > 0 else 1
            out = planes * (1 if kind == "basic" else 4)
            if kind == "basic":
                body = f"CONV3-{planes}{s(st)}nb -> BN -> RELU -> CONV3-{planes}nb -> BN"
            else:
                body = (f"CONV1-{planes}nb -> BN -> RELU -> CONV3-{planes}{s(st)}nb -> BN -> RELU"
                        f" -> CONV1-{out}nb -> BN")
            short = f" | CONV1-{out}{s(st)}nb -> BN" if st != 1 or c != out else ""
            parts.append(f"RES[{body}{short}] -> RELU")
            c = out
    return " -> ".join(parts + ["GAP", f"FC{num_classes}"])


def vgg_spec(depth: int, batch_norm: bool, widths, hidden: int, num_classes: int, size: int) -> str:
    unit = "CONV3-{w} -> BN -> RELU" if batch_norm else "CONV3-{w} -> RELU"
    stages = [" -> ".join([unit.format(w=w)] * n) + " -> POOL2" for n, w in zip(VGG_CFGS[depth], widths)]
    return (f"INPUT[{size}x{size}x3] -> " + " -> ".join(stages)
            + f" -> FC{hidden} -> RELU -> DROPOUT -> FC{hidden} -> RELU -> DROPOUT -> FC{num_classes}")


TINY_TABLE = {k: (2, 2, 3, 1, 2, 2) for k in GOOGLENET}
TINY = {
    # name: (cnnkit spec, torch builder, builder kwargs, input size, file suffix)
    "vgg11_bn_tiny": (vgg_spec(11, True, (4, 4, 6, 6, 8), 12, 5, 32), torch_vgg,
                      {"depth": 11, "batch_norm": True, "num_classes": 5, "pool": 1, "widths": (4, 4, 6, 6, 8), "hidden": 12},
                      32, ".pth"),
    "vgg13_tiny": (vgg_spec(13, False, (3, 4, 4, 6, 6), 10, 4, 32), torch_vgg,
                   {"depth": 13, "num_classes": 4, "pool": 1, "widths": (3, 4, 4, 6, 6), "hidden": 10}, 32, ".safetensors"),
    "resnet_basic_tiny": (resnet_spec(18, (4, 6), 4, (2, 1), 3, 16), torch_resnet,
                          {"depth": 18, "num_classes": 3, "widths": (4, 6), "stem": 4, "counts": (2, 1)}, 16, ".pth"),
    "resnet_bottleneck_tiny": (resnet_spec(50, (2, 3), 4, (1, 2), 3, 16), torch_resnet,
                               {"depth": 50, "num_classes": 3, "widths": (2, 3), "stem": 4, "counts": (1, 2)}, 16, ".pth"),
    "googlenet_tiny": (googlenet_spec((4, 4, 6), TINY_TABLE, 4, 32), torch_googlenet,
                       {"num_classes": 4, "stem": (4, 4, 6), "table": TINY_TABLE}, 32, ".safetensors"),
}


def make_case(name: str, seed: int = 0):
    """(torch model, x, y) for a TINY case, deterministic for the seed."""
    import torch

    _, builder, kwargs, size, _ = TINY[name]
    torch.manual_seed(seed)
    model = randomize(builder(**kwargs), seed)
    x = torch.rand((2, 3, size, size), generator=torch.Generator().manual_seed(seed + 1))
    with torch.no_grad():
        y = model(x)
    return model, x.numpy(), y.numpy()


def main() -> None:
    import torch
    from safetensors.torch import save_file

    FIXTURES.mkdir(parents=True, exist_ok=True)
    for name, (_, _, _, _, suffix) in TINY.items():
        model, x, y = make_case(name)
        state = model.state_dict()
        if suffix == ".pth":
            torch.save(state, FIXTURES / f"{name}.pth")
        else:
            save_file({k: v.contiguous() for k, v in state.items()}, str(FIXTURES / f"{name}.safetensors"))
        np.savez(FIXTURES / f"{name}.npz", x=x, y=y)
        print(f"wrote {name}{suffix} ({sum(v.numel() for v in state.values())} numbers) and {name}.npz")


if __name__ == "__main__":
    main()
