"""CONV and locally-connected layers (notes: "Convolutional Layer").

Conv2D is the notes' recipe in three steps: zero-pad by P, lower every receptive field
into a row of X_col and multiply by W_row (im2col + one GEMM), reshape to the output
volume. Backward: dW from the lowered input (dY^T X_col), dX by the convolution of dY
with the spatially flipped filters (stride 1) or col2im of dY W_row. HOW it is lowered
(blocks, layouts, threads) is a kernel strategy: see ``kernels.conv_lowering`` for the
rule and ``kernels/blocked.py`` for the GEMM.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ShapeError
from . import kernels
from .activation import add_relu, masked, positive
from .geometry import WindowedLayer, check_chw, flag, pair, plain, whole
from .im2col import col2im, im2col
from .init import constant, he_normal
from .layout import channels_last_filters, lives_nchw, nchw, nhwc, padded_nhwc


class Conv2D(WindowedLayer):
    """CONV: K filters of F x F x D1/groups slid with stride S over the zero-padded input.

    Shape: input (N, D1, H1, W1) -> output (N, K, H2, W2), W2 = (W1 - F + 2P)/S + 1.
    Parameters: ``weight`` (K, D1/groups, Fh, Fw) and ``bias`` (K,), PyTorch's shapes.

    Args:
        in_channels: D1, the depth of the input volume.
        out_channels: K, the number of filters (the depth of the output volume).
        kernel_size: F, the receptive field (spatial extent) of each filter; an int or an
            (Fh, Fw) pair.
        stride: S, the step between neighbouring receptive fields; int or (Sh, Sw).
        padding: P, the zeros added around each side of the input; int or (Ph, Pw).
            P = (F - 1)/2 with S = 1 keeps W2 = W1.
        dilation: the spacing of the filter's taps, PyTorch's convention: dilation=1 is a
            dense filter, and the notes' "dilation 1" (w0*x0 + w1*x2 + w2*x4, a gap of
            one) is ``dilation=2`` here. The filter then spans F_eff = dilation*(F-1)+1,
            which replaces F in the formula above. int or a pair.
        groups: splits the depth into independent towers (AlexNet's two-GPU layers): each
            of the K/groups filters of a tower sees D1/groups input channels.
        bias: whether to learn a bias per filter.
        rounding: 'exact' (default) refuses sizes where (W1 - F + 2P)/S + 1 is not an
            integer and names the numbers; 'floor' drops the inputs that the last
            receptive field can't reach (PyTorch, Caffe).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Any, stride: Any = 1, padding: Any = 0,
                 dilation: Any = 1, groups: int = 1, bias: bool = True, rounding: str = "exact") -> None:
        self.in_channels = whole(in_channels, "in_channels", "Conv2D")
        self.out_channels = whole(out_channels, "out_channels", "Conv2D")
        self.groups = whole(groups, "groups", "Conv2D")
        bias = flag(bias, "bias", "Conv2D")
        super().__init__(kernel_size, stride, padding, dilation, rounding)
        if self.in_channels % self.groups or self.out_channels % self.groups:
            raise ShapeError(
                f"Conv2D: in_channels ({in_channels}) and out_channels ({out_channels}) must both be "
                f"divisible by groups ({groups})"
            )
        Fh, Fw = self.kernel_size
        Cg = self.in_channels // self.groups
        self.params["weight"] = channels_last_filters(he_normal((self.out_channels, Cg, Fh, Fw), fan_in=Cg * Fh * Fw))
        if bias:
            self.params["bias"] = constant(self.out_channels, 0.0)

    def output_shape(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        check_chw(self, in_shape, self.in_channels)
        return (self.out_channels, *self.window(in_shape).out)

    def window(self, in_shape: tuple[int, ...], K: int = 0, groups: int = 1):
        return super().window(in_shape, self.out_channels, self.groups)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Pad by P, lower the receptive fields into X_col, multiply by W_row, reshape."""
        x = self._check_input(x, 4, self.in_channels)
        w = self.window(x.shape)
        lowering = kernels.conv_lowering(w, x.shape[0], lives_nchw(x), self.input_grad)   # the visible rule
        xp = lowering.pad(x, w)                              # zero-padding P; kept for backward
        out = lowering.forward(xp, self.params["weight"], self.params.get("bias"), w)   # X_col . W_row^T + b
        return self._save((lowering, xp, w, None), out)      # (N, K, H2, W2)

    def forward_relu(self, x: np.ndarray) -> np.ndarray:
        """This CONV, then max(0, .), in one pass: each block of the output gets its ReLU
        while it is in cache (Sequential calls it for a CONV -> RELU pair in train mode,
        see containers._fused_run). In train mode it keeps the ReLU's mask, y > 0, and
        backward applies it to dY first."""
        x = self._check_input(x, 4, self.in_channels)
        w = self.window(x.shape)
        lowering = kernels.conv_lowering(w, x.shape[0], lives_nchw(x), self.input_grad)
        xp = lowering.pad(x, w)
        out = lowering.forward(xp, self.params["weight"], self.params.get("bias"), w, relu=True)
        return self._save((lowering, xp, w, positive(out) if self.training else None), out)

    def forward_fused(self, x: np.ndarray, norm: Any = None, relu: bool = False,
                      add: np.ndarray | None = None) -> np.ndarray:
        """Eval mode: this CONV, then the batch norm `norm` (a BatchNorm2D in eval mode),
        the sum with `add` (a residual block's shortcut, this CONV's output shape) and a
        ReLU, in one pass. BN with running statistics is an affine map per channel:
        y = (conv + b - mean) s + beta with s = gamma / sqrt(var + eps), so each block of
        the output gets y = (X_col W_row^T) s + ((b - mean) s + beta) (+ add), then max(0, y),
        while it is in cache. Keeps no cache (eval mode); Sequential calls it (see
        containers._fused_run)."""
        x = self._check_input(x, 4, self.in_channels)
        weight, bias, scale = self.params["weight"], self.params.get("bias"), None
        if norm is not None:
            s = norm.params["weight"] / np.sqrt(norm.buffers["running_var"] + norm.eps)
            shift = norm.params["bias"] - norm.buffers["running_mean"] * s
            bias = shift if bias is None else bias * s + shift
            scale, bias = s.astype(weight.dtype), bias.astype(weight.dtype)
        w = self.window(x.shape)
        lowering = kernels.conv_lowering(w, x.shape[0], lives_nchw(x), self.input_grad)
        xp = lowering.pad(x, w)
        if add is None:
            return self._save(None, lowering.forward(xp, weight, bias, w, scale=scale, relu=relu))
        if (lowering.fuses_add(w) and add.shape == (x.shape[0], self.out_channels, *w.out)
                and add.dtype == np.result_type(x, weight) and nhwc(add).flags.c_contiguous):
            return self._save(None, lowering.forward(xp, weight, bias, w, scale=scale, relu=relu, add=add))
        out, _ = add_relu(lowering.forward(xp, weight, bias, w, scale=scale), add, relu, keep_mask=False)
        return self._save(None, out)

    def backward(self, dout: np.ndarray) -> np.ndarray | None:
        """dW = dY^T X_col; db = sum of dY; dX = dY convolved with the flipped filters
        (stride 1) or col2im(dY W_row)."""
        lowering, xp, w, relu_mask = self._take_cache(dout)
        if relu_mask is not None:                            # a fused ReLU's: dY where y > 0
            dout = masked(dout, relu_mask)
        dx, dweight, dbias = lowering.backward(xp, dout, self.params["weight"], "bias" in self.params, w,
                                               self.input_grad)
        self._set_grad("weight", dweight)
        if dbias is not None:
            self._set_grad("bias", dbias)
        return dx if self.input_grad else None

    def memory_use(self, in_shape: tuple[int, ...], batch: int, itemsize: int) -> tuple[int, int, int]:
        w = self.window(in_shape)
        cache, forward, backward = kernels.conv_lowering(w, batch, input_grad=self.input_grad).memory(w, batch, itemsize)
        # W_row, dW_row and the GEMM's result (or dW's reshaped copy, or the flipped
        # filters of a stride-1 dX): three weight-sized arrays beyond the gradient.
        return cache, forward, backward + 3 * self.params["weight"].size * itemsize

    def workspace_bytes(self, in_shape: tuple[int, ...], batch: int, itemsize: int) -> int:
        w = self.window(in_shape)
        return kernels.conv_lowering(w, batch, input_grad=self.input_grad).workspace(w, batch, itemsize)

    def config(self) -> dict[str, Any]:
        return dict(type="Conv2D", in_channels=self.in_channels, out_channels=self.out_channels,
                    **self.window_config(), dilation=plain(self.dilation), groups=self.groups,
                    bias="bias" in self.params, rounding=self.rounding)


class LocallyConnected2D(WindowedLayer):
    """Locally-connected layer: a CONV whose filters are not shared across positions
    (the notes' centred-faces example).

    Shape: input (N, D1, H1, W1) -> output (N, K, H2, W2), sizes as for CONV.
    ``input_size`` (H1, W1) fixes the number of positions. Parameters: ``weight``
    (H2, W2, K, D1, Fh, Fw), one CONV-shaped filter bank per output position, and
    ``bias`` (K, H2, W2).

    Args:
        in_channels: D1, the depth of the input volume.
        out_channels: K, the filters at each position (the depth of the output volume).
        kernel_size: F, the receptive field of each neuron; int or (Fh, Fw).
        input_size: (H1, W1), the input's spatial size, which fixes the H2 x W2 positions.
        stride: S, the step between receptive fields; int or (Sh, Sw).
        padding: P, zeros around each side of the input; int or (Ph, Pw).
        bias: whether to learn a bias per neuron.
        rounding: 'exact' (default) or 'floor', as for Conv2D.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Any, input_size: Any, stride: Any = 1,
                 padding: Any = 0, bias: bool = True, rounding: str = "exact") -> None:
        self.in_channels = whole(in_channels, "in_channels", "LocallyConnected2D")
        self.out_channels = whole(out_channels, "out_channels", "LocallyConnected2D")
        bias = flag(bias, "bias", "LocallyConnected2D")
        super().__init__(kernel_size, stride, padding, 1, rounding)
        self.input_size = pair(input_size, "input_size", "LocallyConnected2D")
        H2, W2 = self.out_hw(*self.input_size)
        Fh, Fw = self.kernel_size
        shape = (H2, W2, self.out_channels, self.in_channels, Fh, Fw)
        self.params["weight"] = he_normal(shape, fan_in=self.in_channels * Fh * Fw)
        if bias:
            self.params["bias"] = constant((self.out_channels, H2, W2), 0.0)

    def output_shape(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        C, H, W = check_chw(self, in_shape, self.in_channels)
        self._check_size(H, W)
        return (self.out_channels, *self.out_hw(H, W))

    def _check_size(self, H: int, W: int) -> None:
        if (H, W) != self.input_size:
            raise ShapeError(f"{self!r}: expected input H x W = {self.input_size}, got {(H, W)}")

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Each position's own filters on its receptive field: V[:, k, y, x] = W[y, x, k] . X_col[y, x] + b."""
        x = self._check_input(x, 4, self.in_channels)
        self._check_size(*x.shape[2:])
        return self._forward_by("locally_connected", x)          # PositionGEMMs below, or the reference loops

    def backward(self, dout: np.ndarray) -> np.ndarray | None:
        dx, grads = self._backward_by(dout)
        for name, grad in grads.items():
            self._set_grad(name, grad)
        return dx

    def memory_use(self, in_shape: tuple[int, ...], batch: int, itemsize: int) -> tuple[int, int, int]:
        C, H, W = in_shape
        K, H2, W2 = self.output_shape(in_shape)
        a_in, a_out = batch * C * H * W * itemsize, batch * K * H2 * W2 * itemsize
        cols = batch * H2 * W2 * self.kernel_size[0] * self.kernel_size[1] * C * itemsize
        dweight = self.params["weight"].size * itemsize
        return cols, 2 * cols + 2 * a_out, a_out + 2 * cols + a_in + dweight

    def config(self) -> dict[str, Any]:
        return dict(type="LocallyConnected2D", in_channels=self.in_channels, out_channels=self.out_channels,
                    **self.window_config(), input_size=list(self.input_size),
                    bias="bias" in self.params, rounding=self.rounding)


class PositionGEMMs:
    """Locally-connected layers as one batched GEMM over positions: X_col (positions, N,
    F*F*D1) times each position's filters (positions, F*F*D1, K)."""

    name = "position-gemms"

    @staticmethod
    def weight_rows(layer: LocallyConnected2D) -> np.ndarray:
        """(positions, Fh*Fw*D1, K): each position's filters as im2col columns."""
        w = layer.params["weight"]
        H2, W2, K = w.shape[:3]
        return (w.reshape(H2 * W2, K, layer.in_channels, *layer.kernel_size)
                .transpose(0, 3, 4, 2, 1).reshape(H2 * W2, -1, K))

    def forward(self, layer: LocallyConnected2D, x: np.ndarray) -> tuple[np.ndarray, Any]:
        N = x.shape[0]
        H2, W2 = out_hw = layer.out_hw(*x.shape[2:])
        X_col = im2col(padded_nhwc(x, layer.padding), layer.kernel_size, layer.stride, out_hw)[0]
        X_col = X_col.reshape(N, H2 * W2, -1).transpose(1, 0, 2)       # (positions, N, Fh*Fw*D1)
        out = np.matmul(X_col, self.weight_rows(layer))                 # (positions, N, K)
        out = out.transpose(1, 2, 0).reshape(N, layer.out_channels, H2, W2)
        if "bias" in layer.params:
            out = out + layer.params["bias"]
        return out, (X_col, x.shape)

    def backward(self, layer: LocallyConnected2D, saved: Any, dout: np.ndarray) -> tuple[np.ndarray, dict]:
        X_col, (N, C, H, W) = saved
        K, (H2, W2), (Fh, Fw), (Ph, Pw) = layer.out_channels, dout.shape[2:], layer.kernel_size, layer.padding
        grads = {}
        if "bias" in layer.params:
            grads["bias"] = dout.sum(axis=0)
        d_pos = dout.reshape(N, K, H2 * W2).transpose(2, 0, 1)            # (positions, N, K)
        dw = np.matmul(X_col.transpose(0, 2, 1), d_pos)                    # (positions, Fh*Fw*D1, K)
        grads["weight"] = dw.reshape(H2, W2, Fh, Fw, C, K).transpose(0, 1, 5, 4, 2, 3)
        dcols = np.matmul(d_pos, self.weight_rows(layer).transpose(0, 2, 1))   # (positions, N, Fh*Fw*D1)
        dcols = dcols.transpose(1, 0, 2).reshape(1, N * H2 * W2, -1)
        dxp = np.zeros((N, H + 2 * Ph, W + 2 * Pw, C), dtype=dcols.dtype)
        col2im(dcols, dxp, layer.kernel_size, layer.stride, (H2, W2))
        return nchw(dxp[:, Ph:Ph + H, Pw:Pw + W, :]), grads


kernels.register("locally_connected", PositionGEMMs())
