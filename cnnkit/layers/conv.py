"""CONV and locally-connected layers (notes: "Convolutional Layer", "im2col").

Forward is the notes' recipe: stretch every receptive field into a row (im2col),
multiply by the filters stretched into rows (a GEMM), reshape to the output volume; it
runs block by block of images so that X_col stays in cache (see windows.BLOCK_BYTES).
Backward at stride 1 is the notes' "convolution with spatially flipped filters" applied
to dY, whose lowered rows also give dW. At other strides dW is a GEMM of the lowered
input with dY, and dX multiplies dY by the filters and scatters the rows back (col2im).
Image-like inputs (1-4 channels) at stride 1 are lowered channels-first instead.
"""

from __future__ import annotations

import math
import threading

import numpy as np

from ..errors import ShapeError
from . import threads, windows
from .base import Layer, default_rng, pair
from .windows import block_input, col2im, contiguous_nhwc, fan_in_std, im2col, nchw, nhwc, output_size, pad_nhwc, row_blocks


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
        return (output_size(H, Fh, Sh, Ph, Dh, self.rounding, self, "H"),
                output_size(W, Fw, Sw, Pw, Dw, self.rounding, self, "W"))

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
        self.params["weight"] = default_rng().standard_normal(shape, dtype=np.float32) * np.float32(fan_in_std(fan_in))
        if bias:
            self.params["bias"] = np.zeros(self.out_channels, dtype=np.float32)

    def output_shape(self, in_shape):
        C, H, W = _check_chw(self, in_shape, self.in_channels)
        return (self.out_channels, *self._out_hw(H, W))

    def forward(self, x):
        x = self._check_input(x, 4, self.in_channels)
        out_hw = self._out_hw(*x.shape[2:])
        if self._channels_first():
            xp = _pad_nchw(x, self.padding, spare=(self.kernel_size[1] - 1) * self.dilation[1])
            out = _convolve_cf(xp, self.params["weight"], self.params.get("bias"), self.dilation, out_hw)
            return self._save((xp, x.shape), nchw(out))
        xp = _padded_input(x, self.padding)
        out, _ = _convolve(xp, self._weight_rows(), self.params.get("bias"), self.kernel_size, self.stride,
                           self.dilation, out_hw)
        return self._save((xp, x.shape), nchw(out))

    def backward(self, dout):
        xp, (N, C, H, W) = self._take_cache(dout)
        if self._channels_first():
            return self._backward_cf(xp, (N, C, H, W), dout)
        K = self.out_channels
        (Fh, Fw), (Ph, Pw), (Dh, Dw) = self.kernel_size, self.padding, self.dilation
        d = nhwc(dout)                                                   # (N, H2, W2, K), a view
        if "bias" in self.params:
            self.grads["bias"] = d.sum(axis=(0, 1, 2)).astype(self.params["bias"].dtype)
        # The padding that turns a stride-1 CONV's backward into a full convolution.
        full = (Dh * (Fh - 1) - Ph, Dw * (Fw - 1) - Pw)
        if self.stride == (1, 1) and min(full) >= 0 and self.input_grad:
            # padding dY is its one copy, whatever its layout
            d_padded = pad_nhwc(d, full) if max(full) > 0 else np.ascontiguousarray(d)
            dx, dw_rows = self._backward_flipped(xp[:, Ph:Ph + H, Pw:Pw + W], d_padded)
        else:
            dx, dw_rows = self._backward_col2im(xp, (H, W), np.ascontiguousarray(d))
        self.grads["weight"] = (dw_rows.reshape(K, Fh, Fw, -1).transpose(0, 3, 1, 2)
                                .astype(self.params["weight"].dtype))
        return nchw(dx) if self.input_grad else None

    def _backward_flipped(self, x, d_padded):
        """Stride 1. The notes: the backward pass of a convolution is a convolution, of the
        output gradient with the spatially flipped filters (depth and filter axes swapped).
        Its lowered dY also gives dW: dW[k, c, i, j] = sum X[c] * dY_col[(F-1-i, F-1-j, k)]."""
        G, (Fh, Fw) = self.groups, self.kernel_size
        C, K = self.in_channels, self.out_channels

        def dw_of_block(block, d_cols):
            x_rows = _rows(x, block).reshape(-1, G, C // G).transpose(1, 0, 2)   # (G, rows, D1/G)
            return np.matmul(x_rows.transpose(0, 2, 1), d_cols)

        dx, dw_flipped = _convolve(d_padded, self._flipped_rows(), None, self.kernel_size, (1, 1),
                                   self.dilation, x.shape[1:3], on_block=dw_of_block)
        dw = dw_flipped.reshape(G, C // G, Fh, Fw, K // G)[:, :, ::-1, ::-1, :]       # unflip
        return dx, dw.transpose(0, 4, 2, 3, 1).reshape(K, -1)          # as W_row: (K, Fh*Fw*D1/G)

    def _backward_col2im(self, xp, x_hw, d):
        """Any stride: dW = dY^T X_col, dX_col = dY W_row scattered back by col2im."""
        G, K, F, S, D = self.groups, self.out_channels, self.kernel_size, self.stride, self.dilation
        (Ph, Pw), (H, W) = self.padding, x_hw
        w_rows = self._weight_rows()
        dw_rows = np.zeros_like(w_rows, dtype=d.dtype)
        dxp = np.zeros(xp.shape, dtype=d.dtype) if self.input_grad else None
        row_bytes = d.shape[2] * F[0] * F[1] * xp.shape[3] * xp.itemsize
        for block, cols in _lowered(xp, F, S, D, d.shape[1:3], G, _blocks(xp.shape[0], d.shape[1], row_bytes)):
            d_rows = _rows(d, block).reshape(-1, G, K // G).transpose(1, 0, 2)   # (G, rows, K/G)
            dw_rows += np.matmul(d_rows.transpose(0, 2, 1), cols)
            if dxp is not None:
                col2im(np.matmul(d_rows, w_rows), block_input(dxp, block, F[0], S[0], D[0]), F, S,
                       (block[3] - block[2], d.shape[2]), D)
        dx = None if dxp is None else dxp[:, Ph:Ph + H, Pw:Pw + W, :]
        return dx, dw_rows.reshape(K, -1)

    def _channels_first(self) -> bool:
        """Image-like inputs (1-4 channels) lower faster channels-first: an NHWC receptive
        field is runs of D1 numbers, an NCHW one at stride 1 is runs of W2 numbers."""
        return self.in_channels <= 4 and self.groups == 1 and self.stride == (1, 1)

    def _backward_cf(self, xp, x_shape, dout):
        """Backward of the channels-first path, block by block in the forward's shifted
        rows: [dW | db]^T = [X_col; 1] dY, and dX_col = W^T dY added back one kernel
        offset at a time."""
        N, C, H, W = x_shape
        K, F, D, (Ph, Pw) = self.out_channels, self.kernel_size, self.dilation, self.padding
        H2, W2 = dout.shape[2:]
        Wp = xp.shape[3]
        # dY in the forward's rows: zero in the Wp - W2 columns that X_col has past each row
        d = np.empty((N, H2, Wp, K), dtype=dout.dtype)
        d[:, :, W2:] = 0
        d[:, :, :W2] = nhwc(dout)
        w = self.params["weight"].reshape(K, -1)
        has_bias = "bias" in self.params
        dxp = np.zeros(xp.shape, dtype=d.dtype) if self.input_grad else None
        blocks = _blocks_cf(xp, F, (H2, W2), CF_BACKWARD_BYTES)

        def run(share):
            dw = np.zeros((w.shape[1] + has_bias, K), dtype=d.dtype)
            for block, cols in _lowered_cf(xp, F, D, share, ones=has_bias):
                d_rows = _rows(d, block)                                 # (rows, K), a view
                dw += cols @ d_rows
                if dxp is None:
                    continue
                # Trimmed runs stay inside each image (the cells they skip get zeros).
                run_length = (block[3] - block[2] - 1) * Wp + W2
                target = _shifted(dxp, F, D, block, run_length)                   # (C, Fh, Fw, n, run)
                dcols = (w.T @ d_rows.T).reshape(*target.shape[:4], -1)[..., :run_length]
                for offset in np.ndindex(target.shape[:3]):   # one add per channel and kernel offset
                    target[offset] += dcols[offset]
            return dw

        # Bands of one image overlap in dX: share blocks between threads only when each
        # holds whole images (or when no dX is wanted).
        whole_images = all(h0 == 0 and h1 == H2 for _, _, h0, h1 in blocks)
        parts = threads.run_shares(run, blocks) if whole_images or dxp is None else [run(blocks)]
        dw = sum(parts[1:], parts[0])
        if has_bias:
            self.grads["bias"] = dw[-1].astype(self.params["bias"].dtype)
        self.grads["weight"] = dw[:w.shape[1]].T.reshape(self.params["weight"].shape).astype(self.params["weight"].dtype)
        return None if dxp is None else dxp[:, :, Ph:Ph + H, Pw:Pw + W]

    def _flipped_rows(self) -> np.ndarray:
        """Filters of the transposed convolution as rows: (G, D1/G, Fh*Fw*K/G)."""
        G, (Fh, Fw) = self.groups, self.kernel_size
        w = self.params["weight"].reshape(G, self.out_channels // G, -1, Fh, Fw)[:, :, :, ::-1, ::-1]
        return w.transpose(0, 2, 3, 4, 1).reshape(G, self.in_channels // G, -1)

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

    def __init__(self, in_channels: int, out_channels: int, kernel_size, input_size, stride=1,
                 padding=0, bias: bool = True, rounding: str = "exact"):
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        super().__init__(kernel_size, stride, padding, 1, rounding)
        self.input_size = pair(input_size, "input_size", "LocallyConnected2D")
        H2, W2 = self._out_hw(*self.input_size)
        Fh, Fw = self.kernel_size
        fan_in = self.in_channels * Fh * Fw
        shape = (H2, W2, self.out_channels, self.in_channels, Fh, Fw)
        self.params["weight"] = default_rng().standard_normal(shape, dtype=np.float32) * np.float32(fan_in_std(fan_in))
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
        cols = im2col(_padded_input(x, self.padding), self.kernel_size, self.stride, out_hw)[0]
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
        Ph, Pw = self.padding
        dxp = np.zeros((N, H + 2 * Ph, W + 2 * Pw, C), dtype=dcols.dtype)
        col2im(dcols, dxp, self.kernel_size, self.stride, (H2, W2))
        return nchw(dxp[:, Ph:Ph + H, Pw:Pw + W, :])

    def _weight_rows(self) -> np.ndarray:
        """(positions, Fh*Fw*D1, K): each position's filters as im2col columns."""
        w = self.params["weight"]
        H2, W2, K = w.shape[:3]
        return w.reshape(H2 * W2, K, self.in_channels, *self.kernel_size).transpose(0, 3, 4, 2, 1).reshape(H2 * W2, -1, K)

    def config(self):
        return dict(type="LocallyConnected2D", in_channels=self.in_channels, out_channels=self.out_channels,
                    **self._window_config(), input_size=list(self.input_size),
                    bias="bias" in self.params, rounding=self.rounding)


def _lowered(xp, F, S, dilation, out_hw, groups, blocks):
    """(block, X_col of the block) for the given blocks of output rows."""
    row_bytes = out_hw[1] * F[0] * F[1] * xp.shape[3] * xp.itemsize
    buffer = _block_buffer(blocks, row_bytes, xp.dtype)
    for block in blocks:
        n0, n1, h0, h1 = block
        yield block, im2col(block_input(xp, block, F[0], S[0], dilation[0]), F, S, (h1 - h0, out_hw[1]),
                            dilation, groups, buffer)


# Below this much X_col per thread, handing work to another thread costs more than it saves.
MIN_SHARE_BYTES = 1 << 20


def _blocks(N, H2, row_bytes, workers=1, budget=None):
    """Cache-sized blocks of output rows (at most budget bytes each, BLOCK_BYTES by
    default), as many per worker when the layer is big enough to be worth sharing."""
    total = N * H2 * row_bytes
    workers = max(1, min(workers, total // MIN_SHARE_BYTES))
    count = workers * -(-total // (workers * (budget or windows.BLOCK_BYTES)))
    return list(row_blocks(N, H2, row_bytes, max(row_bytes, -(-total // count))))


def _block_buffer(blocks, row_bytes, dtype) -> np.ndarray:
    """Room for the largest block's X_col, from a scratch buffer this thread keeps between
    calls: a fresh multi-MB array per block (or per call) costs the kernel's page faults."""
    if not blocks:
        return np.empty(0, dtype=dtype)
    rows = max((n1 - n0) * (h1 - h0) for n0, n1, h0, h1 in blocks)
    size = rows * row_bytes // np.dtype(dtype).itemsize
    key = (threading.get_ident(), np.dtype(dtype).str)
    buffer = _scratch.get(key)
    if buffer is None or buffer.size < size:
        del buffer
        _scratch.pop(key, None)            # let the smaller one go before the bigger one comes
        buffer = _scratch[key] = np.empty(size, dtype=dtype)
    return buffer


_scratch: dict = {}  # im2col workspace: one buffer per thread and dtype


def release_workspace() -> None:
    """Free every thread's im2col scratch buffer (the next CONV call makes them again)."""
    _scratch.clear()


def _convolve(xp, w_rows, bias, F, S, dilation, out_hw, on_block=None):
    """CONV of padded NHWC xp with filters as rows (G, K/G, Fh*Fw*D1/G): (N, H2, W2, K).

    on_block(block, X_col) sees each lowered block while it is in cache and returns an
    array; the second result is their sum (None without on_block). With
    cnnkit.set_num_threads(n) the blocks are shared between n threads (see threads.py)."""
    G, Kg, _ = w_rows.shape
    K = G * Kg
    out = np.empty((xp.shape[0], *out_hw, K), dtype=np.result_type(xp, w_rows))
    blocks = _blocks(xp.shape[0], out_hw[0], out_hw[1] * F[0] * F[1] * xp.shape[3] * xp.itemsize,
                     threads.get_num_threads())

    def run(share):
        total = None
        for block, cols in _lowered(xp, F, S, dilation, out_hw, G, share):
            out_rows = _rows(out, block)
            if G == 1:
                np.matmul(cols[0], w_rows[0].T, out=out_rows)           # the notes' np.dot(W_row, X_col)
            else:
                out_rows[...] = np.matmul(cols, w_rows.transpose(0, 2, 1)).transpose(1, 0, 2).reshape(-1, K)
            if bias is not None:
                out_rows += bias                                         # while the block is in cache
            if on_block is not None:
                part = on_block(block, cols)
                total = part if total is None else np.add(total, part, out=total)
        return total

    totals = [t for t in threads.run_shares(run, blocks) if t is not None]
    return out, (sum(totals[1:], totals[0]) if totals else None)


def _pad_nchw(x: np.ndarray, P: tuple[int, int], spare: int = 0) -> np.ndarray:
    """x zero-padded, contiguous NCHW, with `spare` zeros allocated past its end."""
    N, C, H, W = x.shape
    shape = (N, C, H + 2 * P[0], W + 2 * P[1])
    xp = np.zeros(math.prod(shape) + spare, dtype=x.dtype)[:math.prod(shape)].reshape(shape)
    xp[:, :, P[0]:P[0] + H, P[1]:P[1] + W] = x
    return xp


# Channels-first blocks are smaller: their GEMM is skinny (K columns, D1*F*F deep), so it
# is only fast while X_col sits in the core's own L2 cache. Backward takes bigger ones:
# its dX adds cost one NumPy call per kernel offset and block.
CF_BLOCK_BYTES = 1 << 20
CF_BACKWARD_BYTES = 8 << 20


def _blocks_cf(xp, F, out_hw, budget=CF_BLOCK_BYTES):
    N, C = xp.shape[:2]
    return _blocks(N, out_hw[0], xp.shape[3] * C * F[0] * F[1] * xp.itemsize, threads.get_num_threads(),
                   min(budget, windows.BLOCK_BYTES))


def _shifted(xp, F, dilation, block, run):
    """(D1, Fh, Fw, n, run) view of padded NCHW xp. At stride 1 every output row is a
    padded input row shifted by the kernel offset, so offset (i, j) of channel c sees
    output rows h0:h1 of an image as one contiguous run starting at (c, h0 + i, j). A run
    of (h1 - h0) * Wp numbers also covers Wp - W2 cells past each output row's end, whose
    results are thrown away, and so reads (Fw-1)*Dw numbers past the image: xp must start
    its base array, which _pad_nchw allocates with those spare numbers (NumPy checks the
    view fits). Built directly, not with as_strided: it runs once per block, often."""
    (Fh, Fw), (Dh, Dw) = F, dilation
    n0, n1, h0, h1 = block
    sN, sC, sH, sW = xp.strides
    return np.ndarray((xp.shape[1], Fh, Fw, n1 - n0, run), xp.dtype, buffer=xp if xp.base is None else xp.base,
                      offset=n0 * sN + h0 * sH, strides=(sC, sH * Dh, sW * Dw, sN, sW))


def _lowered_cf(xp, F, dilation, blocks, ones=False):
    """Stride-1 X_col of padded NCHW xp in the notes' orientation, (D1*Fh*Fw, rows), for
    the given blocks; rows are (image, output row, padded column): Wp per output row.
    ones=True appends a row of ones (the bias as one more column of W_row). The loop is
    lean on purpose: Python between the copies holds the GIL that other threads wait on."""
    C, Wp = xp.shape[1], xp.shape[3]
    depth = C * F[0] * F[1]
    buffer = _block_buffer(blocks, Wp * (depth + ones) * xp.itemsize, xp.dtype)
    shape = None
    for block in blocks:
        n, run = block[1] - block[0], (block[3] - block[2]) * Wp
        if (n, run) != shape:                 # blocks come in at most two sizes
            shape = (n, run)
            cols = buffer[:(depth + ones) * n * run].reshape(depth + ones, n * run)
            lowered = cols[:depth].reshape(C, F[0], F[1], n, run)
            if ones:
                cols[depth] = 1
        np.copyto(lowered, _shifted(xp, F, dilation, block, run))
        yield block, cols


def _convolve_cf(xp, weight, bias, dilation, out_hw):
    """Stride-1 CONV of padded NCHW xp (with (Fw-1)*Dw spare numbers after it): a view
    (N, H2, W2, K) of an (N, H2, Wp, K) result, X_col^T W_row^T per block straight into
    place, channels-last like every other CONV's output."""
    N, K, Wp = xp.shape[0], weight.shape[0], xp.shape[3]
    w_rows = weight.reshape(K, -1)
    if bias is not None:
        w_rows = np.concatenate([w_rows, bias[:, None]], axis=1)
    out = np.empty((N, out_hw[0], Wp, K), dtype=np.result_type(xp, weight))
    w_cols = w_rows.T

    def run(share):
        for (n0, n1, h0, h1), cols in _lowered_cf(xp, weight.shape[2:], dilation, share, bias is not None):
            np.matmul(cols.T, w_cols, out=out[n0:n1, h0:h1].reshape(-1, K))

    threads.run_shares(run, _blocks_cf(xp, weight.shape[2:], out_hw))
    return out[:, :, :out_hw[1]]


def _padded_input(x: np.ndarray, P: tuple[int, int]) -> np.ndarray:
    """x as a contiguous, zero-padded NHWC array, in one copy (none when x is a CONV's
    output and P = 0)."""
    return pad_nhwc(nhwc(x), P) if P != (0, 0) else contiguous_nhwc(x)


def _rows(a: np.ndarray, block) -> np.ndarray:
    """The (rows, depth) matrix of a block of an NHWC array (a view when a is contiguous;
    a cache-sized copy of a block of the unpadded part of a padded input)."""
    n0, n1, h0, h1 = block
    return a[n0:n1, h0:h1].reshape(-1, a.shape[3])


def _check_chw(layer: Layer, in_shape, channels: int | None):
    """Validate a per-sample (C, H, W) shape for output_shape."""
    if len(in_shape) != 3:
        raise ShapeError(f"{layer!r}: expected a (C, H, W) input volume, got {tuple(in_shape)}")
    if channels is not None and in_shape[0] != channels:
        raise ShapeError(f"{layer!r}: expected {channels} input channels (depth D1), got {in_shape[0]}")
    return tuple(in_shape)
