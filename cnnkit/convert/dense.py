"""Dense evaluation (notes: "Converting FC layers to CONV layers"): slide a converted net over
a larger image in one forward pass, with finer strides from shifted passes and several scales.

The notes' example: a net trained on 224x224 crops with total stride 32, converted, maps a
384x384 image to a 6x6 map of class scores ((384 - 224)/32 + 1 = 6), one per 224 window at
stride 32, for a fraction of the cost of 36 crops. A stride of 16 comes from four passes
(the image, and the image shifted 16 px in x, in y and in both), interleaved.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ShapeError
from ..layers import Layer, Sequential
from .conversion import ConvolutionalNet, convolutionalize, is_converted, total_stride

# A dense pass is sized by the image: refuse one whose activations would need more than this.
MAX_BYTES = 4 * 2**30

#: A size or stride: one int for both axes, or an (h, w) pair.
Size = int | Sequence[int]


@dataclass(frozen=True)
class ScaleMap:
    """The score map of one image scale.

    score_map: (K, Hm, Wm), or (N, K, Hm, Wm) for a batch; cell (i, j) scores the window whose
    top-left pixel is (ys[i], xs[j]) of the image resized to image_size (H, W).
    uncovered: (rows at the bottom, columns at the right) of that image no window reached,
    because the last windows must fit whole.
    """

    scale: float
    score_map: np.ndarray
    ys: np.ndarray
    xs: np.ndarray
    image_size: tuple[int, int]
    window: tuple[int, int]
    uncovered: tuple[int, int]

    @property
    def num_windows(self) -> int:
        return len(self.ys) * len(self.xs)

    def boxes(self) -> np.ndarray:
        """(Hm, Wm, 4) windows as (y0, x0, y1, x1) in pixels of the original (unscaled) image."""
        Hw, Ww = self.window
        y, x = np.meshgrid(self.ys, self.xs, indexing="ij")
        return np.stack([y, x, y + Hw, x + Ww], axis=-1) / self.scale

    def uncovered_mask(self) -> np.ndarray:
        """(H, W) bool of this scale's image: True where no window reached."""
        H, W = self.image_size
        mask = np.ones((H, W), dtype=bool)
        mask[:H - self.uncovered[0], :W - self.uncovered[1]] = False
        return mask


@dataclass(frozen=True)
class SlideResult:
    """What slide found: a ScaleMap per scale, the stride used and the averaged class scores.

    scores: (K,) or (N, K), each scale's map averaged over its windows, then over scales
    (the notes: evaluate at many positions and scales, average the class scores).
    score_map, ys, xs, uncovered: those of the first scale.
    """

    levels: tuple[ScaleMap, ...]
    stride: tuple[int, int]
    window: tuple[int, int]
    scores: np.ndarray

    @property
    def score_map(self) -> np.ndarray:
        return self.levels[0].score_map

    @property
    def ys(self) -> np.ndarray:
        return self.levels[0].ys

    @property
    def xs(self) -> np.ndarray:
        return self.levels[0].xs

    @property
    def uncovered(self) -> tuple[int, int]:
        return self.levels[0].uncovered

    @property
    def num_windows(self) -> int:
        return sum(level.num_windows for level in self.levels)


def _hw(value: Size | np.integer, what: str) -> tuple[int, int]:
    """An int or an (h, w) pair -> (h, w), positive; anything else (a bool too) is refused."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = (int(value), int(value))
    pair: Any = value  # a user's value: whatever it is, the try below judges it
    try:
        h, w = (int(v) for v in pair)
    except (TypeError, ValueError):
        raise ShapeError(f"{what}: expected an int or an (h, w) pair of ints, got {value!r}") from None
    if h < 1 or w < 1:
        raise ShapeError(f"{what}: expected positive sizes, got {value!r}")
    return h, w


def _batch(image: Any) -> tuple[np.ndarray, bool]:
    """(C, H, W) or (N, C, H, W) floats -> (N, C, H, W), and whether a batch was given."""
    x = np.asarray(image)
    if x.ndim not in (3, 4) or not np.issubdtype(x.dtype, np.floating):
        raise ShapeError(f"slide: expected a float image (C, H, W) or batch (N, C, H, W), got dtype {x.dtype} "
                         f"shape {x.shape}")
    return (x, True) if x.ndim == 4 else (x[None], False)


def _window(net: Layer, input_size: Size | None, channels: int) -> tuple[int, int]:
    if input_size is None:
        shape = getattr(net, "input_shape", None)
        if shape is None or len(shape) != 3:
            raise ShapeError("slide: give input_size (H, W), the size the net was trained on; this network "
                             "does not carry an input_shape")
        if shape[0] != channels:
            raise ShapeError(f"slide: the net takes {shape[0]}-channel images, the image has {channels} channels")
        return int(shape[1]), int(shape[2])
    return _hw(input_size, "slide: input_size")


def divisors(n: int) -> list[int]:
    """The strides a total stride n allows: every d with n % d == 0."""
    return [d for d in range(1, n + 1) if n % d == 0]


def _fine_stride(stride: Size | None, S: tuple[int, int]) -> tuple[int, int]:
    """The requested stride, which must divide the net's total stride S on each axis."""
    if stride is None:
        return S
    s = _hw(stride, "slide: stride")
    for axis, si, Si in (("y", s[0], S[0]), ("x", s[1], S[1])):
        if Si % si:
            raise ShapeError(f"slide: stride {si} does not divide the net's total stride {Si} (in {axis}); "
                             f"finer strides come from shifted passes, so use one of "
                             f"{', '.join(map(str, divisors(Si)))}")
    return s


def _activation_bytes(net: Sequential, shape: tuple[int, ...], n: int, itemsize: int) -> int:
    """The largest input + output pair of the top-level layers on (n, *shape): the pass's peak, roughly."""
    peak, size = 0, math.prod(shape)
    for layer in net.children():
        shape = layer.output_shape(shape)
        out = math.prod(shape)
        peak, size = max(peak, size + out), out
    return peak * n * itemsize


def resize(x: np.ndarray, scale: float) -> np.ndarray:
    """(N, C, H, W) float -> (N, C, round(H*scale), round(W*scale)), bilinear, with Pillow.

    Each channel is resized as a float ('F') image, so normalised values pass unchanged in range.
    """
    from PIL import Image

    BILINEAR = getattr(Image, "Resampling", Image).BILINEAR  # Pillow >= 9.1 moved the constants
    N, C, H, W = x.shape
    h, w = scaled_size(H, W, scale)
    if (h, w) == (H, W):
        return x
    out = np.empty((N, C, h, w), dtype=x.dtype)
    for n in range(N):
        for c in range(C):
            im = Image.fromarray(np.ascontiguousarray(x[n, c], dtype=np.float32), mode="F")
            out[n, c] = np.asarray(im.resize((w, h), BILINEAR), dtype=x.dtype)
    return out


def _forward(net: Layer, x: np.ndarray) -> np.ndarray:
    """net.forward in eval mode (dropout off, running statistics), restoring the mode after."""
    was_training = net.training
    net.eval()
    try:
        return net.forward(x)
    finally:
        net.train(was_training)


def scaled_size(H: int, W: int, scale: float) -> tuple[int, int]:
    """The size resize gives an H x W image at scale: (round(H*scale), round(W*scale)), at least 1."""
    return max(1, round(H * scale)), max(1, round(W * scale))


def _check_cost(conv: ConvolutionalNet, x_shape: tuple[int, ...], itemsize: int, window: tuple[int, int],
                scale: float, max_bytes: int) -> None:
    """Refuse a scale whose image is smaller than the window, or whose resized image and dense
    pass would need more than max_bytes, before anything is allocated."""
    N, C, H, W = x_shape
    H, W = scaled_size(H, W, scale)
    (Hw, Ww), (Sh, Sw) = window, conv.total_stride
    if H < Hw or W < Ww:
        raise ShapeError(f"slide: the image is {W}x{H} at scale {scale:g}, smaller than the {Ww}x{Hw} window "
                         "the net was trained on; use a larger image or scale")
    need = N * C * H * W * itemsize + _activation_bytes(
        conv, (C, Hw + (H - Hw) // Sh * Sh, Ww + (W - Ww) // Sw * Sw), N, itemsize)
    if need > max_bytes:
        raise ShapeError(f"slide: a dense pass over a {W}x{H} image (scale {scale:g}, batch {N}) needs about "
                         f"{need / 2**30:.1f} GiB for the image and activations, more than the "
                         f"{max_bytes / 2**30:.1f} GiB allowed (max_bytes); use a smaller image or scale")


def _dense(conv: ConvolutionalNet, x: np.ndarray, window: tuple[int, int], stride: tuple[int, int],
           scale: float) -> ScaleMap:
    """One scale: (N, C, H, W) -> ScaleMap, by (S/s)^2 shifted passes interleaved."""
    N, _, H, W = x.shape
    (Hw, Ww), (sh, sw), (Sh, Sw) = window, stride, conv.total_stride
    nh, nw = (H - Hw) // sh + 1, (W - Ww) // sw + 1
    dh, dw = Sh // sh, Sw // sw
    out: np.ndarray | None = None
    for a in range(dh):
        for b in range(dw):
            # Pass (a, b) sees the image shifted by (a*s, b*s): its windows are every d-th of
            # the fine grid, starting at a and b; the last ones must fit whole.
            y0, x0 = a * sh, b * sw
            ih, iw = (H - Hw - y0) // Sh + 1, (W - Ww - x0) // Sw + 1
            if ih < 1 or iw < 1:
                continue
            crop = x[:, :, y0:y0 + Hw + (ih - 1) * Sh, x0:x0 + Ww + (iw - 1) * Sw]
            m = _forward(conv, np.ascontiguousarray(crop))
            if out is None:
                out = np.empty((N, m.shape[1], nh, nw), dtype=m.dtype)
            out[:, :, a::dh, b::dw] = m
    assert out is not None  # pass (0, 0) always runs: the image holds at least one window
    ys, xs = np.arange(nh) * sh, np.arange(nw) * sw
    uncovered = (H - int(ys[-1]) - Hw, W - int(xs[-1]) - Ww)
    return ScaleMap(float(scale), out, ys, xs, (H, W), (Hw, Ww), uncovered)


def slide(net: Layer, image: np.ndarray, input_size: Size | None = None, stride: Size | None = None,
          scales: Sequence[float] = (1.0,),
          max_bytes: int = MAX_BYTES) -> SlideResult:
    """Class scores of every window of an image, from one pass per shift (notes: "Converting FC
    layers to CONV layers": the converted net slides over a larger image).

    net: a trained net (converted here with convolutionalize) or a converted one; input_size
    (H, W): its training size (default net.input_shape). image: normalised (C, H, W) or
    (N, C, H, W). stride: the window spacing in pixels, the net's total stride by default;
    any divisor of it works, by (total / stride)^2 shifted passes interleaved. scales: the
    image is resized (Pillow, bilinear) by each before sliding. Returns a SlideResult:
    score_map (K, Hm, Wm) or (N, K, Hm, Wm) per scale, window positions, uncovered pixels,
    the stride, and class scores averaged over windows and scales.
    """
    x, batched = _batch(image)
    window = _window(net, input_size, x.shape[1])
    shape = (x.shape[1], *window)
    conv = net if is_converted(net) and tuple(net.input_shape) == shape else None
    if conv is None:
        conv = convolutionalize(net, shape)
    s = _fine_stride(stride, conv.total_stride)
    scales = tuple(float(v) for v in scales)
    if not scales or any(not (math.isfinite(v) and v > 0) for v in scales):
        raise ShapeError(f"slide: scales must be positive numbers, got {scales}")
    for scale in scales:
        _check_cost(conv, x.shape, x.dtype.itemsize, window, scale, max_bytes)
    levels = [_dense(conv, resize(x, scale), window, s, scale) for scale in scales]
    scores = np.mean([level.score_map.mean(axis=(2, 3)) for level in levels], axis=0)
    if not batched:
        levels = [ScaleMap(lv.scale, lv.score_map[0], lv.ys, lv.xs, lv.image_size, lv.window, lv.uncovered)
                  for lv in levels]
        scores = scores[0]
    return SlideResult(tuple(levels), s, window, scores)


def crop_loop(net: Layer, image: np.ndarray, input_size: Size | None = None,
              stride: Size | None = None) -> np.ndarray:
    """The reference dense evaluation: the original net run on each crop in turn.

    image (C, H, W) or (N, C, H, W) -> (K, Hm, Wm) or (N, K, Hm, Wm), windows of input_size
    (default net.input_shape) every stride pixels (default the net's total stride; any
    stride works), one forward per window. Equal to slide wherever no CONV zero-pads.
    """
    x, batched = _batch(image)
    Hw, Ww = _window(net, input_size, x.shape[1])
    sh, sw = _hw(stride, "crop_loop: stride") if stride is not None else total_stride(net)
    N, _, H, W = x.shape
    if H < Hw or W < Ww:
        raise ShapeError(f"crop_loop: the image is {W}x{H}, smaller than the {Ww}x{Hw} window")
    nh, nw = (H - Hw) // sh + 1, (W - Ww) // sw + 1
    out = None
    for i in range(nh):
        for j in range(nw):
            crop = np.ascontiguousarray(x[:, :, i * sh:i * sh + Hw, j * sw:j * sw + Ww])
            scores = _forward(net, crop).reshape(N, -1)
            if out is None:
                out = np.empty((N, scores.shape[1], nh, nw), dtype=scores.dtype)
            out[:, :, i, j] = scores
    assert out is not None
    return out if batched else out[0]


__all__ = ["MAX_BYTES", "ScaleMap", "SlideResult", "crop_loop", "divisors", "resize", "slide"]
