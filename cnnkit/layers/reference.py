"""Reference layers: the notes' definitions as plain loops, slow and obviously right.

The fast layers must equal these; tests hold them equal. Shapes are NCHW like the engine.
"""

from __future__ import annotations

import numpy as np


def conv2d(x, w, b, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1):
    """The notes' V[x, y, d] = sum(X[window] * W_d) + b_d, one output neuron at a time."""
    N, C, H, W = x.shape
    K, Cg, Fh, Fw = w.shape
    (Sh, Sw), (Ph, Pw), (Dh, Dw) = stride, padding, dilation
    xp = np.pad(x, ((0, 0), (0, 0), (Ph, Ph), (Pw, Pw)))
    H2 = (H + 2 * Ph - Dh * (Fh - 1) - 1) // Sh + 1
    W2 = (W + 2 * Pw - Dw * (Fw - 1) - 1) // Sw + 1
    out = np.zeros((N, K, H2, W2), dtype=np.result_type(x, w))
    Kg = K // groups
    for n in range(N):
        for d in range(K):
            g = d // Kg
            for i in range(H2):
                for j in range(W2):
                    window = xp[n, g * Cg:(g + 1) * Cg,
                                i * Sh:i * Sh + Dh * (Fh - 1) + 1:Dh,
                                j * Sw:j * Sw + Dw * (Fw - 1) + 1:Dw]
                    out[n, d, i, j] = np.sum(window * w[d]) + (b[d] if b is not None else 0)
    return out


def max_pool2d(x, F, S):
    """Each output is the max of its F x F window (no padding)."""
    N, C, H, W = x.shape
    H2, W2 = (H - F) // S + 1, (W - F) // S + 1
    out = np.empty((N, C, H2, W2), dtype=x.dtype)
    for i in range(H2):
        for j in range(W2):
            out[:, :, i, j] = x[:, :, i * S:i * S + F, j * S:j * S + F].max(axis=(2, 3))
    return out
