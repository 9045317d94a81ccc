"""`cnnkit predict CHECKPOINT IMAGE...`: the top classes of each image, with softmax scores."""

from __future__ import annotations

import argparse

import numpy as np

from ..errors import CnnkitError


class ImageError(CnnkitError):
    """An image that cannot be read or does not fit the model."""


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "predict", help="top-5 classes of images",
        description="Classify images with a checkpoint written by cnnkit train. Images must have the "
                    "model's width and height (they are not resized); colour is converted to the "
                    "model's depth (grayscale or RGB).")
    p.add_argument("checkpoint", metavar="CHECKPOINT")
    p.add_argument("images", metavar="IMAGE", nargs="+")
    p.add_argument("--top", type=int, default=5, help="how many classes to list (default 5)")
    p.set_defaults(func=run)


def read_image(path: str, input_shape: tuple[int, int, int]) -> np.ndarray:
    """An image file -> (C, H, W) float32 in [0, 1] at the model's depth; wrong sizes are errors."""
    from PIL import Image, UnidentifiedImageError

    C, H, W = input_shape
    try:
        with Image.open(path) as im:
            im.load()
            w, h = im.size
            if (w, h) != (W, H):
                raise ImageError(f"{path}: image is {w}x{h} but the model takes {W}x{H} images; resize it first")
            converted = im.convert("L" if C == 1 else "RGB")
            x = np.asarray(converted, dtype=np.float32) / 255.0
    except FileNotFoundError:
        raise ImageError(f"{path}: no such image file") from None
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image Pillow can read") from None
    except OSError as e:
        raise ImageError(f"{path}: cannot read image: {e}") from None
    if C not in (1, 3):
        raise ImageError(f"{path}: the model takes {C}-channel images; only 1 (grayscale) and 3 (RGB) are supported")
    return x[None] if C == 1 else x.transpose(2, 0, 1)


def run(args: argparse.Namespace) -> int:
    from ..train import predict_scores
    from .eval_cmd import load_trained

    ckpt, net, extra = load_trained(args.checkpoint)
    classes = list(extra["classes"])
    X = np.stack([read_image(p, net.input_shape) for p in args.images])
    scores = predict_scores(net, X, ckpt.meta.get("normalization"))
    probs = np.exp(scores - scores.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    k = max(1, min(args.top, len(classes)))
    for path, p in zip(args.images, probs):
        print(path)
        for j in np.argsort(-p, kind="stable")[:k]:
            print(f"  {classes[j]:<12} {p[j]:.4f}")
    return 0
