"""`cnnkit predict CHECKPOINT IMAGE...`: the top classes of each image, with softmax scores."""

from __future__ import annotations

import argparse
import os
from typing import Any

import numpy as np

from ..errors import CnnkitError
from .summary_cmd import positive

# How the built-in data sets draw their images: a picture drawn the other way round is
# classified as noise, so predict says it and --invert turns it round.
CONVENTIONS = {
    "digits": "white digits on a black background (the ink is bright; --invert a dark-on-light scan)",
    "mnist": "white digits on a black background (the ink is bright; --invert a dark-on-light scan)",
    "fashion-mnist": "light garments on a black background (--invert a dark-on-light picture)",
}


class ImageError(CnnkitError):
    """An image that cannot be read or does not fit the model."""


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "predict", help="top-5 classes of images",
        description="Classify images with a checkpoint written by cnnkit train. An image must have the "
                    "model's width and height (the error says which; --resize scales it), and its colour is "
                    "converted to the model's depth (grayscale or RGB). Models trained on digits or MNIST "
                    "expect white digits on black: --invert turns a dark-on-light scan round.")
    p.add_argument("checkpoint", metavar="CHECKPOINT")
    p.add_argument("images", metavar="IMAGE", nargs="+")
    p.add_argument("--top", type=positive, default=5, help="how many classes to list (default 5)")
    p.add_argument("--resize", action="store_true",
                   help="scale each image to the model's input size (bilinear) instead of refusing it")
    p.add_argument("--invert", action="store_true", help="use 1 - pixel (dark ink on light paper -> light on dark)")
    p.set_defaults(func=run)


def expected(input_shape: tuple[int, ...], data: Any = None) -> str:
    """What a model takes, in words: '8x8 grayscale (1-channel) images, white digits on ...'."""
    if len(input_shape) != 3:
        return f"flat inputs of {input_shape[0]} numbers, not images"
    C, H, W = input_shape
    colour = "grayscale (1-channel)" if C == 1 else "RGB (3-channel)" if C == 3 else f"{C}-channel"
    name = str(data or "").partition(":")[0].strip().lower()
    convention = CONVENTIONS.get(name)
    return f"{W}x{H} {colour} images" + (f", {convention}" if convention else "")


def read_image(path: str, input_shape: tuple[int, ...], data: Any = None, resize: bool | None = None) -> np.ndarray:
    """An image file -> (C, H, W) float32 in [0, 1] at the model's depth; the size is
    checked from the header before decoding, and a wrong size is an error unless resize
    (False: the caller offers --resize, and the error says so; None: it does not)."""
    from ..data import open_image

    if len(input_shape) != 3 or input_shape[0] not in (1, 3):
        raise ImageError(f"{path}: the model takes {expected(input_shape, data)}; predict reads grayscale and "
                         "RGB images only")
    C, H, W = input_shape
    if not os.path.isfile(path):
        raise ImageError(f"{path}: no such image file")
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path):   # the header only: is it an image at all?
            pass
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image Pillow can read") from None
    except Exception:  # a bomb, a truncated header...: open_image names it below
        pass
    image = open_image(path)   # size-checked from the header before decoding; one line, never Pillow's error
    w, h = image.size
    if (w, h) != (W, H):
        if not resize:
            hint = f"; pass --resize to scale it to {W}x{H}" if resize is False else f"; scale it to {W}x{H} first"
            raise ImageError(f"{path}: the image is {w}x{h} but the model takes {expected(input_shape, data)}{hint}")
        image = image.resize((W, H), Image.Resampling.BILINEAR)
    x = np.asarray(image.convert("L" if C == 1 else "RGB"), dtype=np.float32) / np.float32(255)
    return x[None] if C == 1 else x.transpose(2, 0, 1)


def run(args: argparse.Namespace) -> int:
    from ..train import predict_scores
    from .eval_cmd import load_trained

    ckpt, net, extra = load_trained(args.checkpoint)
    classes = [str(c) for c in extra["classes"]]
    shape = tuple(net.input_shape)
    X = np.stack([read_image(p, shape, extra.get("data"), args.resize) for p in args.images])
    if args.invert:
        X = 1 - X
    scores = predict_scores(net, X, ckpt.meta.get("normalization"))
    if scores.shape[1] != len(classes):
        raise ImageError(f"{args.checkpoint}: the network gives {scores.shape[1]} scores but the checkpoint names "
                         f"{len(classes)} classes")
    probs = np.exp(scores - scores.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    k = min(args.top, len(classes))
    for path, p in zip(args.images, probs):
        print(path)
        for j in np.argsort(-p, kind="stable")[:k]:
            print(f"  {classes[j]:<12} {p[j]:.4f}")
    return 0
