"""`cnnkit viz CHECKPOINT_OR_RUN [IMAGE...]`: filters, activations, top-5, curves and confusion as PNGs."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ..data import Dataset


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "viz", help="pictures of a trained net: filters, activations, top-5, curves, confusion",
        description="Draw what a checkpoint computes (notes: 'Visualizing what ConvNets learn'): each CONV "
                    "layer's filters, one image's activation volumes layer by layer and its top-5 classes; "
                    "from a run folder also the loss / accuracy curves and the test confusion matrix. "
                    "Without IMAGE, a test image of the data set it was trained on is used (when that "
                    "data is on disk; nothing is downloaded).")
    p.add_argument("checkpoint", metavar="CHECKPOINT_OR_RUN", help="a checkpoint file or a run folder")
    p.add_argument("images", metavar="IMAGE", nargs="*", help="image files of the model's width and height")
    p.add_argument("--out", metavar="DIR", help="folder for the PNGs (default: viz/ in the run folder)")
    p.add_argument("--data", metavar="SPEC", help="data set for the test image and the confusion matrix "
                                                  "(default: the one it was trained on)")
    p.add_argument("--index", type=int, default=0, help="which test image, without IMAGE (default 0)")
    p.add_argument("--max-layers", type=int, default=8, metavar="N",
                   help="draw the filters of the first N CONV layers (default 8)")
    p.set_defaults(func=run)


def _dataset(spec: str) -> tuple[Dataset | None, str]:
    """The data set if it is on disk (or embedded), else (None, why): viz never downloads."""
    from ..data import DataError, load
    try:
        return load(spec, download=False), ""
    except DataError as e:
        return None, str(e)


def run(args: argparse.Namespace) -> int:
    from .. import summary, viz
    from ..train import confusion_matrix, predict_scores, read_metrics
    from ..train.trainer import METRICS
    from .eval_cmd import load_trained
    from .predict_cmd import read_image

    if args.max_layers < 0:
        raise viz.VizError(f"--max-layers must be >= 0, got {args.max_layers}")
    ckpt, net, extra = load_trained(args.checkpoint)
    run_dir = Path(args.checkpoint) if os.path.isdir(args.checkpoint) else Path(ckpt.path).parent
    out = Path(args.out) if args.out else run_dir / "viz"
    classes = [str(c) for c in extra["classes"]]
    norm = ckpt.meta.get("normalization")
    written: list[Path] = []

    # each CONV layer's filters, named as the summary names it
    texts = {r.name: r.layer for r in summary(net, net.input_shape, all_layers=True).rows}
    convs = viz.conv_layers(net)
    for name, layer in convs[:args.max_layers]:
        written.append(viz.plot_filters(layer.params["weight"], out / f"filters-{name}.png",
                                        f"layer {name} {texts.get(name, 'CONV')}"))
    if len(convs) > args.max_layers:
        print(f"(filters of {len(convs) - args.max_layers} deeper CONV layers left out; --max-layers to draw them)")

    spec = args.data or extra.get("data") or "digits"
    ds, why = _dataset(spec)
    images: list[tuple[str, np.ndarray, str]] = [(Path(p).stem, read_image(p, net.input_shape), p)
                                                 for p in args.images]
    if not images:
        if ds is None:
            print(f"(no IMAGE given and {spec!r} is not on disk, so no activations: {why})")
        elif not 0 <= args.index < len(ds.test.y):
            raise viz.VizError(f"--index {args.index} is outside the {len(ds.test.y)} test images of {spec!r}")
        elif tuple(ds.test.X.shape[1:]) != tuple(net.input_shape):
            raise viz.VizError(f"{spec!r} has images of {ds.test.X.shape[1:]} (C, H, W) but the model "
                               f"takes {tuple(net.input_shape)}")
        else:
            true = classes[int(ds.test.y[args.index])]
            what = f"{spec} test image {args.index} (true class {true})"
            images.append((f"test{args.index}", ds.test.X[args.index], what))
    for stem, x, what in images:
        volumes = viz.layer_volumes(net, x, norm)
        top = viz.top_k(volumes[-1].data, classes, 5)
        written.append(viz.plot_activations(volumes, x, out / f"activations-{stem}.png", classes,
                                            title=f"activations of {what}, layer by layer; predicted "
                                                  f"{top[0][0]} ({top[0][1]:.1%})"))
        written.append(viz.plot_predictions(x, top, out / f"top5-{stem}.png",
                                            f"{what}: predicted {top[0][0]} ({top[0][1]:.1%})"))

    metrics = run_dir / METRICS
    if os.path.isdir(args.checkpoint) and metrics.exists():
        records = read_metrics(metrics)
        if any(r.get("kind") in ("step", "epoch") for r in records):
            written.append(viz.plot_curves(records, out / "curves.png"))
        if ds is not None and len(ds.test.y) and len(ds.classes) == len(classes):
            pred = predict_scores(net, ds.test.X, norm).argmax(1)
            m = confusion_matrix(ds.test.y, pred, len(classes))
            written.append(viz.plot_confusion(m, classes, out / "confusion.png",
                                              f"{spec} test set: confusion matrix (rows: true, columns: "
                                              f"predicted), accuracy {np.trace(m) / m.sum():.2%}"))
    for path in written:
        print(path)
    return 0
