"""A run folder's record: metrics.jsonl (one JSON object per line) and the curves plotted from it.

Step records: ``{"kind": "step", "epoch", "step", "loss", "acc", "lr", "images_per_s"}``
(``step`` counts optimizer updates from 1; ``epoch`` from 1; ``loss`` and ``acc`` are the
batch's, before the update). Epoch records: ``{"kind": "epoch", "epoch", "step",
"train_loss", "train_acc", "val_acc", "seconds"}``: train figures are the means over the
epoch's batches in train mode, ``val_acc`` is measured in eval mode after every epoch;
the last epoch of a run also carries ``test_acc``, the test split measured once, at the
end (the notes' practice: the test set is not looked at while choosing anything);
``seconds`` since this process started training.

The log is never rewritten in place: a fresh run and a resumed one write the lines they
keep into a temporary file that replaces metrics.jsonl in one rename, then append one
whole line at a time, so a kill at any moment leaves every line but the one being written.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import IO, Any

from ..files import atomic_file

Record = dict[str, Any]


class MetricsWarning(UserWarning):
    """A metrics.jsonl line that is not a whole JSON record (a run killed mid-write) was dropped."""


class MetricsLog:
    """Append-only metrics.jsonl. Resuming from a checkpoint taken after resume_step steps and
    resume_epoch whole epochs drops what the stopped run logged past it, so nothing appears twice."""

    def __init__(self, path: str | os.PathLike[str], resume_step: int | None = None, resume_epoch: int = 0) -> None:
        self.path = Path(path)
        kept: list[Record] = []
        if resume_step is not None and self.path.exists():
            kept = [r for r in read_metrics(self.path)
                    if (r.get("kind") == "step" and _number(r.get("step"), resume_step + 1) <= resume_step)
                    or (r.get("kind") == "epoch" and _number(r.get("epoch"), resume_epoch + 1) <= resume_epoch)]
        # the kept lines go to a new file that replaces the old one in one rename: a kill
        # before the rename leaves the old log, after it the new one, never half of either
        with atomic_file(self.path, "w", encoding="utf-8") as f:
            for r in kept:
                f.write(json.dumps(r) + "\n")
        self._f: IO[str] = open(self.path, "a", buffering=1, encoding="utf-8")  # line-buffered: whole lines

    def write(self, record: Record) -> None:
        """Append one record as one line."""
        self._f.write(json.dumps(record) + "\n")

    def close(self) -> None:
        self._f.close()


def _number(value: Any, default: float) -> float:
    """value if it is a number (not a bool), else default: records from another hand may lack fields."""
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else default


def read_metrics(path: str | os.PathLike[str]) -> list[Record]:
    """Every record in a metrics.jsonl, in order. Lines that are not a whole JSON object (a
    torn last line from a killed run, bytes that are not UTF-8) are dropped with one
    MetricsWarning naming them, never an exception."""
    path = Path(path)
    records: list[Record] = []
    bad: list[int] = []
    with open(path, "rb") as f:  # bytes: one bad line must not stop the rest from being read
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                record = None
            if isinstance(record, dict):
                records.append(record)
            else:
                bad.append(number)
    if bad:
        where = f"line {bad[0]}" if len(bad) == 1 else f"{len(bad)} lines ({', '.join(map(str, bad[:5]))}" + \
            (", ...)" if len(bad) > 5 else ")")
        warnings.warn(f"{path}: dropped {where} that {'is' if len(bad) == 1 else 'are'} not a whole JSON record "
                      "(a run stopped while writing it?)", MetricsWarning, stacklevel=2)
    return records


def plot_metrics(records: list[Record], path: str | os.PathLike[str]) -> Path:
    """Loss per step (and per epoch) beside accuracy per epoch (train and validation every
    epoch, test once at the end), as a PNG at path."""
    import matplotlib
    matplotlib.use("Agg")  # no display needed; must precede pyplot's import
    import matplotlib.pyplot as plt

    def points(kind: str, x: str, y: str) -> list[tuple[float, float]]:
        return [(r[x], r[y]) for r in records if r.get("kind") == kind
                and all(isinstance(r.get(k), (int, float)) and not isinstance(r.get(k), bool) for k in (x, y))]

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    batches, epochs = points("step", "step", "loss"), points("epoch", "step", "train_loss")
    if batches:
        ax_loss.plot(*zip(*batches), lw=0.6, alpha=0.5, label="batch loss")
    if epochs:
        ax_loss.plot(*zip(*epochs), "o-", label="epoch mean")
    ax_loss.set(xlabel="step", ylabel="softmax loss", title="loss")
    if any(y > 0 for _, y in batches):
        ax_loss.set_yscale("log")
    for key, label, style in (("train_acc", "train", "o-"), ("val_acc", "validation", "o-"),
                              ("test_acc", "test (once, at the end)", "*")):
        pts = points("epoch", "epoch", key)
        if pts:
            ax_acc.plot(*zip(*pts), style, label=label, markersize=12 if key == "test_acc" else 6)
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    for ax in (ax_loss, ax_acc):
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout()
    path = Path(path)
    with atomic_file(path) as f:           # a reader never sees half a picture
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)
    return path
