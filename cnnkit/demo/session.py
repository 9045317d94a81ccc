"""The demo's training thread: a cnnkit Trainer run in the background, watched by any number
of pages (the ConvNetJS CIFAR-10 demo, offline, for any net; notes: "Visualizing what
ConvNets learn" and "Neural Networks 3: babysitting the learning process").

One worker thread owns the network: it trains through ``Trainer.fit`` and, from the
Trainer's per-record callback, records the curves, computes the pictures (activations,
filters, predictions on a grid of test images) and applies what the pages asked for
(pause, learning rate, another net). HTTP handlers only read copies of that state under a
lock, so no forward pass ever runs outside the worker. Stopping (close()) asks the
Trainer to stop, which saves a checkpoint exactly as Ctrl-C does in ``cnnkit train``.
"""

from __future__ import annotations

import base64
import math
import sys
import threading
import time
import traceback
from bisect import bisect_right
from pathlib import Path
from typing import Any

import numpy as np

from ..data import Dataset
from ..errors import CnnkitError
from ..train import (
    CHECKPOINT,
    TrainConfig,
    Trainer,
    TrainingInterrupted,
    predict_scores,
    read_metrics,
)
from ..viz import (
    conv_layers,
    filter_tiles,
    layer_volumes,
    normalize_each,
    softmax,
    tile,
    to_uint8,
    top_k,
    volume_text,
)

GRID = 24            # test images shown with their predictions
MAX_POINTS = 20_000  # step points kept per run; past it every other one is dropped
MAX_SLICES = 16      # depth slices sent per activation volume
MAX_PIXELS = 64      # larger slices are subsampled to at most this many pixels a side
MAX_VECTOR = 512     # values sent of a flat (FC) volume
MAX_LR = 10.0


class DemoError(CnnkitError, ValueError):
    """A request the demo cannot honour (the message says why); status is the HTTP answer:
    400 for a bad value, 409 for one that does not fit the run's state."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def _b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a).tobytes()).decode("ascii")


def _finite(x: float | None) -> float | None:
    """x as a float, or None for a missing or non-finite value (JSON has no NaN)."""
    return None if x is None or not math.isfinite(float(x)) else float(x)


def encode_volume(label: str, shape: tuple[int, ...], data: np.ndarray) -> dict:
    """One activation volume -> JSON for the page: up to MAX_SLICES depth slices (or the first
    MAX_VECTOR values of a flat one) as base64 uint8, scaled by the whole volume's min/max."""
    scaled = to_uint8(normalize_each(np.asarray(data, np.float32)[None])[0])
    if len(shape) == 3:
        C, H, W = shape
        s = max(1, math.ceil(max(H, W) / MAX_PIXELS))
        part = scaled[:MAX_SLICES, ::s, ::s]
        return {"label": label, "kind": "slices", "total": C, "n": int(part.shape[0]),
                "h": int(part.shape[1]), "w": int(part.shape[2]), "data": _b64(part)}
    flat = scaled.reshape(-1)
    part = flat[:MAX_VECTOR]
    return {"label": label, "kind": "vector", "total": int(flat.size), "n": int(part.size), "data": _b64(part)}


def encode_image(image: np.ndarray) -> dict:
    """An image (C, H, W) in [0, 1] -> {'h', 'w', 'c', 'data'} as base64 uint8 HWC (C = 1 or 3)."""
    x = np.asarray(image, np.float32)
    if x.shape[0] not in (1, 3):
        x = x.mean(axis=0, keepdims=True)
    s = max(1, math.ceil(max(x.shape[1:]) / MAX_PIXELS))
    hwc = to_uint8(x[:, ::s, ::s]).transpose(1, 2, 0)
    return {"h": int(hwc.shape[0]), "w": int(hwc.shape[1]), "c": int(hwc.shape[2]), "data": _b64(hwc)}


class DemoSession:
    """Train in a background thread and keep what the pages show.

    ``DemoSession(config, run_dir)`` builds the first Trainer at once (so a bad --model or
    --data fails before any server starts); ``start()`` starts the worker; ``close()``
    stops it, saving a checkpoint. Runs started from the page go to RUN_DIR-2, RUN_DIR-3...
    """

    def __init__(self, config: TrainConfig | None, run_dir: str | Path, *, dataset: Dataset | None = None, resume: bool = False,
                 epochs: int | None = None, grid_size: int = GRID, snapshot_seconds: float = 0.5,
                 max_points: int = MAX_POINTS) -> None:
        self.out = Path(run_dir)
        if resume:  # the run's own settings; epochs may extend it
            first = Trainer.resume(self.out, epochs=epochs, dataset=dataset, progress=False)
        else:
            first = Trainer(config or TrainConfig(), self.out, dataset=dataset, progress=False)
        self.dataset = first.dataset
        self.base_config = TrainConfig.from_dict(first.config.to_dict())
        self.snapshot_seconds = float(snapshot_seconds)
        self.max_points = int(max_points)
        test = self.dataset.test if len(self.dataset.test.y) else self.dataset.val
        n = min(grid_size, len(test.y))
        # a fixed, spread-out sample, the same for every run so nets can be compared
        self.grid_index: np.ndarray = np.sort(np.random.default_rng(0).choice(len(test.y), n, replace=False))
        self.grid_X = test.X[self.grid_index]
        self.grid_y = test.y[self.grid_index]
        self.grid = {"images": [encode_image(x) for x in self.grid_X],
                     "labels": [str(self.dataset.classes[int(c)]) for c in self.grid_y]}

        self.lock = threading.Lock()
        self.version = 0               # bumped on every change a page could show
        self.run_id = 0
        self.run: dict = {}
        self.points: list[list] = []   # [seq, step, loss, acc, lr, epoch]
        self._seqs: list[int] = []
        self._seq = 0
        self.epochs: list[dict] = []
        self.status: dict = {"state": "starting", "message": ""}
        self.status_version = 0
        self.snapshot: dict | None = None
        self.snapshot_version = 0
        self.selected = 0

        self.paused = False
        self.closing = threading.Event()
        self._wake = threading.Condition()   # the worker waits here while paused or idle
        self._pending_model: str | None = None
        self._pending_lr: float | None = None
        self._want_snapshot = True
        self._trainer: Trainer | None = first
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._last_snapshot = 0.0
        self.saved: str | None = None  # checkpoint written when the last run stopped

    # --- requests from the pages (any thread) ---------------------------------------------
    def start(self) -> DemoSession:
        """Start the worker thread (once)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="cnnkit-demo-train", daemon=True)
            self._thread.start()
        return self

    def pause(self) -> None:
        """Hold training after the current step (no new points) until resume()."""
        self._poke(paused=True)

    def resume(self) -> None:
        self._poke(paused=False)

    def set_lr(self, lr: object) -> float:
        """Change the learning rate from the next step on; lr must be in (0, MAX_LR]."""
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) \
                or not 0 < lr <= MAX_LR:
            raise DemoError(f"lr must be a number in (0, {MAX_LR:g}], got {lr!r}")
        if self.status.get("state") not in ("training", "paused", "starting"):
            raise DemoError(f"the run is {self.status.get('state')}; start a new net to train again", 409)
        self._poke(lr=float(lr))
        return float(lr)

    def select(self, index: object) -> int:
        """Show the activations of grid image index (0-based)."""
        n = len(self.grid_index)
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < n:
            raise DemoError(f"index must be an integer in [0, {n - 1}], got {index!r}")
        self._poke(select=index)
        return index

    def new_model(self, model: str) -> int:
        """Stop the current run (saving its checkpoint) and train model (already checked) instead;
        returns the new run's id."""
        with self._wake:
            if self.closing.is_set():
                raise DemoError("the demo is shutting down", 409)
            self._pending_model = model
            self.paused = False
            self._stop_trainer()
            self._wake.notify_all()
        return self.run_id + 1

    def close(self, timeout: float = 60.0) -> str | None:
        """Stop training, saving a checkpoint (as Ctrl-C in cnnkit train); returns its path or None."""
        with self._wake:
            self.closing.set()
            self._stop_trainer()
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
        return self.saved

    def _poke(self, paused: bool | None = None, lr: float | None = None, select: int | None = None) -> None:
        with self._wake:
            if paused is not None:
                self.paused = paused
            if lr is not None:
                self._pending_lr = lr
            if select is not None:
                self.selected = select
                self._want_snapshot = True
            self._wake.notify_all()
        # the worker itself reports "paused" once it holds: every point before that is recorded

    def _stop_trainer(self) -> None:
        if self._trainer is not None and not self._stopping:
            self._stopping = True
            self._trainer.request_stop()

    # --- what the pages read --------------------------------------------------------------
    def state(self) -> dict:
        """Everything a page needs to draw from scratch (a reload, a second watcher)."""
        with self.lock:
            return {"version": self.version, "run": self.run, "grid": self.grid, "points": list(self.points),
                    "epochs": list(self.epochs), "status": dict(self.status), "snapshot": self.snapshot,
                    "run_id": self.run_id, "status_version": self.status_version,
                    "snapshot_version": self.snapshot_version}

    UNCHANGED = object()  # changes(): the snapshot did not change (None is a real snapshot: none yet)

    def changes(self, run_id: int, seq: int, n_epochs: int, status_version: int, snapshot_version: int) -> tuple | None:
        """What a page of run run_id has not seen, read in one go under the lock, so that a page
        told "paused" already has every point recorded before it: (points after seq, epochs after
        the first n_epochs, the status or None, the snapshot or UNCHANGED, the new versions).
        None if another run has begun (the page needs a reset)."""
        with self.lock:
            if self.run_id != run_id:
                return None
            points = self.points[bisect_right(self._seqs, seq):]
            status = dict(self.status) if self.status_version != status_version else None
            snapshot = self.snapshot if self.snapshot_version != snapshot_version else self.UNCHANGED
            return (points, self.epochs[n_epochs:], status, snapshot,
                    (self.status_version, self.snapshot_version))

    # --- the worker -----------------------------------------------------------------------
    def _changed(self, status: bool = False, snapshot: bool = False) -> None:
        """Caller holds self.lock."""
        self.version += 1
        self.status_version += status
        self.snapshot_version += snapshot

    def _set_status(self, **kw: Any) -> None:
        with self.lock:
            self.status = {**self.status, **kw}
            self._changed(status=True)

    def _work(self) -> None:
        trainer = self._trainer
        while trainer is not None:
            try:
                self._begin(trainer)
                result = trainer.fit()
                self._set_status(state="finished", message=f"finished {result.epochs} epochs: test accuracy "
                                                           f"{result.test_acc:.2%}; checkpoint {result.checkpoint}")
                self.saved = result.checkpoint
            except TrainingInterrupted:
                self.saved = str(trainer.checkpoint_path)
                self._set_status(state="stopped", message=f"stopped at step {trainer.optimizer.steps}; "
                                                          f"checkpoint saved to {self.saved}")
            except CnnkitError as e:
                self._set_status(state="error", message=str(e))
            except Exception as e:  # noqa: BLE001 - never let the worker die silently: the page and the log say it
                traceback.print_exc(file=sys.stderr)
                self._set_status(state="error", message=f"training failed: {type(e).__name__}: {e}")
            trainer = self._idle(trainer)

    def _begin(self, trainer: Trainer) -> None:
        from .. import summary

        history, epochs = [], []
        metrics = trainer.run_dir / "metrics.jsonl"
        if trainer.optimizer.steps and metrics.exists():  # a resumed run shows its past
            recs = read_metrics(metrics)
            history = [r for r in recs if r.get("kind") == "step" and r["step"] <= trainer.optimizer.steps]
            epochs = [r for r in recs if r.get("kind") == "epoch" and r["epoch"] <= trainer.epoch]
        net = trainer.net
        rows = summary(net, net.input_shape, all_layers=True).rows
        try:
            spec = net.spec
        except CnnkitError:
            spec = trainer.config.model or ""
        cfg = trainer.config
        with self.lock:
            self.run_id += 1
            self.run = {
                "id": self.run_id, "run_dir": str(trainer.run_dir), "spec": spec, "data": cfg.data,
                "classes": [str(c) for c in self.dataset.classes], "params": int(net.num_params()),
                "layers": [{"name": r.name, "layer": r.layer, "volume": volume_text(r.shape),
                            "params": int(r.params), "depth": int(r.depth)} for r in rows],
                "optimizer": cfg.optimizer, "batch_size": cfg.batch_size, "epochs": cfg.epochs,
                "steps_per_epoch": trainer.steps_per_epoch, "checkpoint": str(trainer.run_dir / CHECKPOINT),
            }
            self.points, self._seqs, self.epochs = [], [], [self._epoch_point(r) for r in epochs]
            for r in history:
                self._add_point(r)
            self.status = {"state": "paused" if self.paused else "training", "message": "",
                           "step": trainer.optimizer.steps, "epoch": trainer.epoch + 1, "lr": cfg.learning_rate}
            self._changed(status=True)
        trainer.callbacks.append(self._on_record)
        self._want_snapshot = True
        self._maybe_snapshot(trainer)

    def _add_point(self, r: dict) -> None:
        """Caller holds self.lock."""
        self._seq += 1
        self.points.append([self._seq, r["step"], round(float(r["loss"]), 6), round(float(r["acc"]), 4),
                            float(r["lr"]), r["epoch"]])
        self._seqs.append(self._seq)
        if len(self.points) > self.max_points:  # keep the curve's shape, halve its points
            self.points = self.points[::2]
            self._seqs = [p[0] for p in self.points]

    @staticmethod
    def _epoch_point(r: dict) -> dict:
        return {"epoch": r["epoch"], "step": r["step"], "train_loss": _finite(r.get("train_loss")),
                "train_acc": _finite(r.get("train_acc")), "val_acc": _finite(r.get("val_acc")),
                "test_acc": _finite(r.get("test_acc"))}

    def _on_record(self, trainer: Trainer, record: dict) -> None:
        """The Trainer's callback, in the worker thread after each step and epoch."""
        with self.lock:
            if record["kind"] == "step":
                self._add_point(record)
            else:
                self.epochs.append(self._epoch_point(record))
                self._want_snapshot = True
            self.status = {**self.status, "step": record["step"], "epoch": record["epoch"],
                           "lr": record.get("lr", self.status.get("lr"))}
            self._changed()
        self._apply(trainer)
        if self.paused and not self._stopping:
            self._set_status(state="paused")
            while self.paused and not self._stopping:
                with self._wake:
                    self._wake.wait(0.25)
                self._apply(trainer)
                self._maybe_snapshot(trainer)
            if not self._stopping:
                self._set_status(state="training")
        self._maybe_snapshot(trainer)

    def _apply(self, trainer: Trainer) -> None:
        with self._wake:
            lr, self._pending_lr = self._pending_lr, None
        if lr is not None:
            trainer.set_lr(lr)
            self._set_status(lr=lr, message=f"learning rate set to {lr:g} from step {trainer.optimizer.steps + 1}")

    def _idle(self, trainer: Trainer) -> Trainer | None:
        """After a run: serve snapshot requests until another net is asked for or the demo closes."""
        if self._on_record in trainer.callbacks:
            trainer.callbacks.remove(self._on_record)
        while True:
            with self._wake:
                while not (self.closing.is_set() or self._pending_model or self._want_snapshot):
                    self._wake.wait(0.5)
                model, self._pending_model = self._pending_model, None
            if self.closing.is_set():
                self._trainer = None
                return None
            if model is not None:
                nxt = self._next_trainer(model)
                if nxt is not None:
                    return nxt
                continue  # the page shows why; the finished net stays on view
            self._maybe_snapshot(trainer, force=True)

    def _next_trainer(self, model: str) -> Trainer | None:
        k = 2
        while Path(f"{self.out}-{k}").exists():
            k += 1
        config = TrainConfig.from_dict({**self.base_config.to_dict(), "model": model})
        try:
            trainer = Trainer(config, f"{self.out}-{k}", dataset=self.dataset, progress=False)
        except CnnkitError as e:
            self._set_status(state="error", message=str(e))
            return None
        with self._wake:
            self._trainer, self._stopping = trainer, False
        return trainer

    def _maybe_snapshot(self, trainer: Trainer, force: bool = False) -> None:
        now = time.monotonic()
        if not (force or self._want_snapshot or now - self._last_snapshot >= self.snapshot_seconds):
            return
        self._want_snapshot = False
        self._last_snapshot = now
        try:
            with np.errstate(all="ignore"):  # a diverged net draws as NaNs, not as warnings
                snap = self._snapshot(trainer)
        except Exception:  # noqa: BLE001 - a picture is a convenience: log it, keep training
            traceback.print_exc(file=sys.stderr)
            return
        with self.lock:
            self.snapshot = snap
            self._changed(snapshot=True)

    def _snapshot(self, trainer: Trainer) -> dict:
        """Activations of the selected test image, the first CONV's filters, the grid's top-3."""
        net, norm, classes = trainer.net, trainer.normalization, [str(c) for c in self.dataset.classes]
        snap: dict = {"step": trainer.optimizer.steps, "selected": self.selected, "volumes": [], "filters": None,
                      "grid": [], "top5": []}
        if not len(self.grid_index):
            return snap
        i = min(self.selected, len(self.grid_index) - 1)
        vols = layer_volumes(net, self.grid_X[i], norm)
        snap["volumes"] = [encode_volume(v.label, v.shape, v.data) for v in vols]
        # a diverged net's NaNs become nulls: the page's JSON has no NaN
        snap["top5"] = [[c, _finite(p)] for c, p in top_k(vols[-1].data, classes, 5)]
        convs = conv_layers(net)
        if convs:
            name, conv = convs[0]
            ft = filter_tiles(conv.params["weight"], max_filters=64, max_channels=8)
            img = to_uint8(tile(ft.images, ft.cols, pad=1, fill=1.0))
            img = img if img.ndim == 3 else img[:, :, None]
            K, C, Fh, Fw = conv.params["weight"].shape
            snap["filters"] = {"title": f"layer {name}: {K} filters of {Fw}x{Fh}x{C}", "note": ft.note,
                               "h": int(img.shape[0]), "w": int(img.shape[1]), "c": int(img.shape[2]),
                               "data": _b64(img)}
        probs = softmax(predict_scores(net, self.grid_X, norm))
        for p, y in zip(probs, self.grid_y):
            order = np.argsort(-p, kind="stable")[:3]
            snap["grid"].append({"pred": classes[order[0]], "right": bool(order[0] == y),
                                 "top3": [[classes[j], _finite(round(float(p[j]), 3))] for j in order]})
        return snap
