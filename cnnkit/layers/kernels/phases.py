"""A dilated 3x3 CONV as undilated ones over its phases, each computed by Winograd.

At stride 1 with dilation (Dh, Dw), Y[y, x] = sum_ij W_ij . X_pad[y + Dh i, x + Dw j]
reads only inputs in the output's residue class (y mod Dh, x mod Dw). So the phase (a, b)
of the output, Y[a::Dh, b::Dw], is the undilated 3x3 CONV of the phase X_pad[a::Dh, b::Dw]
of the padded input: Dh*Dw small CONVs, each by the Winograd lowering the rule gives the
first phase (F(4x4, 3x3) or F(2x2, 3x3), 4x or 2.25x fewer multiplications than im2col's
GEMM; F(2x2) when the engine forces 'phases' where neither pays), at the cost of copying
each phase of X (and of dY and dX in backward) once. The phases' dW add up in phase order; their dX fill disjoint cells.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from ..geometry import Window
from ..layout import contiguous_nhwc, copy_images, nchw, nhwc, padded_nhwc
from . import Cost, register, winograd_for
from .winograd import WINOGRAD2, Winograd


class Phases:
    """Stride-1 dilated 3x3 CONVs without groups, phase by phase through Winograd."""

    name = "phases"

    def inner(self, w: Window, batch: int) -> Winograd:
        """The Winograd lowering of this CONV's phases (one for all: they differ by a row at most)."""
        first = next(self.phases(w), None)
        return (first is not None and winograd_for(first[2], batch)) or WINOGRAD2

    def why_not(self, w: Window) -> str | None:
        if w.F != (3, 3) or w.S != (1, 1) or w.groups != 1 or w.dilation == (1, 1):
            return (f"it needs a dilated 3x3 filter, stride 1 and no groups (got F={w.F}, S={w.S}, "
                    f"dilation={w.dilation}, groups={w.groups})")
        return None

    def phases(self, w: Window) -> Iterator[tuple[int, int, Window]]:
        """(a, b, the undilated CONV of phase (a, b)) for every phase with outputs."""
        (Dh, Dw), (H2, W2) = w.dilation, w.out
        for a in range(min(Dh, H2)):
            for b in range(min(Dw, W2)):
                out = (len(range(a, H2, Dh)), len(range(b, W2, Dw)))
                yield a, b, Window(w.C, out[0] + 2, out[1] + 2, (3, 3), (1, 1), (0, 0), (1, 1), out, K=w.K)

    def phase_input(self, inner: Winograd, xp: np.ndarray, a: int, b: int, w: Window, sub: Window) -> np.ndarray:
        """Phase (a, b) of padded NHWC xp, zero-padded to whole tiles as inner reads it
        (a copy, shared between the threads)."""
        Dh, Dw = w.dilation
        Th, Tw = inner.tiles(sub.out)
        m = inner.m
        tiled = np.empty((xp.shape[0], Th * m + 2, Tw * m + 2, w.C), dtype=xp.dtype)
        tiled[:, sub.H:] = 0
        tiled[:, :sub.H, sub.W:] = 0
        copy_images(tiled[:, :sub.H, :sub.W], xp[:, a::Dh, b::Dw][:, :sub.H, :sub.W])
        return tiled

    def pad(self, x: np.ndarray, w: Window) -> np.ndarray:
        return padded_nhwc(x, w.P)

    def forward(self, xp: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, w: Window,
                scale: np.ndarray | None = None, relu: bool = False) -> np.ndarray:
        Dh, Dw = w.dilation
        inner = self.inner(w, xp.shape[0])
        U = inner.filters(weight)
        out = np.empty((xp.shape[0], *w.out, w.K), dtype=np.result_type(xp, U))
        for a, b, sub in self.phases(w):
            tiles = inner.convolve(self.phase_input(inner, xp, a, b, w, sub), U, bias, scale, relu)
            copy_images(out[:, a::Dh, b::Dw], tiles[:, :sub.out[0], :sub.out[1]])
        return nchw(out)

    def backward(self, xp: np.ndarray, dout: np.ndarray, weight: np.ndarray, has_bias: bool, w: Window,
                 input_grad: bool) -> tuple[np.ndarray | None, np.ndarray, np.ndarray | None]:
        (Dh, Dw), (Ph, Pw) = w.dilation, w.P
        d = contiguous_nhwc(dout)      # channels-last first (a copy only if it isn't): each phase then copies runs of K
        db = d.sum(axis=(0, 1, 2)) if has_bias else None
        dxp = np.zeros(xp.shape, dtype=d.dtype) if input_grad else None
        dweight = np.zeros(weight.shape, dtype=d.dtype)
        inner = self.inner(w, xp.shape[0])
        for a, b, sub in self.phases(w):
            d_phase = np.empty((d.shape[0], *sub.out, w.K), dtype=d.dtype)
            copy_images(d_phase, d[:, a::Dh, b::Dw])
            dx_phase, dw_phase, _ = inner.backward(self.phase_input(inner, xp, a, b, w, sub), nchw(d_phase), weight,
                                                   False, sub, input_grad)
            dweight += dw_phase
            if dxp is not None and dx_phase is not None:
                copy_images(dxp[:, a::Dh, b::Dw][:, :sub.H, :sub.W], nhwc(dx_phase))   # the phases' cells are disjoint
        dx = None if dxp is None else nchw(dxp[:, Ph:Ph + w.H, Pw:Pw + w.W])
        return dx, dweight, db

    def memory(self, w: Window, n: int, e: int) -> Cost:
        """Keeps the padded input; forward makes one phase's input and Winograd's transient
        at a time, and the output; backward a padded dX, one phase's input and dY, and
        Winograd's backward of that phase (its dX included)."""
        Hp, Wp = w.padded
        xp = n * Hp * Wp * w.C * e
        a_out = n * w.K * w.out[0] * w.out[1] * e
        fwd = back = 0
        inner = self.inner(w, n)
        for _, _, sub in self.phases(w):
            kept, forward, backward = inner.memory(sub, n, e)
            d_phase = n * sub.out[0] * sub.out[1] * w.K * e
            fwd = max(fwd, kept + forward)
            back = max(back, kept + d_phase + backward + n * sub.H * sub.W * w.C * e)
        return xp, a_out + fwd, xp + weight_bytes(w, e) + back

    def workspace(self, w: Window, n: int, e: int) -> int:
        inner = self.inner(w, n)
        return max((inner.workspace(sub, n, e) for _, _, sub in self.phases(w)), default=0)


def weight_bytes(w: Window, e: int) -> int:
    return w.K * w.C * 9 * e


register("conv", Phases())
