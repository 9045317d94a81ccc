"""The training loop (CS231n notes, "Neural Networks 3": babysitting the learning process).

One epoch = one pass over the training set in a seeded random order, in mini-batches:
forward, softmax loss, backward, optimizer step (the schedule sets the lr first). After
each epoch the network is evaluated in eval mode on the validation data; the test data
is scored once, after the last epoch (the notes' practice: nothing is chosen by looking
at the test set). Every step and every epoch lands in ``metrics.jsonl`` in the run
folder, and the run ends with a plot of the curves (``metrics.png``).

Determinism and resuming: weights come from ``cnnkit.manual_seed(seed)``; the data order
from a Generator seeded with ``seed`` whose state at the start of each epoch is saved in
the checkpoint together with the position in the epoch; augmentation draws from
``default_rng([seed, epoch, batch])``. A run resumed from any checkpoint (each epoch,
every ``checkpoint_every`` steps, on Ctrl-C) therefore replays exactly the batches, crops
and updates of a run never stopped, and ends with the same weights bit for bit (same seed
and BLAS thread count).

Nothing of the user's is lost: a fresh Trainer refuses a folder that already holds a run
(``overwrite=True`` replaces it, ``Trainer.resume`` continues it), and the folder is
checked to be a writable directory before any data is loaded.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import signal
import sys
import tempfile
import threading
import time
import weakref
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from types import FrameType
from typing import Any, Callable, Mapping, Protocol

import numpy as np

from .. import optim
from ..checkpoint import load_checkpoint, remove_stale_temps, restore_rng, rng_state, save_checkpoint
from ..data import Dataset, Normalize, Split, augment
from ..errors import CnnkitError
from ..files import atomic_write
from ..layers import FC, Conv2D, format_volume, manual_seed, softmax_loss
from ..optim import Optimizer
from ..parallel import QuietLog, data_parallel, world
from ..schedules import Schedule
from .metrics import MetricsLog, plot_metrics, read_metrics

# The default ConvNet for digits: two [CONV -> RELU]*2 -> POOL stages (the notes' most
# common pattern), 8x8 -> 4x4 -> 2x2, then one hidden FC layer.
DEFAULT_BODY = "[CONV3-32 -> RELU]*2 -> POOL2 -> [CONV3-64 -> RELU]*2 -> POOL2 -> FC128 -> RELU -> FC{classes}"
DEFAULT_SPEC = "INPUT[8x8x1] -> " + DEFAULT_BODY.format(classes=10)

CHECKPOINT = "checkpoint.safetensors"
METRICS = "metrics.jsonl"
PLOT = "metrics.png"
CONFIG = "config.json"
RUN_FILES = (CHECKPOINT, METRICS, PLOT, CONFIG)  # a folder holding any of these holds a run

OPTIMIZERS = tuple(optim.RULES)          # the update rules, declared once in cnnkit.optim
SCHEDULES = ("constant", "cosine", "step")

# The last layer's He-initialised weights are multiplied by this, so the class scores start
# near zero and the first loss is about ln(classes) (the notes' first sanity check: 2.302
# for 10 classes). Unscaled, the default digits net starts at 4.7.
LAST_LAYER_SCALE = 0.01

# Away from a terminal (a log file, a pipe, a batch job) progress is one plain line this often.
PROGRESS_SECONDS = 10.0


class TrainError(CnnkitError):
    """Settings that cannot train: a model that does not fit the data, no checkpoint to resume..."""


class DivergedError(TrainError):
    """The loss became NaN or infinite; the message names the step and the learning rate."""


class TrainingInterrupted(TrainError):
    """Ctrl-C (SIGINT) stopped training after a checkpoint was saved."""


class RunExistsError(TrainError):
    """A fresh run was pointed at a folder that already holds one; ``files`` names what is there."""

    def __init__(self, message: str, run_dir: Path, files: list[str]) -> None:
        super().__init__(message)
        self.run_dir = run_dir
        self.files = files


@dataclass
class TrainConfig:
    """Everything that decides a run; saved in every checkpoint so --resume needs nothing else.

    A Trainer keeps a copy with every default filled in (``resolved``): the model spec,
    the learning rate, augmentation and the crop padding actually used."""

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
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def validate(self) -> TrainConfig:
        """self, after checking every setting; a TrainError names the first bad one."""
        if not isinstance(self.data, str) or not self.data.strip():
            raise TrainError(f"data must be a data set spec such as 'digits', got {self.data!r}")
        if self.model is not None and not isinstance(self.model, str):
            raise TrainError(f"model must be a zoo name or a spec string, got {self.model!r}")
        if self.optimizer not in OPTIMIZERS:
            raise TrainError(f"unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
        for name in ("epochs", "batch_size", "eval_batch_size"):
            v = getattr(self, name)
            if not _is_int(v) or v < 1:
                raise TrainError(f"{_flag(name)} must be a positive integer, got {v!r}")
        if not _is_int(self.seed) or not 0 <= self.seed < 2**63:
            raise TrainError(f"seed must be an integer in [0, 2**63), got {self.seed!r}")
        if not _is_int(self.checkpoint_every) or self.checkpoint_every < 0:
            raise TrainError(f"checkpoint-every must be an integer >= 0, got {self.checkpoint_every!r}")
        if self.crop_pad is not None and (not _is_int(self.crop_pad) or self.crop_pad < 0):
            raise TrainError(f"crop-pad must be an integer >= 0, got {self.crop_pad!r}")
        if self.lr is not None and not (_is_number(self.lr) and math.isfinite(self.lr) and self.lr > 0):
            raise TrainError(f"lr must be a positive number, got {self.lr!r}")
        if not (_is_number(self.momentum) and 0 <= self.momentum < 1):
            raise TrainError(f"momentum must be a number in [0, 1), got {self.momentum!r}")
        if not (_is_number(self.weight_decay) and math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise TrainError(f"weight-decay must be a finite number >= 0, got {self.weight_decay!r}")
        if self.augment is not None and not isinstance(self.augment, bool):
            raise TrainError(f"augment must be true, false or None (the data's default), got {self.augment!r}")
        if not isinstance(self.schedule, str) or self.schedule.split(":")[0] not in SCHEDULES:
            raise TrainError(f"unknown schedule {self.schedule!r}; choose constant, cosine or step[:EPOCHS[:GAMMA]]")
        return self

    def resolved(self, input_shape: tuple[int, ...], num_classes: int) -> TrainConfig:
        """A copy with every None replaced by the value a run on images of input_shape
        (C, H, W) in num_classes classes uses: the default ConvNet's spec, the rule's
        learning rate, augmentation on for cifar10 only, crop padding max(1, H // 8)."""
        model = self.model
        if model is None:
            model = f"INPUT[{format_volume(tuple(input_shape))}] -> " + DEFAULT_BODY.format(classes=num_classes)
        return dataclasses.replace(
            self, model=model, lr=self.learning_rate,
            augment=self.augment if self.augment is not None else self.data.split(":")[0].strip() == "cifar10",
            crop_pad=self.crop_pad if self.crop_pad is not None else max(1, int(input_shape[1]) // 8))

    @property
    def learning_rate(self) -> float:
        return float(self.lr if self.lr is not None else optim.rule(self.optimizer).lr)


def _is_int(v: object) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def _flag(name: str) -> str:
    return name.replace("_", "-")


# --- the run folder ------------------------------------------------------------------------

def check_run_dir(run_dir: str | os.PathLike[str], writable: bool = True) -> Path:
    """run_dir as a Path, after checking that it is (or can become) a folder this process can
    write in (writable=False: only that no file is in the way); a TrainError says which part
    of the path is in the way. Nothing is created."""
    path = Path(run_dir)
    if path.exists() and not path.is_dir():
        raise TrainError(f"run folder {path} (--out) is a file, not a folder; choose a folder for the run")
    existing = path
    while not existing.exists():  # the nearest part of the path that exists must be a folder we can write in
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise TrainError(f"run folder {path} (--out) cannot be made: {existing} is a file, not a folder")
    if not writable:
        return path
    what = "the run folder" if existing == path else f"{existing}, where the run folder would be made,"
    if not os.access(existing, os.W_OK | os.X_OK):
        raise TrainError(f"run folder {path} (--out): {what} is not writable; choose another --out")
    try:  # root passes os.access everywhere; a read-only file system does not: try for real
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        raise TrainError(f"run folder {path} (--out): cannot write in {existing} ({e.strerror}); "
                         "choose another --out") from None
    return path


def run_files(run_dir: str | os.PathLike[str]) -> list[str]:
    """The files of a run (checkpoint, metrics, plot, config) that run_dir already holds."""
    path = Path(run_dir)
    return [name for name in RUN_FILES if (path / name).exists()]


def refuse_existing_run(run_dir: str | os.PathLike[str]) -> None:
    """Raise RunExistsError when run_dir already holds a run, naming its files."""
    path = Path(run_dir)
    found = run_files(path)
    if found:
        raise RunExistsError(
            f"{path} already holds a run ({', '.join(found)}); continue it with --resume (Trainer.resume), "
            "replace it with --overwrite (overwrite=True), or choose another --out", path, found)


def default_run_dir(data: str, root: str | os.PathLike[str] = "runs") -> Path:
    """The folder a run on data goes to when none is given: runs/digits, runs/cifar10, ...;
    a folder: data set gets its folder's name and a hash of its absolute path
    (runs/folder-pets-3f9a1c0e), so two image folders never share a run folder."""
    name, _, path = data.partition(":")
    name = name.strip().lower()
    if name == "folder" and path.strip():
        full = os.path.abspath(os.path.expanduser(path.strip()))
        base = re.sub(r"[^A-Za-z0-9._-]+", "_", os.path.basename(full.rstrip(os.sep))).strip("._") or "root"
        digest = hashlib.sha1(full.encode("utf-8", "surrogateescape")).hexdigest()[:8]
        return Path(root) / f"folder-{base}-{digest}"
    return Path(root) / (re.sub(r"[^a-z0-9._-]+", "_", name).strip("._") or "run")


def numbered_runs(base: str | os.PathLike[str]) -> list[Path]:
    """base, base-2, base-3, ... that exist, in order (the runs the default folder has had)."""
    base = Path(base)
    found = [base] if base.exists() else []
    if base.parent.is_dir():
        pattern = re.compile(re.escape(base.name) + r"-([2-9]|[1-9]\d+)$")
        numbered = sorted((int(m.group(1)), p) for p in base.parent.iterdir() if (m := pattern.match(p.name)))
        found += [p for _, p in numbered]
    return found


def fresh_run_dir(base: str | os.PathLike[str]) -> Path:
    """base if it holds no run, else the first of base-2, base-3, ... that holds none."""
    base = Path(base)
    if not run_files(base):
        return base
    k = 2
    while run_files(base.parent / f"{base.name}-{k}"):
        k += 1
    return base.parent / f"{base.name}-{k}"


def latest_run_dir(base: str | os.PathLike[str]) -> Path:
    """The highest-numbered of base, base-2, ... that holds a checkpoint (base when none does)."""
    runs = [p for p in numbered_runs(base) if (p / CHECKPOINT).exists()]
    return runs[-1] if runs else Path(base)


def _remove_stale_temps(run_dir: Path) -> None:
    """Temporary files killed writes left beside the run's files (atomic_file's .NAME.*.tmp):
    the checkpoint's, the log's, the plot's and the config's. Called before anything writes them."""
    for name in RUN_FILES:
        remove_stale_temps(run_dir / name)


# --- the pieces a run is made of ---------------------------------------------------------------

# Datasets load_data returned, by id: a Trainer given one of them (the demo passes the first
# run's to the next) knows it came from its spec, not from the caller's own arrays.
_LOADED: dict[int, weakref.ref[Dataset]] = {}


def load_data(spec: str) -> Dataset:
    """cnnkit.data.load(spec): a Dataset with train/val/test Splits."""
    from .. import data
    ds = data.load(spec)
    key = id(ds)
    _LOADED[key] = weakref.ref(ds, lambda _: _LOADED.pop(key, None))
    return ds


def _from_spec(ds: Dataset) -> bool:
    ref = _LOADED.get(id(ds))
    return ref is not None and ref() is ds


def describe_dataset(ds: Dataset, source: str) -> dict[str, Any]:
    """What a run records about its data: where it came from ('spec': loaded by name from
    config.data; 'python': arrays given to the Trainer), its name, image size, classes and sizes."""
    return {"source": source, "name": ds.name, "images": format_volume(ds.input_shape),
            "classes": len(ds.classes), "train": len(ds.train.y), "val": len(ds.val.y), "test": len(ds.test.y)}


def _dataset_text(info: Mapping[str, Any]) -> str:
    return (f"{info.get('name')!r}: {info.get('train')} / {info.get('val')} / {info.get('test')} train / val / test "
            f"images of {info.get('images')}, {info.get('classes')} classes")


def make_model(model: str | None, input_shape: tuple[int, ...], num_classes: int) -> Any:
    """A zoo name, a spec string or None (the default ConvNet) -> a network for this data, its
    last layer started small (``start_small``). Typed Any as ``build`` is: the net also
    carries input_shape."""
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
    start_small(net)
    return net


def start_small(net: Any, scale: float = LAST_LAYER_SCALE) -> None:
    """Multiply the weights of net's last layer with weights (an FC or CONV making the class
    scores) by scale and zero its bias, in place, so the scores start near 0 and the first
    softmax loss is about ln(classes) (notes, "Neural Networks 3", sanity checks: 2.302 for
    10 classes). A dry build's read-only weights are left as they are."""
    weighted = [layer for layer in net.layers() if layer.params]
    if not weighted or not isinstance(weighted[-1], (FC, Conv2D)):
        return
    params = weighted[-1].params
    if not params["weight"].flags.writeable:  # engine(allocate=False): no memory behind it
        return
    params["weight"] *= params["weight"].dtype.type(scale)
    if params.get("bias") is not None:
        params["bias"][...] = 0


def make_optimizer(config: TrainConfig, net: Any) -> Optimizer:
    """The optimizer the config names, with its learning rate, momentum and weight decay."""
    return optim.create(config.optimizer, net, config.learning_rate, config.momentum, config.weight_decay)


def make_schedule(config: TrainConfig, steps_per_epoch: int) -> Schedule:
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


def normalize(X: np.ndarray, normalization: dict[str, Any] | None) -> np.ndarray:
    """(X - mean) / std per channel with the checkpoint's {'mean', 'std'}; (N, C, H, W) float32."""
    return X if not normalization else Normalize.from_dict(normalization)(X)


def predict_scores(net: Any, X: np.ndarray, normalization: dict[str, Any] | None = None,
                   batch_size: int = 500) -> np.ndarray:
    """Class scores (N, classes) for images (N, C, H, W), in eval mode, batch by batch."""
    if not _is_int(batch_size) or batch_size < 1:
        raise TrainError(f"batch size must be a positive integer, got {batch_size!r}")
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


def accuracy(net: Any, split: Split, normalization: dict[str, Any] | None = None, batch_size: int = 500) -> float:
    """Fraction of split.X classified as split.y (nan for an empty split)."""
    if len(split.y) == 0:
        return float("nan")
    return float((predict_scores(net, split.X, normalization, batch_size).argmax(1) == split.y).mean())


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """(classes, classes) counts: row = true class, column = predicted class."""
    m = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(m, (np.asarray(y_true), np.asarray(y_pred)), 1)
    return m


def _layer_rngs(net: Any) -> dict[str, Any]:
    """Generators inside layers (Dropout masks), so a resumed run draws the same masks."""
    return {str(i): rng_state(layer.rng) for i, layer in enumerate(net.layers())
            if isinstance(getattr(layer, "rng", None), np.random.Generator)}


def _restore_layer_rngs(net: Any, states: Mapping[str, Any]) -> None:
    for i, layer in enumerate(net.layers()):
        if str(i) in states:
            layer.rng = restore_rng(states[str(i)])


def _same_setting(name: str, given: Any, saved: Any) -> bool:
    if name in ("lr", "momentum", "weight_decay") and _is_number(given) and _is_number(saved):
        return math.isclose(float(given), float(saved), rel_tol=1e-12, abs_tol=0.0)
    if name == "data" and isinstance(given, str) and isinstance(saved, str):
        return given.strip() == saved.strip()
    return bool(given == saved)


# --- progress --------------------------------------------------------------------------------

class _Progress(Protocol):
    def update(self, batch: int, loss: float, acc: float, rate: float) -> None: ...

    def close(self) -> None: ...


class _Bar:
    """tqdm's bar, for a terminal."""

    def __init__(self, total: int, initial: int, desc: str) -> None:
        from tqdm import tqdm
        self.bar = tqdm(total=total, initial=initial, file=sys.stderr, leave=False, desc=desc, unit="batch",
                        dynamic_ncols=True)

    def update(self, batch: int, loss: float, acc: float, rate: float) -> None:
        self.bar.set_postfix_str(f"loss {loss:.4f}  acc {acc:.1%}  {rate:.0f} img/s", refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


class _Lines:
    """One plain line every `seconds`, for logs and pipes: no carriage-return frames."""

    def __init__(self, total: int, desc: str, seconds: float) -> None:
        self.total, self.desc, self.seconds = total, desc, seconds
        self.last = time.monotonic()

    def update(self, batch: int, loss: float, acc: float, rate: float) -> None:
        now = time.monotonic()
        if now - self.last >= self.seconds and batch < self.total:  # the epoch's own line ends it
            self.last = now
            print(f"{self.desc}  step {batch}/{self.total}  loss {loss:.4f}  acc {acc:.1%}  {rate:.0f} img/s",
                  file=sys.stderr, flush=True)

    def close(self) -> None:
        pass


# --- the run ---------------------------------------------------------------------------------

@dataclass
class TrainResult:
    """What a finished run reports: test_acc is measured once, after the last epoch."""

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

    Build with ``Trainer(config, run_dir)`` for a fresh run (a folder that already holds a
    run is refused unless ``overwrite=True``) or ``Trainer.resume(run_dir)`` to continue
    from the run folder's checkpoint. ``dataset`` gives the data as arrays instead of
    loading ``config.data``; the run records that, and resuming it needs the data again.
    """

    def __init__(self, config: TrainConfig, run_dir: str | os.PathLike[str], *, dataset: Dataset | None = None,
                 progress: bool = True, overwrite: bool = False, _state: dict[str, Any] | None = None) -> None:
        config.validate()
        # before any data is loaded, a bad --out fails at once; of a data-parallel run's ranks only
        # rank 0 writes, so only it needs to be able to (a rank on another node may see no such folder)
        comm = world()
        self.run_dir = check_run_dir(run_dir, writable=comm is None or comm.rank == 0)
        if _state is None and not overwrite:
            refuse_existing_run(self.run_dir)
        self.overwrite = overwrite and _state is None
        self.progress = progress
        self.progress_seconds = PROGRESS_SECONDS
        self.dataset: Dataset = dataset if dataset is not None else load_data(config.data)
        ds = self.dataset
        self.data_info = describe_dataset(ds, "spec" if _from_spec(ds) else "python")
        if len(ds.train.y) == 0:
            raise TrainError(f"data {config.data!r} has no training images")
        self.input_shape: tuple[int, ...] = tuple(int(d) for d in ds.train.X.shape[1:])
        self.num_classes = len(ds.classes)
        self.config = config.resolved(self.input_shape, self.num_classes)  # config.json and checkpoints hold what is used
        self.steps_per_epoch = math.ceil(len(ds.train.y) / self.config.batch_size)
        self.use_augment = bool(self.config.augment)
        self.crop_pad = int(self.config.crop_pad or 0)
        self.net: Any
        self.optimizer: Optimizer
        self.rng: np.random.Generator
        self.normalization: dict[str, Any]
        self.epoch: int
        self.batch: int
        self.running: dict[str, Any]
        if _state is None:
            manual_seed(config.seed)
            self.net = make_model(config.model, self.input_shape, self.num_classes)
            self.optimizer = make_optimizer(self.config, self.net)
            self.rng = np.random.default_rng(config.seed)
            self.normalization = Normalize.fit(ds.train.X).to_dict()
            self.epoch, self.batch = 0, 0
            self.running = {"loss": 0.0, "correct": 0, "seen": 0}
        else:
            self.__dict__.update(_state)
        self.net.input_grad = False  # nothing reads the images' gradient: spare the first layer's dX
        # one rank of several (mpiexec, srun): train on shards of each batch; None for one process
        self.parallel = data_parallel(self.config.batch_size, self.config.to_dict())
        if self.parallel is not None and self.parallel.rank != 0:
            self.progress = False  # rank 0 alone prints
        self.schedule = make_schedule(self.config, self.steps_per_epoch)
        self._stop = False
        self._last_saved: int | None = _state["optimizer"].steps if _state else None
        # fn(trainer, record), called in the training thread after each metrics record (step
        # and epoch) is written; a callback may block (pause), call set_lr or request_stop
        self.callbacks: list[Callable[[Trainer, dict[str, Any]], None]] = []

    def request_stop(self) -> None:
        """Stop after the current step, saving a checkpoint first (as Ctrl-C); safe from any thread.

        fit() then raises TrainingInterrupted."""
        self._stop = True

    def set_lr(self, lr: float) -> None:
        """Set the base learning rate from the next step on (the schedule keeps its shape over the
        run, scaled to the new base); saved in the config, so a resumed run keeps it."""
        if not (_is_number(lr) and math.isfinite(lr) and lr > 0):
            raise TrainError(f"lr must be a positive number, got {lr!r}")
        self.config.lr = float(lr)
        self.schedule = make_schedule(self.config, self.steps_per_epoch)

    def _notify(self, record: dict[str, Any]) -> None:
        for callback in self.callbacks:
            callback(self, record)

    @classmethod
    def resume(cls, run_dir: str | os.PathLike[str], *, epochs: int | None = None, dataset: Dataset | None = None,
               progress: bool = True, settings: Mapping[str, Any] | None = None) -> Trainer:
        """Continue the run in run_dir from its checkpoint (optionally to a new number of epochs).

        settings (TrainConfig field -> value, e.g. the options a command line gave) must
        equal the run's own; any that differ are refused, naming them. A run trained on a
        dataset given from Python needs it again: ``dataset=``, or ``settings={'data': SPEC}``."""
        comm = world()
        run_dir = check_run_dir(run_dir, writable=comm is None or comm.rank == 0)
        path = run_dir / CHECKPOINT
        if not path.exists():
            raise TrainError(f"nothing to resume: {path} does not exist (train without --resume first)")
        ckpt = load_checkpoint(path)
        extra = ckpt.meta.get("extra")
        if not isinstance(extra, dict) or not isinstance(extra.get("config"), dict):
            raise TrainError(f"{path}: the checkpoint holds no training state (was it written by cnnkit train?)")
        try:
            input_shape = tuple(int(d) for d in extra["input_shape"])
            num_classes = len(extra["classes"])
            batch, running = int(extra["batch"]), dict(extra["running"])
            epoch = int(ckpt.meta["epoch"])
            saved = TrainConfig.from_dict(extra["config"]).validate()
        except (KeyError, TypeError, ValueError, CnnkitError) as e:
            raise TrainError(f"{path}: the checkpoint's training state is incomplete or malformed "
                             f"({type(e).__name__}: {e}); it cannot be resumed") from None
        config = saved.resolved(input_shape, num_classes)
        info: dict[str, Any] = extra["dataset"] if isinstance(extra.get("dataset"), dict) else {}
        custom = info.get("source") == "python"  # trained on arrays given from Python: no name to compare
        given = {k: v for k, v in (settings or {}).items() if v is not None}
        free = {"epochs", "data"} if custom else {"epochs"}  # what a resumed run may be told
        differ = [f"--{_flag(k)} {v} (the run has {getattr(config, k)})" for k, v in given.items()
                  if k not in free and hasattr(config, k) and not _same_setting(k, v, getattr(config, k))]
        if differ:
            raise TrainError(f"--resume continues {run_dir} with its saved settings, and these differ: "
                             f"{', '.join(differ)}; drop them (only --epochs may change), or start a new run "
                             "with another --out or --overwrite")
        if epochs is not None or given.get("epochs") is not None:
            config.epochs = int(epochs if epochs is not None else given["epochs"])
            config.validate()
        if dataset is None:
            if custom and given.get("data") is None:
                raise TrainError(f"{run_dir} was trained from Python on a dataset given to Trainer "
                                 f"({_dataset_text(info)}), not one cnnkit loads by name; resume it with "
                                 "Trainer.resume(run_dir, dataset=...), or say which data it is with --data SPEC")
            if custom:
                config.data = str(given["data"])
            dataset = load_data(config.data)
        # the same images in the same number, or the data order (and the resumed run) would differ
        if isinstance(info.get("train"), int) and info["train"] != len(dataset.train.y):
            raise TrainError(f"{path}: the run was trained on {info['train']} training images but "
                             f"{config.data!r} has {len(dataset.train.y)}; resuming needs the same data")
        net = ckpt.net
        net.input_shape = input_shape
        dataset.check_fits(str(path), input_shape, num_classes, config.data)
        _restore_layer_rngs(net, extra.get("layer_rngs") or {})
        state = {"net": net, "optimizer": ckpt.restore_optimizer(net), "rng": ckpt.restore_rng(),
                 "normalization": ckpt.meta["normalization"], "epoch": epoch, "batch": batch, "running": running}
        return cls(config, run_dir, dataset=dataset, progress=progress, _state=state)

    # --- checkpoints --------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / CHECKPOINT

    def _record(self) -> dict[str, Any]:
        """What config.json and every checkpoint say about the run, besides the weights."""
        return {**self.config.to_dict(), "dataset": self.data_info}

    def save(self, epoch_rng_state: dict[str, Any]) -> Path:
        """Checkpoint now: weights, optimizer, epoch-start RNG state and position in the epoch."""
        for name, p in self.net.named_parameters():
            if not np.isfinite(p).all():  # never overwrite the last good checkpoint with a blown-up net
                raise self._diverged(float("nan"), self.optimizer.lr, what=f"parameter '{name}'")
        if self.parallel is not None and not self.parallel.before_checkpoint(self.net):
            self._last_saved = self.optimizer.steps  # BN statistics averaged; rank 0 writes the file
            return self.checkpoint_path
        extra = {"config": self.config.to_dict(), "batch": self.batch, "running": self.running,
                 "input_shape": list(self.input_shape), "classes": list(self.dataset.classes),
                 "data": self.config.data, "dataset": self.data_info, "layer_rngs": _layer_rngs(self.net)}
        save_checkpoint(self.checkpoint_path, self.net, self.optimizer, epoch=self.epoch,
                        step=self.optimizer.steps, rng=epoch_rng_state, normalization=self.normalization,
                        schedule=self.schedule, extra=extra)
        self._last_saved = self.optimizer.steps
        return self.checkpoint_path

    # --- the loop -----------------------------------------------------------------------
    def fit(self) -> TrainResult:
        """Train to config.epochs, checkpointing as configured; returns the final accuracies
        (validation after the last epoch, test measured once, at the end)."""
        resumed = self._last_saved is not None
        writer = self.parallel is None or self.parallel.rank == 0  # one rank of a data-parallel run writes
        ranks = {} if self.parallel is None else {"ranks": self.parallel.size}
        if self.parallel is not None:
            self.parallel.announce(self.config.batch_size)
        log: MetricsLog | QuietLog = QuietLog()
        if writer:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if self.overwrite:  # asked for: the old run goes, so no old checkpoint outlives its log
                for name in RUN_FILES:
                    (self.run_dir / name).unlink(missing_ok=True)
                self.overwrite = False
            _remove_stale_temps(self.run_dir)
            atomic_write(self.run_dir / CONFIG, (json.dumps({**ranks, **self._record()}, indent=2) + "\n").encode())
            log = MetricsLog(self.run_dir / METRICS, resume_step=self.optimizer.steps if resumed else None,
                             resume_epoch=self.epoch)
        previous = self._install_sigint()
        t_start = time.perf_counter()
        val_acc = test_acc = train_acc = float("nan")
        try:
            while self.epoch < self.config.epochs:
                self._epoch(log)
                last = self.epoch + 1 == self.config.epochs
                train_acc = self.running["correct"] / max(1, self.running["seen"])
                val_acc = self._accuracy(self.dataset.val)
                record = {"kind": "epoch", "epoch": self.epoch + 1, "step": self.optimizer.steps,
                          "train_loss": self.running["loss"] / max(1, self.running["seen"]),
                          "train_acc": train_acc, "val_acc": _nan_none(val_acc),
                          "seconds": round(time.perf_counter() - t_start, 3)}
                if last:  # the test split, once, at the end
                    test_acc = self._accuracy(self.dataset.test)
                    record["test_acc"] = _nan_none(test_acc)
                log.write(record)
                self._notify(record)
                self._say(f"epoch {self.epoch + 1}/{self.config.epochs}  loss {record['train_loss']:.4f}  "
                          f"train {train_acc:.2%}  val {_pct(val_acc)}" + (f"  test {_pct(test_acc)}" if last else ""))
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
        progress = self._progress()
        try:
            rate: float | None = None
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
                if progress is not None:
                    progress.update(self.batch, loss, self.running["correct"] / self.running["seen"], rate)
                if self._stopping():
                    self.save(epoch_state)
                    raise self._interrupted()
                if cfg.checkpoint_every and self.optimizer.steps % cfg.checkpoint_every == 0:
                    self.save(epoch_state)
        finally:
            if progress is not None:
                progress.close()

    def _accuracy(self, split: Split) -> float:
        """accuracy() on split with the run's normalization; data-parallel ranks score a shard each."""
        if self.parallel is not None:
            return self.parallel.accuracy(self.net, split, self.normalization, self.config.eval_batch_size)
        return accuracy(self.net, split, self.normalization, self.config.eval_batch_size)

    def _stopping(self) -> bool:
        """A stop was requested; data-parallel ranks go by the request all ranks agreed on in the last step."""
        return self._stop if self.parallel is None else self.parallel.stop

    # --- messages, signals --------------------------------------------------------------
    def _progress(self) -> _Progress | None:
        """tqdm's bar on a terminal; plain lines every progress_seconds anywhere else."""
        if not self.progress:
            return None
        desc = f"epoch {self.epoch + 1}/{self.config.epochs}"
        isatty = getattr(sys.stderr, "isatty", None)
        if isatty is not None and isatty():
            return _Bar(self.steps_per_epoch, self.batch, desc)
        return _Lines(self.steps_per_epoch, desc, self.progress_seconds)

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

    def _install_sigint(self) -> Any:
        if threading.current_thread() is not threading.main_thread():
            return None

        def handler(signum: int, frame: FrameType | None) -> None:
            if self._stop:  # a second Ctrl-C: stop now, without waiting for the step to end
                raise KeyboardInterrupt
            self._stop = True
        return signal.signal(signal.SIGINT, handler)

    @staticmethod
    def _restore_sigint(previous: Any) -> None:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def _nan_none(x: float) -> float | None:
    return None if x != x else x


def _pct(x: float) -> str:
    return "n/a" if x != x else f"{x:.2%}"


def train(config: TrainConfig | None = None, run_dir: str | os.PathLike[str] = "runs/train", *,
          dataset: Dataset | None = None, progress: bool = True, overwrite: bool = False,
          **overrides: Any) -> TrainResult:
    """Train a fresh run: ``train(epochs=5, lr=1e-3)`` or ``train(TrainConfig(...), 'runs/x')``."""
    config = TrainConfig(**overrides) if config is None else TrainConfig.from_dict({**config.to_dict(), **overrides})
    return Trainer(config, run_dir, dataset=dataset, progress=progress, overwrite=overwrite).fit()
