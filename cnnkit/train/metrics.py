"""A run folder's record: metrics.jsonl (one JSON object per line) and the curves plotted from it.

Step records: ``{"kind": "step", "epoch", "step", "loss", "acc", "lr", "images_per_s"}``
(``step`` counts optimizer updates from 1; ``epoch`` from 1; ``loss`` and ``acc`` are the
batch's, before the update). Epoch records: ``{"kind": "epoch", "epoch", "step",
"train_loss", "train_acc", "val_acc", "test_acc", "seconds"}``: train figures are the
means over the epoch's batches in train mode, val and test are measured in eval mode
after the epoch; ``seconds`` since this process started training.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..files import atomic_file


class MetricsLog:
    """Append-only metrics.jsonl. Resuming from a checkpoint taken after resume_step steps and
    resume_epoch whole epochs drops what the stopped run logged past it, so nothing appears twice."""

    def __init__(self, path: str | os.PathLike, resume_step: int | None = None, resume_epoch: int = 0) -> None:
        self.path = Path(path)
        kept = []
        if resume_step is not None and self.path.exists():
            kept = [r for r in read_metrics(self.path)
                    if (r.get("kind") == "step" and r["step"] <= resume_step)
                    or (r.get("kind") == "epoch" and r["epoch"] <= resume_epoch)]
        with open(self.path, "w") as f:
            for r in kept:
                f.write(json.dumps(r) + "\n")
        self._f = open(self.path, "a", buffering=1)  # line-buffered: a killed run keeps whole lines

    def write(self, record: dict) -> None:
        self._f.write(json.dumps(record) + "\n")

    def close(self) -> None:
        self._f.close()


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """Every record in a metrics.jsonl; a torn last line (a killed run) is skipped."""
    records = []
    with open(path) as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def plot_metrics(records: list[dict], path: str | os.PathLike) -> Path:
    """Loss per step (and per epoch) beside accuracy per epoch, as a PNG at path."""
    import matplotlib
    matplotlib.use("Agg")  # no display needed; must precede pyplot's import
    import matplotlib.pyplot as plt

    steps = [r for r in records if r.get("kind") == "step"]
    epochs = [r for r in records if r.get("kind") == "epoch"]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    if steps:
        ax_loss.plot([r["step"] for r in steps], [r["loss"] for r in steps], lw=0.6, alpha=0.5,
                     label="batch loss")
    if epochs:
        ax_loss.plot([r["step"] for r in epochs], [r["train_loss"] for r in epochs], "o-",
                     label="epoch mean")
    ax_loss.set(xlabel="step", ylabel="softmax loss", title="loss")
    ax_loss.set_yscale("log")
    for key, label in (("train_acc", "train"), ("val_acc", "validation"), ("test_acc", "test")):
        pts = [(r["epoch"], r[key]) for r in epochs if r.get(key) is not None]
        if pts:
            ax_acc.plot(*zip(*pts), "o-", label=label)
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
