"""Checkpoints: bit-for-bit round trips, atomic writes, clear errors, no pickle."""

import json
import os
import pickle

import numpy as np
import pytest

from cnnkit import checkpoint as ckpt_mod
from cnnkit.checkpoint import CheckpointError, load_checkpoint, restore_rng, rng_state, save_checkpoint
from cnnkit.errors import CnnkitError
from cnnkit.layers.base import Layer, from_config
from cnnkit.optim import SGD, Adam
from cnnkit.schedules import CosineAnnealing, LinearWarmup


class CkptToyLinear(Layer):
    """x @ W + b, with a buffer that counts forward calls (stands in for batch norm stats)."""

    def __init__(self, n_in, n_out):
        super().__init__()
        self.n_in, self.n_out = n_in, n_out
        rng = np.random.default_rng(n_in * 100 + n_out)
        self.params = {"weight": rng.standard_normal((n_in, n_out)).astype(np.float32),
                       "bias": np.zeros(n_out, dtype=np.float32)}
        self.buffers = {"seen": np.zeros(n_out, dtype=np.float32)}

    def forward(self, x):
        self.buffers["seen"] += 1
        return self._save(x, x @ self.params["weight"] + self.params["bias"])

    def backward(self, dout):
        x = self._take_cache(dout)
        self.grads = {"weight": x.T @ dout, "bias": dout.sum(axis=0)}
        return dout @ self.params["weight"].T

    def config(self):
        return {"type": "CkptToyLinear", "n_in": self.n_in, "n_out": self.n_out}


class CkptToyNet(Layer):
    def __init__(self, *layers):
        super().__init__()
        self.layers_ = list(layers)

    def children(self):
        return self.layers_

    def forward(self, x):
        for layer in self.layers_:
            x = layer.forward(x)
        return self._save(True, x)

    def backward(self, dout):
        self._take_cache(dout)
        for layer in reversed(self.layers_):
            dout = layer.backward(dout)
        return dout

    def config(self):
        return {"type": "CkptToyNet", "layers": [l.config() for l in self.layers_]}

    @classmethod
    def from_kwargs(cls, layers):
        return cls(*[from_config(c) for c in layers])


def trained_toy(steps=3):
    """A toy net after a few Adam steps, so optimizer state and buffers are non-trivial."""
    net = CkptToyNet(CkptToyLinear(4, 3), CkptToyLinear(3, 2))
    opt = Adam(net, lr=0.01, weight_decay=0.001)
    rng = np.random.default_rng(0)
    for _ in range(steps):
        out = net.forward(rng.standard_normal((5, 4)).astype(np.float32))
        net.backward(np.ones_like(out))
        opt.step()
    return net, opt


META = dict(epoch=7, step=321, normalization={"mean": [0.49, 0.48, 0.45], "std": [0.25, 0.24, 0.26]},
            extra={"best_val_acc": 0.625, "notes": "ünïcode ok", "nested": {"a": [1, 2]}})


def assert_same_arrays(a, b):
    assert set(a) == set(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert a[k].tobytes() == b[k].tobytes(), k  # bit for bit


# --- round trip ------------------------------------------------------------------------


def test_round_trip_is_bit_for_bit(tmp_path):
    net, opt = trained_toy()
    gen = np.random.default_rng(42)
    gen.random(10)
    schedule = LinearWarmup(CosineAnnealing(0.01, t_max=100), warmup=5)
    path = tmp_path / "model.safetensors"
    save_checkpoint(path, net, opt, rng=gen, schedule=schedule, **META)

    ck = load_checkpoint(path)
    assert type(ck.net) is CkptToyNet and ck.net.config() == net.config()
    assert_same_arrays(ck.net.state_dict(), net.state_dict())
    assert_same_arrays(ck.model_state, net.state_dict())
    arrays, hyper = opt.state_dict()
    assert_same_arrays(ck.optimizer_state, arrays)
    assert ck.optimizer_hyper == json.loads(json.dumps(hyper))
    assert ck.epoch == 7 and ck.step == 321
    assert ck.meta["normalization"] == META["normalization"]
    assert ck.meta["extra"] == META["extra"]
    assert ck.meta["architecture"] == net.config()
    assert ck.schedule().config() == schedule.config()
    assert ck.restore_rng().random(5).tolist() == gen.random(5).tolist()


def test_file_layout_uses_model_and_optim_prefixes(tmp_path):
    from safetensors import safe_open

    net, opt = trained_toy(1)
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, net, opt, epoch=1)
    with safe_open(str(path), framework="np") as f:
        keys, meta = set(f.keys()), f.metadata()
    assert {"model.0.weight", "model.0.bias", "model.0.seen", "model.1.weight"} <= keys
    assert {"optim.0.weight.m", "optim.0.weight.v", "optim.1.bias.step"} <= keys
    assert all(isinstance(v, str) for v in meta.values())
    assert json.loads(meta["architecture"]) == net.config()
    assert json.loads(meta["epoch"]) == 1 and json.loads(meta["rng"]) is None


def test_restored_optimizer_continues_identically(tmp_path):
    net, opt = trained_toy()
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, net, opt)
    ck = load_checkpoint(path)
    opt2 = ck.restore_optimizer()
    assert type(opt2) is Adam and opt2.steps == opt.steps and opt2.betas == opt.betas
    x = np.random.default_rng(5).standard_normal((5, 4)).astype(np.float32)
    for n, o in ((net, opt), (ck.net, opt2)):
        for _ in range(2):
            out = n.forward(x)
            n.backward(out)
            o.step()
    assert_same_arrays(ck.net.state_dict(), net.state_dict())


def test_float64_net_comes_back_float64(tmp_path):
    net, _ = trained_toy(1)
    net.astype(np.float64)
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, net)
    ck = load_checkpoint(path)
    assert_same_arrays(ck.net.state_dict(), net.state_dict())
    assert ck.optimizer_state == {} and ck.optimizer_hyper is None
    with pytest.raises(CheckpointError, match="no optimizer"):
        ck.restore_optimizer()
    with pytest.raises(CheckpointError, match="no RNG"):
        ck.restore_rng()
    assert ck.schedule() is None


@pytest.mark.parametrize("bit_generator", [np.random.PCG64, np.random.MT19937, np.random.Philox, np.random.SFC64])
def test_rng_helpers_resume_the_stream(bit_generator):
    gen = np.random.Generator(bit_generator(123))
    gen.standard_normal(7)
    state = json.loads(json.dumps(rng_state(gen)))  # plain JSON
    expected = gen.standard_normal(20)
    assert np.array_equal(restore_rng(state).standard_normal(20), expected)


def test_restore_rng_refuses_unknown_generators():
    with pytest.raises(CheckpointError, match="bit generator"):
        restore_rng({"bit_generator": "os.system"})


def test_real_layers_round_trip(tmp_path):
    from cnnkit import layers
    layers.manual_seed(0)
    net = layers.Sequential(layers.Conv2D(3, 4, 3, padding=1), layers.BatchNorm2D(4), layers.ReLU(),
                            layers.Flatten(), layers.FC(4 * 5 * 5, 3))
    opt = SGD(net, lr=0.1, momentum=0.9, weight_decay=1e-4)
    x = np.random.default_rng(1).standard_normal((2, 3, 5, 5)).astype(np.float32)
    for _ in range(2):
        out = net.forward(x)
        net.backward(np.ones_like(out))
        opt.step()
    assert not np.all(net.state_dict()["1.running_mean"] == 0)  # buffers are worth checking
    path = tmp_path / "real.safetensors"
    save_checkpoint(path, net, opt, epoch=2)
    ck = load_checkpoint(path)
    assert ck.net.config() == net.config()
    assert_same_arrays(ck.net.state_dict(), net.state_dict())
    assert_same_arrays(ck.optimizer_state, opt.state_dict()[0])
    assert np.array_equal(ck.net.eval().forward(x), net.eval().forward(x))


# --- atomic writes ----------------------------------------------------------------------


def test_crash_mid_write_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    net, opt = trained_toy(1)
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, net, opt, epoch=1)
    good = path.read_bytes()

    def half_then_crash(f, data):
        f.write(data[: len(data) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt_mod, "_write_bytes", half_then_crash)
    net2, opt2 = trained_toy(3)
    with pytest.raises(OSError, match="No space"):
        save_checkpoint(path, net2, opt2, epoch=2)
    assert path.read_bytes() == good
    assert os.listdir(tmp_path) == ["c.safetensors"]  # no temp file left behind
    assert load_checkpoint(path).epoch == 1


def test_crash_at_rename_leaves_no_temp_file(tmp_path, monkeypatch):
    net, _ = trained_toy(1)
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, net, epoch=1)
    good = path.read_bytes()

    def boom(src, dst):
        raise KeyboardInterrupt  # even an interrupt cleans up

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, net, epoch=2)
    assert path.read_bytes() == good and os.listdir(tmp_path) == ["c.safetensors"]


def test_crash_on_first_save_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(ckpt_mod, "_write_bytes", lambda f, data: (_ for _ in ()).throw(OSError("disk gone")))
    net, _ = trained_toy(1)
    with pytest.raises(OSError):
        save_checkpoint(tmp_path / "c.safetensors", net)
    assert os.listdir(tmp_path) == []


def test_write_is_fsynced_and_renamed(tmp_path, monkeypatch):
    calls = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (calls.append("replace"), real_replace(a, b))[1])
    net, _ = trained_toy(1)
    save_checkpoint(tmp_path / "c.safetensors", net)
    assert calls == ["fsync", "replace", "fsync"]  # file, rename, then directory


def test_unserialisable_metadata_raises_and_keeps_old_file(tmp_path):
    net, _ = trained_toy(1)
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, net, epoch=1)
    good = path.read_bytes()
    with pytest.raises(CheckpointError, match="plain JSON"):
        save_checkpoint(path, net, extra={"fn": print})
    assert path.read_bytes() == good
    # NumPy scalars are fine: they are written as plain numbers
    save_checkpoint(path, net, epoch=np.int64(3), extra={"acc": np.float32(0.5)})
    assert load_checkpoint(path).meta["extra"] == {"acc": 0.5}


# --- bad files -------------------------------------------------------------------------


def good_bytes(tmp_path):
    net, opt = trained_toy(1)
    path = tmp_path / "good.safetensors"
    save_checkpoint(path, net, opt)
    return path.read_bytes()


@pytest.mark.parametrize("damage, message", [
    (lambda b: b[:5], "too short"),
    (lambda b: b"", "too short"),
    (lambda b: b[: len(b) // 2], "truncated"),  # cut inside the header or the tensor data
    (lambda b: b[:-7], "corrupt or truncated"),  # header intact, tensor data short
    (lambda b: np.random.default_rng(0).bytes(4096), "truncated"),  # huge bogus header length
    (lambda b: (20).to_bytes(8, "little") + b"not json at all!!!!!" + b"x" * 10, "not valid JSON"),
])
def test_damaged_files_raise_clear_errors(tmp_path, damage, message):
    data = damage(good_bytes(tmp_path))
    path = tmp_path / "bad.safetensors"
    path.write_bytes(data)
    with pytest.raises(CheckpointError, match=message) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, CnnkitError)


def test_foreign_safetensors_file_is_refused(tmp_path):
    from safetensors.numpy import save_file

    path = tmp_path / "foreign.safetensors"
    save_file({"w": np.zeros(3, dtype=np.float32)}, str(path))
    with pytest.raises(CheckpointError, match="cnnkit") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


def test_missing_file_and_unknown_architecture(tmp_path):
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(tmp_path / "nope.safetensors")
    from safetensors.numpy import save_file

    path = tmp_path / "alien.safetensors"
    meta = {"format": json.dumps(ckpt_mod.FORMAT), "architecture": json.dumps({"type": "NoSuchLayer"})}
    save_file({"model.w": np.zeros(1, dtype=np.float32)}, str(path), metadata=meta)
    with pytest.raises(CheckpointError, match="NoSuchLayer"):
        load_checkpoint(path)


def test_loading_never_unpickles(tmp_path, monkeypatch):
    data = good_bytes(tmp_path)

    def forbidden(*a, **k):
        raise AssertionError("pickle used while loading a checkpoint")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, forbidden)
    path = tmp_path / "c.safetensors"
    path.write_bytes(data)
    load_checkpoint(path).restore_optimizer()
    source = open(ckpt_mod.__file__).read()
    assert "pickle" not in source.replace("unpickles", "") and "allow_pickle" not in source
