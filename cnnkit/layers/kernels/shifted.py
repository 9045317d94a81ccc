"""CONV of image-like inputs (1-4 channels) at stride 1, lowered channels-first by shifted rows.

An NHWC receptive field of a 3-channel image is runs of 3 numbers: a slow copy. At stride 1
kernel offset (i, j) sees the padded NCHW image shifted by i rows and j columns, so each
row of X_col (the notes' orientation: one row per (channel, offset)) is ONE contiguous
copy per image. The copy covers the 2P columns between output rows too, whose results the
output view skips; the bias rides in the GEMM as one more column of W_row. The output is
written channels-last like every CONV's. Blocks are small (the GEMM is skinny, K columns:
fast only while X_col sits in the core's own L2) and shared between threads.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from ..activation import relu_into
from ..geometry import Pair, Window
from ..im2col import Block, block_rows
from ..layout import nchw, nhwc, pad_nchw
from ..runtime import folded, runtime
from . import Cost, compiled, register
from .blocked import add_into, blocks, largest_block


def shifted(xp: np.ndarray, F: Pair, dilation: Pair, block: Block, run: int) -> np.ndarray:
    """(D1, Fh, Fw, n, run) view of padded NCHW xp: offset (i, j) of channel c sees output
    rows h0:h1 of an image as one contiguous run starting at (c, h0 + i, j). A run of
    (h1 - h0) * Wp numbers also covers Wp - W2 cells past each output row's end, whose
    results are thrown away, and so reads (Fw-1)*Dw numbers past the image: xp must start
    its base array, which pad() allocates with those spare numbers (NumPy checks the view
    fits). Built directly, not with as_strided: it runs once per block, often."""
    (Fh, Fw), (Dh, Dw) = F, dilation
    n0, n1, h0, h1 = block
    sN, sC, sH, sW = xp.strides
    return np.ndarray((xp.shape[1], Fh, Fw, n1 - n0, run), xp.dtype, buffer=xp if xp.base is None else xp.base,
                      offset=n0 * sN + h0 * sH, strides=(sC, sH * Dh, sW * Dw, sN, sW))


def lowered(xp: np.ndarray, F: Pair, dilation: Pair, cut: list[Block],
            ones: bool = False) -> Iterator[tuple[Block, np.ndarray]]:
    """Stride-1 X_col of padded NCHW xp in the notes' orientation, (D1*Fh*Fw, rows), for
    the given blocks; rows are (image, output row, padded column): Wp per output row.
    ones=True appends a row of ones (the bias as one more column of W_row). The loop is
    lean on purpose: Python between the copies holds the GIL that other threads wait on."""
    C, Wp = xp.shape[1], xp.shape[3]
    depth = C * F[0] * F[1]
    rows = max(((n1 - n0) * (h1 - h0) for n0, n1, h0, h1 in cut), default=0)
    buffer = runtime.workspace(rows * Wp * (depth + ones), xp.dtype)
    shape = None
    for block in cut:
        n, run = block[1] - block[0], (block[3] - block[2]) * Wp
        if (n, run) != shape:                 # blocks come in at most two sizes
            shape = (n, run)
            X_col = buffer[:(depth + ones) * n * run].reshape(depth + ones, n * run)
            cells = X_col[:depth].reshape(C, F[0], F[1], n, run)
            if ones:
                X_col[depth] = 1
        np.copyto(cells, shifted(xp, F, dilation, block, run))
        yield block, X_col


def shifted_blocks(xp: np.ndarray, F: Pair, out: Pair, budget: int) -> list[Block]:
    N, C = xp.shape[:2]
    return blocks(N, out[0], xp.shape[3] * C * F[0] * F[1] * xp.itemsize, runtime.options.threads,
                  min(budget, runtime.options.block_bytes))


class Shifted:
    """Channels-first shifted rows: 1-4 input channels, stride 1, no groups."""

    name = "shifted"

    def why_not(self, w: Window) -> str | None:
        if w.C > 4 or w.groups != 1 or w.S != (1, 1):
            return f"it needs 1-4 input channels, stride 1 and no groups (got D1={w.C}, S={w.S}, groups={w.groups})"
        return None

    def pad(self, x: np.ndarray, w: Window) -> np.ndarray:
        return pad_nchw(x, w.P, spare=(w.F[1] - 1) * w.dilation[1])

    def fuses_add(self, w: Window) -> bool:
        return False

    def forward(self, xp: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, w: Window,
                scale: np.ndarray | None = None, relu: bool = False) -> np.ndarray:
        """X_col^T W_row^T per block straight into place: a view (N, K, H2, W2) of an
        (N, H2, Wp, K) result."""
        N, K, Wp = xp.shape[0], weight.shape[0], xp.shape[3]
        w_rows = weight.reshape(K, -1)
        if scale is not None:               # 1-4 channels: the filters are tiny, so scale them
            w_rows = w_rows * scale[:, None]
        if bias is not None:
            w_rows = np.concatenate([w_rows, bias[:, None]], axis=1)
        out = np.empty((N, w.out[0], Wp, K), dtype=np.result_type(xp, weight))
        w_cols = w_rows.T

        def run(block: Block) -> None:
            (_, X_col), = lowered(xp, w.F, w.dilation, [block], bias is not None)
            n0, n1, h0, h1 = block
            rows = out[n0:n1, h0:h1].reshape(-1, K)
            np.matmul(X_col.T, w_cols, out=rows)
            if relu:
                relu_into(rows, rows)

        runtime.run_blocks(run, shifted_blocks(xp, w.F, w.out, runtime.options.shifted_block_bytes))
        return nchw(out[:, :, :w.out[1]])

    def backward(self, xp: np.ndarray, dout: np.ndarray, weight: np.ndarray, has_bias: bool, w: Window,
                 input_grad: bool) -> tuple[np.ndarray | None, np.ndarray, np.ndarray | None]:
        """Block by block in the forward's shifted rows: [dW | db]^T = [X_col; 1] dY, and
        dX_col = W^T dY added back one kernel offset at a time."""
        N, K, (Ph, Pw) = xp.shape[0], weight.shape[0], w.P
        H2, W2 = w.out
        Wp = xp.shape[3]
        # dY in the forward's rows: zero in the Wp - W2 columns that X_col has past each row
        d = np.empty((N, H2, Wp, K), dtype=dout.dtype)
        d[:, :, W2:] = 0
        d[:, :, :W2] = nhwc(dout)
        w_rows = weight.reshape(K, -1)
        dxp = np.zeros(xp.shape, dtype=d.dtype) if input_grad else None
        # dX's adds: one NumPy call per kernel offset and block (so big blocks), or one
        # compiled call per block, whose blocks can then stay in cache as forward's do
        loops = compiled.loops()
        options = runtime.options
        budget = options.shifted_block_bytes if loops is not None else options.shifted_backward_bytes
        cut = shifted_blocks(xp, w.F, w.out, budget)

        def run(block: Block) -> np.ndarray:
            (_, X_col), = lowered(xp, w.F, w.dilation, [block], ones=has_bias)
            d_rows = block_rows(d, block)                                 # (rows, K), a view
            if dxp is not None:
                # Trimmed runs stay inside each image (the cells they skip get zeros).
                run_length = (block[3] - block[2] - 1) * Wp + W2
                target = shifted(dxp, w.F, w.dilation, block, run_length)        # (C, Fh, Fw, n, run)
                dcols = (w_rows.T @ d_rows.T).reshape(*target.shape[:4], -1)[..., :run_length]
                if loops is not None:
                    loops.add_shifted(target, dcols)
                else:
                    for offset in np.ndindex(target.shape[:3]):   # one add per channel and kernel offset
                        target[offset] += dcols[offset]
            return X_col @ d_rows

        # Bands of one image overlap in dX: share blocks between threads only when each
        # holds whole images (or when no dX is wanted).
        whole_images = all(h0 == 0 and h1 == H2 for _, _, h0, h1 in cut)
        dw, = (runtime.run_blocks(run, cut, fold=add_into) if whole_images or dxp is None
               else folded(add_into, [run(block) for block in cut]))
        db = dw[-1] if has_bias else None
        dweight = dw[:w_rows.shape[1]].T.reshape(weight.shape)
        dx = None if dxp is None else dxp[:, :, Ph:Ph + w.H, Pw:Pw + w.W]
        return dx, dweight, db

    def memory(self, w: Window, n: int, e: int) -> Cost:
        """Keeps the padded NCHW input; the GEMM writes an (N, H2, Wp, K) result that the
        output views; backward pads dY the same way and adds dX_col blocks into dX."""
        (Fh, Fw), (Ph, Pw), K, (H2, W2) = w.F, w.P, w.K, w.out
        a_out = n * K * H2 * W2 * e
        xp = n * (w.H + 2 * Ph) * (w.W + 2 * Pw) * w.C * e
        Wp = w.W + 2 * Pw
        wide_out = n * H2 * Wp * K * e
        back_block = largest_block(n, H2, Wp * Fh * Fw * w.C * e)
        return xp, xp + wide_out, a_out + wide_out + xp + back_block

    def workspace(self, w: Window, n: int, e: int) -> int:
        Wp = w.W + 2 * w.P[1]
        return largest_block(n, w.out[0], Wp * w.F[0] * w.F[1] * w.C * e)


register("conv", Shifted())
