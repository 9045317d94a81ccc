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

ROUNDINGS = ("exact", "floor", "ceil")


def output_size(W: int, F: int, S: int, P: int, dilation: int = 1, rounding: str = "exact",
                owner: str = "layer", axis: str = "W") -> int:
    """The notes' W2 = (W - F + 2P)/S + 1, with F replaced by dilation*(F-1)+1.

    rounding='exact' refuses a non-integer result (the notes' 4.5 case), 'floor'
    drops what the last window can't reach (PyTorch, Caffe CONV), 'ceil' adds a
    partial last window that starts inside the input (Caffe POOL, PyTorch ceil_mode).
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
            f"{owner}: the filter ({F_eff} along {axis}) is larger than the padded input "
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
        f"{owner}: output {axis} {formula} = {span / S + 1:g} is not an integer, so the "
        f"neurons don't tile the input neatly. Change P or S (e.g. P = {_suggest_padding(W, F_eff, S, P)}), "
        f"or pass rounding='floor' to drop the last {span % S} pixel(s)"
    )


def _suggest_padding(W: int, F_eff: int, S: int, P: int) -> str:
    for extra in range(1, S + 1):
        if (W - F_eff + 2 * (P + extra)) % S == 0:
            return str(P + extra)
    return "?"


def extra_right(W: int, F: int, S: int, P: int, out: int, dilation: int = 1) -> int:
    """Padding needed past the right edge so that ``out`` windows fit (ceil mode)."""
    return max(0, (out - 1) * S + dilation * (F - 1) + 1 - (W + 2 * P))


def pad_nhwc(x: np.ndarray, P: tuple[int, int], extra: tuple[int, int] = (0, 0),
             value: float = 0.0) -> np.ndarray:
    """Zero-pad (or value-pad) the spatial axes of an NHWC array: P on both sides, extra
    on the bottom/right (ceil mode)."""
    (ph, pw), (eh, ew) = P, extra
    if ph == pw == eh == ew == 0:
        return x
    N, H, W, C = x.shape
    xp = np.full((N, H + 2 * ph + eh, W + 2 * pw + ew, C), value, dtype=x.dtype)
    xp[:, ph:ph + H, pw:pw + W, :] = x
    return xp


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


def im2col(x_nhwc: np.ndarray, F: tuple[int, int], S: tuple[int, int], P: tuple[int, int],
           out: tuple[int, int], dilation: tuple[int, int] = (1, 1), groups: int = 1) -> np.ndarray:
    """The notes' X_col, one row per receptive field: (groups, N*Ho*Wo, Fh*Fw*D/groups).

    Row order is (n, y, x), column order (fy, fx, d); a 1x1, stride-1 CONV needs no copy.
    """
    N, H, W, C = x_nhwc.shape
    Cg = C // groups
    if F == (1, 1) and S == (1, 1) and P == (0, 0) and groups == 1:
        return x_nhwc.reshape(1, N * H * W, C)
    xp = pad_nhwc(x_nhwc, P, extra_pad(H, W, F, S, P, out, dilation))
    win = window_view(xp, F, S, out, dilation)
    if groups == 1:
        return win.reshape(1, N * out[0] * out[1], F[0] * F[1] * C)
    win = win.reshape(N, out[0], out[1], F[0], F[1], groups, Cg)
    return win.transpose(5, 0, 1, 2, 3, 4, 6).reshape(groups, N * out[0] * out[1], F[0] * F[1] * Cg)


def extra_pad(H: int, W: int, F, S, P, out, dilation) -> tuple[int, int]:
    return (extra_right(H, F[0], S[0], P[0], out[0], dilation[0]),
            extra_right(W, F[1], S[1], P[1], out[1], dilation[1]))


def col2im(cols: np.ndarray, x_shape_nhwc: tuple[int, int, int, int], F, S, P, out,
           dilation=(1, 1)) -> np.ndarray:
    """Adjoint of im2col: scatter-add rows (groups, N*Ho*Wo, Fh*Fw*D/groups) back into an
    NHWC gradient, one strided add per kernel offset."""
    N, H, W, C = x_shape_nhwc
    groups = cols.shape[0]
    Cg = C // groups
    if F == (1, 1) and S == (1, 1) and P == (0, 0) and groups == 1:
        return cols.reshape(N, H, W, C)
    eh, ew = extra_pad(H, W, F, S, P, out, dilation)
    dxp = np.zeros((N, H + 2 * P[0] + eh, W + 2 * P[1] + ew, C), dtype=cols.dtype)
    c6 = cols.reshape(groups, N, out[0], out[1], F[0], F[1], Cg)
    for i in range(F[0]):
        for j in range(F[1]):
            piece = c6[:, :, :, :, i, j, :]
            piece = piece[0] if groups == 1 else piece.transpose(1, 2, 3, 0, 4).reshape(N, out[0], out[1], C)
            dxp[window_slice((i, j), S, out, dilation)] += piece
    return dxp[:, P[0]:P[0] + H, P[1]:P[1] + W, :]


def nhwc(x: np.ndarray) -> np.ndarray:
    """NCHW -> NHWC view (contiguous when the data lives channels-last)."""
    return x.transpose(0, 2, 3, 1)


def nchw(x: np.ndarray) -> np.ndarray:
    """NHWC -> NCHW view."""
    return x.transpose(0, 3, 1, 2)


def fan_in_std(fan_in: int) -> float:
    """He initialisation: std = sqrt(2 / fan_in), right for ReLU networks."""
    return math.sqrt(2.0 / fan_in)
