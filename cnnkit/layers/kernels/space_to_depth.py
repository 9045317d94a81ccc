"""dX of a strided CONV of image-like inputs, by col2im over S x S cells.

The dX of a stride-S CONV by col2im is F*F strided adds; for a 3-channel image (AlexNet's
11x11/4, ResNet's 7x7/2 stem, where a layer test or a saliency map asks for it) each adds
runs of 3 numbers, most of a backward pass. Cut the padded input into S x S cells and
stack each cell's pixels along depth (space to depth): the CONV is a stride-1 CONV of that
(Hp/S, Wp/S, S*S*D1) volume with filters of ceil(F/S) x ceil(F/S) cells (F padded to a
multiple of S with zero taps). Its dX_col = dY W_row is scattered back by col2im over
ceil(F/S)^2 cell offsets, each add now runs of S*S*D1 numbers (12 for the stem), and each
cell's depth goes back to its pixels. The zero taps cost (S*ceil(F/S)/F)^2 more
multiply-adds (1.19x for 11/4, 1.31x for 7/2). (The flipped-filter convolution of the
cells, the notes' other way to dX, was slower: its GEMM is only S*S*D1 = 12 columns wide;
measured: docs/bench.md, ninth session.) The forward stays direct: lowered by cells it
measured no faster (its volume is one more copy of the input).
"""

from __future__ import annotations

import numpy as np

from ..geometry import Pair, Window
from ..im2col import col2im
from ..layout import nchw
from ..runtime import runtime


def cells(w: Window) -> Pair:
    """The filter's size in S x S cells: ceil(F/S) along each axis."""
    return (-(-w.F[0] // w.S[0]), -(-w.F[1] // w.S[1]))


def stacked(w: Window) -> Window:
    """The stride-1 CONV of the space-to-depth volume that computes w."""
    (Sh, Sw), (Ch, Cw), (Ho, Wo) = w.S, cells(w), w.out
    return Window(w.C * Sh * Sw, Ho - 1 + Ch, Wo - 1 + Cw, (Ch, Cw), (1, 1), (0, 0), (1, 1), (Ho, Wo), K=w.K)


def extra_multiplies(w: Window) -> float:
    """Multiply-adds of the stacked CONV over the direct one (its zero taps)."""
    (Ch, Cw) = cells(w)
    return Ch * w.S[0] * Cw * w.S[1] / (w.F[0] * w.F[1])


def stack_filters(weight: np.ndarray, w: Window) -> np.ndarray:
    """(K, D1, Fh, Fw) filters -> (K, Sh*Sw*D1, ceil(Fh/Sh), ceil(Fw/Sw)) of the stacked
    CONV: tap (i, j) of cell depth (py, px, c) is the filter's (i*Sh + py, j*Sw + px, c)."""
    K, C, Fh, Fw = weight.shape
    (Sh, Sw), (Ch, Cw) = w.S, cells(w)
    padded = np.zeros((K, C, Ch * Sh, Cw * Sw), dtype=weight.dtype)
    padded[:, :, :Fh, :Fw] = weight
    taps = padded.reshape(K, C, Ch, Sh, Cw, Sw).transpose(0, 3, 5, 1, 2, 4)      # (K, Sh, Sw, C, Ch, Cw)
    return taps.reshape(K, Sh * Sw * C, Ch, Cw)


def pays(w: Window) -> bool:
    """Is dX by cells the way: an image-like input (1-4 channels) at a stride above 1, no
    groups, no dilation, and at most half again the multiply-adds of the direct CONV?"""
    return (w.C <= 4 and w.S != (1, 1) and w.groups == 1 and w.dilation == (1, 1)
            and extra_multiplies(w) <= 1.5)


def input_gradient(d: np.ndarray, weight: np.ndarray, w: Window) -> np.ndarray:
    """dX (an NCHW view of channels-last memory) of CONV w for NHWC dY = d: the stacked
    CONV's dX_col = dY W_row, scattered into the cells by col2im, block by block of whole
    images (shared between the threads: bands of one image would overlap), and each
    cell's depth put back on its S x S pixels."""
    from .blocked import weight_rows  # here: blocked imports this module

    s = stacked(w)
    w_row = weight_rows(stack_filters(weight, w), 1)[0]                    # (K, Ch*Cw*Sh*Sw*D1)
    N, Ho, Wo, K = d.shape
    dcells = np.zeros((N, s.H, s.W, s.C), dtype=np.result_type(d, w_row))
    step = images_per_block(w, d.itemsize)

    def run(n0: int) -> None:
        n1 = min(N, n0 + step)
        cols = runtime.workspace((n1 - n0) * Ho * Wo * w_row.shape[1], dcells.dtype)
        cols = cols[:(n1 - n0) * Ho * Wo * w_row.shape[1]].reshape(-1, w_row.shape[1])
        np.matmul(d[n0:n1].reshape(-1, K), w_row, out=cols)
        col2im(cols[None], dcells[n0:n1], s.F, (1, 1), (Ho, Wo))

    runtime.run_blocks(run, list(range(0, N, step)))
    return _unstack_input(dcells, w)


def images_per_block(w: Window, itemsize: int) -> int:
    """Whole images per block of dX_col, within the engine's block_bytes (at least one)."""
    return max(1, runtime.options.block_bytes // max(1, cols_bytes(w, 1, itemsize)))


def cols_bytes(w: Window, n: int, itemsize: int) -> int:
    """Bytes of the stacked CONV's dX_col for n images."""
    s = stacked(w)
    return n * w.out[0] * w.out[1] * s.F[0] * s.F[1] * s.C * itemsize


def _unstack_input(dcells: np.ndarray, w: Window) -> np.ndarray:
    """dX of the stacked (N, Hs, Ws, Sh*Sw*D1) volume -> dX of the NCHW input (a view of
    a channels-last array): each cell's depth goes back to its S x S pixels."""
    (Sh, Sw), (Ph, Pw) = w.S, w.P
    N, Hs, Ws, _ = dcells.shape
    padded = np.empty((N, Hs * Sh, Ws * Sw, w.C), dtype=dcells.dtype)
    padded.reshape(N, Hs, Sh, Ws, Sw, w.C)[...] = dcells.reshape(N, Hs, Ws, Sh, Sw, w.C).transpose(0, 1, 3, 2, 4, 5)
    if Hs * Sh >= Ph + w.H and Ws * Sw >= Pw + w.W:
        return nchw(padded[:, Ph:Ph + w.H, Pw:Pw + w.W])
    dx = np.zeros((N, w.H, w.W, w.C), dtype=dcells.dtype)   # rows no window reaches get no gradient
    h, v = min(w.H, Hs * Sh - Ph), min(w.W, Ws * Sw - Pw)
    dx[:, :h, :v] = padded[:, Ph:Ph + h, Pw:Pw + v]
    return nchw(dx)
