"""The pictures as PNG files (matplotlib, Agg: no display needed), each titled with what it
shows (notes: "Visualizing what ConvNets learn"; "Neural Networks 3" for the curves).

Every function writes its file atomically (a temporary file beside it, then os.replace)
and returns the path.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import IO, TYPE_CHECKING, Any

import numpy as np

from ..files import atomic_file
from .inspect import Volume, image_hwc, top_k
from .tiles import VizError, filter_tiles, normalize_each, tile

if TYPE_CHECKING:  # matplotlib is the viz extra, imported when a picture is drawn
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

# a depth column of the activation figure shows at most this many slices (the notes' 10ish)
MAX_SLICES = 8


def _pyplot() -> ModuleType:
    import matplotlib
    matplotlib.use("Agg")  # must precede pyplot's import; no display on a server
    import matplotlib.pyplot as plt
    return plt


def write_atomic(path: str | os.PathLike, write: Callable[[IO[Any]], object]) -> Path:
    """Call write(f) with an open temporary file beside path, then move it over path in one
    step (cnnkit.files.atomic_file), so a reader never sees half a picture."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as f:
        write(f)
    return path


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 100) -> Path:
    """Write a matplotlib figure to path as PNG, atomically, and close it."""
    try:
        return write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi))
    finally:
        _pyplot().close(fig)


def _show(ax: Axes, img: np.ndarray, **kw: Any) -> None:
    ax.imshow(img, cmap="gray" if img.ndim == 2 else None, interpolation="nearest", **kw)
    ax.set_xticks([])
    ax.set_yticks([])


def plot_filters(weight: np.ndarray, path: str | os.PathLike, name: str = "CONV",
                 max_filters: int | None = None, max_channels: int = 16) -> Path:
    """A CONV weight (K, C, Fh, Fw) -> PNG grid of its filters (see tiles.filter_tiles):
    RGB tiles for a first layer on colour images, grey per input channel otherwise."""
    plt = _pyplot()
    ft = filter_tiles(weight, max_filters, max_channels)
    K, C, Fh, Fw = np.shape(weight)
    grid = tile(ft.images, ft.cols, pad=1, fill=1.0)
    rgb = ft.images.ndim == 4
    kind = "RGB, each normalised" if rgb else ("grey, each normalised" if C == 1 else
                                               "rows: filters, columns: input channels, grey per filter")
    title = f"{name}: {K} filters of {Fw}x{Fh}x{C} ({kind})"
    h, w = grid.shape[:2]
    side = 8.0  # inches for the grid's longer side; the title and note get their own room
    fig, ax = plt.subplots(figsize=(max(4.5, side * w / max(h, w)), max(2.5, side * h / max(h, w)) + 0.9))
    _show(ax, grid, vmin=0, vmax=1)
    ax.set_title(title, fontsize=10)
    if ft.note:
        ax.set_xlabel(ft.note, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_activations(volumes: list[Volume], image: np.ndarray, path: str | os.PathLike,
                     classes: list[str] | None = None, max_slices: int = MAX_SLICES, title: str = "") -> Path:
    """The notes' figure: the raw image (C, H, W), then one column per layer of its depth
    slices (each volume scaled to its own min/max, 'CONV3-64 [224x224x64]' above it), and
    the top-5 class scores as bars at the end."""
    plt = _pyplot()
    if not volumes:
        raise VizError("plot_activations: no volumes to draw")
    body, scores = (volumes[:-1], volumes[-1]) if classes is not None else (volumes, None)
    cols = 1 + len(body) + (scores is not None)
    rows = max_slices
    widths = [1.0] * (cols - 1) + [1.8 if scores is not None else 1.0]
    fig = plt.figure(figsize=(1.25 * sum(widths) + 0.4, 1.05 * rows + 1.0))
    gs = fig.add_gridspec(rows, cols, width_ratios=widths, hspace=0.08, wspace=0.25)
    ax = fig.add_subplot(gs[:2, 0])
    _show(ax, image_hwc(image))
    C, H, W = np.shape(image)
    ax.set_title(f"image\n[{W}x{H}x{C}]", fontsize=8)
    for col, v in enumerate(body, start=1):
        if len(v.shape) == 3:
            n = min(v.shape[0], rows)
            slices = normalize_each(v.data[None])[0]  # one scale per volume: slices compare
            for r in range(n):
                a = fig.add_subplot(gs[r, col])
                _show(a, slices[r], vmin=0, vmax=1)
                if r == 0:
                    a.set_title(v.label.replace(" [", "\n["), fontsize=8)
            if v.shape[0] > n:
                a.set_xlabel(f"+{v.shape[0] - n} more", fontsize=7)
        else:  # a flat vector (FC): one tall strip of its values
            a = fig.add_subplot(gs[:, col])
            vec = normalize_each(v.data.reshape(1, -1))[0]
            _show(a, vec[:, None], vmin=0, vmax=1, aspect="auto")
            a.set_title(v.label.replace(" [", "\n["), fontsize=8)
    if scores is not None and classes is not None:
        a = fig.add_subplot(gs[1:rows - 1, cols - 1])
        _bars(a, top_k(scores.data, classes, 5))
        a.set_title(f"{scores.label.replace(' [', chr(10) + '[')}\ntop-5 softmax", fontsize=8)
    fig.suptitle(title or "activations of one image through the net, layer by layer (depth slices)",
                 fontsize=10)
    fig.subplots_adjust(left=0.02, right=0.98, top=1 - 0.9 / (1.05 * rows + 1.0), bottom=0.03)
    return save_figure(fig, path)


def _bars(ax: Axes, top: list[tuple[str, float]]) -> None:
    names = [c for c, _ in top][::-1]
    probs = [p for _, p in top][::-1]
    bars = ax.barh(range(len(top)), probs, color=["#d62728" if i == len(top) - 1 else "#1f77b4"
                                                  for i in range(len(top))])
    ax.set_yticks(range(len(top)), names, fontsize=8)
    ax.set_xlim(0, 1)
    ax.tick_params(axis="x", labelsize=7)
    for b, p in zip(bars, probs):
        ax.text(min(p, 0.75) + 0.02, b.get_y() + b.get_height() / 2, f"{p:.2f}", va="center", fontsize=7)


def plot_predictions(image: np.ndarray, top: list[tuple[str, float]], path: str | os.PathLike,
                     title: str = "") -> Path:
    """An image (C, H, W) beside its top classes [(class, probability)] as labelled bars."""
    plt = _pyplot()
    fig, (a_img, a_bar) = plt.subplots(1, 2, figsize=(7.5, 3.2), gridspec_kw={"width_ratios": [1, 1.5]})
    _show(a_img, image_hwc(image))
    C, H, W = np.shape(image)
    a_img.set_title(f"image [{W}x{H}x{C}]", fontsize=9)
    _bars(a_bar, top)
    a_bar.set_xlabel("softmax probability", fontsize=8)
    a_bar.set_title(f"top-{len(top)} predictions", fontsize=9)
    fig.suptitle(title or f"predicted: {top[0][0]} ({top[0][1]:.1%})", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_confusion(matrix: np.ndarray, classes: list[str], path: str | os.PathLike, title: str = "") -> Path:
    """A confusion matrix (classes, classes), rows true, columns predicted, as counts on colour."""
    plt = _pyplot()
    m = np.asarray(matrix)
    n = len(classes)
    if m.shape != (n, n):
        raise VizError(f"plot_confusion: matrix is {m.shape} but there are {n} classes")
    size = max(4.0, min(12.0, 0.45 * n + 2))
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(m, cmap="Blues")
    ax.set_xticks(range(n), classes, rotation=45 if max(map(len, classes)) > 2 else 0, ha="right", fontsize=8)
    ax.set_yticks(range(n), classes, fontsize=8)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if n <= 20:
        top = m.max(initial=0)
        for i in range(n):
            for j in range(n):
                ax.text(j, i, str(int(m[i, j])), ha="center", va="center", fontsize=7,
                        color="white" if m[i, j] > top / 2 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    acc = np.trace(m) / max(1, m.sum())
    ax.set_title(title or f"confusion matrix (rows: true, columns: predicted), accuracy {acc:.2%}", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_curves(records: list[dict], path: str | os.PathLike) -> Path:
    """A run's metrics.jsonl records -> loss and accuracy curves (cnnkit.train.plot_metrics), atomically."""
    from ..train import plot_metrics

    if not any(r.get("kind") in ("step", "epoch") for r in records):
        raise VizError("plot_curves: the run has no step or epoch records yet")
    return plot_metrics(records, path)   # written atomically there
