"""CONV lowered by im2col on channels-last (NHWC) input, in cache-sized blocks.

The notes' recipe, block by block: im2col stretches the receptive fields of a block of
whole images (or a band of output rows of one big image) into rows of X_col, one GEMM
multiplies them by W_row, and the result lands in its place in the output. X_col for a
whole batch is F*F times the input (231 MB for 32 images of 56x56x64 with F=3); a block
of at most ``engine(block_bytes=...)`` (8 MB; ``narrow_block_bytes``, 3 MB, for a GEMM at
most ``narrow_width`` = 32 columns wide) is written and read while it is in cache,
and the workspace no longer grows with N. ``benchmarks/lowering.py`` measures the
difference. Blocks are shared between the engine's threads.

Backward: dW = dY^T X_col, block by block. dX at stride 1 is the notes' "convolution with
spatially flipped filters" of dY (this same forward, whose lowered dY also gives dW),
unless K >= 2 D1 or the CONV is small (``Blocked.flips``); otherwise dX_col = dY W_row,
scattered back by col2im, but for strided CONVs of image-like inputs the flipped
convolution of S x S cells (space_to_depth).
"""

from __future__ import annotations

import itertools
from typing import Callable, Iterator

import numpy as np

from ..activation import relu_into
from ..geometry import Pair, Window
from ..im2col import Block, block_input, block_rows, col2im, im2col, row_blocks
from ..layout import nchw, nhwc, pad_nhwc, padded_nhwc
from ..runtime import folded, runtime
from . import Cost, compiled, register, space_to_depth


def blocks(N: int, H2: int, row_bytes: int, workers: int = 1, budget: int | None = None,
           width: int = 64) -> list[Block]:
    """Cache-sized blocks of output rows (at most budget bytes of X_col each, the engine's
    block_bytes by default), as many per worker when the layer is big enough to share:
    when its GEMM does as much work as min_share_bytes of X_col multiplied into `width`
    columns (64: the narrow X_col of a dX pass feeds a wide GEMM)."""
    total = N * H2 * row_bytes
    workers = max(1, min(workers, sharers(total, width)))
    count = workers * -(-total // (workers * (budget or block_budget(width))))
    return list(row_blocks(N, H2, row_bytes, max(row_bytes, -(-total // count)), workers))


def block_budget(width: int) -> int:
    """Bytes of X_col per block for a GEMM `width` columns wide: block_bytes, but
    narrow_block_bytes for at most narrow_width columns (the CIFAR-10 net's 32-channel
    layers), whose GEMMs do too little arithmetic per byte of X_col to hide one read back
    from beyond L2 (measured: docs/bench.md, tenth session)."""
    options = runtime.options
    return options.narrow_block_bytes if width <= options.narrow_width else options.block_bytes


def sharers(x_col_bytes: int, width: int) -> int:
    """How many threads a GEMM of x_col_bytes of X_col into `width` columns is worth: one
    per min_share_bytes of X_col times 64 columns (a hand-off between threads costs about
    100 us here; smaller GEMMs finish sooner on the thread that lowered them)."""
    return x_col_bytes * width // (64 * runtime.options.min_share_bytes)


def largest_block(n: int, rows: int, row_bytes: int, lowered_row_bytes: int | None = None,
                  width: int = 64) -> int:
    """Bytes of the largest block of `rows` output rows per image (cut by the size of
    their X_col rows, lowered_row_bytes, for a GEMM `width` columns wide), at row_bytes
    per row: the memory model's."""
    # blocks() with one worker, without listing them: row_blocks' first block is its
    # largest, so the estimate takes constant time whatever the image size
    lowered = lowered_row_bytes or row_bytes
    total = n * rows * lowered
    count = -(-total // block_budget(width))
    n0, n1, h0, h1 = next(row_blocks(n, rows, lowered, max(lowered, -(-total // count))))
    return (n1 - n0) * (h1 - h0) * row_bytes


def weight_rows(weight: np.ndarray, groups: int) -> np.ndarray:
    """The notes' W_row, per group: (G, K/G, Fh*Fw*D1/G) in im2col's column order."""
    K = weight.shape[0]
    return weight.transpose(0, 2, 3, 1).reshape(groups, K // groups, -1)


def flipped_rows(weight: np.ndarray, groups: int) -> np.ndarray:
    """Filters of the transposed convolution as rows: (G, D1/G, Fh*Fw*K/G), spatially
    flipped, depth and filter axes swapped. A view of a (G, Fh*Fw*K/G, D1/G) array, which
    the GEMM reads untransposed and which is built by copying runs of D1/G numbers (the
    filters live channels-last): an element-by-element transpose is 2x slower (9 MB of
    ResNet's 512->512 filters: 10.5 -> 6 ms)."""
    K, Cg, Fh, Fw = weight.shape
    taps = weight.transpose(0, 2, 3, 1).reshape(groups, K // groups, Fh, Fw, Cg)[:, :, ::-1, ::-1, :]
    cols = np.ascontiguousarray(taps.transpose(0, 2, 3, 1, 4))        # (G, Fh, Fw, K/G, D1/G)
    return cols.reshape(groups, Fh * Fw * (K // groups), Cg).transpose(0, 2, 1)


def lowered(xp: np.ndarray, F: Pair, S: Pair, dilation: Pair, out: Pair, groups: int,
            cut: list[Block]) -> Iterator[tuple[Block, np.ndarray]]:
    """(block, X_col of the block) for the given blocks of output rows, each written into
    this thread's workspace."""
    row_bytes = out[1] * F[0] * F[1] * xp.shape[3] * xp.itemsize
    rows = max(((n1 - n0) * (h1 - h0) for n0, n1, h0, h1 in cut), default=0)
    buffer = runtime.workspace(rows * row_bytes // xp.itemsize, xp.dtype)
    for block in cut:
        n0, n1, h0, h1 = block
        yield block, im2col(block_input(xp, block, F[0], S[0], dilation[0]), F, S, (h1 - h0, out[1]),
                            dilation, groups, buffer)


def convolve(xp: np.ndarray, w_rows: np.ndarray, bias: np.ndarray | None, F: Pair, S: Pair,
             dilation: Pair, out_hw: Pair,
             on_block: Callable[[Block, np.ndarray, slice], np.ndarray] | None = None,
             scale: np.ndarray | None = None, relu: bool = False,
             add: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """CONV of padded NHWC xp with filters as rows (G, K/G, Fh*Fw*D1/G): (N, H2, W2, K),
    each channel times scale before the bias, plus add (contiguous, the output's shape),
    and max(0, .) of it with relu=True.

    on_block(block, X_col, channels) sees each lowered block while it is in cache and
    returns an array (G, channels, ...) for those output channels (all of them, slice(None),
    when threads share blocks of rows); the second result is their sum over blocks, joined
    along the channels (None without on_block)."""
    G, Kg, _ = w_rows.shape
    K = G * Kg
    N, (H2, W2) = xp.shape[0], out_hw
    out = np.empty((N, H2, W2, K), dtype=np.result_type(xp, w_rows))
    row_bytes = W2 * F[0] * F[1] * xp.shape[3] * xp.itemsize
    if G == 1 and small(N, H2, W2, row_bytes, K):
        return by_channels(xp, w_rows[0], bias, F, S, dilation, out, on_block, scale, relu, add)
    cut = blocks(N, H2, row_bytes, runtime.options.threads, width=K)

    def run(block: Block) -> np.ndarray:
        (_, X_col), = lowered(xp, F, S, dilation, out_hw, G, [block])
        out_rows = block_rows(out, block)
        if G == 1:
            np.matmul(X_col[0], w_rows[0].T, out=out_rows)          # the notes' np.dot(W_row, X_col)
        else:
            out_rows[...] = np.matmul(X_col, w_rows.transpose(0, 2, 1)).transpose(1, 0, 2).reshape(-1, K)
        epilogue(out_rows, slice(None), scale, bias, relu,           # while the block is in cache
                 add=None if add is None else block_rows(add, block))
        return X_col

    if on_block is None:
        runtime.run_blocks(run, cut)
        return out, None
    seen = on_block

    def run_and_see(block: Block) -> np.ndarray:
        return seen(block, run(block), slice(None))

    total, = runtime.run_blocks(run_and_see, cut, fold=add_into)
    return out, total


def add_into(total: np.ndarray, part: np.ndarray) -> np.ndarray:
    """total += part (run_blocks' fold of per-block sums, in block order)."""
    return np.add(total, part, out=total)


def bias_grad(d: np.ndarray) -> np.ndarray:
    """db = dY (N, H, W, K) summed over images and pixels: ones times dY's rows, a GEMV
    (10x faster than NumPy's sum over the outer axes, 0.1 against 1.1 ms for 64x32x32x32,
    and closer to the exact sum: BLAS adds in blocks). dY may live NHWC or NCHW."""
    K = d.shape[-1]
    if d.flags.c_contiguous:
        rows = d.reshape(-1, K)
        return np.ones(rows.shape[0], d.dtype) @ rows
    channels_first = nchw(d)
    if channels_first.flags.c_contiguous:
        planes = channels_first.reshape(d.shape[0], K, -1)
        return (planes @ np.ones(planes.shape[2], d.dtype)).sum(axis=0)
    return d.sum(axis=(0, 1, 2))


def epilogue(target: np.ndarray, channels: slice, scale: np.ndarray | None, bias: np.ndarray | None,
             relu: bool, channel_axis: int = -1, add: np.ndarray | None = None) -> None:
    """target (..., channels) times scale, plus bias, plus add (a residual block's shortcut,
    target's shape), max(0, .): per output channel, the last axis (or, channel_axis=1, the
    middle one of (images, channels, positions); no add there). In one pass by the
    compiled loops where they run, else NumPy's passes: the same numbers."""
    if scale is None and bias is None and not relu and add is None:
        return
    loops = compiled.loops()
    if loops is not None:
        n = target.shape[channel_axis]
        factor = np.ones(n, target.dtype) if scale is None else scale[channels].astype(target.dtype, copy=False)
        shift = np.zeros(n, target.dtype) if bias is None else bias[channels].astype(target.dtype, copy=False)
        if channel_axis == 1:
            loops.scale_shift_relu_rows(target, factor, shift, relu)
            return
        # the loops take (A, B, K): a block of rows as (1, rows, K), a slab of images one by one
        for part, extra in zip(slabs(target), slabs(add) if add is not None else itertools.repeat(None)):
            if extra is None:
                loops.scale_shift_relu(part, factor, shift, relu)
            else:
                loops.scale_shift_add_relu(part, factor, shift, extra, relu)
        return
    along = (slice(None), None) if channel_axis == 1 else ()
    if scale is not None:
        target *= scale[channels][along]
    if bias is not None:
        target += bias[channels][along]
    if add is not None:
        target += add
    if relu:
        relu_into(target, target)


def slabs(a: np.ndarray) -> list[np.ndarray]:
    """a as 3-D pieces (A, B, K): a block of rows as (1, rows, K), a slab of images one by one."""
    return [a[None]] if a.ndim == 2 else [a] if a.ndim == 3 else list(a)


def small(N: int, H2: int, W2: int, row_bytes: int, K: int) -> bool:
    """Is this CONV one block whose GEMM the threads share by output channels (by_channels)?
    Yes with fewer output positions than engine(channel_share_rows=...), an X_col within one
    block's budget, at least 64 output channels per thread and work for more than one
    thread (sharers): cut into rows, each thread
    would get few rows and repack all of W_row; narrower shares make skinny GEMMs."""
    options = runtime.options
    x_col = N * H2 * row_bytes
    return (options.threads > 1 and K >= 64 * options.threads and N * H2 * W2 < options.channel_share_rows
            and x_col <= options.block_bytes and sharers(x_col, K) > 1)


def by_channels(xp: np.ndarray, w_row: np.ndarray, bias: np.ndarray | None, F: Pair, S: Pair, dilation: Pair,
                out: np.ndarray, on_block: Callable[[Block, np.ndarray, slice], np.ndarray] | None,
                scale: np.ndarray | None, relu: bool,
                add: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """convolve() of a small CONV: the calling thread lowers all of X_col at once, then each
    thread multiplies it by its share of W_row's rows (output channels) into its columns
    of out, with the epilogue and on_block for those channels."""
    N, H2, W2, K = out.shape
    block = (0, N, 0, H2)
    (_, X_col), = lowered(xp, F, S, dilation, (H2, W2), 1, [block])
    out_rows = out.reshape(-1, K)

    def run(share: list[slice]) -> list[np.ndarray]:
        parts = []
        for k in share:
            target = out_rows[:, k]
            np.matmul(X_col[0], w_row[k].T, out=target)
            epilogue(target, k, scale, bias, relu, add=None if add is None else add.reshape(-1, K)[:, k])
            if on_block is not None:
                parts.append(on_block(block, X_col, k))
        return parts

    parts = [part for share in runtime.run_shares(run, channel_shares(K, runtime.options.threads)) for part in share]
    return out, (np.concatenate(parts, axis=1) if parts else None)


def channel_shares(K: int, parts: int) -> list[slice]:
    """K output channels cut into `parts` ranges, each a multiple of 16 channels but the last."""
    edges = [min(K, 16 * round(K * i / parts / 16)) for i in range(parts)] + [K]
    return [slice(a, b) for a, b in zip(edges, edges[1:]) if b > a]


class Blocked:
    """im2col NHWC in cache-sized blocks: any stride, padding, dilation, groups."""

    name = "blocked"

    def why_not(self, w: Window) -> str | None:
        return None

    def pad(self, x: np.ndarray, w: Window) -> np.ndarray:
        return padded_nhwc(x, w.P)

    def fuses_add(self, w: Window) -> bool:
        return True

    def forward(self, xp: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, w: Window,
                scale: np.ndarray | None = None, relu: bool = False, add: np.ndarray | None = None) -> np.ndarray:
        out, _ = convolve(xp, weight_rows(weight, w.groups), bias, w.F, w.S, w.dilation, w.out,
                          scale=scale, relu=relu, add=None if add is None else nhwc(add))
        return nchw(out)

    def backward(self, xp: np.ndarray, dout: np.ndarray, weight: np.ndarray, has_bias: bool, w: Window,
                 input_grad: bool) -> tuple[np.ndarray | None, np.ndarray, np.ndarray | None]:
        d = nhwc(dout)                                                   # (N, H2, W2, K), a view
        db = bias_grad(d) if has_bias else None
        (Ph, Pw), full = w.P, w.full_padding
        dx: np.ndarray | None
        if input_grad and self.flips(w, d.shape[0], xp.itemsize):
            d_padded = pad_nhwc(d, full) if max(full) > 0 else np.ascontiguousarray(d)   # dY's one copy
            dx, dw_rows = self._flipped(xp[:, Ph:Ph + w.H, Pw:Pw + w.W], d_padded, weight, w)
            dx = nchw(dx)
        elif input_grad and space_to_depth.pays(w):      # a strided CONV of an image: dX by cells
            dx = space_to_depth.input_gradient(d, weight, w)
            _, dw_rows = self._col2im(xp, np.ascontiguousarray(d), weight, w, False)
        else:
            dx, dw_rows = self._col2im(xp, np.ascontiguousarray(d), weight, w, input_grad)
            dx = None if dx is None else nchw(dx)
        K, _, Fh, Fw = weight.shape
        dweight = dw_rows.reshape(K, Fh, Fw, -1).transpose(0, 3, 1, 2)
        return dx, dweight, db

    def flips(self, w: Window, n: int, itemsize: int) -> bool:
        """Is dX the flipped convolution of dY (else col2im)? At stride 1, unless dY's rows
        lowered (Fh*Fw*K numbers) are at least twice X_col's (Fh*Fw*D1: AlexNet's 64->192 5x5
        layer, GoogLeNet's widening ones) or the CONV is a small one whose GEMMs the threads
        share by channels (512 channels at 7x7): there dX_col = dY W_row and its scatter
        cost less (measured: docs/bench.md, ninth session)."""
        if w.S != (1, 1) or min(w.full_padding) < 0:
            return False
        if w.F == (1, 1):
            return True
        row_bytes = w.out[1] * w.F[0] * w.F[1] * w.C * itemsize
        if w.out[0] * row_bytes > runtime.options.block_bytes:
            return True       # col2im's blocks would be bands of an image, which threads cannot share
        return w.K < 2 * w.C and not small(n, *w.out, row_bytes, w.K)

    def _flipped(self, x: np.ndarray, d_padded: np.ndarray, weight: np.ndarray,
                 w: Window) -> tuple[np.ndarray, np.ndarray]:
        """Stride 1: dX = dY (fully padded) convolved with the flipped filters, whose
        lowered dY also gives dW[k, c, i, j] = sum X[c] * dY_col[(F-1-i, F-1-j, k)]."""
        G, (Fh, Fw), C, K = w.groups, w.F, w.C, w.K

        def dw_of_block(block: Block, d_cols: np.ndarray, channels: slice) -> np.ndarray:
            x_rows = block_rows(x, block).reshape(-1, G, C // G).transpose(1, 0, 2)   # (G, rows, D1/G)
            # (G, channels, Fh*Fw*K/G) as a view of (G, Fh*Fw*K/G, channels): unflipping it
            # into W_row's order below then copies runs of D1/G numbers
            return np.matmul(d_cols.transpose(0, 2, 1), x_rows[:, :, channels]).transpose(0, 2, 1)

        dx, dw_flipped = convolve(d_padded, flipped_rows(weight, G), None, w.F, (1, 1), w.dilation,
                                  (w.H, w.W), on_block=dw_of_block)
        assert dw_flipped is not None
        dw = dw_flipped.reshape(G, C // G, Fh, Fw, K // G)[:, :, ::-1, ::-1, :]      # unflip
        return dx, dw.transpose(0, 4, 2, 3, 1).reshape(K, -1)          # as W_row: (K, Fh*Fw*D1/G)

    def _col2im(self, xp: np.ndarray, d: np.ndarray, weight: np.ndarray, w: Window,
                input_grad: bool) -> tuple[np.ndarray | None, np.ndarray]:
        """Any stride: dW = dY^T X_col, dX_col = dY W_row scattered back by col2im. Threads
        share the blocks when each holds whole images (bands of one image overlap in dX)."""
        G, K, F, S, D, (Ph, Pw) = w.groups, w.K, w.F, w.S, w.dilation, w.P
        w_rows = weight_rows(weight, G)
        dxp: np.ndarray | None = np.zeros(xp.shape, dtype=d.dtype) if input_grad else None
        row_bytes = d.shape[2] * F[0] * F[1] * xp.shape[3] * xp.itemsize
        N, H2, W2 = d.shape[:3]
        if G == 1 and small(N, H2, W2, row_bytes, K):
            dw_rows = self._col2im_by_channels(xp, d, w_rows[0], w, dxp)
            return (None if dxp is None else dxp[:, Ph:Ph + w.H, Pw:Pw + w.W, :]), dw_rows
        cut = blocks(xp.shape[0], d.shape[1], row_bytes, runtime.options.threads, width=K)

        def run(block: Block) -> np.ndarray:
            (_, X_col), = lowered(xp, F, S, D, d.shape[1:3], G, [block])
            d_rows = block_rows(d, block).reshape(-1, G, K // G).transpose(1, 0, 2)   # (G, rows, K/G)
            if dxp is not None:
                col2im(np.matmul(d_rows, w_rows), block_input(dxp, block, F[0], S[0], D[0]), F, S,
                       (block[3] - block[2], d.shape[2]), D)
            return np.matmul(d_rows.transpose(0, 2, 1), X_col)

        whole_images = all(h0 == 0 and h1 == d.shape[1] for _, _, h0, h1 in cut)
        dw_rows, = (runtime.run_blocks(run, cut, fold=add_into) if whole_images or dxp is None
                    else folded(add_into, [run(block) for block in cut]))
        dx = None if dxp is None else dxp[:, Ph:Ph + w.H, Pw:Pw + w.W, :]
        return dx, dw_rows.reshape(K, -1)

    def _col2im_by_channels(self, xp: np.ndarray, d: np.ndarray, w_row: np.ndarray, w: Window,
                            dxp: np.ndarray | None) -> np.ndarray:
        """_col2im of a small CONV (few output positions, see small()): X_col lowered once, the
        threads share dW = dY^T X_col by its rows (output channels) and dX_col = dY W_row by
        its columns. Cut into positions instead, each thread would write a whole partial dW
        (8 MB for ResNet-50's 1024->2048 shortcut) from a GEMM only a few rows deep."""
        K, threads = w.K, runtime.options.threads
        N, H2, W2 = d.shape[:3]
        (_, X_col), = lowered(xp, w.F, w.S, w.dilation, (H2, W2), 1, [(0, N, 0, H2)])
        d_rows = d.reshape(-1, K)
        dw_rows = np.empty(w_row.shape, dtype=d.dtype)
        dx_col = None if dxp is None else np.empty(X_col[0].shape, dtype=d.dtype)

        def run(share: list[tuple[slice, slice]]) -> None:
            for k, cols in share:
                np.matmul(d_rows[:, k].T, X_col[0], out=dw_rows[k])
                if dx_col is not None:
                    np.matmul(d_rows, w_row[:, cols], out=dx_col[:, cols])

        rows_of_dw, columns = channel_shares(K, threads), channel_shares(X_col.shape[2], threads)
        empty = slice(0, 0)
        runtime.run_shares(run, list(itertools.zip_longest(rows_of_dw, columns, fillvalue=empty)))
        if dxp is not None and dx_col is not None:
            col2im(dx_col[None], dxp, w.F, w.S, (H2, W2), w.dilation)
        return dw_rows

    def memory(self, w: Window, n: int, e: int) -> Cost:
        """The padded input is kept; X_col blocks go to the workspace (counted there);
        backward pads dY for the flipped convolution (stride 1) or makes a padded dX
        for col2im. dY arrives channels-last from the layer after, so making it a
        contiguous NHWC array is free."""
        (Fh, Fw), (Ph, Pw), K, (H2, W2) = w.F, w.P, w.K, w.out
        a_in, a_out = n * w.C * w.H * w.W * e, n * K * H2 * W2 * e
        xp = n * (w.H + 2 * Ph) * (w.W + 2 * Pw) * w.C * e
        one_by_one = w.F == (1, 1) and w.S == (1, 1)
        block = 0 if one_by_one else largest_block(n, H2, W2 * Fh * Fw * w.C * e, width=K)
        wrows = K * (w.C // w.groups) * Fh * Fw * e      # W_row: the filters reshaped into rows, a copy
        # NumPy copies a strided window view through a buffer of 8192 items (NPY_BUFSIZE)
        copy_buffer = 0 if one_by_one else 8192 * e
        fwd = xp + a_out * (2 if w.groups > 1 else 1) + wrows + copy_buffer
        full = w.full_padding
        if self.flips(w, n, e):
            dpad = n * (H2 + 2 * full[0]) * (W2 + 2 * full[1]) * K * e
            x_rows = 0 if one_by_one else largest_block(n, w.H, w.W * w.C * e, w.W * Fh * Fw * K * e, w.C)
            back = dpad + x_rows + a_in
        elif space_to_depth.pays(w):     # dX of the cells and dX in place (dX_col blocks: workspace)
            s = space_to_depth.stacked(w)
            back = 2 * n * s.H * s.W * s.C * e
        else:
            back = xp + block
        return xp, fwd, a_out + back + copy_buffer

    def workspace(self, w: Window, n: int, e: int) -> int:
        if w.F == (1, 1) and w.S == (1, 1):
            return 0
        (Fh, Fw), (H2, W2) = w.F, w.out
        need = largest_block(n, H2, W2 * Fh * Fw * w.C * e, width=w.K)
        if self.flips(w, n, e):
            need = max(need, largest_block(n, w.H, w.W * Fh * Fw * w.K * e, width=w.C))
        elif space_to_depth.pays(w):     # a block of the cells' dX_col
            step = min(n, space_to_depth.images_per_block(w, e))
            need = max(need, space_to_depth.cols_bytes(w, step, e))
        return need


register("conv", Blocked())
