"""Write tests/fixtures/torch_layers.npz: every layer's forward and backward, computed by PyTorch.

    python scripts/make_torch_fixtures.py        # needs torch; rewrites the fixtures

CASES below is the one table of cases: tests/layers/test_torch_parity.py imports it from
here, rebuilds each cnnkit layer from its config (``cnnkit.from_config``) and compares it
with the stored torch values, without torch installed. With torch installed the test
also regenerates the fixtures and checks they equal the committed ones.

Per case ``<name>/``: ``x`` (and ``y`` for losses), every parameter and buffer under its
state_dict name (``weight``, ``body.0.weight``, ``running_mean``), the upstream gradient
``dout``; torch's ``out``, ``dx``, ``d<param>`` and, for batch norm in train mode,
``<buffer>_after`` (running statistics after the step). Losses store the loss as ``out``
and dscores as ``dx``. The npz also holds ``__cases__``, the table as JSON, so a stale
fixture file is caught without torch.

The fixtures are computed in float64 from float32 inputs and stored as float32, so they
are torch's exact answer rounded once and regenerate to the same values on any machine.
"""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FIXTURE_PATH = ROOT / "tests" / "fixtures" / "torch_layers.npz"


def _maker(kind: str, *positional: str):
    """A constructor-like helper that returns the layer's config (plain data)."""
    def make(*args, **kwargs):
        return {"type": kind, **dict(zip(positional, args)), **kwargs}
    make.__name__ = kind
    return make


Conv = _maker("Conv2D", "in_channels", "out_channels", "kernel_size")
LC = _maker("LocallyConnected2D", "in_channels", "out_channels", "kernel_size", "input_size")
Max = _maker("MaxPool2D", "kernel_size", "stride")
Avg = _maker("AvgPool2D", "kernel_size", "stride")
L2 = _maker("L2Pool2D", "kernel_size", "stride")
GAP = _maker("GlobalAvgPool2D")
ReLU = _maker("ReLU")
Dropout = _maker("Dropout", "p")
Flatten = _maker("Flatten")
FC = _maker("FC", "in_features", "out_features")
LRN = _maker("LRN", "size")
BN = _maker("BatchNorm2D", "num_features")
SoftmaxLoss = _maker("softmax_loss")
SvmLoss = _maker("svm_loss")
LOSSES = ("softmax_loss", "svm_loss")


def Seq(*layers):
    return {"type": "Sequential", "layers": list(layers)}


def Res(body, shortcut=None):
    return {"type": "Residual", "body": body, **({"shortcut": shortcut} if shortcut else {})}


def Cat(*branches):
    return {"type": "Concat", "branches": list(branches)}


def case(name, config, shape, mode="train"):
    """One fixture: a layer config, the input shape (N, ...) and 'train' or 'eval'
    (eval cases compare the forward pass only: cnnkit keeps no caches in eval mode)."""
    return {"name": name, "config": config, "shape": list(shape), "mode": mode}


CASES = [
    # CONV: stride, padding, dilation, groups, rectangular and 1x1 filters, floor rounding
    case("conv_3x3_s1_p1", Conv(3, 4, 3, padding=1), (2, 3, 6, 6)),
    case("conv_3x3_s2_p1", Conv(3, 5, 3, stride=2, padding=1), (3, 3, 7, 7)),
    case("conv_5x5_p2", Conv(2, 3, 5, padding=2), (1, 2, 6, 5)),
    case("conv_rect_3x2_s1x2", Conv(3, 2, [3, 2], stride=[1, 2], padding=[1, 0]), (2, 3, 5, 8)),
    case("conv_rect_1x3_s2x1", Conv(2, 4, [1, 3], stride=[2, 1], padding=[0, 1]), (2, 2, 5, 6)),
    case("conv_dilation2", Conv(2, 3, 3, dilation=2, padding=2), (2, 2, 7, 7)),
    case("conv_dilation1x2_s2", Conv(2, 3, 3, stride=2, dilation=[1, 2], padding=[1, 2]), (2, 2, 7, 7)),
    case("conv_groups2", Conv(4, 6, 3, padding=1, groups=2), (2, 4, 5, 5)),
    case("conv_groups2_s2_dilation2", Conv(4, 2, 3, stride=2, padding=2, dilation=2, groups=2), (2, 4, 7, 7)),
    case("conv_depthwise", Conv(3, 3, 3, padding=1, groups=3), (2, 3, 5, 5)),
    case("conv_depthwise_x2_s2_floor", Conv(3, 6, 3, stride=2, groups=3, rounding="floor"), (1, 3, 6, 6)),
    case("conv_1x1", Conv(5, 3, 1), (2, 5, 4, 4)),
    case("conv_1x1_s2", Conv(5, 3, 1, stride=2), (2, 5, 5, 5)),
    case("conv_1x1_p1", Conv(3, 2, 1, padding=1), (1, 3, 3, 4)),
    case("conv_no_bias", Conv(3, 2, 3, bias=False), (2, 3, 5, 5)),
    case("conv_s2_floor", Conv(3, 2, 3, stride=2, rounding="floor"), (2, 3, 10, 10)),
    case("conv_4x4_s3_p1_floor", Conv(2, 3, 4, stride=3, padding=1, rounding="floor"), (4, 2, 9, 11)),
    case("conv_big_padding", Conv(2, 2, 3, padding=3), (1, 2, 4, 4)),
    case("conv_11x11_s4_p2", Conv(3, 4, 11, stride=4, padding=2), (1, 3, 27, 27)),
    # locally connected (torch reference: unfold + einsum)
    case("lc_3x3_p1", LC(2, 3, 3, [6, 6], padding=1), (2, 2, 6, 6)),
    case("lc_rect_s2", LC(2, 3, [3, 2], [7, 6], stride=2), (2, 2, 7, 6)),
    case("lc_1x1", LC(3, 2, 1, [3, 4]), (2, 3, 3, 4)),
    case("lc_s2_floor_no_bias", LC(2, 2, 3, [8, 8], stride=2, bias=False, rounding="floor"), (1, 2, 8, 8)),
    # POOL: overlapping 3/2, padding, ceil mode, floor, rectangular, gaps between windows
    case("maxpool_2", Max(2), (2, 3, 6, 6)),
    case("maxpool_3_2", Max(3, 2), (2, 3, 7, 7)),
    case("maxpool_3_2_p1", Max(3, 2, padding=1), (2, 2, 7, 7)),
    case("maxpool_3_2_ceil", Max(3, 2, rounding="ceil"), (2, 3, 8, 8)),
    case("maxpool_3_2_p1_ceil", Max(3, 2, padding=1, rounding="ceil"), (2, 3, 8, 8)),
    case("maxpool_2_floor", Max(2, rounding="floor"), (2, 3, 7, 7)),
    case("maxpool_rect", Max([2, 3], [2, 1]), (2, 2, 6, 6)),
    case("maxpool_rect_p_ceil", Max([3, 2], 2, padding=[1, 0], rounding="ceil"), (1, 2, 6, 7)),
    case("maxpool_2_3_floor", Max(2, 3, rounding="floor"), (2, 2, 8, 8)),
    case("maxpool_16_4", Max(16, 4), (1, 2, 20, 20)),
    case("maxpool_17_global", Max(17), (1, 2, 17, 17)),
    case("avgpool_2", Avg(2), (2, 3, 6, 6)),
    case("avgpool_3_2", Avg(3, 2), (2, 3, 7, 7)),
    case("avgpool_3_2_p1", Avg(3, 2, padding=1), (2, 2, 7, 7)),
    case("avgpool_3_2_ceil", Avg(3, 2, rounding="ceil"), (2, 3, 8, 8)),
    case("avgpool_3_2_p1_ceil", Avg(3, 2, padding=1, rounding="ceil"), (2, 3, 8, 8)),
    case("avgpool_2_floor", Avg(2, rounding="floor"), (2, 3, 7, 7)),
    case("avgpool_rect_p_ceil", Avg([3, 2], 2, padding=[1, 0], rounding="ceil"), (1, 2, 6, 7)),
    case("l2pool_2", L2(2), (2, 3, 6, 6)),
    case("l2pool_3_2", L2(3, 2), (2, 3, 7, 7)),
    case("l2pool_2_floor", L2(2, rounding="floor"), (1, 2, 7, 5)),
    case("l2pool_3_2_ceil", L2(3, 2, rounding="ceil"), (2, 2, 8, 8)),
    case("l2pool_rect", L2([2, 3], [2, 1]), (2, 2, 6, 6)),
    case("global_avgpool", GAP(), (2, 3, 4, 5)),
    case("global_avgpool_1x1", GAP(), (1, 4, 1, 1)),
    # elementwise, reshaping, FC
    case("relu", ReLU(), (3, 2, 4, 4)),
    case("relu_2d", ReLU(), (4, 7)),
    case("dropout_eval", Dropout(0.3), (3, 2, 4, 4), mode="eval"),
    case("flatten", Flatten(), (2, 3, 2, 2)),
    case("fc_2d", FC(6, 4), (3, 6)),
    case("fc_4d", FC(12, 5), (3, 3, 2, 2)),
    case("fc_no_bias", FC(5, 3, bias=False), (1, 5)),
    # normalization
    case("lrn_3", LRN(3, alpha=0.5, beta=0.75, k=1.0), (2, 5, 3, 3)),
    case("lrn_4", LRN(4, alpha=0.5, beta=0.75, k=1.0), (2, 6, 3, 3)),
    case("lrn_5", LRN(5, alpha=1.0, beta=0.6, k=2.0), (2, 7, 3, 2)),
    case("lrn_5_alexnet", LRN(5, alpha=1e-4, beta=0.75, k=2.0), (1, 6, 2, 2)),
    case("lrn_5_wider_than_depth", LRN(5, alpha=0.8, beta=0.75, k=1.0), (2, 3, 2, 3)),
    case("bn_train", BN(3), (4, 3, 3, 3)),
    case("bn_train_n1", BN(2, eps=1e-3, momentum=0.3), (1, 2, 3, 3)),
    case("bn_eval", BN(3), (2, 3, 3, 3), mode="eval"),
    # losses: (N, classes) scores and integer labels
    case("softmax_loss", SoftmaxLoss(), (4, 5)),
    case("softmax_loss_n1", SoftmaxLoss(), (1, 3)),
    case("svm_loss", SvmLoss(), (4, 5)),
    case("svm_loss_10", SvmLoss(), (3, 10)),
    # containers
    case("sequential", Seq(Conv(3, 4, 3, padding=1), ReLU(), Max(2), FC(64, 3)), (2, 3, 8, 8)),
    case("residual_identity", Res(Seq(Conv(3, 3, 3, padding=1), BN(3), ReLU())), (2, 3, 5, 5)),
    case("residual_1x1_s2_shortcut",
         Res(Seq(Conv(3, 4, 3, stride=2, padding=1), BN(4), ReLU(), Conv(4, 4, 3, padding=1)),
             Conv(3, 4, 1, stride=2)), (2, 3, 7, 7)),
    case("concat_inception",
         Cat(Conv(3, 2, 1), Seq(Conv(3, 2, 1), ReLU(), Conv(2, 3, 3, padding=1)),
             Seq(Conv(3, 2, 1), Conv(2, 2, 5, padding=2)), Seq(Max(3, 1, padding=1), Conv(3, 2, 1))),
         (2, 3, 5, 5)),
]


# --- inputs --------------------------------------------------------------------------


def case_seed(name: str) -> int:
    """A seed per case name, so adding a case changes no other case's numbers."""
    return zlib.crc32(name.encode())


def _init(name: str, shape, rng: np.random.Generator) -> np.ndarray:
    """A random parameter or buffer value, scaled so activations stay O(1)."""
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "running_var":
        return rng.uniform(0.5, 2.0, shape).astype(np.float32)
    if leaf == "running_mean" or len(shape) == 1:
        return (0.5 * rng.standard_normal(shape)).astype(np.float32)
    # conv (K, C, Fh, Fw), FC (out, in), locally connected (H2, W2, K, C, Fh, Fw)
    fan_in = math.prod(shape[3:] if len(shape) == 6 else shape[1:])
    return (rng.standard_normal(shape) / math.sqrt(fan_in)).astype(np.float32)


def make_inputs(config: dict, shape, seed: int) -> tuple[dict[str, np.ndarray], np.random.Generator]:
    """x (or scores and labels y) and every parameter and buffer, by state_dict name.
    Returns the generator too: the upstream gradient is drawn from it once the output
    shape is known."""
    rng = np.random.default_rng(seed)
    arrays = {"x": rng.standard_normal(shape).astype(np.float32)}
    if config["type"] in LOSSES:
        arrays["x"] *= 2
        arrays["y"] = rng.integers(0, shape[1], size=shape[0]).astype(np.int64)
        return arrays, rng
    from cnnkit import from_config  # only for the names and shapes of the state

    for name, value in from_config(config).state_dict().items():
        arrays[name] = _init(name, value.shape, rng)
    return arrays, rng


def state_names(config: dict) -> tuple[list[str], list[str]]:
    """(parameter names, buffer names) of the layer a config builds, as in its state_dict."""
    if config["type"] in LOSSES:
        return [], []
    from cnnkit import from_config

    layer = from_config(config)
    params = [name for name, _ in layer.named_parameters()]
    return params, [name for name in layer.state_dict() if name not in params]


# --- the torch side ------------------------------------------------------------------


def _pair(v):
    return tuple(v) if isinstance(v, (list, tuple)) else (v, v)


def torch_forward(config: dict, x, state: dict, training: bool, prefix: str = ""):
    """The layer a cnnkit config describes, written with torch.nn.functional. ``state``
    maps state_dict names to tensors; batch norm updates its buffers in place."""
    import torch
    import torch.nn.functional as F

    kind = config["type"]
    get = config.get

    def p(name):
        return state.get(prefix + name)

    if kind == "Conv2D":
        # 'floor' is torch's rounding; 'exact' only accepts sizes where floor is exact.
        return F.conv2d(x, p("weight"), p("bias"), stride=get("stride", 1), padding=get("padding", 0),
                        dilation=get("dilation", 1), groups=get("groups", 1))
    if kind == "LocallyConnected2D":
        F_hw, S, P = _pair(get("kernel_size")), _pair(get("stride", 1)), _pair(get("padding", 0))
        w = p("weight")                                          # (H2, W2, K, C, Fh, Fw)
        H2, W2, K = w.shape[:3]
        cols = F.unfold(x, F_hw, padding=P, stride=S)            # (N, C*Fh*Fw, H2*W2)
        out = torch.einsum("nil,lki->nkl", cols, w.reshape(H2 * W2, K, -1))
        out = out.reshape(x.shape[0], K, H2, W2)
        return out + p("bias") if p("bias") is not None else out
    if kind in ("MaxPool2D", "AvgPool2D", "L2Pool2D"):
        k, s = get("kernel_size"), get("stride")
        s = k if s is None else s
        ceil = get("rounding", "exact") == "ceil"
        if kind == "MaxPool2D":
            return F.max_pool2d(x, k, s, get("padding", 0), ceil_mode=ceil)
        if kind == "AvgPool2D":
            return F.avg_pool2d(x, k, s, get("padding", 0), ceil_mode=ceil, count_include_pad=True)
        if not ceil:
            return F.lp_pool2d(x, 2, k, s)
        # F.lp_pool2d scales each window's mean back by Fh*Fw, which over-counts the
        # partial last windows of ceil mode; the L2 norm itself is sqrt(window sum).
        return F.avg_pool2d(x * x, k, s, ceil_mode=True, divisor_override=1).sqrt()
    if kind == "GlobalAvgPool2D":
        return F.adaptive_avg_pool2d(x, 1)
    if kind == "ReLU":
        return F.relu(x)
    if kind == "Dropout":
        return F.dropout(x, get("p", 0.5), training=training)
    if kind == "Flatten":
        return torch.flatten(x, 1)
    if kind == "FC":
        return F.linear(torch.flatten(x, 1), p("weight"), p("bias"))
    if kind == "LRN":
        return F.local_response_norm(x, get("size", 5), alpha=get("alpha", 1e-4), beta=get("beta", 0.75),
                                     k=get("k", 2.0))
    if kind == "BatchNorm2D":
        return F.batch_norm(x, p("running_mean"), p("running_var"), p("weight"), p("bias"), training=training,
                            momentum=get("momentum", 0.1), eps=get("eps", 1e-5))
    if kind == "Sequential":
        for i, layer in enumerate(config["layers"]):
            x = torch_forward(layer, x, state, training, f"{prefix}{i}.")
        return x
    if kind == "Residual":
        body = torch_forward(config["body"], x, state, training, prefix + "body.")
        short = config.get("shortcut")
        return body + (x if short is None else torch_forward(short, x, state, training, prefix + "shortcut."))
    if kind == "Concat":
        return torch.cat([torch_forward(b, x, state, training, f"{prefix}{i}.")
                          for i, b in enumerate(config["branches"])], dim=1)
    raise ValueError(f"no torch reference for layer type {kind!r}")


def torch_loss(config: dict, scores, y):
    """cnnkit's losses in torch: cross-entropy, and the multiclass SVM (margin 1), which
    torch averages over classes as well as samples, so it is scaled back by C."""
    import torch.nn.functional as F

    if config["type"] == "softmax_loss":
        return F.cross_entropy(scores, y)
    return F.multi_margin_loss(scores, y, p=1, margin=1.0) * scores.shape[1]


def torch_case(config: dict, shape, mode: str, seed: int, dtype=None) -> dict[str, np.ndarray]:
    """Inputs, upstream gradient and torch's answers for one case, as float32 arrays.
    ``dtype`` is the torch compute type (float64 for the fixtures)."""
    import torch

    dtype = torch.float64 if dtype is None else dtype
    arrays, rng = make_inputs(config, shape, seed)
    training = mode == "train"
    x = torch.tensor(arrays["x"], dtype=dtype, requires_grad=training)
    if config["type"] in LOSSES:
        loss = torch_loss(config, x, torch.from_numpy(arrays["y"]))
        loss.backward()
        return {**arrays, "out": np.float32(loss.item()), "dx": x.grad.numpy().astype(np.float32)}
    params, buffers = state_names(config)
    state = {n: torch.tensor(arrays[n], dtype=dtype, requires_grad=training and n in params)
             for n in params + buffers}
    out = torch_forward(config, x, state, training)
    result = {**arrays, "out": out.detach().numpy().astype(np.float32)}
    if not training:
        return result
    dout = rng.standard_normal(tuple(out.shape)).astype(np.float32)
    out.backward(torch.tensor(dout, dtype=dtype))
    result.update(dout=dout, dx=x.grad.numpy().astype(np.float32))
    for n in params:
        result["d" + n] = state[n].grad.numpy().astype(np.float32)
    for n in buffers:
        result[n + "_after"] = state[n].numpy().astype(np.float32)
    return result


def generate() -> dict[str, np.ndarray]:
    """Everything the npz holds: every case's arrays under '<name>/' and the table."""
    names = [c["name"] for c in CASES]
    if len(set(names)) != len(names):
        raise ValueError("CASES: duplicate case names")
    store = {"__cases__": np.array(json.dumps(CASES))}
    for c in CASES:
        for key, value in torch_case(c["config"], c["shape"], c["mode"], case_seed(c["name"])).items():
            store[f"{c['name']}/{key}"] = np.asarray(value)
    return store


def main() -> None:
    store = generate()
    FIXTURE_PATH.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(FIXTURE_PATH, **store)
    print(f"wrote {FIXTURE_PATH.relative_to(ROOT)}: {len(CASES)} cases, {len(store)} arrays, "
          f"{FIXTURE_PATH.stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
