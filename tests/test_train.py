"""The trainer: determinism, metrics and curves, exact resume in-process, divergence, model checks."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cnnkit.checkpoint import load_checkpoint
from cnnkit.data import Normalize, load
from cnnkit.data.dataset import Dataset, Split
from cnnkit.train import (
    CHECKPOINT,
    DEFAULT_SPEC,
    DivergedError,
    TrainConfig,
    Trainer,
    TrainError,
    accuracy,
    confusion_matrix,
    make_model,
    read_metrics,
    train,
)

TINY = "INPUT[8x8x1] -> CONV3-4 -> RELU -> POOL2 -> FC10"


@pytest.fixture(scope="module")
def small():
    """400 training digits, 100 validation, 200 test: a few milliseconds per epoch."""
    ds = load("digits")
    return Dataset("digits", ds.classes, Split(ds.train.X[:400], ds.train.y[:400]),
                   Split(ds.val.X[:100], ds.val.y[:100]), Split(ds.test.X[:200], ds.test.y[:200]))


def weights(run_dir):
    return load_checkpoint(run_dir / CHECKPOINT).model_state


def same_bits(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and a[k].tobytes() == b[k].tobytes() for k in a)


def test_run_folder_holds_metrics_curves_and_checkpoint(small, tmp_path):
    cfg = TrainConfig(model=TINY, epochs=2, batch_size=50, lr=0.05, schedule="constant", checkpoint_every=3)
    result = Trainer(cfg, tmp_path, dataset=small, progress=False).fit()
    records = read_metrics(tmp_path / "metrics.jsonl")
    steps = [r for r in records if r["kind"] == "step"]
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert [r["step"] for r in steps] == list(range(1, 17))  # 400 / 50 = 8 steps per epoch
    assert all(np.isfinite(r["loss"]) and 0 <= r["acc"] <= 1 and r["images_per_s"] > 0 for r in steps)
    assert [r["epoch"] for r in epochs] == [1, 2] and [r["step"] for r in epochs] == [8, 16]
    assert epochs[-1]["test_acc"] == pytest.approx(result.test_acc)
    assert result.test_acc > 0.7 and result.steps == 16 and result.epochs == 2
    assert (tmp_path / "metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "config.json").read_text())["model"] == TINY
    ckpt = load_checkpoint(tmp_path / CHECKPOINT)
    assert ckpt.epoch == 2 and ckpt.step == 16 and ckpt.meta["extra"]["batch"] == 0
    # normalisation comes from the training set only and travels in the checkpoint
    assert ckpt.meta["normalization"] == Normalize.fit(small.train.X).to_dict()
    # eval-mode accuracy of the saved net equals what the run reported
    assert accuracy(ckpt.net, small.test, ckpt.meta["normalization"]) == pytest.approx(result.test_acc)


def test_same_seed_same_weights_other_seed_other_weights(small, tmp_path):
    kw = dict(dataset=small, progress=False, model=TINY, epochs=1, batch_size=32, augment=True)
    train(run_dir=tmp_path / "a", seed=3, **kw)
    train(run_dir=tmp_path / "b", seed=3, **kw)
    train(run_dir=tmp_path / "c", seed=4, **kw)
    assert same_bits(weights(tmp_path / "a"), weights(tmp_path / "b"))
    assert not same_bits(weights(tmp_path / "a"), weights(tmp_path / "c"))


@pytest.mark.parametrize("optimizer", ["momentum", "adam"])
def test_resume_from_a_mid_epoch_checkpoint_is_exact(small, tmp_path, optimizer):
    """Stop after step 11 (mid epoch 2, checkpoint every 11), resume: same bits as never stopping."""
    cfg = dict(model=TINY, epochs=3, batch_size=64, optimizer=optimizer, checkpoint_every=11, augment=True,
               schedule="cosine")
    train(run_dir=tmp_path / "full", dataset=small, progress=False, **cfg)

    class Stop(Exception):
        pass

    trainer = Trainer(TrainConfig(**cfg), tmp_path / "cut", dataset=small, progress=False)
    save = trainer.save

    def save_then_die(state):  # the process dies right after its first mid-epoch checkpoint
        save(state)
        if trainer.optimizer.steps == 11:
            raise Stop
    trainer.save = save_then_die
    with pytest.raises(Stop):
        trainer.fit()
    resumed = Trainer.resume(tmp_path / "cut", dataset=small, progress=False)
    assert (resumed.epoch, resumed.batch, resumed.optimizer.steps) == (1, 4, 11)  # 7 steps per epoch
    resumed.fit()
    full, cut = load_checkpoint(tmp_path / "full" / CHECKPOINT), load_checkpoint(tmp_path / "cut" / CHECKPOINT)
    assert same_bits(full.model_state, cut.model_state)
    assert same_bits(full.optimizer_state, cut.optimizer_state)
    # the resumed log has each step once
    assert [r["step"] for r in read_metrics(tmp_path / "cut" / "metrics.jsonl") if r["kind"] == "step"] == list(range(1, 22))


def test_resume_with_more_epochs_extends_a_constant_lr_run(small, tmp_path):
    cfg = dict(model=TINY, epochs=2, batch_size=100, schedule="constant", optimizer="nesterov")
    train(run_dir=tmp_path / "two", dataset=small, progress=False, **cfg)
    train(run_dir=tmp_path / "one", dataset=small, progress=False, **{**cfg, "epochs": 1})
    Trainer.resume(tmp_path / "one", epochs=2, dataset=small, progress=False).fit()
    assert same_bits(weights(tmp_path / "two"), weights(tmp_path / "one"))


def test_nan_loss_stops_with_step_and_lr_and_keeps_last_good_checkpoint(small, tmp_path):
    cfg = TrainConfig(model=TINY, epochs=1, batch_size=20, optimizer="sgd", lr=1e8, schedule="constant",
                      checkpoint_every=1)
    trainer = Trainer(cfg, tmp_path, dataset=small, progress=False)
    with pytest.raises(DivergedError) as err:
        trainer.fit()
    msg = str(err.value)
    assert "lr 1e+08" in msg and "at step" in msg and "smaller --lr" in msg
    ckpt = load_checkpoint(tmp_path / CHECKPOINT)
    step = int(msg.split("at step ")[1].split()[0])
    assert ckpt.step == step - 1 if "loss" in msg else ckpt.step < step
    assert all(np.isfinite(v).all() for v in ckpt.model_state.values())


def test_default_spec_and_model_checks():
    net = make_model(None, (1, 8, 8), 10)
    assert net.spec == DEFAULT_SPEC
    assert make_model("cifar10_simple", (3, 32, 32), 10).output_shape((3, 32, 32)) == (10,)
    assert make_model("CONV3-4 -> RELU -> FC10", (1, 8, 8), 10).input_shape == (1, 8, 8)  # INPUT supplied
    with pytest.raises(TrainError, match=r"INPUT\[32x32x3\] does not match the data's images \(8x8x1"):
        make_model("INPUT[32x32x3] -> CONV3-4 -> FC10", (1, 8, 8), 10)
    with pytest.raises(TrainError, match="outputs 7 scores .* 10 classes; end it with FC10"):
        make_model("INPUT[8x8x1] -> FC7", (1, 8, 8), 10)


def test_bad_settings_are_train_errors(small, tmp_path):
    for bad in (dict(optimizer="lbfgs"), dict(epochs=0), dict(schedule="warm"), dict(schedule="step:x"),
                dict(lr=-1.0)):
        with pytest.raises(TrainError):
            Trainer(TrainConfig(model=TINY, **bad), tmp_path, dataset=small, progress=False)
    with pytest.raises(TrainError, match="nothing to resume"):
        Trainer.resume(tmp_path / "none", dataset=small)


def test_confusion_matrix():
    m = confusion_matrix(np.array([0, 0, 1, 2, 2, 2]), np.array([0, 1, 1, 2, 0, 2]), 3)
    assert m.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]


def test_metrics_log_on_resume_drops_what_the_stopped_run_logged_past_the_checkpoint(tmp_path):
    from cnnkit.train import MetricsLog

    path = tmp_path / "metrics.jsonl"
    lines = [{"kind": "step", "epoch": 1, "step": s, "loss": 1.0} for s in (1, 2, 3, 4)]
    lines.insert(4, {"kind": "epoch", "epoch": 1, "step": 4})  # logged, then killed before the epoch checkpoint
    path.write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"kind": "st')  # and a torn line
    log = MetricsLog(path, resume_step=4, resume_epoch=0)  # the checkpoint: step 4, epoch 1 not closed
    log.write({"kind": "epoch", "epoch": 1, "step": 4})
    log.close()
    records = read_metrics(path)
    assert [r["step"] for r in records if r["kind"] == "step"] == [1, 2, 3, 4]
    assert [r["epoch"] for r in records if r["kind"] == "epoch"] == [1]
