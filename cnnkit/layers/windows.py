"""Sliding windows: the output-size formula, im2col and col2im, shared by CONV and POOL.

cnnkit keeps activations logically NCHW but lets them live in memory channels-last
(NHWC): a layer returns ``out_nhwc.transpose(0, 3, 1, 2)``, a free view, and the next
layer's ``x.transpose(0, 2, 3, 1)`` is contiguous again. In NHWC a receptive field is
(F, F, D) contiguous runs of depth columns, so im2col is one strided copy and the
GEMM reads rows that the notes' ``X_col`` has as columns.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import as_strided

from ..errors import ShapeError
from . import threads

ROUNDINGS = ("exact", "floor", "ceil")


def output_size(W: int, F: int, S: int, P: int, dilation: int = 1, rounding: str = "exact",
                owner: object = "layer", axis: str = "W") -> int:
    """The notes' W2 = (W - F + 2P)/S + 1, with F replaced by dilation*(F-1)+1.

    rounding='exact' refuses a non-integer result (the notes' 4.5 case), 'floor'
    drops what the last window can't reach (PyTorch, Caffe CONV), 'ceil' adds a
    partial last window that starts inside the input (Caffe POOL, PyTorch ceil_mode).
    owner (a layer, or its name) is named in errors; it is only formatted for one.
    """
    F_eff = dilation * (F - 1) + 1
    span = W - F_eff + 2 * P
    formula = f"(W - F + 2P)/S + 1 = ({W} - {F_eff} + {2 * P})/{S} + 1"
    if F_eff == F:
        formula = f"(W - F + 2P)/S + 1 = ({W} - {F} + {2 * P})/{S} + 1"
    else:
        formula += f"  (F = dilation*(F-1)+1 = {F_eff})"
    if span < 0:
        raise ShapeError(
            f"{_name(owner)}: the filter ({F_eff} along {axis}) is larger than the padded input "
            f"({W} + 2*{P} = {W + 2 * P}); {formula} < 1"
        )
    if span % S == 0 or rounding == "floor":
        return span // S + 1
    if rounding == "ceil":
        out = -(-span // S) + 1
        if (out - 1) * S >= W + P:  # the last window must start inside the input or left pad
            out -= 1
        return out
    raise ShapeError(
        f"{_name(owner)}: output {axis} {formula} = {span / S + 1:g} is not an integer, so the "
        f"neurons don't tile the input neatly. {_fix_hint(W, F_eff, S, P)}, or pass rounding='floor' "
        f"to drop the last {span % S} pixel(s)"
    )


def _name(owner: object) -> str:
    return owner if isinstance(owner, str) else repr(owner)


def _fix_hint(W: int, F_eff: int, S: int, P: int) -> str:
    """The nearest padding, else the nearest larger input size, that makes the division exact."""
    for P_fix in range(P + 1, P + S):
        if (W - F_eff + 2 * P_fix) % S == 0:
            return f"Use P = {P_fix}"
    W_fix = next(w for w in range(W + 1, W + S + 1) if (w - F_eff + 2 * P) % S == 0)
    return f"Use an input of {W_fix} (or change F, S, P)"


def extra_right(W: int, F: int, S: int, P: int, out: int, dilation: int = 1) -> int:
    """Padding needed past the right edge so that ``out`` windows fit (ceil mode)."""
    return max(0, (out - 1) * S + dilation * (F - 1) + 1 - (W + 2 * P))


def extra_pad(H: int, W: int, F, S, P, out, dilation) -> tuple[int, int]:
    """(bottom, right) padding past the zero padding that ceil-mode windows need."""
    return (extra_right(H, F[0], S[0], P[0], out[0], dilation[0]),
            extra_right(W, F[1], S[1], P[1], out[1], dilation[1]))


def pad_nhwc(x: np.ndarray, P: tuple[int, int], extra: tuple[int, int] = (0, 0),
             value: float = 0.0) -> np.ndarray:
    """Zero-pad (or value-pad) the spatial axes of an NHWC array: P on both sides, extra
    on the bottom/right (ceil mode)."""
    (ph, pw), (eh, ew) = P, extra
    if ph == pw == eh == ew == 0:
        return x
    N, H, W, C = x.shape
    xp = np.empty((N, H + 2 * ph + eh, W + 2 * pw + ew, C), dtype=x.dtype)
    # Only the border is filled: writing the whole array first would double its traffic.
    xp[:, :ph] = value
    xp[:, ph + H:] = value
    xp[:, ph:ph + H, :pw] = value
    xp[:, ph:ph + H, pw + W:] = value
    copy_images(xp[:, ph:ph + H, pw:pw + W, :], x)
    return xp


def contiguous_nhwc(x: np.ndarray) -> np.ndarray:
    """The NHWC view of NCHW x, copied to contiguous memory only if it isn't already."""
    x_nhwc = nhwc(x)
    if x_nhwc.flags.c_contiguous:
        return x_nhwc
    out = np.empty(x_nhwc.shape, dtype=x.dtype)
    copy_images(out, x_nhwc)
    return out


def copy_images(target: np.ndarray, source: np.ndarray) -> None:
    """target[...] = source, shared by image between cnnkit's threads when it is big: a
    copy that changes the layout (NCHW to NHWC) is slow enough to be worth two cores."""
    share = max(1, threads.get_num_threads()) if source.nbytes >= 4 * 2**20 else 1

    def copy(images: range) -> None:
        target[images.start:images.stop] = source[images.start:images.stop]

    if share == 1:
        target[...] = source
    else:
        threads.run_shares(copy, range(source.shape[0]))


def window_view(xp: np.ndarray, F: tuple[int, int], S: tuple[int, int], out: tuple[int, int],
                dilation: tuple[int, int] = (1, 1)) -> np.ndarray:
    """Read-only view (N, Ho, Wo, Fh, Fw, C) of every receptive field of padded NHWC xp."""
    N, _, _, C = xp.shape
    sN, sH, sW, sC = xp.strides
    return as_strided(
        xp,
        shape=(N, out[0], out[1], F[0], F[1], C),
        strides=(sN, sH * S[0], sW * S[1], sH * dilation[0], sW * dilation[1], sC),
        writeable=False,
    )


def window_slice(F_index: tuple[int, int], S: tuple[int, int], out: tuple[int, int],
                 dilation: tuple[int, int] = (1, 1)) -> tuple[slice, slice, slice, slice]:
    """Index of the inputs that kernel offset (i, j) sees at every output position."""
    i, j = F_index
    r0, c0 = i * dilation[0], j * dilation[1]
    return (slice(None), slice(r0, r0 + S[0] * (out[0] - 1) + 1, S[0]),
            slice(c0, c0 + S[1] * (out[1] - 1) + 1, S[1]), slice(None))


def im2col(xp: np.ndarray, F: tuple[int, int], S: tuple[int, int], out: tuple[int, int],
           dilation: tuple[int, int] = (1, 1), groups: int = 1, buffer: np.ndarray | None = None) -> np.ndarray:
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
    return fill(buffer, win).reshape(groups, rows, -1)


def fill(buffer: np.ndarray | None, view: np.ndarray) -> np.ndarray:
    """A contiguous copy of view, written into the front of buffer when one is given."""
    if buffer is None:
        return np.ascontiguousarray(view)
    target = buffer[:view.size].reshape(view.shape)
    np.copyto(target, view)
    return target


def col2im(cols: np.ndarray, dxp: np.ndarray, F, S, out, dilation=(1, 1)) -> np.ndarray:
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


# im2col's matrix for a whole batch is F*F times the input (231 MB for 32 images of
# 56x56x64 with F=3). Lowering a block of whole images (or of output rows of one big
# image) at a time keeps X_col within a few MB, so writing it and the GEMM reading it
# stay in cache: faster than one huge GEMM, and the workspace no longer grows with N.
BLOCK_BYTES = 8 * 2**20


def row_blocks(N: int, Ho: int, row_bytes: int, budget: int | None = None):
    """Blocks (n0, n1, h0, h1) of output rows whose X_col fits in ``budget`` bytes:
    several whole images, or bands of rows of one image when a single image is too big."""
    budget = BLOCK_BYTES if budget is None else budget
    per_image = max(1, Ho * row_bytes)
    if per_image <= budget:
        step = max(1, budget // per_image)
        for n0 in range(0, N, step):
            yield n0, min(N, n0 + step), 0, Ho
        return
    rows = max(1, budget // max(1, row_bytes))
    for n in range(N):
        for h0 in range(0, Ho, rows):
            yield n, n + 1, h0, min(Ho, h0 + rows)


def block_input(xp: np.ndarray, block, F: int, S: int, dilation: int) -> np.ndarray:
    """The padded input rows that output rows h0:h1 of images n0:n1 see (a view)."""
    n0, n1, h0, h1 = block
    return xp[n0:n1, h0 * S:(h1 - 1) * S + dilation * (F - 1) + 1]


def nhwc(x: np.ndarray) -> np.ndarray:
    """NCHW -> NHWC view (contiguous when the data lives channels-last)."""
    return x.transpose(0, 2, 3, 1)


def nchw(x: np.ndarray) -> np.ndarray:
    """NHWC -> NCHW view."""
    return x.transpose(0, 3, 1, 2)


def fan_in_std(fan_in: int) -> float:
    """He initialisation: std = sqrt(2 / fan_in), right for ReLU networks."""
    return math.sqrt(2.0 / fan_in)
