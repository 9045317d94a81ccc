"""im2col and col2im (notes: "Implementation as Matrix Multiplication").

im2col stretches every receptive field of a padded NHWC input into a row of the notes'
X_col (cnnkit holds X_col transposed: one row per receptive field, so a block of rows is
contiguous); col2im is its adjoint, adding rows back into the input they came from.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
from numpy.lib.stride_tricks import as_strided

Pair = tuple[int, int]
Block = tuple[int, int, int, int]   # (n0, n1, h0, h1): images n0:n1, output rows h0:h1


def window_view(xp: np.ndarray, F: Pair, S: Pair, out: Pair, dilation: Pair = (1, 1)) -> np.ndarray:
    """Read-only view (N, Ho, Wo, Fh, Fw, C) of every receptive field of padded NHWC xp."""
    N, _, _, C = xp.shape
    sN, sH, sW, sC = xp.strides
    return as_strided(
        xp,
        shape=(N, out[0], out[1], F[0], F[1], C),
        strides=(sN, sH * S[0], sW * S[1], sH * dilation[0], sW * dilation[1], sC),
        writeable=False,
    )


def window_slice(offset: Pair, S: Pair, out: Pair, dilation: Pair = (1, 1)) -> tuple[slice, ...]:
    """Index (NHWC) of the inputs that kernel offset (i, j) sees at every output position."""
    i, j = offset
    r0, c0 = i * dilation[0], j * dilation[1]
    return (slice(None), slice(r0, r0 + S[0] * (out[0] - 1) + 1, S[0]),
            slice(c0, c0 + S[1] * (out[1] - 1) + 1, S[1]), slice(None))


def im2col(xp: np.ndarray, F: Pair, S: Pair, out: Pair, dilation: Pair = (1, 1), groups: int = 1,
           buffer: np.ndarray | None = None) -> np.ndarray:
    """The notes' X_col of padded NHWC xp, one row per receptive field:
    (groups, N*Ho*Wo, Fh*Fw*D/groups). Row order (n, y, x), column order (fy, fx, d).
    ``buffer`` (flat, at least that many numbers) is filled instead of a new array, so a
    loop over blocks reuses one allocation."""
    N, _, _, C = xp.shape
    rows = N * out[0] * out[1]
    if F == (1, 1) and S == (1, 1) and groups == 1 and xp.shape[1:3] == out:
        return xp.reshape(1, rows, C)  # a 1x1 CONV reads depth columns as they are
    win = window_view(xp, F, S, out, dilation)
    if groups > 1:
        win = win.reshape(N, out[0], out[1], F[0], F[1], groups, C // groups).transpose(5, 0, 1, 2, 3, 4, 6)
    if buffer is None:
        return np.ascontiguousarray(win).reshape(groups, rows, -1)
    cols = buffer[:win.size].reshape(win.shape)
    np.copyto(cols, win)
    return cols.reshape(groups, rows, -1)


def col2im(cols: np.ndarray, dxp: np.ndarray, F: Pair, S: Pair, out: Pair, dilation: Pair = (1, 1)) -> np.ndarray:
    """Adjoint of im2col: scatter-add rows (groups, N*Ho*Wo, Fh*Fw*D/groups) into the
    padded NHWC gradient dxp, one strided add per kernel offset; returns dxp."""
    N, _, _, C = dxp.shape
    groups = cols.shape[0]
    if F == (1, 1) and S == (1, 1) and groups == 1 and dxp.shape[1:3] == out:
        dxp += cols.reshape(dxp.shape)
        return dxp
    c6 = cols.reshape(groups, N, out[0], out[1], F[0], F[1], C // groups)
    for i in range(F[0]):
        for j in range(F[1]):
            piece = c6[:, :, :, :, i, j, :]
            piece = piece[0] if groups == 1 else piece.transpose(1, 2, 3, 0, 4).reshape(N, out[0], out[1], C)
            dxp[window_slice((i, j), S, out, dilation)] += piece
    return dxp


def row_blocks(N: int, Ho: int, row_bytes: int, budget: int, workers: int = 1) -> Iterator[Block]:
    """Blocks (n0, n1, h0, h1) of output rows whose X_col fits in ``budget`` bytes:
    several whole images, or bands of rows of one image when a single image is too big.
    With workers > 1, whole images are first split into one contiguous run per worker
    (as even as whole images allow) and each run is cut into the same number of blocks,
    so equal shares of the list (runtime.run_shares) are equal shares of the images.
    With one worker the first block is the largest (what the memory model reads)."""
    per_image = max(1, Ho * row_bytes)
    if per_image <= budget:
        step = max(1, budget // per_image)
        if workers <= 1 or N < workers:
            for n0 in range(0, N, step):
                yield n0, min(N, n0 + step), 0, Ho
            return
        edges = [i * N // workers for i in range(workers + 1)]
        cuts = -(-max(b - a for a, b in zip(edges, edges[1:])) // step)   # blocks per run
        for a, b in zip(edges, edges[1:]):
            parts = min(cuts, b - a)
            for k in range(parts):
                yield a + k * (b - a) // parts, a + (k + 1) * (b - a) // parts, 0, Ho
        return
    rows = max(1, budget // max(1, row_bytes))
    for n in range(N):
        for h0 in range(0, Ho, rows):
            yield n, n + 1, h0, min(Ho, h0 + rows)


def block_input(xp: np.ndarray, block: Block, F: int, S: int, dilation: int) -> np.ndarray:
    """The padded input rows that output rows h0:h1 of images n0:n1 see (a view)."""
    n0, n1, h0, h1 = block
    return xp[n0:n1, h0 * S:(h1 - 1) * S + dilation * (F - 1) + 1]


def block_rows(a: np.ndarray, block: Block) -> np.ndarray:
    """The (rows, depth) matrix of a block of an NHWC array (a view when a is contiguous;
    a cache-sized copy of a block of the unpadded part of a padded input)."""
    n0, n1, h0, h1 = block
    return a[n0:n1, h0:h1].reshape(-1, a.shape[3])
