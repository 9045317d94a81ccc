"""`cnnkit slide CHECKPOINT_OR_RUN IMAGE`: a trained net slid densely over a larger image.

The net is made fully convolutional (FC -> CONV) and run over the image in one pass per
shift and scale; the averaged class scores are printed and a heatmap per top class is
written over the image (notes: "Converting FC layers to CONV layers").
"""

from __future__ import annotations

import argparse
import math
import os
import re
from typing import TYPE_CHECKING

import numpy as np

from ..errors import CnnkitError
from ..files import atomic_file
from .predict_cmd import ImageError, read_image

if TYPE_CHECKING:
    from ..convert import ScaleMap

MAX_SCALES = 8
MAX_SCALE = 8.0


class SlideArgumentError(CnnkitError):
    """An option of cnnkit slide that cannot be used."""


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "slide", help="dense evaluation over a larger image (FC -> CONV), with heatmaps",
        description="Convert a checkpoint written by cnnkit train into a fully convolutional net and "
                    "slide it over an image at least as large as its training images, at several "
                    "scales; print the top classes of the scores averaged over all windows and write a "
                    "heatmap PNG per top class.")
    p.add_argument("checkpoint", metavar="CHECKPOINT_OR_RUN",
                   help="a checkpoint file, or a run folder holding checkpoint.safetensors")
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("--stride", type=int, default=None, metavar="S",
                   help="pixels between windows: the net's total stride (default) or a divisor of it")
    p.add_argument("--scales", default="1", metavar="1,1.5",
                   help="comma-separated image scales whose scores are averaged (default 1)")
    p.add_argument("--top", type=int, default=5, help="how many classes to list (default 5)")
    p.add_argument("--out", metavar="DIR", default=None,
                   help="folder for the heatmaps (default: IMAGE's name + '_slide' in the current folder)")
    p.set_defaults(func=run)


def parse_scales(text: str) -> tuple[float, ...]:
    """'1,1.5' -> (1.0, 1.5); each in (0, 8], at most 8 of them."""
    parts = [t.strip() for t in str(text).split(",") if t.strip()]
    try:
        scales = tuple(float(t) for t in parts)
    except ValueError:
        scales = ()
    if not scales or len(scales) > MAX_SCALES or any(not (math.isfinite(s) and 0 < s <= MAX_SCALE) for s in scales):
        raise SlideArgumentError(f"--scales {text!r}: expected 1 to {MAX_SCALES} comma-separated numbers in "
                                 f"(0, {MAX_SCALE:g}], e.g. 1,1.5")
    return scales


def image_size(path: str) -> tuple[int, int] | None:
    """(W, H) of an image file from its header, or None if Pillow cannot open it."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.size
    except Image.DecompressionBombError as e:
        raise ImageError(f"{path}: image too large to read safely: {e}") from None
    except (OSError, ValueError):  # read_image below turns these into one clear line
        return None


def load_image(path: str, channels: int) -> np.ndarray:
    """An image file of any size -> (C, H, W) float32 in [0, 1], read with predict's read_image."""
    size = image_size(path)
    if size is None:
        read_image(path, (channels, 1, 1))  # raises the right message: missing, unreadable...
        raise ImageError(f"{path}: not an image Pillow can read")
    w, h = size
    return read_image(path, (channels, h, w))


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "class"


def save_heatmap(path: str, image: np.ndarray, level: ScaleMap, k: int, title: str) -> None:
    """A PNG of image (C, H, W) in [0, 1] overlaid with the softmax probability of class k in
    each window of a ScaleMap (a cell per window, centred on it), written atomically."""
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure state

    maps = level.score_map - level.score_map.max(axis=0, keepdims=True)
    probs = np.exp(maps)
    probs = probs[k] / probs.sum(axis=0)
    (Hw, Ww), s = level.window, level.scale
    sh = level.ys[1] - level.ys[0] if len(level.ys) > 1 else Hw
    sw = level.xs[1] - level.xs[0] if len(level.xs) > 1 else Ww
    extent = ((level.xs[0] + Ww / 2 - sw / 2) / s, (level.xs[-1] + Ww / 2 + sw / 2) / s,
              (level.ys[-1] + Hw / 2 + sh / 2) / s, (level.ys[0] + Hw / 2 - sh / 2) / s)
    C, H, W = image.shape
    fig = Figure(figsize=(6, 6 * H / W + 0.6), dpi=100)
    ax = fig.add_subplot()
    if C == 1:
        ax.imshow(image[0], cmap="gray", vmin=0, vmax=1, extent=(0, W, H, 0))
    else:
        ax.imshow(image.transpose(1, 2, 0).clip(0, 1), extent=(0, W, H, 0))
    hm = ax.imshow(probs, cmap="jet", alpha=0.45, vmin=0, vmax=1, extent=extent, interpolation="nearest")
    ax.set(xlim=(0, W), ylim=(H, 0), title=title)
    ax.axis("off")
    fig.colorbar(hm, ax=ax, fraction=0.046, pad=0.04, label="probability per window")
    fig.tight_layout()
    with atomic_file(path) as f:
        fig.savefig(f, format="png")


def run(args: argparse.Namespace) -> int:
    from ..convert import convolutionalize, slide
    from ..train import normalize
    from .eval_cmd import load_trained

    scales = parse_scales(args.scales)
    if args.top < 1:
        raise SlideArgumentError(f"--top {args.top}: expected at least 1")
    if args.stride is not None and args.stride < 1:
        raise SlideArgumentError(f"--stride {args.stride}: expected a positive number of pixels")
    ckpt, net, extra = load_trained(args.checkpoint)
    shape = tuple(net.input_shape)
    if len(shape) != 3:
        raise SlideArgumentError(f"{ckpt.path}: the model takes flat inputs of shape {shape}, not W x H x D "
                                 "images, so it has no spatial input to slide over")
    C, H, W = shape
    conv = convolutionalize(net, shape)
    image = load_image(args.image, C)
    h, w = image.shape[1:]
    if h < H or w < W:
        raise ImageError(f"{args.image}: image is {w}x{h}, smaller than the {W}x{H} window the model was "
                         "trained on; slide needs an image at least that large")
    x = normalize(image[None], ckpt.meta.get("normalization"))[0]
    result = slide(conv, x, (H, W), stride=args.stride, scales=scales)

    classes = list(extra["classes"])
    probs = np.exp(result.scores - result.scores.max())
    probs /= probs.sum()
    sizes = ", ".join(f"{lv.score_map.shape[2]}x{lv.score_map.shape[1]} at scale {lv.scale:g}" for lv in result.levels)
    stride = "x".join(map(str, sorted(set(result.stride))))
    print(f"{args.image}: {w}x{h}, window {W}x{H}, stride {stride}: {result.num_windows} windows "
          f"evaluated ({sizes})")
    for lv in result.levels:
        if any(lv.uncovered):
            print(f"  not covered at scale {lv.scale:g}: {lv.uncovered[0]} rows at the bottom, "
                  f"{lv.uncovered[1]} columns at the right (of {lv.image_size[1]}x{lv.image_size[0]})")
    k = min(args.top, len(classes))
    top = np.argsort(-probs, kind="stable")[:k]
    print("scores averaged over windows and scales:")
    for j in top:
        print(f"  {classes[j]:<12} {probs[j]:.4f}")

    out = args.out or os.path.splitext(os.path.basename(args.image))[0] + "_slide"
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        raise SlideArgumentError(f"--out {out}: cannot create the folder: {e.strerror}") from None
    level = result.levels[0]
    for rank, j in enumerate(top, 1):
        path = os.path.join(out, f"{rank}_{_safe_name(str(classes[j]))}.png")
        save_heatmap(path, image, level, int(j),
                     f"{classes[j]}: p = {probs[j]:.3f} averaged; per window at scale {level.scale:g}")
    print(f"heatmaps of the top {k} classes (scale {level.scale:g}): {out}/")
    return 0
