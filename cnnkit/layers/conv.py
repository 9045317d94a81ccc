"""CONV and locally-connected layers (notes: "Convolutional Layer", "im2col").

Forward is the notes' recipe: stretch every receptive field into a row (im2col),
multiply by the filters stretched into rows (one GEMM), reshape to the output volume.
Backward: dW is one GEMM of the cached rows with the output gradient; dX multiplies the
output gradient by the filters and scatters the rows back (col2im), which is the
notes' "convolution with spatially flipped filters".
"""

from __future__ import annotations

import numpy as np

from ..errors import ShapeError
from .base import Layer, default_rng, pair
from .windows import col2im, fan_in_std, im2col, nchw, nhwc, output_size


class _Windowed(Layer):
    """Shared hyperparameters of layers that slide an F x F window: F, S, P, dilation."""

    def __init__(self, kernel_size, stride, padding, dilation, rounding, roundings=("exact", "floor")):
        super().__init__()
        name = type(self).__name__
        self.kernel_size = pair(kernel_size, "kernel_size", name)
        self.stride = pair(stride if stride is not None else kernel_size, "stride", name)
        self.padding = pair(padding, "padding", name)
        self.dilation = pair(dilation, "dilation", name)
        if min(self.kernel_size) < 1 or min(self.stride) < 1 or min(self.dilation) < 1 or min(self.padding) < 0:
            raise ShapeError(
                f"{name}: need kernel_size, stride, dilation >= 1 and padding >= 0, got F={self.kernel_size}, "
                f"S={self.stride}, P={self.padding}, dilation={self.dilation}"
            )
        if rounding not in roundings:
            raise ShapeError(f"{name}: rounding must be one of {roundings}, got {rounding!r}")
        self.rounding = rounding

    def _out_hw(self, H: int, W: int) -> tuple[int, int]:
        (Fh, Fw), (Sh, Sw), (Ph, Pw), (Dh, Dw) = self.kernel_size, self.stride, self.padding, self.dilation
        return (output_size(H, Fh, Sh, Ph, Dh, self.rounding, repr(self), "H"),
                output_size(W, Fw, Sw, Pw, Dw, self.rounding, repr(self), "W"))

    def _window_config(self) -> dict:
        return dict(kernel_size=_plain(self.kernel_size), stride=_plain(self.stride),
                    padding=_plain(self.padding))


def _plain(hw: tuple[int, int]):
    """(3, 3) -> 3 for configs that read like the constructor call."""
    return hw[0] if hw[0] == hw[1] else list(hw)


class Conv2D(_Windowed):
    """CONV: K filters of F x F x D1/groups slid with stride S over the zero-padded input.

    Input (N, D1, H1, W1) -> output (N, K, H2, W2) with W2 = (W1 - F + 2P)/S + 1.
    Parameters: ``weight`` (K, D1/groups, Fh, Fw) and ``bias`` (K,), PyTorch's shapes.

    dilation follows PyTorch: dilation=1 is a dense filter; the notes' "dilation 1"
    (w0*x0 + w1*x2 + w2*x4, a gap of one) is ``dilation=2`` here. groups splits the
    depth into independent towers, as in AlexNet's two-GPU layers.
    rounding='exact' (default) refuses sizes that don't tile; 'floor' drops the rest.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, groups: int = 1, bias: bool = True, rounding: str = "exact"):
        self.in_channels, self.out_channels, self.groups = int(in_channels), int(out_channels), int(groups)
        super().__init__(kernel_size, stride, padding, dilation, rounding)
        if self.groups < 1 or self.in_channels % self.groups or self.out_channels % self.groups:
            raise ShapeError(
                f"Conv2D: in_channels ({in_channels}) and out_channels ({out_channels}) must both be "
                f"divisible by groups ({groups})"
            )
        Fh, Fw = self.kernel_size
        fan_in = self.in_channels // self.groups * Fh * Fw
        shape = (self.out_channels, self.in_channels // self.groups, Fh, Fw)
        self.params["weight"] = (default_rng().standard_normal(shape) * fan_in_std(fan_in)).astype(np.float32)
        if bias:
            self.params["bias"] = np.zeros(self.out_channels, dtype=np.float32)

    def output_shape(self, in_shape):
        C, H, W = _check_chw(self, in_shape, self.in_channels)
        return (self.out_channels, *self._out_hw(H, W))

    def forward(self, x):
        x = self._check_input(x, 4, self.in_channels)
        N, _, H, W = x.shape
        out_hw = self._out_hw(H, W)
        G, K = self.groups, self.out_channels
        cols = im2col(nhwc(x), self.kernel_size, self.stride, self.padding, out_hw, self.dilation, G)
        w_rows = self._weight_rows()                       # (G, K/G, Fh*Fw*D1/G)
        out = np.matmul(cols, w_rows.transpose(0, 2, 1))   # (G, N*H2*W2, K/G)
        out = out[0] if G == 1 else out.transpose(1, 0, 2).reshape(-1, K)
        if "bias" in self.params:
            out += self.params["bias"]
        out = nchw(out.reshape(N, *out_hw, K))
        return self._save((cols, x.shape, out_hw), out)

    def backward(self, dout):
        cols, x_shape, out_hw = self._take_cache(dout)
        G, K = self.groups, self.out_channels
        d_rows = nhwc(dout).reshape(-1, K)                # (N*H2*W2, K)
        if "bias" in self.params:
            self.grads["bias"] = d_rows.sum(axis=0).astype(self.params["bias"].dtype)
        d_rows = d_rows.reshape(-1, G, K // G).transpose(1, 0, 2)  # (G, N*H2*W2, K/G)
        dw_rows = np.matmul(d_rows.transpose(0, 2, 1), cols)       # (G, K/G, Fh*Fw*D1/G)
        Fh, Fw = self.kernel_size
        self.grads["weight"] = (dw_rows.reshape(K, Fh, Fw, -1).transpose(0, 3, 1, 2)
                                .astype(self.params["weight"].dtype))
        dcols = np.matmul(d_rows, self._weight_rows())
        N, C, H, W = x_shape
        dx = col2im(dcols, (N, H, W, C), self.kernel_size, self.stride, self.padding, out_hw, self.dilation)
        return nchw(dx)

    def _weight_rows(self) -> np.ndarray:
        """The notes' W_row, per group: (G, K/G, Fh*Fw*D1/G) in im2col's column order."""
        w = self.params["weight"]
        return w.transpose(0, 2, 3, 1).reshape(self.groups, self.out_channels // self.groups, -1)

    def config(self):
        return dict(type="Conv2D", in_channels=self.in_channels, out_channels=self.out_channels,
                    **self._window_config(), dilation=_plain(self.dilation), groups=self.groups,
                    bias="bias" in self.params, rounding=self.rounding)


class LocallyConnected2D(_Windowed):
    """Locally-connected layer: a CONV whose filters are not shared across positions
    (the notes' centred-faces example).

    Input (N, D1, H1, W1) -> output (N, K, H2, W2), sizes as for CONV. ``input_size``
    (H1, W1) fixes the number of positions. Parameters: ``weight`` (H2, W2, K, D1, Fh, Fw),
    one CONV-shaped filter bank per output position, and ``bias`` (K, H2, W2).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, input_size, stride=1,
                 padding=0, bias: bool = True, rounding: str = "exact"):
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        super().__init__(kernel_size, stride, padding, 1, rounding)
        self.input_size = pair(input_size, "input_size", "LocallyConnected2D")
        H2, W2 = self._out_hw(*self.input_size)
        Fh, Fw = self.kernel_size
        fan_in = self.in_channels * Fh * Fw
        shape = (H2, W2, self.out_channels, self.in_channels, Fh, Fw)
        self.params["weight"] = (default_rng().standard_normal(shape) * fan_in_std(fan_in)).astype(np.float32)
        if bias:
            self.params["bias"] = np.zeros((self.out_channels, H2, W2), dtype=np.float32)

    def output_shape(self, in_shape):
        C, H, W = _check_chw(self, in_shape, self.in_channels)
        self._check_size(H, W)
        return (self.out_channels, *self._out_hw(H, W))

    def _check_size(self, H, W):
        if (H, W) != self.input_size:
            raise ShapeError(f"{self!r}: expected input H x W = {self.input_size}, got {(H, W)}")

    def forward(self, x):
        x = self._check_input(x, 4, self.in_channels)
        N, _, H, W = x.shape
        self._check_size(H, W)
        H2, W2 = out_hw = self._out_hw(H, W)
        cols = im2col(nhwc(x), self.kernel_size, self.stride, self.padding, out_hw)[0]
        cols = cols.reshape(N, H2 * W2, -1).transpose(1, 0, 2)      # (positions, N, Fh*Fw*D1)
        out = np.matmul(cols, self._weight_rows())                   # (positions, N, K)
        out = out.transpose(1, 2, 0).reshape(N, self.out_channels, H2, W2)
        if "bias" in self.params:
            out = out + self.params["bias"]
        return self._save((cols, x.shape, out_hw), out)

    def backward(self, dout):
        cols, (N, C, H, W), (H2, W2) = self._take_cache(dout)
        K = self.out_channels
        if "bias" in self.params:
            self.grads["bias"] = dout.sum(axis=0).astype(self.params["bias"].dtype)
        d_pos = dout.reshape(N, K, H2 * W2).transpose(2, 0, 1)           # (positions, N, K)
        dw = np.matmul(cols.transpose(0, 2, 1), d_pos)                    # (positions, Fh*Fw*D1, K)
        Fh, Fw = self.kernel_size
        self.grads["weight"] = (dw.reshape(H2, W2, Fh, Fw, C, K).transpose(0, 1, 5, 4, 2, 3)
                                .astype(self.params["weight"].dtype))
        dcols = np.matmul(d_pos, self._weight_rows().transpose(0, 2, 1))  # (positions, N, Fh*Fw*D1)
        dcols = dcols.transpose(1, 0, 2).reshape(1, N * H2 * W2, -1)
        dx = col2im(dcols, (N, H, W, C), self.kernel_size, self.stride, self.padding, (H2, W2))
        return nchw(dx)

    def _weight_rows(self) -> np.ndarray:
        """(positions, Fh*Fw*D1, K): each position's filters as im2col columns."""
        w = self.params["weight"]
        H2, W2, K = w.shape[:3]
        return w.reshape(H2 * W2, K, self.in_channels, *self.kernel_size).transpose(0, 3, 4, 2, 1).reshape(H2 * W2, -1, K)

    def config(self):
        return dict(type="LocallyConnected2D", in_channels=self.in_channels, out_channels=self.out_channels,
                    **self._window_config(), input_size=list(self.input_size),
                    bias="bias" in self.params, rounding=self.rounding)


def _check_chw(layer: Layer, in_shape, channels: int | None):
    """Validate a per-sample (C, H, W) shape for output_shape."""
    if len(in_shape) != 3:
        raise ShapeError(f"{layer!r}: expected a (C, H, W) input volume, got {tuple(in_shape)}")
    if channels is not None and in_shape[0] != channels:
        raise ShapeError(f"{layer!r}: expected {channels} input channels (depth D1), got {in_shape[0]}")
    return tuple(in_shape)
