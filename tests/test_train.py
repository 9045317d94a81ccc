"""The trainer: determinism, metrics and curves, exact resume in-process, divergence, model checks."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from cnnkit.checkpoint import load_checkpoint
from cnnkit.data import Normalize, load
from cnnkit.data.dataset import Dataset, Split
from cnnkit.train import (
    CHECKPOINT,
    DEFAULT_SPEC,
    DivergedError,
    MetricsLog,
    MetricsWarning,
    RunExistsError,
    TrainConfig,
    Trainer,
    TrainError,
    accuracy,
    check_run_dir,
    confusion_matrix,
    default_run_dir,
    make_model,
    read_metrics,
    start_small,
    train,
)
from cnnkit.train.trainer import LAST_LAYER_SCALE

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
    # validation after every epoch, the test split once, at the end (the notes' practice)
    assert all(0 < r["val_acc"] <= 1 for r in epochs)
    assert "test_acc" not in epochs[0] and epochs[-1]["test_acc"] == pytest.approx(result.test_acc)
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
                dict(lr=-1.0), dict(seed=-1), dict(momentum=1.5), dict(weight_decay=float("nan")), dict(crop_pad=-2)):
        with pytest.raises(TrainError):
            Trainer(TrainConfig(model=TINY, **bad), tmp_path, dataset=small, progress=False)
    with pytest.raises(TrainError, match="nothing to resume"):
        Trainer.resume(tmp_path / "none", dataset=small)


def test_confusion_matrix():
    m = confusion_matrix(np.array([0, 0, 1, 2, 2, 2]), np.array([0, 1, 1, 2, 0, 2]), 3)
    assert m.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]


def test_metrics_log_on_resume_drops_what_the_stopped_run_logged_past_the_checkpoint(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [{"kind": "step", "epoch": 1, "step": s, "loss": 1.0} for s in (1, 2, 3, 4)]
    lines.insert(4, {"kind": "epoch", "epoch": 1, "step": 4})  # logged, then killed before the epoch checkpoint
    path.write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"kind": "st')  # and a torn line
    with pytest.warns(MetricsWarning, match="dropped line 6 that is not a whole JSON record"):
        log = MetricsLog(path, resume_step=4, resume_epoch=0)  # the checkpoint: step 4, epoch 1 not closed
    log.write({"kind": "epoch", "epoch": 1, "step": 4})
    log.close()
    records = read_metrics(path)
    assert [r["step"] for r in records if r["kind"] == "step"] == [1, 2, 3, 4]
    assert [r["epoch"] for r in records if r["kind"] == "epoch"] == [1]


# --- the first hour: the first loss, evaluation hygiene, what a run records ----------------------

@pytest.mark.parametrize("model, shape, classes", [(None, (1, 8, 8), 10), ("cifar10_simple", (3, 32, 32), 10),
                                                   ("CONV3-8 -> RELU -> POOL2 -> FC64 -> RELU -> FC100", (3, 16, 16), 100)])
def test_the_first_loss_is_about_ln_classes(model, shape, classes):
    """The notes' first sanity check: at chance the softmax loss is ln(classes), 2.302 for 10."""
    from cnnkit.layers import manual_seed, softmax_loss

    rng = np.random.default_rng(0)
    X = rng.standard_normal((64, *shape)).astype(np.float32)  # normalised images: mean 0, std 1 per channel
    y = rng.integers(0, classes, 64)
    manual_seed(0)
    net = make_model(model, shape, classes)
    net.eval()
    loss, _ = softmax_loss(net.forward(X), y)
    assert abs(loss - np.log(classes)) < 0.05, loss
    manual_seed(0)
    plain = make_model(model, shape, classes)
    start_small(plain, 1 / LAST_LAYER_SCALE)  # undo the scaling: He initialisation all the way, as before
    plain.eval()
    loss_he, _ = softmax_loss(plain.forward(X), y)
    assert loss_he - np.log(classes) > 1.5  # 4.3 to 8.0: what a new user saw


def test_the_first_logged_loss_of_a_run_is_about_ln_10(small, tmp_path):
    cfg = TrainConfig(epochs=1, batch_size=100, checkpoint_every=0)  # the default ConvNet
    trainer = Trainer(cfg, tmp_path, dataset=small, progress=False)
    trainer.fit()
    first = [r for r in read_metrics(tmp_path / "metrics.jsonl") if r["kind"] == "step"][0]
    assert first["step"] == 1 and abs(first["loss"] - np.log(10)) < 0.05, first
    # config.json says what was used, never null: the spec, lr, augment, crop padding, the data
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model"] == DEFAULT_SPEC and config["lr"] == 1e-3 and config["augment"] is False
    assert config["crop_pad"] == 1 and None not in config.values()
    assert config["dataset"] == {"source": "python", "name": "digits", "images": "8x8x1", "classes": 10,
                                 "train": 400, "val": 100, "test": 200}
    assert load_checkpoint(tmp_path / CHECKPOINT).meta["extra"]["dataset"]["source"] == "python"


def test_a_run_trained_on_arrays_from_python_says_what_data_resuming_needs(small, tmp_path):
    train(run_dir=tmp_path, dataset=small, progress=False, model=TINY, epochs=1, batch_size=100)
    with pytest.raises(TrainError, match=r"trained from Python on a dataset given to Trainer \('digits': "
                                         r"400 / 100 / 200 .* 8x8x1, 10 classes\).*dataset=.*--data SPEC"):
        Trainer.resume(tmp_path, progress=False)
    with pytest.raises(TrainError, match="trained on 400 training images but 'digits' has 1295"):
        Trainer.resume(tmp_path, progress=False, settings={"data": "digits"})
    assert Trainer.resume(tmp_path, dataset=small, progress=False).optimizer.steps == 4


def test_resume_accepts_the_same_settings_and_names_the_ones_that_differ(small, tmp_path):
    cfg = dict(model=TINY, epochs=1, batch_size=100, lr=0.05, optimizer="momentum", schedule="constant")
    train(run_dir=tmp_path, dataset=small, progress=False, **cfg)
    # the command line again with --resume appended (and the defaults it left out, now filled in)
    same = {**cfg, "epochs": 2, "seed": 0, "augment": False, "momentum": 0.9, "data": "digits"}
    assert Trainer.resume(tmp_path, dataset=small, progress=False, settings=same).config.epochs == 2
    with pytest.raises(TrainError, match=r"these differ: --batch-size 50 \(the run has 100\), --lr 0.1 "
                                         r"\(the run has 0.05\); drop them"):
        Trainer.resume(tmp_path, dataset=small, progress=False, settings={**same, "lr": 0.1, "batch_size": 50})


# --- nothing of the user's is lost ---------------------------------------------------------------

def test_a_fresh_run_refuses_a_folder_holding_a_run_unless_told_to_overwrite(small, tmp_path):
    kw = dict(dataset=small, progress=False, model=TINY, epochs=1, batch_size=100)
    train(run_dir=tmp_path, seed=1, **kw)
    before = weights(tmp_path)
    with pytest.raises(RunExistsError, match=r"already holds a run \(checkpoint.safetensors, metrics.jsonl, "
                                             r"metrics.png, config.json\); continue it with --resume"):
        train(run_dir=tmp_path, seed=2, **kw)
    assert same_bits(weights(tmp_path), before)  # untouched
    (tmp_path / ".checkpoint.safetensors.abc.tmp").write_bytes(b"x")   # left by killed saves
    (tmp_path / ".metrics.jsonl.abc.tmp").write_text("x")
    train(run_dir=tmp_path, seed=2, overwrite=True, **kw)
    assert not same_bits(weights(tmp_path), before)
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl") if r["kind"] == "step"] == [1, 2, 3, 4]
    assert not any(tmp_path.glob(".*.tmp"))  # what killed writes left is cleared at the start


def test_a_run_folder_that_cannot_be_written_is_refused_before_any_data_is_loaded(tmp_path, monkeypatch):
    import cnnkit.train.trainer as trainer_module

    def no_data(spec):
        raise AssertionError("data loaded before the run folder was checked")
    monkeypatch.setattr(trainer_module, "load_data", no_data)
    (tmp_path / "file").write_text("x")
    with pytest.raises(TrainError, match=r"file \(--out\) is a file, not a folder"):
        Trainer(TrainConfig(), tmp_path / "file")
    with pytest.raises(TrainError, match=r"cannot be made: .*file is a file, not a folder"):
        Trainer(TrainConfig(), tmp_path / "file" / "run")
    if Path("/proc/self").is_dir():  # read-only even for root
        with pytest.raises(TrainError, match="cannot write in /proc|is not writable"):
            check_run_dir("/proc/cnnkit-run")
    if os.geteuid() != 0:
        (tmp_path / "ro").mkdir(mode=0o500)
        with pytest.raises(TrainError, match="is not writable"):
            Trainer(TrainConfig(), tmp_path / "ro" / "run")
    assert check_run_dir(tmp_path / "new" / "run") == tmp_path / "new" / "run" and not (tmp_path / "new").exists()


def test_folder_datasets_never_share_a_default_run_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    a, b = default_run_dir("folder:data/a/train"), default_run_dir("folder:data/b/train")
    assert a != b and a.parent == b.parent == Path("runs") and a.name.startswith("folder-train-")
    assert default_run_dir(f"folder:{tmp_path}/data/a/train/") == a  # the same folder, spelt otherwise
    assert default_run_dir("digits") == Path("runs/digits") and default_run_dir("cifar10:/x/y.tar.gz") == Path("runs/cifar10")


def test_metrics_log_is_replaced_in_one_rename_never_rewritten_in_place(tmp_path, monkeypatch):
    import cnnkit.train.metrics as metrics_module

    path = tmp_path / "metrics.jsonl"
    original = "".join(json.dumps({"kind": "step", "epoch": 1, "step": s, "loss": 1.0}) + "\n" for s in range(1, 6))
    path.write_text(original)
    inode = path.stat().st_ino

    class Killed(BaseException):
        pass

    calls = []

    def dies_on_the_third_line(record):
        calls.append(record)
        if len(calls) == 3:
            raise Killed
        return json.dumps(record)
    monkeypatch.setattr(metrics_module.json, "dumps", dies_on_the_third_line)
    with pytest.raises(Killed):
        MetricsLog(path, resume_step=4)
    monkeypatch.undo()
    assert path.read_text() == original and path.stat().st_ino == inode  # the old log, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]  # no temporary file left
    log = MetricsLog(path, resume_step=4)
    log.write({"kind": "step", "epoch": 1, "step": 5, "loss": 0.5})
    log.close()
    assert path.stat().st_ino != inode
    assert [r["step"] for r in read_metrics(path)] == [1, 2, 3, 4, 5] and read_metrics(path)[-1]["loss"] == 0.5


def test_invalid_utf8_and_half_records_are_dropped_with_one_warning(tmp_path):
    path = tmp_path / "metrics.jsonl"
    good = [{"kind": "step", "step": s, "loss": 1.0 / s} for s in (1, 2, 3)]
    path.write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in good[:2]) + b"\xff\xfe garbage\n"
                     + b"[1, 2]\n" + json.dumps(good[2]).encode() + b"\n" + b'{"kind": "step", "st\xc3')
    with pytest.warns(MetricsWarning, match=r"dropped 3 lines \(3, 4, 6\)") as caught:
        assert read_metrics(path) == good
    assert len(caught) == 1


def test_away_from_a_terminal_progress_is_plain_lines(small, tmp_path, capsys):
    trainer = Trainer(TrainConfig(model=TINY, epochs=1, batch_size=50), tmp_path, dataset=small)
    trainer.progress_seconds = 0.0  # a line for every step
    trainer.fit()
    err = capsys.readouterr().err
    assert "\r" not in err and "\x1b" not in err
    lines = err.splitlines()
    assert lines[:7] == [line for line in lines if " step " in line]
    assert [line.split("  ")[1] for line in lines[:7]] == [f"step {b}/8" for b in range(1, 8)]
    assert lines[7].startswith("epoch 1/1  loss ") and "  val " in lines[7] and "  test " in lines[7]
