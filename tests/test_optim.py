"""Optimizers and learning-rate schedules: known answers by hand, and torch.optim agreement."""

import json
import math

import numpy as np
import pytest

from cnnkit.errors import ShapeError, StateError
from cnnkit.layers.base import Layer
from cnnkit.optim import SGD, Adagrad, Adam, RMSProp, optimizer_from_state
from cnnkit.schedules import (
    Constant,
    CosineAnnealing,
    LinearWarmup,
    StepDecay,
    schedule_from_config,
)


class OptimToyLayer(Layer):
    """Holds given arrays as params; grads are set by the test, not by backward."""

    def __init__(self, **params):
        super().__init__()
        self.params = dict(params)


class OptimToyNet(Layer):
    """A container, so parameter names are qualified ('0.w', '1.b')."""

    def __init__(self, *layers):
        super().__init__()
        self._layers = list(layers)

    def children(self):
        return self._layers


def scalar_net(value=1.0, dtype=np.float64):
    return OptimToyNet(OptimToyLayer(w=np.array([value], dtype=dtype)))


def step_with(opt, net, grads):
    """Set each layer's grads from {qualified name: array or None} and take one step."""
    for layer_index, layer in enumerate(net.children()):
        layer.grads = {}
        for key in layer.params:
            g = grads.get(f"{layer_index}.{key}")
            if g is not None:
                layer.grads[key] = np.array(g, dtype=layer.params[key].dtype)
    opt.step()


# --- known answers, no torch -----------------------------------------------------


def test_sgd_momentum_first_two_steps_by_hand():
    net = scalar_net(1.0)
    opt = SGD(net, lr=0.1, momentum=0.9)
    step_with(opt, net, {"0.w": [0.5]})
    w = net.children()[0].params["w"]
    assert w[0] == pytest.approx(0.95, abs=1e-15)  # v = 0.5
    step_with(opt, net, {"0.w": [0.5]})
    assert w[0] == pytest.approx(0.855, abs=1e-15)  # v = 0.9*0.5 + 0.5 = 0.95


def test_sgd_nesterov_first_step_by_hand():
    net = scalar_net(1.0)
    opt = SGD(net, lr=0.1, momentum=0.9, nesterov=True)
    step_with(opt, net, {"0.w": [0.5]})
    # v = 0.5; the step uses g + mu*v = 0.5 + 0.45 = 0.95
    assert net.children()[0].params["w"][0] == pytest.approx(0.905, abs=1e-15)


def test_sgd_weight_decay_is_added_to_the_gradient():
    net = scalar_net(2.0)
    opt = SGD(net, lr=0.1, weight_decay=0.1)
    step_with(opt, net, {"0.w": [0.0]})
    assert net.children()[0].params["w"][0] == pytest.approx(2.0 - 0.1 * 0.2, abs=1e-15)
    # the layer's gradient is left as backward wrote it
    assert net.children()[0].grads["w"][0] == 0.0


def test_adam_first_two_steps_by_hand():
    net = scalar_net(1.0)
    opt = Adam(net, lr=0.1)
    step_with(opt, net, {"0.w": [0.5]})
    w = net.children()[0].params["w"]
    # step 1: m_hat = g, v_hat = g**2, so the step is lr * g / (|g| + eps)
    assert w[0] == pytest.approx(1.0 - 0.1 * 0.5 / (0.5 + 1e-8), abs=1e-15)
    step_with(opt, net, {"0.w": [-1.0]})
    # m = 0.9*0.05 - 0.1 = -0.055, m_hat = -0.055/0.19; v = 0.999*0.00025 + 0.001, v_hat = v/(1 - 0.999**2)
    m_hat, v_hat = -0.055 / 0.19, 0.00124975 / 0.001999
    assert w[0] == pytest.approx(0.900000002 - 0.1 * m_hat / (math.sqrt(v_hat) + 1e-8), abs=1e-12)
    assert w[0] == pytest.approx(0.9366103542405654, abs=1e-12)


def test_adagrad_and_rmsprop_first_step_by_hand():
    net = scalar_net(1.0)
    opt = Adagrad(net, lr=0.1)
    step_with(opt, net, {"0.w": [2.0]})  # cache = 4: step = 0.1 * 2 / 2
    assert net.children()[0].params["w"][0] == pytest.approx(0.9, abs=1e-9)
    step_with(opt, net, {"0.w": [2.0]})  # cache = 8: step = 0.1 * 2 / sqrt(8)
    assert net.children()[0].params["w"][0] == pytest.approx(0.9 - 0.2 / math.sqrt(8), abs=1e-9)

    net = scalar_net(1.0)
    opt = RMSProp(net, lr=0.1, alpha=0.99)
    step_with(opt, net, {"0.w": [2.0]})  # cache = 0.01 * 4 = 0.04: step = 0.1 * 2 / 0.2
    assert net.children()[0].params["w"][0] == pytest.approx(0.0, abs=1e-7)


# --- the contract: in place, skips, fresh reads, lr ------------------------------


@pytest.mark.parametrize("make", [
    lambda n: SGD(n, lr=0.1, momentum=0.9), lambda n: Adagrad(n, lr=0.1),
    lambda n: RMSProp(n, lr=0.1), lambda n: Adam(n, lr=0.1),
])
def test_updates_in_place_and_keep_dtype(make):
    w = np.ones((2, 3), dtype=np.float32)
    net = OptimToyNet(OptimToyLayer(w=w))
    view = w[0]
    opt = make(net)
    step_with(opt, net, {"0.w": np.full((2, 3), 0.5)})
    assert net.children()[0].params["w"] is w
    assert w.dtype == np.float32
    assert np.all(w < 1) and np.all(view < 1)  # views see the update: same memory
    assert all(a.dtype == np.float32 for s in opt.state.values() for a in s.values() if a.ndim)


def test_parameters_without_gradient_are_skipped():
    net = OptimToyNet(OptimToyLayer(w=np.ones(2), b=np.ones(2)))
    opt = Adam(net, lr=0.1)
    step_with(opt, net, {"0.w": [1.0, 1.0]})  # no gradient for b
    assert np.all(net.children()[0].params["b"] == 1.0)
    assert set(opt.state) == {"0.w"}


def test_step_reads_parameters_afresh():
    layer = OptimToyLayer(w=np.ones(2))
    net = OptimToyNet(layer)
    opt = SGD(net, lr=0.5)
    step_with(opt, net, {"0.w": [1.0, 1.0]})
    new = np.full(2, 10.0)  # e.g. load_state_dict swapped the array
    layer.params["w"] = new
    step_with(opt, net, {"0.w": [1.0, 1.0]})
    assert np.all(new == 9.5)


def test_lr_is_settable():
    net = scalar_net(1.0)
    opt = SGD(net, lr=0.1)
    opt.lr = 0.0
    step_with(opt, net, {"0.w": [3.0]})
    assert net.children()[0].params["w"][0] == 1.0
    opt.lr = 1.0
    step_with(opt, net, {"0.w": [3.0]})
    assert net.children()[0].params["w"][0] == -2.0


def test_bad_hyperparameters_and_gradients_raise():
    net = scalar_net()
    with pytest.raises(ShapeError, match="lr"):
        SGD(net, lr=-1)
    with pytest.raises(ShapeError, match="nesterov"):
        SGD(net, lr=0.1, nesterov=True)
    with pytest.raises(ShapeError, match="betas"):
        Adam(net, betas=(0.9, 1.0))
    with pytest.raises(ShapeError, match="alpha"):
        RMSProp(net, alpha=1.5)
    with pytest.raises(StateError, match="params_and_grads"):
        SGD(object(), lr=0.1)
    net.children()[0].grads["w"] = np.ones(3)
    with pytest.raises(ShapeError, match=r"'0\.w'.*\(3,\)"):
        SGD(net, lr=0.1).step()


# --- state_dict ----------------------------------------------------------------------


OPTIMIZERS = {
    "sgd": lambda n: SGD(n, lr=0.1),
    "momentum": lambda n: SGD(n, lr=0.1, momentum=0.9, weight_decay=0.01),
    "nesterov": lambda n: SGD(n, lr=0.1, momentum=0.8, nesterov=True),
    "adagrad": lambda n: Adagrad(n, lr=0.1, eps=1e-9, weight_decay=0.05),
    "rmsprop": lambda n: RMSProp(n, lr=0.01, alpha=0.9, eps=1e-7),
    "adam": lambda n: Adam(n, lr=0.01, betas=(0.8, 0.99), eps=1e-7, weight_decay=0.1),
}


def gradient_sequence(shapes, steps, seed=0):
    """Fixed gradients per step; '0.b' has none on step 2 (so it is skipped there)."""
    rng = np.random.default_rng(seed)
    seq = []
    for t in range(steps):
        grads = {name: rng.standard_normal(shape) for name, shape in shapes.items()}
        if t == 2:
            grads["0.b"] = None
        seq.append(grads)
    return seq


def fresh_net(seed=1):
    rng = np.random.default_rng(seed)
    return OptimToyNet(OptimToyLayer(w=rng.standard_normal((3, 4)), b=rng.standard_normal(4)),
                       OptimToyLayer(w=rng.standard_normal((4, 2))))


SHAPES = {"0.w": (3, 4), "0.b": (4,), "1.w": (4, 2)}


@pytest.mark.parametrize("kind", sorted(OPTIMIZERS))
def test_state_dict_round_trip_continues_identically(kind):
    seq = gradient_sequence(SHAPES, 7)
    net_a = fresh_net()
    opt_a = OPTIMIZERS[kind](net_a)
    for grads in seq[:4]:
        step_with(opt_a, net_a, grads)
    arrays, hyper = opt_a.state_dict()
    assert json.loads(json.dumps(hyper)) == hyper  # plain JSON data
    assert hyper["type"] == type(opt_a).__name__ and hyper["steps"] == 4

    net_b = fresh_net()
    net_b.load_state_dict({k: v.copy() for k, v in net_a.state_dict().items()})
    opt_b = optimizer_from_state(net_b, {k: v.copy() for k, v in arrays.items()}, json.loads(json.dumps(hyper)))
    assert type(opt_b) is type(opt_a) and opt_b.hyperparameters() == opt_a.hyperparameters()
    for grads in seq[4:]:
        step_with(opt_a, net_a, grads)
        step_with(opt_b, net_b, grads)
    for (name, pa, _), (_, pb, _) in zip(net_a.params_and_grads(), net_b.params_and_grads()):
        assert np.array_equal(pa, pb), name


def test_state_dict_names_are_param_dot_slot():
    net = fresh_net()
    opt = Adam(net, lr=0.1)
    step_with(opt, net, {k: np.ones(s) for k, s in SHAPES.items()})
    arrays, hyper = opt.state_dict()
    assert set(arrays) == {f"{p}.{s}" for p in SHAPES for s in ("m", "v", "step")}
    assert arrays["0.b.step"] == 1
    assert hyper == {"type": "Adam", "lr": 0.1, "betas": [0.9, 0.999], "eps": 1e-8,
                     "weight_decay": 0.0, "steps": 1}


def test_load_state_dict_rejects_mismatches():
    net = fresh_net()
    opt = SGD(net, lr=0.1, momentum=0.9)
    with pytest.raises(StateError, match="Adam"):
        opt.load_state_dict({}, {"type": "Adam"})
    with pytest.raises(StateError, match="'9.w'"):
        opt.load_state_dict({"9.w.velocity": np.zeros(2)}, {"type": "SGD"})
    with pytest.raises(ShapeError, match=r"\(3, 4\)"):
        opt.load_state_dict({"0.w.velocity": np.zeros(2)}, {"type": "SGD"})
    with pytest.raises(StateError, match="unknown optimizer"):
        optimizer_from_state(net, {}, {"type": "Lion"})


# --- torch.optim agreement ----------------------------------------------------------


TORCH_PAIRS = [
    ("sgd", dict(lr=0.1), "SGD", dict(lr=0.1)),
    ("sgd_wd", dict(lr=0.1, weight_decay=0.05), "SGD", dict(lr=0.1, weight_decay=0.05)),
    ("momentum", dict(lr=0.1, momentum=0.9), "SGD", dict(lr=0.1, momentum=0.9)),
    ("momentum_wd", dict(lr=0.05, momentum=0.5, weight_decay=0.1), "SGD",
     dict(lr=0.05, momentum=0.5, weight_decay=0.1)),
    ("nesterov", dict(lr=0.1, momentum=0.9, nesterov=True), "SGD", dict(lr=0.1, momentum=0.9, nesterov=True)),
    ("nesterov_wd", dict(lr=0.1, momentum=0.7, nesterov=True, weight_decay=0.01), "SGD",
     dict(lr=0.1, momentum=0.7, nesterov=True, weight_decay=0.01)),
    ("adagrad", dict(lr=0.1), "Adagrad", dict(lr=0.1)),
    ("adagrad_wd", dict(lr=0.1, eps=1e-6, weight_decay=0.1), "Adagrad", dict(lr=0.1, eps=1e-6, weight_decay=0.1)),
    ("rmsprop", dict(lr=0.01), "RMSprop", dict(lr=0.01)),
    ("rmsprop_wd", dict(lr=0.01, alpha=0.9, eps=1e-6, weight_decay=0.1), "RMSprop",
     dict(lr=0.01, alpha=0.9, eps=1e-6, weight_decay=0.1)),
    ("adam", dict(lr=0.01), "Adam", dict(lr=0.01)),
    ("adam_wd", dict(lr=0.05, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1), "Adam",
     dict(lr=0.05, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1)),
]

OURS = {"SGD": SGD, "Adagrad": Adagrad, "RMSprop": RMSProp, "Adam": Adam}


@pytest.mark.parametrize("case", TORCH_PAIRS, ids=[c[0] for c in TORCH_PAIRS])
def test_matches_torch_optim(case):
    torch = pytest.importorskip("torch")
    _, ours_kw, torch_name, torch_kw = case
    net = fresh_net()
    tparams = {name: torch.tensor(p.copy(), dtype=torch.float64, requires_grad=True)
               for name, p, _ in net.params_and_grads()}
    opt = OURS[torch_name](net, **ours_kw)
    topt = getattr(torch.optim, torch_name)(list(tparams.values()), **torch_kw)
    for grads in gradient_sequence(SHAPES, 6, seed=3):
        step_with(opt, net, grads)
        for name, t in tparams.items():
            t.grad = None if grads[name] is None else torch.tensor(grads[name], dtype=torch.float64)
        topt.step()
    for name, p, _ in net.params_and_grads():
        np.testing.assert_allclose(p, tparams[name].detach().numpy(), rtol=0, atol=1e-6, err_msg=name)
    # and the skipped step really was skipped on both sides: b moved by 5 updates, not 6
    assert not np.allclose(net.children()[0].params["b"], fresh_net().children()[0].params["b"])


# --- schedules ----------------------------------------------------------------------


def test_step_decay_known_values():
    s = StepDecay(0.1, step_size=3, gamma=0.5)
    assert [s.lr_at(t) for t in range(8)] == pytest.approx(
        [0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.025, 0.025], abs=1e-15)


def test_cosine_known_values_and_hold_after_t_max():
    s = CosineAnnealing(1.0, t_max=4)
    c = math.cos(math.pi / 4)
    assert [s.lr_at(t) for t in range(7)] == pytest.approx(
        [1.0, (1 + c) / 2, 0.5, (1 - c) / 2, 0.0, 0.0, 0.0], abs=1e-15)
    s = CosineAnnealing(0.5, t_max=2, eta_min=0.1)
    assert [s.lr_at(t) for t in range(4)] == pytest.approx([0.5, 0.3, 0.1, 0.1], abs=1e-15)


def test_warmup_then_step_known_values():
    s = LinearWarmup(StepDecay(0.1, step_size=2, gamma=0.1), warmup=4)
    assert [s.lr_at(t) for t in range(9)] == pytest.approx(
        [0.0, 0.025, 0.05, 0.075, 0.1, 0.1, 0.01, 0.01, 0.001], abs=1e-15)
    s = LinearWarmup(CosineAnnealing(1.0, t_max=2), warmup=2, start_factor=0.5)
    assert [s.lr_at(t) for t in range(6)] == pytest.approx([0.5, 0.75, 1.0, 0.5, 0.0, 0.0], abs=1e-15)
    assert LinearWarmup(Constant(0.3), warmup=0).lr_at(0) == 0.3


def test_apply_sets_optimizer_lr_from_its_step_count():
    net = scalar_net(1.0)
    opt = SGD(net, lr=123.0)
    s = StepDecay(1.0, step_size=1, gamma=0.5)
    lrs = []
    for _ in range(3):
        lrs.append(s.apply(opt))
        assert opt.lr == lrs[-1]
        step_with(opt, net, {"0.w": [1.0]})
    assert lrs == [1.0, 0.5, 0.25]
    assert net.children()[0].params["w"][0] == pytest.approx(1.0 - 1.75)


@pytest.mark.parametrize("s", [
    Constant(0.1), StepDecay(0.1, 10, 0.3), CosineAnnealing(0.2, 50, 1e-4),
    LinearWarmup(CosineAnnealing(0.2, 50), 5, 0.1), LinearWarmup(StepDecay(0.1, 7), 3),
])
def test_schedule_config_round_trip(s):
    cfg = json.loads(json.dumps(s.config()))
    s2 = schedule_from_config(cfg)
    assert type(s2) is type(s) and s2.config() == s.config()
    assert [s2.lr_at(t) for t in range(80)] == [s.lr_at(t) for t in range(80)]


def test_schedule_errors():
    with pytest.raises(ShapeError, match="step_size"):
        StepDecay(0.1, step_size=0)
    with pytest.raises(ShapeError, match="t_max"):
        CosineAnnealing(0.1, t_max=2.5)
    with pytest.raises(ShapeError, match="steps taken"):
        Constant(0.1).lr_at(-1)
    with pytest.raises(ShapeError, match="type"):
        schedule_from_config({"type": "OneCycle"})


def torch_lrs(torch, make_scheduler, base_lr, steps):
    """The lr torch reports after t = 0..steps-1 calls to scheduler.step()."""
    p = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([p], lr=base_lr)
    sched = make_scheduler(opt)
    lrs = []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()  # before scheduler.step(), as torch expects
        sched.step()
    return lrs


def test_schedules_match_torch_lr_scheduler():
    torch = pytest.importorskip("torch")
    S = torch.optim.lr_scheduler
    ours = StepDecay(0.1, step_size=3, gamma=0.3)
    theirs = torch_lrs(torch, lambda o: S.StepLR(o, step_size=3, gamma=0.3), 0.1, 12)
    np.testing.assert_allclose([ours.lr_at(t) for t in range(12)], theirs, rtol=0, atol=1e-12)

    ours = CosineAnnealing(0.1, t_max=10, eta_min=0.001)
    theirs = torch_lrs(torch, lambda o: S.CosineAnnealingLR(o, T_max=10, eta_min=0.001), 0.1, 11)
    np.testing.assert_allclose([ours.lr_at(t) for t in range(11)], theirs, rtol=0, atol=1e-12)

    ours = LinearWarmup(CosineAnnealing(0.1, t_max=10), warmup=4, start_factor=0.25)
    theirs = torch_lrs(torch, lambda o: S.SequentialLR(
        o, [S.LinearLR(o, start_factor=0.25, total_iters=4), S.CosineAnnealingLR(o, T_max=10)],
        milestones=[4]), 0.1, 15)
    np.testing.assert_allclose([ours.lr_at(t) for t in range(15)], theirs, rtol=0, atol=1e-12)


# --- the update in chunks ------------------------------------------------------------


RULE_KWARGS = [("SGD", dict(lr=0.1, weight_decay=0.01)), ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True)),
               ("Adagrad", dict(lr=0.1)), ("RMSprop", dict(lr=0.01, weight_decay=0.1)),
               ("Adam", dict(lr=0.01, weight_decay=0.1))]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("name, kwargs", RULE_KWARGS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(RULE_KWARGS)])
def test_an_update_in_small_chunks_equals_the_update_in_one(monkeypatch, name, kwargs, threads):
    """The rules are elementwise, so updating a parameter a few rows at a time (the
    chunks shared between threads) gives the same bits as updating it whole on one
    thread; the slots keep a channels-last parameter's memory order."""
    import cnnkit as ck
    import cnnkit.optim as optim

    def run(chunk_bytes, threads):
        monkeypatch.setattr(optim, "CHUNK_BYTES", chunk_bytes)
        rng = np.random.default_rng(5)
        memory = rng.standard_normal((6, 3, 3, 5)).astype(np.float32)     # (K, F, F, D1) in memory
        net = OptimToyNet(OptimToyLayer(w=memory.transpose(0, 3, 1, 2), b=rng.standard_normal(6)))
        opt = OURS[name](net, **kwargs)
        with ck.engine(threads=threads):
            for _ in range(3):
                step_with(opt, net, {"0.w": rng.standard_normal((6, 5, 3, 3)), "0.b": rng.standard_normal(6)})
        return net, opt

    whole, whole_opt = run(1 << 30, 1)
    rows, rows_opt = run(1, threads)     # one row of the first axis per chunk
    for (n, p, _), (_, q, _) in zip(whole.params_and_grads(), rows.params_and_grads(), strict=True):
        np.testing.assert_array_equal(p, q, err_msg=n)
    for key, arr in rows_opt.state_dict()[0].items():
        np.testing.assert_array_equal(arr, whole_opt.state_dict()[0][key], err_msg=key)
    w = rows.children()[0].params["w"]
    for slot in rows_opt.slots():
        assert rows_opt.state["0.w"][slot].strides == w.strides, slot


def test_the_rules_by_name_list_the_slots_their_optimizer_keeps():
    from cnnkit.optim import RULES
    for rule in RULES.values():
        assert rule.create(scalar_net()).slots() == rule.slots, rule.name


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_adams_compiled_pass_gives_numpys_numbers(weight_decay):
    """With numba (cnnkit[fast]) Adam's update is one compiled pass per chunk: the same
    float32 operations in the same order as its NumPy operations, so the same bits, on the
    gradients backward leaves (channels-last filters, batch norm, FC)."""
    import cnnkit as ck
    from cnnkit.layers.kernels import compiled

    with ck.engine(compiled=True):
        if compiled.loops() is None:
            pytest.skip("numba is not installed (cnnkit[fast])")

    def run(on):
        ck.manual_seed(0)
        net = ck.models.get("resnet18", num_classes=10, input_size=(3, 32, 32))
        opt = Adam(net, lr=1e-2, weight_decay=weight_decay)
        rng = np.random.default_rng(3)
        taken = []
        for _ in range(3):
            x = rng.standard_normal((2, 3, 32, 32)).astype(np.float32)
            with ck.engine(compiled=False):      # the same gradients while the parameters agree
                _, dscores = ck.softmax_loss(net.forward(x), np.array([1, 7]))
                net.backward(dscores)
            with ck.engine(compiled=on):
                opt.step()
        with ck.engine(compiled=on):
            for _, p, g in net.params_and_grads():
                taken.append(opt._update_compiled(p.copy(order="K"), g, {s: np.zeros_like(p) for s in opt.slots()}, (1e-3, 1.0)))
        return net, taken

    numpy_net, _ = run(False)
    compiled_net, taken = run(True)
    assert all(taken), [n for (n, _, _), t in zip(compiled_net.params_and_grads(), taken) if not t]
    for (n, p, _), (_, q, _) in zip(numpy_net.params_and_grads(), compiled_net.params_and_grads(), strict=True):
        np.testing.assert_array_equal(p, q, err_msg=n)


def test_adam_with_eps_zero_divides_as_numpy_does():
    """eps = 0 and a zero moment: 0/0 is nan in NumPy, so in the compiled pass too (numba's
    default error model would raise ZeroDivisionError)."""
    import cnnkit as ck

    layer = OptimToyLayer(w=np.zeros((2, 3), np.float32), b=np.zeros(2, np.float32))
    net = OptimToyNet(layer)
    opt = Adam(net, lr=0.1, eps=0.0)
    for on in (False, True):
        layer.params["w"][...] = 0
        with ck.engine(compiled=on), np.errstate(invalid="ignore"):
            step_with(opt, net, {"0.w": np.zeros((2, 3)), "0.b": np.ones(2)})
        assert np.isnan(layer.params["w"]).all() and np.isfinite(layer.params["b"]).all()
