"""Every layer's forward and backward against PyTorch, within float32 tolerance.

Three parts:

* fixtures (no torch needed): tests/fixtures/torch_layers.npz holds torch's outputs,
  input gradients, parameter gradients and batch norm's running statistics for the cases
  in scripts/make_torch_fixtures.py; each cnnkit layer is rebuilt from the same config
  and must reproduce them;
* live (torch installed): random shapes per layer type, compared with torch.nn.functional
  in float32, CONV also with im2col lowered in one-row blocks;
* drift (torch installed): regenerating the fixtures gives the committed values.
"""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

import cnnkit as ck

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("make_torch_fixtures", ROOT / "scripts" / "make_torch_fixtures.py")
fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fixtures)

RTOL, ATOL = 1e-4, 1e-5
LOSS_FNS = {"softmax_loss": ck.softmax_loss, "svm_loss": ck.svm_loss}

# Cases that expose an engine bug: name -> reason (strict xfail, so a fix is noticed).
KNOWN_BUGS: dict[str, str] = {}


def _load_store() -> dict[str, np.ndarray]:
    if not fixtures.FIXTURE_PATH.exists():
        return {}
    with np.load(fixtures.FIXTURE_PATH) as f:
        return dict(f)


STORE = _load_store()


def case_arrays(name: str) -> dict[str, np.ndarray]:
    prefix = name + "/"
    arrays = {k[len(prefix):]: v for k, v in STORE.items() if k.startswith(prefix)}
    assert arrays, f"no fixtures for case {name!r}: run python scripts/make_torch_fixtures.py"
    return arrays


def run_cnnkit(config: dict, mode: str, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """cnnkit's answers under the fixture keys: out, dx, d<param>, <buffer>_after."""
    if config["type"] in LOSS_FNS:
        loss, dscores = LOSS_FNS[config["type"]](arrays["x"].copy(), arrays["y"].copy())
        return {"out": np.float32(loss), "dx": dscores}
    layer = ck.from_config(config)
    layer.load_state_dict({name: arrays[name] for name in layer.state_dict()})
    layer.train(mode == "train")
    result = {"out": layer.forward(arrays["x"].copy())}
    if mode != "train":
        return result
    result["dx"] = layer.backward(arrays["dout"].copy())
    for name, _, grad in layer.params_and_grads():
        result["d" + name] = grad
    params = {name for name, _ in layer.named_parameters()}
    for name, value in layer.state_dict().items():
        if name not in params:
            result[name + "_after"] = value
    return result


def assert_matches(config: dict, mode: str, expected: dict[str, np.ndarray], got: dict[str, np.ndarray]):
    """Every output torch produced (out, dx, parameter gradients, running stats) agrees."""
    params, buffers = fixtures.state_names(config)
    inputs = {"x", "y", "dout", *params, *buffers}
    outputs = sorted(k for k in expected if k not in inputs)
    assert "out" in outputs and ("dx" in outputs) == (mode == "train")
    assert set(outputs) <= set(got), f"cnnkit produced no {sorted(set(outputs) - set(got))}"
    for key in outputs:
        want, have = np.asarray(expected[key]), np.asarray(got[key])
        assert have.shape == want.shape, f"{key}: shape {have.shape}, torch {want.shape}"
        if key in ("out", "dx") and have.ndim:
            assert have.dtype == np.float32, f"{key}: float32 in, {have.dtype} out"
        np.testing.assert_allclose(have, want, rtol=RTOL, atol=ATOL, err_msg=key)


def _params(names, bugs):
    return [pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=bugs[n])) if n in bugs else n
            for n in names]


# --- (a) committed fixtures, no torch --------------------------------------------------


CASE_BY_NAME = {c["name"]: c for c in fixtures.CASES}


def test_fixtures_match_the_case_table():
    assert STORE, "tests/fixtures/torch_layers.npz is missing: run python scripts/make_torch_fixtures.py"
    stored = json.loads(str(STORE["__cases__"]))
    assert stored == json.loads(json.dumps(fixtures.CASES)), (
        "scripts/make_torch_fixtures.py CASES changed: rerun it to regenerate the fixtures")


def test_every_layer_type_is_covered():
    def types(config):
        yield config["type"]
        for child in config.get("layers", []) + config.get("branches", []):
            yield from types(child)
        for key in ("body", "shortcut"):
            if key in config:
                yield from types(config[key])

    covered = {t for c in fixtures.CASES for t in types(c["config"])}
    engine = {name for name in ck.layers.__all__
              if isinstance(getattr(ck.layers, name), type) and issubclass(getattr(ck.layers, name), ck.Layer)}
    assert covered >= (engine - {"Layer"}) | set(LOSS_FNS), "a layer type has no torch fixture"



@pytest.mark.parametrize("name", _params(CASE_BY_NAME, KNOWN_BUGS))
def test_layer_matches_torch_fixture(name):
    c = CASE_BY_NAME[name]
    arrays = case_arrays(name)
    assert_matches(c["config"], c["mode"], arrays, run_cnnkit(c["config"], c["mode"], arrays))


def test_dropout_train_mode_is_inverted_dropout():
    # No mask can match torch's; what must match is the rule: keep with probability
    # 1 - p, scale the kept units by 1/(1 - p), and send the gradient through the same mask.
    p = 0.3
    layer = ck.Dropout(p, seed=0)
    x = np.random.default_rng(1).uniform(0.5, 1.5, (4, 8, 16, 16)).astype(np.float32)
    out = layer.forward(x)
    kept = out != 0
    np.testing.assert_allclose(out[kept], x[kept] / (1 - p), rtol=1e-6)
    assert abs(kept.mean() - (1 - p)) < 4 * np.sqrt(p * (1 - p) / x.size)
    dout = np.random.default_rng(2).standard_normal(x.shape).astype(np.float32)
    np.testing.assert_allclose(layer.backward(dout), np.where(kept, dout / (1 - p), 0), rtol=1e-6)


# --- (b) live comparison on random shapes ----------------------------------------------


def _ints(rng, lo, hi, n=2):
    """n ints in [lo, hi], as Python ints (configs are JSON; torch wants ints)."""
    return [int(v) for v in rng.integers(lo, hi + 1, n)]


def _fit(rng, F, S, P, D, roundings):
    """A random (H, W) that the window fits, and a rounding that accepts it."""
    hw = []
    for f, s, p, d in zip(F, S, P, D):
        lo = max(1, d * (f - 1) + 1 - 2 * p)
        if rng.random() < 0.6:       # windows that tile exactly: span (H - F + 2P) a multiple of S
            hw.append(lo + (-(lo - (d * (f - 1) + 1) + 2 * p)) % s + s * int(rng.integers(0, 3)))
        else:
            hw.append(lo + int(rng.integers(0, 2 * s + 3)))
    spans = [h - (d * (f - 1) + 1) + 2 * p for h, f, p, d in zip(hw, F, P, D)]
    exact = all(span % s == 0 for span, s in zip(spans, S))
    return hw, "exact" if exact and rng.random() < 0.7 else str(rng.choice(roundings))


def draw_conv(rng):
    G = int(rng.choice([1, 1, 2, 3]))
    C, K = G * int(rng.integers(1, 3)), G * int(rng.integers(1, 3))
    F, S, D, P = _ints(rng, 1, 5), _ints(rng, 1, 3), _ints(rng, 1, 2), _ints(rng, 0, 2)
    hw, rounding = _fit(rng, F, S, P, D, ["floor"])
    config = fixtures.Conv(C, K, F, stride=S, padding=P, dilation=D, groups=G, bias=bool(rng.random() < 0.8),
                           rounding=rounding)
    return config, [int(rng.integers(1, 5)), C, *hw]


def draw_locally_connected(rng):
    C, K = _ints(rng, 1, 3)
    F, S, P = _ints(rng, 1, 4), _ints(rng, 1, 3), _ints(rng, 0, 1)
    hw, rounding = _fit(rng, F, S, P, [1, 1], ["floor"])
    config = fixtures.LC(C, K, F, hw, stride=S, padding=P, bias=bool(rng.random() < 0.8), rounding=rounding)
    return config, [int(rng.integers(1, 5)), C, *hw]


def _draw_pool(make, padded):
    def draw(rng):
        F, S = _ints(rng, 1, 4), _ints(rng, 1, 3)
        P = [int(rng.integers(0, f // 2 + 1)) if padded else 0 for f in F]
        hw, rounding = _fit(rng, F, S, P, [1, 1], ["floor", "ceil"])
        kwargs = {"padding": P} if padded else {}
        return make(F, S, rounding=rounding, **kwargs), [int(rng.integers(1, 5)), int(rng.integers(1, 4)), *hw]
    return draw


def _nchw(rng, c_max=4, hw_max=7):
    return [int(rng.integers(1, 5)), int(rng.integers(1, c_max + 1)), *_ints(rng, 1, hw_max)]


def draw_fc(rng):
    shape = _nchw(rng, 3, 4) if rng.random() < 0.5 else [int(rng.integers(1, 5)), int(rng.integers(1, 20))]
    return fixtures.FC(int(np.prod(shape[1:])), int(rng.integers(1, 8)), bias=bool(rng.random() < 0.8)), shape


def draw_lrn(rng):
    config = fixtures.LRN(int(rng.integers(1, 7)), alpha=float(rng.uniform(1e-4, 1)),
                          beta=float(rng.uniform(0.5, 1)), k=float(rng.uniform(0.5, 2)))
    return config, _nchw(rng, 8, 4)


def draw_batch_norm(rng):
    shape = _nchw(rng, 5, 4)
    if shape[0] * shape[2] * shape[3] < 2:
        shape[2] = 2
    return fixtures.BN(shape[1], eps=float(rng.choice([1e-5, 1e-3])), momentum=float(rng.uniform(0, 1))), shape


def _draw_loss(make):
    return lambda rng: (make(), [int(rng.integers(1, 5)), int(rng.integers(2, 11))])


def draw_residual(rng):
    C, K, S = int(rng.integers(1, 4)), int(rng.integers(1, 5)), int(rng.choice([1, 2]))
    body = fixtures.Seq(fixtures.Conv(C, K, 3, stride=S, padding=1), fixtures.BN(K), fixtures.ReLU(),
                        fixtures.Conv(K, K, 3, padding=1))
    shortcut = None if (S, C) == (1, K) else fixtures.Conv(C, K, 1, stride=S)
    hw = [S * int(rng.integers(1, 4)) + (S - 1) for _ in range(2)]     # odd when S = 2: exact
    return fixtures.Res(body, shortcut), [int(rng.integers(1, 5)), C, *hw]


def draw_concat(rng):
    C = int(rng.integers(1, 4))
    def width():
        return int(rng.integers(1, 4))
    branches = [fixtures.Conv(C, width(), 1),
                fixtures.Seq(fixtures.Conv(C, 2, 1), fixtures.ReLU(), fixtures.Conv(2, width(), 3, padding=1)),
                fixtures.Seq(fixtures.Max(3, 1, padding=1), fixtures.Conv(C, width(), 1)),
                fixtures.Avg(3, 1, padding=1)]
    picked = [branches[i] for i in sorted(rng.choice(4, size=int(rng.integers(1, 5)), replace=False))]
    return fixtures.Cat(*picked), [int(rng.integers(1, 5)), C, *_ints(rng, 2, 6)]


def draw_sequential(rng):
    C, K, classes = int(rng.integers(1, 4)), int(rng.integers(1, 5)), int(rng.integers(2, 6))
    H, W = _ints(rng, 2, 8)
    return (fixtures.Seq(fixtures.Conv(C, K, 3, padding=1), fixtures.ReLU(), fixtures.Max(2, rounding="floor"),
                         fixtures.Flatten(), fixtures.FC(K * (H // 2) * (W // 2), classes)),
            [int(rng.integers(1, 5)), C, H, W])


DRAWS = {
    "Conv2D": draw_conv,
    "Conv2D-one-row-blocks": draw_conv,
    "LocallyConnected2D": draw_locally_connected,
    "MaxPool2D": _draw_pool(fixtures.Max, padded=True),
    "AvgPool2D": _draw_pool(fixtures.Avg, padded=True),
    "L2Pool2D": _draw_pool(fixtures.L2, padded=False),
    "GlobalAvgPool2D": lambda rng: (fixtures.GAP(), _nchw(rng)),
    "ReLU": lambda rng: (fixtures.ReLU(), _nchw(rng) if rng.random() < 0.7 else _nchw(rng)[:2]),
    "Dropout-eval": lambda rng: (fixtures.Dropout(float(rng.uniform(0, 0.9))), _nchw(rng)),
    "Flatten": lambda rng: (fixtures.Flatten(), _nchw(rng)[:int(rng.integers(2, 5))]),
    "FC": draw_fc,
    "LRN": draw_lrn,
    "BatchNorm2D": draw_batch_norm,
    "softmax_loss": _draw_loss(fixtures.SoftmaxLoss),
    "svm_loss": _draw_loss(fixtures.SvmLoss),
    "Sequential": draw_sequential,
    "Residual": draw_residual,
    "Concat": draw_concat,
}
DRAWS_PER_KIND = 6
LIVE = [f"{kind}-{i}" for kind in DRAWS for i in range(DRAWS_PER_KIND)]
# Live draws that expose an engine bug: id -> reason.
KNOWN_LIVE_BUGS: dict[str, str] = {}


def live_case(case_id: str):
    kind = case_id.rsplit("-", 1)[0]
    rng = np.random.default_rng(fixtures.case_seed("live/" + case_id))
    config, shape = DRAWS[kind](rng)
    mode = "eval" if kind == "Dropout-eval" or (kind == "BatchNorm2D" and rng.random() < 0.3) else "train"
    return config, shape, mode


@pytest.mark.parametrize("case_id", _params(LIVE, KNOWN_LIVE_BUGS))
def test_layer_matches_torch_live(case_id):
    torch = pytest.importorskip("torch")
    config, shape, mode = live_case(case_id)
    one_row_blocks = case_id.startswith("Conv2D-one-row-blocks")   # lower one output row at a time
    expected = fixtures.torch_case(config, shape, mode, fixtures.case_seed("live/" + case_id), torch.float32)
    with ck.engine(block_bytes=1 if one_row_blocks else ck.layers.Options().block_bytes):
        got = run_cnnkit(config, mode, expected)
    assert_matches(config, mode, expected, got)


def test_dropout_train_mode_matches_torch_rule():
    torch = pytest.importorskip("torch")
    p = 0.4
    x = torch.ones(4, 8, 16, 16)
    torch.manual_seed(0)
    theirs = torch.nn.functional.dropout(x, p, training=True).numpy()
    ours = ck.Dropout(p, seed=0).forward(x.numpy())
    for out in (theirs, ours):
        kept = out != 0
        np.testing.assert_allclose(out[kept], 1 / (1 - p), rtol=1e-6)
        assert abs(kept.mean() - (1 - p)) < 4 * np.sqrt(p * (1 - p) / out.size)


# --- (c) the committed fixtures are what the script makes --------------------------------


def test_fixtures_regenerate_identically():
    pytest.importorskip("torch")
    fresh = fixtures.generate()
    assert sorted(fresh) == sorted(STORE), "fixture keys differ: rerun python scripts/make_torch_fixtures.py"
    for key, value in fresh.items():
        if value.dtype.kind in "iU":
            np.testing.assert_array_equal(STORE[key], value, err_msg=key)
        else:
            # float64 answers rounded to float32: equal up to a rounding flip
            np.testing.assert_allclose(STORE[key], value, rtol=1e-6, atol=1e-7, err_msg=key)
