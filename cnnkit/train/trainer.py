"""The training loop (CS231n notes, "Neural Networks 3": babysitting the learning process).

One epoch = one pass over the training set in a seeded random order, in mini-batches:
forward, softmax loss, backward, optimizer step (the schedule sets the lr first). After
each epoch the network is evaluated in eval mode on validation and test data; every step
and every epoch lands in ``metrics.jsonl`` in the run folder, and the run ends with a
plot of the curves (``metrics.png``).

Determinism and resuming: weights come from ``cnnkit.manual_seed(seed)``; the data order
from a Generator seeded with ``seed`` whose state at the start of each epoch is saved in
the checkpoint together with the position in the epoch; augmentation draws from
``default_rng([seed, epoch, batch])``. A run resumed from any checkpoint (each epoch,
every ``checkpoint_every`` steps, on Ctrl-C) therefore replays exactly the batches, crops
and updates of a run never stopped, and ends with the same weights bit for bit (same seed
and BLAS thread count).
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .. import optim
from ..checkpoint import load_checkpoint, restore_rng, rng_state, save_checkpoint
from ..data import Normalize, augment
from ..errors import CnnkitError
from ..layers import format_volume, manual_seed, softmax_loss
from ..parallel import QuietLog, data_parallel
from .metrics import MetricsLog, plot_metrics, read_metrics

# The default ConvNet for digits: two [CONV -> RELU]*2 -> POOL stages (the notes' most
# common pattern), 8x8 -> 4x4 -> 2x2, then one hidden FC layer.
DEFAULT_BODY = "[CONV3-32 -> RELU]*2 -> POOL2 -> [CONV3-64 -> RELU]*2 -> POOL2 -> FC128 -> RELU -> FC{classes}"
DEFAULT_SPEC = "INPUT[8x8x1] -> " + DEFAULT_BODY.format(classes=10)

CHECKPOINT = "checkpoint.safetensors"
METRICS = "metrics.jsonl"
PLOT = "metrics.png"

OPTIMIZERS = tuple(optim.RULES)          # the update rules, declared once in cnnkit.optim
SCHEDULES = ("constant", "cosine", "step")


class TrainError(CnnkitError):
    """Settings that cannot train: a model that does not fit the data, no checkpoint to resume..."""


class DivergedError(TrainError):
    """The loss became NaN or infinite; the message names the step and the learning rate."""


class TrainingInterrupted(TrainError):
    """Ctrl-C (SIGINT) stopped training after a checkpoint was saved."""


@dataclass
class TrainConfig:
    """Everything that decides a run; saved in every checkpoint so --resume needs nothing else."""

    data: str = "digits"
    model: str | None = None          # zoo name or spec; None: the default ConvNet
    epochs: int = 20
    batch_size: int = 32
    optimizer: str = "adam"
    lr: float | None = None           # None: the rule's default (cnnkit.optim.RULES)
    momentum: float = 0.9             # for momentum and nesterov
    weight_decay: float = 0.0
    schedule: str = "cosine"          # constant | cosine | step[:EPOCHS[:GAMMA]]
    seed: int = 0
    augment: bool | None = None       # None: on for cifar10 (crop + flip), off otherwise
    crop_pad: int | None = None       # None: max(1, H // 8)
    checkpoint_every: int = 100       # steps between mid-epoch checkpoints; 0: epoch ends only
    eval_batch_size: int = 500

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def validate(self) -> "TrainConfig":
        if self.optimizer not in OPTIMIZERS:
            raise TrainError(f"unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
        for name in ("epochs", "batch_size", "eval_batch_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise TrainError(f"{name.replace('_', '-')} must be a positive integer, got {v!r}")
        if self.checkpoint_every < 0:
            raise TrainError(f"checkpoint-every must be >= 0, got {self.checkpoint_every}")
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise TrainError(f"lr must be a positive number, got {self.lr!r}")
        if self.schedule.split(":")[0] not in SCHEDULES:
            raise TrainError(f"unknown schedule {self.schedule!r}; choose constant, cosine or step[:EPOCHS[:GAMMA]]")
        return self

    @property
    def learning_rate(self) -> float:
        return float(self.lr if self.lr is not None else optim.rule(self.optimizer).lr)


# --- the pieces a run is made of ---------------------------------------------------------------

def load_data(spec: str):
    """cnnkit.data.load(spec): a Dataset with train/val/test Splits."""
    from .. import data
    return data.load(spec)


def make_model(model: str | None, input_shape: tuple[int, int, int], num_classes: int):
    """A zoo name, a spec string or None (the default ConvNet) -> a network for this data."""
    from ..notation import build, parse

    input_shape = tuple(int(d) for d in input_shape)
    if model is None:
        net = build(f"INPUT[{format_volume(input_shape)}] -> " + DEFAULT_BODY.format(classes=num_classes))
    else:
        from .. import models
        if models.canonical(model) is not None:
            net = models.get(model, num_classes=num_classes, input_size=input_shape)
        else:
            tree = parse(model)
            if tree.input_shape is not None and tuple(tree.input_shape) != input_shape:
                raise TrainError(
                    f"the model's INPUT[{format_volume(tree.input_shape)}] does not match the data's images "
                    f"({format_volume(input_shape)}, W x H x D); write INPUT[{format_volume(input_shape)}] or leave INPUT out")
            net = build(tree, input_shape=input_shape)
    out = tuple(net.output_shape(input_shape))
    if out != (num_classes,):
        raise TrainError(f"the model outputs {'x'.join(map(str, out))} scores per image but the data has "
                         f"{num_classes} classes; end it with FC{num_classes}")
    net.input_shape = input_shape
    return net


def make_optimizer(config: TrainConfig, net):
    """The optimizer the config names, with its learning rate, momentum and weight decay."""
    return optim.create(config.optimizer, net, config.learning_rate, config.momentum, config.weight_decay)


def make_schedule(config: TrainConfig, steps_per_epoch: int):
    """'constant', 'cosine' (to 0 over the run) or 'step[:EPOCHS[:GAMMA]]' (default: x0.1 every third of the run)."""
    from ..schedules import Constant, CosineAnnealing, StepDecay

    kind, *args = config.schedule.split(":")
    lr, total = config.learning_rate, config.epochs * steps_per_epoch
    try:
        if kind == "constant" and not args:
            return Constant(lr)
        if kind == "cosine" and not args:
            return CosineAnnealing(lr, t_max=max(1, total))
        if kind == "step" and len(args) <= 2:
            every = int(args[0]) if args else max(1, config.epochs // 3)
            gamma = float(args[1]) if len(args) > 1 else 0.1
            return StepDecay(lr, step_size=max(1, every * steps_per_epoch), gamma=gamma)
    except ValueError:
        pass
    raise TrainError(f"cannot read schedule {config.schedule!r}; use constant, cosine or step[:EPOCHS[:GAMMA]] "
                     "(e.g. step:5:0.5)")


def normalize(X: np.ndarray, normalization: dict | None) -> np.ndarray:
    """(X - mean) / std per channel with the checkpoint's {'mean', 'std'}; (N, C, H, W) float32."""
    return X if not normalization else Normalize.from_dict(normalization)(X)


def predict_scores(net, X: np.ndarray, normalization: dict | None = None, batch_size: int = 500) -> np.ndarray:
    """Class scores (N, classes) for images (N, C, H, W), in eval mode, batch by batch."""
    was_training = net.training
    net.eval()
    try:
        out = []
        for i in range(0, len(X), batch_size):
            xb = X[i:i + batch_size]
            out.append(net.forward(normalize(xb, normalization)))
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)
    finally:
        net.train(was_training)


def accuracy(net, split, normalization: dict | None = None, batch_size: int = 500) -> float:
    """Fraction of split.X classified as split.y (nan for an empty split)."""
    if len(split.y) == 0:
        return float("nan")
    return float((predict_scores(net, split.X, normalization, batch_size).argmax(1) == split.y).mean())


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """(classes, classes) counts: row = true class, column = predicted class."""
    m = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(m, (np.asarray(y_true), np.asarray(y_pred)), 1)
    return m


def _layer_rngs(net) -> dict[str, Any]:
    """Generators inside layers (Dropout masks), so a resumed run draws the same masks."""
    return {str(i): rng_state(layer.rng) for i, layer in enumerate(net.layers())
            if isinstance(getattr(layer, "rng", None), np.random.Generator)}


def _restore_layer_rngs(net, states: dict[str, Any]) -> None:
    for i, layer in enumerate(net.layers()):
        if str(i) in states:
            layer.rng = restore_rng(states[str(i)])


# --- the run ---------------------------------------------------------------------------------

@dataclass
class TrainResult:
    """What a finished run reports."""

    test_acc: float
    val_acc: float
    train_acc: float
    epochs: int
    steps: int
    seconds: float
    run_dir: str
    checkpoint: str


class Trainer:
    """Train one network on one data set into a run folder; ``fit()`` runs to config.epochs.

    Build with ``Trainer(config, run_dir)`` for a fresh run or ``Trainer.resume(run_dir)``
    to continue from the run folder's checkpoint.
    """

    def __init__(self, config: TrainConfig, run_dir: str | os.PathLike, *, dataset=None,
                 progress: bool = True, _state: dict | None = None) -> None:
        self.config = config.validate()
        self.run_dir = Path(run_dir)
        self.progress = progress
        self.dataset = dataset if dataset is not None else load_data(config.data)
        ds = self.dataset
        if len(ds.train.y) == 0:
            raise TrainError(f"data {config.data!r} has no training images")
        self.input_shape = tuple(int(d) for d in ds.train.X.shape[1:])
        self.num_classes = len(ds.classes)
        self.steps_per_epoch = math.ceil(len(ds.train.y) / config.batch_size)
        self.use_augment = config.augment if config.augment is not None else config.data.split(":")[0] == "cifar10"
        self.crop_pad = config.crop_pad if config.crop_pad is not None else max(1, self.input_shape[1] // 8)
        if _state is None:
            manual_seed(config.seed)
            self.net = make_model(config.model, self.input_shape, self.num_classes)
            self.optimizer = make_optimizer(config, self.net)
            self.rng = np.random.default_rng(config.seed)
            self.normalization = Normalize.fit(ds.train.X).to_dict()
            self.epoch, self.batch = 0, 0
            self.running = {"loss": 0.0, "correct": 0, "seen": 0}
        else:
            self.__dict__.update(_state)
        self.net.input_grad = False  # nothing reads the images' gradient: spare the first layer's dX
        # one rank of several (mpiexec, srun): train on shards of each batch; None for one process
        self.parallel = data_parallel(config.batch_size, config.to_dict())
        if self.parallel is not None and self.parallel.rank != 0:
            self.progress = False  # rank 0 alone prints
        self.schedule = make_schedule(config, self.steps_per_epoch)
        self._stop = False
        self._last_saved: int | None = _state["optimizer"].steps if _state else None
        # fn(trainer, record), called in the training thread after each metrics record (step
        # and epoch) is written; a callback may block (pause), call set_lr or request_stop
        self.callbacks: list[Callable[["Trainer", dict], None]] = []

    def request_stop(self) -> None:
        """Stop after the current step, saving a checkpoint first (as Ctrl-C); safe from any thread.

        fit() then raises TrainingInterrupted."""
        self._stop = True

    def set_lr(self, lr: float) -> None:
        """Set the base learning rate from the next step on (the schedule keeps its shape over the
        run, scaled to the new base); saved in the config, so a resumed run keeps it."""
        if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
            raise TrainError(f"lr must be a positive number, got {lr!r}")
        self.config.lr = float(lr)
        self.schedule = make_schedule(self.config, self.steps_per_epoch)

    def _notify(self, record: dict) -> None:
        for callback in self.callbacks:
            callback(self, record)

    @classmethod
    def resume(cls, run_dir: str | os.PathLike, *, epochs: int | None = None, dataset=None,
               progress: bool = True) -> "Trainer":
        """Continue the run in run_dir from its checkpoint (optionally to a new number of epochs)."""
        path = Path(run_dir) / CHECKPOINT
        if not path.exists():
            raise TrainError(f"nothing to resume: {path} does not exist (train without --resume first)")
        ckpt = load_checkpoint(path)
        extra = ckpt.meta.get("extra") or {}
        if "config" not in extra:
            raise TrainError(f"{path}: the checkpoint holds no training state (was it written by cnnkit train?)")
        config = TrainConfig.from_dict(extra["config"])
        if epochs is not None:
            config.epochs = epochs
        if dataset is None:
            dataset = load_data(config.data)
        net = ckpt.net
        net.input_shape = tuple(extra["input_shape"])
        dataset.check_fits(str(path), net.input_shape, len(extra["classes"]), config.data)
        _restore_layer_rngs(net, extra.get("layer_rngs", {}))
        state = {"net": net, "optimizer": ckpt.restore_optimizer(net), "rng": ckpt.restore_rng(),
                 "normalization": ckpt.meta["normalization"], "epoch": int(ckpt.epoch),
                 "batch": int(extra["batch"]), "running": dict(extra["running"])}
        return cls(config, run_dir, dataset=dataset, progress=progress, _state=state)

    # --- checkpoints --------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / CHECKPOINT

    def save(self, epoch_rng_state: dict) -> Path:
        """Checkpoint now: weights, optimizer, epoch-start RNG state and position in the epoch."""
        for name, p in self.net.named_parameters():
            if not np.isfinite(p).all():  # never overwrite the last good checkpoint with a blown-up net
                raise self._diverged(float("nan"), self.optimizer.lr, what=f"parameter '{name}'")
        if self.parallel is not None and not self.parallel.before_checkpoint(self.net):
            self._last_saved = self.optimizer.steps  # BN statistics averaged; rank 0 writes the file
            return self.checkpoint_path
        extra = {"config": self.config.to_dict(), "batch": self.batch, "running": self.running,
                 "input_shape": list(self.input_shape), "classes": list(self.dataset.classes),
                 "data": self.config.data, "layer_rngs": _layer_rngs(self.net)}
        save_checkpoint(self.checkpoint_path, self.net, self.optimizer, epoch=self.epoch,
                        step=self.optimizer.steps, rng=epoch_rng_state, normalization=self.normalization,
                        schedule=self.schedule, extra=extra)
        self._last_saved = self.optimizer.steps
        return self.checkpoint_path

    # --- the loop -----------------------------------------------------------------------
    def fit(self) -> TrainResult:
        """Train to config.epochs, checkpointing as configured; returns the final accuracies."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        resumed = self._last_saved is not None
        writer = self.parallel is None or self.parallel.rank == 0  # one rank of a data-parallel run writes
        ranks = {} if self.parallel is None else {"ranks": self.parallel.size}
        if self.parallel is not None:
            self.parallel.announce(self.config.batch_size)
        if writer:
            (self.run_dir / "config.json").write_text(json.dumps({**ranks, **self.config.to_dict()}, indent=2) + "\n")
        log = MetricsLog(self.run_dir / METRICS, resume_step=self.optimizer.steps if resumed else None,
                         resume_epoch=self.epoch) if writer else QuietLog()
        previous = self._install_sigint()
        t_start = time.perf_counter()
        val_acc = test_acc = train_acc = float("nan")
        try:
            while self.epoch < self.config.epochs:
                self._epoch(log)
                train_acc = self.running["correct"] / max(1, self.running["seen"])
                val_acc, test_acc = self._accuracy(self.dataset.val), self._accuracy(self.dataset.test)
                record = {"kind": "epoch", "epoch": self.epoch + 1, "step": self.optimizer.steps,
                          "train_loss": self.running["loss"] / max(1, self.running["seen"]),
                          "train_acc": train_acc, "val_acc": _nan_none(val_acc), "test_acc": _nan_none(test_acc),
                          "seconds": round(time.perf_counter() - t_start, 3)}
                log.write(record)
                self._notify(record)
                self._say(f"epoch {self.epoch + 1}/{self.config.epochs}  loss {record['train_loss']:.4f}  "
                          f"train {train_acc:.2%}  val {_pct(val_acc)}  test {_pct(test_acc)}")
                self.epoch, self.batch = self.epoch + 1, 0
                self.running = {"loss": 0.0, "correct": 0, "seen": 0}
                self.save(rng_state(self.rng))
                if self._stopping():
                    raise self._interrupted()
            if math.isnan(test_acc):  # resumed after the last epoch: nothing trained, still report
                test_acc, val_acc = self._accuracy(self.dataset.test), self._accuracy(self.dataset.val)
        finally:
            self._restore_sigint(previous)
            log.close()
            try:
                if writer:
                    plot_metrics(read_metrics(self.run_dir / METRICS), self.run_dir / PLOT)
            except Exception as e:  # a plot is a convenience; never lose a run over it
                self._say(f"could not plot the metrics: {e}")
        return TrainResult(test_acc=test_acc, val_acc=val_acc, train_acc=train_acc, epochs=self.epoch,
                           steps=self.optimizer.steps, seconds=time.perf_counter() - t_start,
                           run_dir=str(self.run_dir), checkpoint=str(self.checkpoint_path))

    def _epoch(self, log: MetricsLog | QuietLog) -> None:
        """One pass over the training set from self.batch on (the rest of an epoch, when resumed)."""
        cfg, train = self.config, self.dataset.train
        epoch_state = rng_state(self.rng)  # what a checkpoint inside this epoch stores
        order = self.rng.permutation(len(train.y))
        normalizer = Normalize.from_dict(self.normalization)
        bar = self._bar()
        try:
            rate = None
            for b in range(self.batch, self.steps_per_epoch):
                t0 = time.perf_counter()
                idx = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
                X, y = train.X[idx], train.y[idx]
                if self.use_augment:
                    X = augment(X, np.random.default_rng([cfg.seed, self.epoch, b]), pad=self.crop_pad, flip=True)
                if self.parallel is not None:  # this rank's shard, cut after augmenting as one process would
                    X, y = self.parallel.shard(X), self.parallel.shard(y)
                X = normalizer(X)
                lr = self.schedule.apply(self.optimizer)
                if self.parallel is not None:  # forward/backward on the shard, one Allreduce of all gradients
                    loss, correct, _ = self.parallel.step(self.net, X, y, len(idx), self._stop, self.optimizer.steps + 1)
                    if not math.isfinite(loss):
                        raise self._diverged(loss, lr)
                    self.optimizer.step()
                    y = train.y[idx]  # the counts below are the global batch's
                else:
                    # overflow on the way to a NaN loss is reported once, by _diverged, not as warnings
                    with np.errstate(over="ignore", invalid="ignore"):
                        scores = self.net.forward(X)
                        loss, dscores = softmax_loss(scores, y)
                        if not math.isfinite(loss):
                            raise self._diverged(loss, lr)
                        self.net.backward(dscores)
                        self.optimizer.step()
                    correct = int((scores.argmax(1) == y).sum())
                self.batch = b + 1
                self.running["loss"] += loss * len(y)
                self.running["correct"] += correct
                self.running["seen"] += len(y)
                dt = time.perf_counter() - t0
                rate = len(y) / dt if rate is None else 0.9 * rate + 0.1 * len(y) / dt
                record = {"kind": "step", "epoch": self.epoch + 1, "step": self.optimizer.steps, "loss": loss,
                          "acc": correct / len(y), "lr": lr, "images_per_s": round(len(y) / dt, 1)}
                log.write(record)
                self._notify(record)
                if bar is not None:
                    bar.set_postfix_str(f"loss {loss:.4f}  acc {self.running['correct'] / self.running['seen']:.1%}"
                                        f"  {rate:.0f} img/s", refresh=False)
                    bar.update(1)
                if self._stopping():
                    self.save(epoch_state)
                    raise self._interrupted()
                if cfg.checkpoint_every and self.optimizer.steps % cfg.checkpoint_every == 0:
                    self.save(epoch_state)
        finally:
            if bar is not None:
                bar.close()

    def _accuracy(self, split) -> float:
        """accuracy() on split with the run's normalization; data-parallel ranks score a shard each."""
        if self.parallel is not None:
            return self.parallel.accuracy(self.net, split, self.normalization, self.config.eval_batch_size)
        return accuracy(self.net, split, self.normalization, self.config.eval_batch_size)

    def _stopping(self) -> bool:
        """A stop was requested; data-parallel ranks go by the request all ranks agreed on in the last step."""
        return self._stop if self.parallel is None else self.parallel.stop

    # --- messages, signals --------------------------------------------------------------
    def _bar(self):
        if not self.progress:
            return None
        from tqdm import tqdm
        return tqdm(total=self.steps_per_epoch, initial=self.batch, file=sys.stderr, leave=False,
                    desc=f"epoch {self.epoch + 1}/{self.config.epochs}", unit="batch", dynamic_ncols=True)

    def _say(self, text: str) -> None:
        if self.progress:
            print(text, file=sys.stderr, flush=True)

    def _diverged(self, loss: float, lr: float, what: str = "loss") -> DivergedError:
        where = (f"the last good checkpoint is {self.checkpoint_path} (step {self._last_saved})"
                 if self._last_saved is not None else "no checkpoint was written yet")
        step = self.optimizer.steps + (what == "loss")  # the loss belongs to the step being taken
        return DivergedError(f"{what} became {loss} at step {step} (epoch {self.epoch + 1}, lr {lr:g}); "
                             f"training stopped, {where}; try a smaller --lr")

    def _interrupted(self) -> TrainingInterrupted:
        return TrainingInterrupted(f"interrupted at step {self.optimizer.steps} (epoch {self.epoch + 1}); "
                                   f"checkpoint saved to {self.checkpoint_path}; continue with "
                                   f"cnnkit train --out {self.run_dir} --resume")

    def _install_sigint(self):
        if threading.current_thread() is not threading.main_thread():
            return None

        def handler(signum, frame):
            if self._stop:  # a second Ctrl-C: stop now, without waiting for the step to end
                raise KeyboardInterrupt
            self._stop = True
        return signal.signal(signal.SIGINT, handler)

    @staticmethod
    def _restore_sigint(previous) -> None:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def _nan_none(x: float):
    return None if x != x else x


def _pct(x: float) -> str:
    return "n/a" if x != x else f"{x:.2%}"


def train(config: TrainConfig | None = None, run_dir: str | os.PathLike = "runs/train", *, dataset=None,
          progress: bool = True, **overrides) -> TrainResult:
    """Train a fresh run: ``train(epochs=5, lr=1e-3)`` or ``train(TrainConfig(...), 'runs/x')``."""
    config = TrainConfig(**overrides) if config is None else TrainConfig.from_dict({**config.to_dict(), **overrides})
    return Trainer(config, run_dir, dataset=dataset, progress=progress).fit()
