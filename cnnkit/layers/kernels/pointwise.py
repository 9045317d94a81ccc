"""1x1 CONV of an NCHW input, in the notes' own orientation: out_n = W_row X_n per image.

A 1x1 CONV at stride 1 without padding needs no im2col: the (D1, H*W) matrix of an NCHW
image is already its X_col, the notes' np.dot(W_row, X_col). Lowered channels-last like
every other CONV, a user's NCHW batch (the public layout) would first be transposed
whole, a copy as big as the input (25.7 MB for 256 channels of 28x28 at batch 32). So an
NCHW input, as a user passes it, is multiplied as it is, image by image, and the output
is NCHW too; inside a network activations live channels-last and blocked takes them.
"""

from __future__ import annotations

import numpy as np

from ..geometry import Window
from ..runtime import runtime
from . import Cost, register
from .blocked import channel_shares, epilogue


class Pointwise:
    """1x1 stride-1 unpadded CONV (no groups) as per-image GEMMs on NCHW memory."""

    name = "pointwise"

    def why_not(self, w: Window) -> str | None:
        if w.F != (1, 1) or w.S != (1, 1) or w.P != (0, 0) or w.groups != 1:
            return f"it needs a 1x1 CONV at stride 1, without padding or groups (got F={w.F}, S={w.S}, " \
                   f"P={w.P}, groups={w.groups})"
        return None

    def pad(self, x: np.ndarray, w: Window) -> np.ndarray:
        return np.ascontiguousarray(x)          # NCHW as it is (a copy only if it isn't)

    def fuses_add(self, w: Window) -> bool:
        return False

    def forward(self, xp: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, w: Window,
                scale: np.ndarray | None = None, relu: bool = False) -> np.ndarray:
        N, C, H, W = xp.shape
        K = weight.shape[0]
        x = xp.reshape(N, C, H * W)
        w_row = weight.reshape(K, C)
        out = np.empty((N, K, H * W), dtype=np.result_type(xp, weight))

        def images(share: range) -> None:            # a share of a range is a range
            block = slice(share.start, share.stop)
            np.matmul(w_row, x[block], out=out[block])
            epilogue(out[block], slice(None), scale, bias, relu, channel_axis=1)

        def channels(share: list[slice]) -> None:
            for k in share:
                np.matmul(w_row[k], x, out=out[:, k])
                epilogue(out[:, k], k, scale, bias, relu, channel_axis=1)

        if N >= runtime.options.threads:
            runtime.run_shares(images, range(N))
        else:                                        # fewer images than threads: share the filters
            runtime.run_shares(channels, channel_shares(K, runtime.options.threads))
        return out.reshape(N, K, H, W)

    def backward(self, xp: np.ndarray, dout: np.ndarray, weight: np.ndarray, has_bias: bool, w: Window,
                 input_grad: bool) -> tuple[np.ndarray | None, np.ndarray, np.ndarray | None]:
        """dW = sum_n dY_n X_n^T, db = sum of dY, dX_n = W_row^T dY_n (NCHW)."""
        N, C, H, W = xp.shape
        K = weight.shape[0]
        x = xp.reshape(N, C, H * W)
        d = np.ascontiguousarray(dout).reshape(N, K, H * W)
        w_row = weight.reshape(K, C)
        dx = np.empty((N, C, H * W), dtype=d.dtype) if input_grad else None

        def images(share: range) -> np.ndarray:
            block = slice(share.start, share.stop)
            if dx is not None:
                np.matmul(w_row.T, d[block], out=dx[block])
            return np.matmul(d[block], x[block].transpose(0, 2, 1)).sum(axis=0)   # this share's dW

        parts = runtime.run_shares(images, range(N))
        dweight = sum(parts[1:], parts[0]).reshape(weight.shape)
        db = d.sum(axis=(0, 2)) if has_bias else None
        return (None if dx is None else dx.reshape(N, C, H, W)), dweight, db

    def memory(self, w: Window, n: int, e: int) -> Cost:
        """Keeps the input itself (a copy only when it is not NCHW-contiguous); forward
        makes the output; backward dX, a contiguous dY and one dW per image."""
        a_in, a_out = n * w.C * w.H * w.W * e, n * w.K * w.out[0] * w.out[1] * e
        return a_in, a_out, a_in + a_out + n * w.K * w.C * e

    def workspace(self, w: Window, n: int, e: int) -> int:
        return 0


register("conv", Pointwise())
