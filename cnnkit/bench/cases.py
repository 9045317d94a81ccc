"""The suite's cases: single layers, whole networks, the CIFAR-10 net's training step.

Every case runs both sides in this process with the same thread count, each side's calls
back to back in blocks that alternate for a few rounds (``timing.side_by_side``), PyTorch
from cnnkit's own weights:

* layers: forward and forward+backward of one layer against torch.nn.functional (the
  cases of benchmarks/layers.py, the CIFAR net's 32->32 3x3 layer, ResNet's 7x7 stem,
  its stride-2 3x3 and 1x1 projection layers);
* nets: forward (eval mode, no_grad) and forward+backward (train mode, a fixed gradient on
  the scores, no gradient on the image) per batch, as convnet-benchmarks does, against
  the torch.nn twin (``twins.torch_twin``), checked once per net;
* train: the notes' CIFAR-10 net, one SGD step (forward, softmax loss, backward, update),
  the median of many steps (benchmarks/train.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

import cnnkit as ck

from .flops import layer_flops, net_flops
from .table import Row
from .timing import SETTLE_S, median_ms, side_by_side, time_steps
from .twins import check_twin, torch_twin

#: The CIFAR-10 net of benchmarks/train.py (the notes' pattern, two CONV-CONV-POOL blocks).
CIFAR_SPEC = "INPUT[32x32x3] -> [[CONV3-32 -> RELU]*2 -> POOL2]*2 -> FC512 -> RELU -> FC10"
CIFAR_BATCH = 64
CIFAR_CASE = "cifar10 net, SGD step"

#: A twin whose outputs differ from cnnkit's by more than this (relative) is flagged.
TWIN_TOLERANCE = 1e-3


@dataclass
class LayerCase:
    """One layer on a batch of per-sample ``shape``; ``make`` builds the cnnkit layer."""

    name: str
    kind: str                    # 'conv', 'pool', 'fc'
    batch: int
    shape: tuple[int, ...]       # per sample
    make: Callable[[], Any]


def conv_case(name: str, N: int, C: int, K: int, H: int, F: int, S: int = 1, P: int = 0, D: int = 1) -> LayerCase:
    """A CONV case: N images of C x H x H, K filters of F x F, stride S, padding P, dilation D
    (floor rounding, as ResNet's stride-2 layers and PyTorch)."""
    return LayerCase(name, "conv", N, (C, H, H), lambda: ck.Conv2D(C, K, F, S, P, D, rounding="floor"))


def pool_case(name: str, N: int, C: int, H: int, F: int, S: int) -> LayerCase:
    """A max-pool case: N images of C x H x H, windows F x F with stride S (floor rounding)."""
    return LayerCase(name, "pool", N, (C, H, H), lambda: ck.MaxPool2D(F, S, rounding="floor"))


def fc_case(name: str, N: int, D: int, K: int) -> LayerCase:
    """An FC case: N rows of D numbers, K neurons."""
    return LayerCase(name, "fc", N, (D,), lambda: ck.FC(D, K))


#: The cases of benchmarks/layers.py (batch 32), in its order.
SCRIPT_CASES = [
    conv_case("conv 3->16 5x5 p2 @32x32", 32, 3, 16, 32, 5, P=2),
    conv_case("conv 64->64 3x3 p1 @56x56", 32, 64, 64, 56, 3, P=1),
    conv_case("conv 256->256 3x3 p1 @28x28", 32, 256, 256, 28, 3, P=1),
    conv_case("conv 3->96 11x11 s4 @227x227", 32, 3, 96, 227, 11, S=4),
    conv_case("conv 256->64 1x1 @28x28", 32, 256, 64, 28, 1),
    conv_case("conv 64->64 3x3 d2 p2 @56x56", 32, 64, 64, 56, 3, P=2, D=2),
    pool_case("maxpool 2/2 64x112x112", 32, 64, 112, 2, 2),
    pool_case("maxpool 3/2 64x112x112", 32, 64, 112, 3, 2),
    fc_case("fc 25088->4096", 32, 25088, 4096),
]

#: The suite adds the layers whole networks spend their time in.
LAYER_CASES = SCRIPT_CASES + [
    conv_case("conv 32->32 3x3 p1 @32x32 (cifar)", CIFAR_BATCH, 32, 32, 32, 3, P=1),
    conv_case("conv 3->64 7x7 s2 p3 @224x224 (stem)", 32, 3, 64, 224, 7, S=2, P=3),
    conv_case("conv 64->128 3x3 s2 p1 @56x56 (resnet)", 32, 64, 128, 56, 3, S=2, P=1),
    conv_case("conv 64->128 1x1 s2 @56x56 (proj)", 32, 64, 128, 56, 1, S=2),
]


@dataclass
class NetCase:
    """A zoo network at ``size`` x ``size`` on a batch."""

    name: str
    model: str
    batch: int
    size: int = 224


#: Whole networks at 224 x 224 and the batches of the issue's measurements (each
#: forward+backward takes about a second on 2 cores).
NET_CASES = [
    NetCase("AlexNet", "alexnet", 16),
    NetCase("VGG-11", "vgg11", 4),
    NetCase("GoogLeNet v1", "googlenet", 8),
    NetCase("ResNet-18", "resnet18", 8),
    NetCase("ResNet-50", "resnet50", 4),
]


def _t(a: np.ndarray) -> Any:
    import torch
    return torch.from_numpy(np.ascontiguousarray(a))


def _torch_layer(case: LayerCase, layer: Any, x: Any, params: list[Any]) -> Any:
    """The case's layer in torch.nn.functional with the given parameter tensors."""
    import torch.nn.functional as F
    if case.kind == "conv":
        return F.conv2d(x, params[0], params[1], layer.stride, layer.padding, layer.dilation, layer.groups)
    if case.kind == "pool":
        return F.max_pool2d(x, layer.kernel_size, layer.stride)
    return F.linear(x, params[0], params[1])


def run_layer_case(case: LayerCase, repeat: int = 5, min_seconds: float = 0.5, compare: bool = True,
                   batch: int | None = None, rounds: int = 1) -> list[Row]:
    """Forward and forward+backward of one layer case (rows 'fwd', 'fwd+bwd'); batch
    overrides the case's."""
    N = batch or case.batch
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, *case.shape), dtype=np.float32)
    layer = case.make()
    dout = rng.standard_normal(layer.forward(x).shape, dtype=np.float32)
    flops = layer_flops(layer, case.shape, N)

    def ck_fwd() -> None:
        layer.eval().forward(x)

    def ck_fwd_bwd() -> None:
        layer.train().forward(x)
        layer.backward(dout)

    passes: list[tuple[str, Callable[[], None], Callable[[], None] | None, int]] = []
    torch_fwd = torch_fwd_bwd = None
    if compare:
        import torch
        xt, dt = torch.from_numpy(x), torch.from_numpy(dout)
        params = [_t(p).requires_grad_() for p in layer.params.values()]

        def torch_fwd() -> None:
            with torch.no_grad():
                _torch_layer(case, layer, xt, params)

        def torch_fwd_bwd() -> None:
            for p in params:
                p.grad = None   # fresh gradients each call, as cnnkit's backward makes
            _torch_layer(case, layer, xt.detach().requires_grad_(), params).backward(dt)

    passes = [("fwd", ck_fwd, torch_fwd, flops), ("fwd+bwd", ck_fwd_bwd, torch_fwd_bwd, 3 * flops)]
    rows = []
    for label, mine, theirs, f in passes:
        a, b = side_by_side(mine, theirs, repeat, min_seconds, rounds)
        rows.append(Row("layers", case.name, label, N, f, a, b))
    return rows


def run_net_case(case: NetCase, repeat: int = 3, min_seconds: float = 0.0, compare: bool = True,
                 batch: int | None = None, size: int | None = None, rounds: int = 1) -> list[Row]:
    """Forward and forward+backward per batch of a zoo network (and its twin); batch and
    size override the case's. The twin's relative output difference is in each row's
    notes ('twin_diff')."""
    N, S = batch or case.batch, size or case.size
    ck.manual_seed(0)
    net = ck.models.get(case.model, input_size=S)
    net.input_grad = False            # nothing needs the image's gradient (PyTorch: no requires_grad)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, *net.input_shape), dtype=np.float32)
    dout = rng.standard_normal((N, *net.output_shape(net.input_shape)), dtype=np.float32)
    label = case.name if S == 224 else f"{case.name} @{S}"
    notes: dict[str, Any] = {"model": case.model, "size": S}

    def ck_fwd() -> None:
        net.forward(x)

    def ck_fwd_bwd() -> None:
        net.forward(x)
        net.backward(dout)

    rows = []
    model: Any = None
    torch_fwd = torch_fwd_bwd = None
    if compare:
        import torch
        model = torch_twin(net)
        notes["twin_diff"] = check_twin(net, model, x)
        notes["twin_ok"] = notes["twin_diff"] <= TWIN_TOLERANCE
        xt, dt = torch.from_numpy(x), torch.from_numpy(dout)

        def torch_fwd() -> None:
            with torch.no_grad():
                model(xt)

        def torch_fwd_bwd() -> None:
            model.zero_grad(set_to_none=True)
            model(xt).backward(dt)

    def modes(train: bool) -> tuple[Callable[[], Any], Callable[[], Any]]:
        return (lambda: net.train(train)), (lambda: model.train(train) if model is not None else None)

    fwd, fwd_t = side_by_side(ck_fwd, torch_fwd, repeat, min_seconds, rounds, modes(False))
    fb, fb_t = side_by_side(ck_fwd_bwd, torch_fwd_bwd, repeat, min_seconds, rounds, modes(True))
    rows.append(Row("nets", label, "fwd", N, net_flops(net, batch=N), fwd, fwd_t, dict(notes)))
    rows.append(Row("nets", label, "fwd+bwd", N, net_flops(net, batch=N, backward=True), fb, fb_t, dict(notes)))
    return rows


def cifar_net(batch: int = CIFAR_BATCH, seed: int = 0) -> tuple[Any, np.ndarray, np.ndarray]:
    """The CIFAR-10 net (CIFAR_SPEC, seeded weights, no gradient on the image) and a
    seeded batch: (net, X (batch, 3, 32, 32), y (batch,))."""
    rng = np.random.default_rng(seed)
    X = rng.random((batch, 3, 32, 32), dtype=np.float32)
    y = rng.integers(0, 10, batch)
    ck.manual_seed(seed)
    net = ck.build(CIFAR_SPEC)
    net.input_grad = False   # as in PyTorch, where the images don't require grad
    return net, X, y


@dataclass
class TrainResult:
    """The CIFAR-10 net's step: median ms per side and the first losses from the same weights."""

    batch: int
    steps: int
    cnnkit_ms: float
    torch_ms: float | None
    cnnkit_loss: float
    torch_loss: float | None
    flops: int

    def row(self) -> Row:
        notes = dict(steps=self.steps, cnnkit_loss=self.cnnkit_loss, torch_loss=self.torch_loss)
        return Row("train", CIFAR_CASE, "step",
                   self.batch, self.flops, self.cnnkit_ms / 1e3,
                   None if self.torch_ms is None else self.torch_ms / 1e3, notes)


def train_step_functions(net: Any, X: np.ndarray, y: np.ndarray, lr: float = 1e-3) -> Callable[[], float]:
    """cnnkit's SGD step on (X, y): forward, softmax loss, backward, update; returns the loss."""
    from cnnkit.optim import SGD
    opt = SGD(net, lr=lr)

    def step() -> float:
        scores = net.forward(X)
        loss, dscores = ck.softmax_loss(scores, y)
        net.backward(dscores)
        opt.step()
        return loss

    return step


def torch_train_step(model: Any, X: np.ndarray, y: np.ndarray, lr: float = 1e-3) -> Callable[[], Any]:
    """PyTorch's SGD step on (X, y) with cross-entropy, gradients set to None first."""
    import torch
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    tX, ty = torch.from_numpy(X), torch.from_numpy(y)

    def step() -> Any:
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(tX), ty)
        loss.backward()
        opt.step()
        return loss

    return step


def run_train(batch: int = CIFAR_BATCH, steps: int = 20, compare: bool = True, rounds: int = 1) -> TrainResult:
    """The CIFAR-10 net's training step on both sides from the same weights: the first
    losses (they agree when both run the same net) and the median of ``steps`` steps,
    taken in `rounds` alternating blocks."""
    net, X, y = cifar_net(batch)
    model: Any = torch_twin(net) if compare else None   # before cnnkit's first step moves the weights
    step = train_step_functions(net, X, y)
    loss = step()
    loss_t = t_ms = None
    if compare:
        import torch
        with torch.no_grad():
            loss_t = float(torch.nn.functional.cross_entropy(model(torch.from_numpy(X)), torch.from_numpy(y)))
    torch_step = torch_train_step(model, X, y) if compare else None
    mine: list[float] = []
    theirs: list[float] = []
    for r in range(rounds):
        block = steps // rounds + (r < steps % rounds)
        time.sleep(SETTLE_S)
        mine += time_steps(step, block)
        if torch_step is not None:
            time.sleep(SETTLE_S)
            theirs += time_steps(torch_step, block)
    ck_ms = median_ms(mine)
    if torch_step is not None:
        t_ms = median_ms(theirs)
    return TrainResult(batch, steps, ck_ms, t_ms, loss, loss_t, net_flops(net, batch=batch, backward=True))
