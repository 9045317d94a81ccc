"""A dilated 3x3 CONV as one undilated CONV of its phases stacked as images (space to batch).

At stride 1 with dilation (Dh, Dw), Y[y, x] = sum_ij W_ij . X_pad[y + Dh i, x + Dw j]
reads only inputs in the output's residue class (y mod Dh, x mod Dw). So the phase (a, b)
of the output, Y[a::Dh, b::Dw], is the undilated 3x3 CONV of the phase X_pad[a::Dh, b::Dw]
of the padded input. Stacking the Dh*Dw phases of every image as a batch of images (as
TensorFlow's space_to_batch does for atrous convolution) makes them one undilated CONV,
computed by the Winograd lowering the rule gives it (F(4x4, 3x3) or F(2x2, 3x3), 4x or
2.25x fewer multiplications than im2col's GEMM; F(2x2) when the engine forces 'phases'
where neither pays). The stack is built from X in one copy (it is the padding too) and
kept for backward; the output, dY and dX each cost one copy between the phases and the
image. Phases of unequal size (H2 not a multiple of Dh) are stacked at the largest: the
smaller ones' extra outputs are dropped, and their dY is zero there.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from ..geometry import Window
from ..layout import contiguous_nhwc, copy_images, lives_nchw, nchw, nhwc
from . import Cost, register, winograd_for
from .blocked import bias_grad
from .winograd import WINOGRAD2, Winograd

Span = tuple[int, int, int]   # (first stack index, first image index, how many)


class Phases:
    """Stride-1 dilated 3x3 CONVs without groups: their phases as one batch through Winograd."""

    name = "phases"

    def why_not(self, w: Window) -> str | None:
        if w.F != (3, 3) or w.S != (1, 1) or w.groups != 1 or w.dilation == (1, 1):
            return (f"it needs a dilated 3x3 filter, stride 1 and no groups (got F={w.F}, S={w.S}, "
                    f"dilation={w.dilation}, groups={w.groups})")
        return None

    # --- geometry ---------------------------------------------------------------------
    def phases(self, w: Window) -> list[tuple[int, int]]:
        """(a, b) of every phase with outputs, in stack order."""
        (Dh, Dw), (H2, W2) = w.dilation, w.out
        return [(a, b) for a in range(min(Dh, H2)) for b in range(min(Dw, W2))]

    def stacked(self, w: Window) -> Window:
        """The undilated CONV of one stacked phase: the largest phase's output, unpadded."""
        (Dh, Dw), (H2, W2) = w.dilation, w.out
        out = (-(-H2 // Dh), -(-W2 // Dw))
        return Window(w.C, out[0] + 2, out[1] + 2, (3, 3), (1, 1), (0, 0), (1, 1), out, K=w.K)

    def winograd(self, w: Window, batch: int) -> Winograd | None:
        """The Winograd lowering the rule gives the stack of batch images' phases, or None
        where none pays."""
        phases = len(self.phases(w))
        return winograd_for(self.stacked(w), phases * batch) if phases else None

    def inner(self, w: Window, batch: int) -> Winograd:
        """The Winograd lowering that computes the stack (F(2x2) where none pays)."""
        return self.winograd(w, batch) or WINOGRAD2

    def tiled(self, w: Window, batch: int) -> tuple[Winograd, Window]:
        """(inner, the CONV it computes on the stack): the stacked phase's output in whole
        tiles, its input padded to them."""
        inner = self.inner(w, batch)
        Th, Tw = inner.tiles(self.stacked(w).out)
        out = (Th * inner.m, Tw * inner.m)
        return inner, Window(w.C, out[0] + 2, out[1] + 2, (3, 3), (1, 1), (0, 0), (1, 1), out, K=w.K)

    @staticmethod
    def span(a: int, D: int, P: int, size: int, length: int) -> Span:
        """Where phase a (cells a, a + D, ... of the input padded by P) meets the input of
        `size` cells, in a stacked phase of `length` cells: (first stack cell, first input
        cell, how many)."""
        first = max(0, -(-(P - a) // D))
        start = a + D * first - P
        return first, start, max(0, min(len(range(start, size, D)), length - first))

    def spans(self, w: Window, lengths: tuple[int, int]) -> Iterator[tuple[int, Span, Span]]:
        """(stack position p, row span, column span) of every phase."""
        (Dh, Dw), (Ph, Pw) = w.dilation, w.P
        for p, (a, b) in enumerate(self.phases(w)):
            yield p, self.span(a, Dh, Ph, w.H, lengths[0]), self.span(b, Dw, Pw, w.W, lengths[1])

    # --- passes -----------------------------------------------------------------------
    def pad(self, x: np.ndarray, w: Window) -> np.ndarray:
        """Space to batch: the phases of padded x, (phases * N, Th*m + 2, Tw*m + 2, C) in
        whole Winograd tiles, phase-major (image n's phase p at p * N + n)."""
        x_nhwc = channels_last(x)
        N = x.shape[0]
        _, whole = self.tiled(w, N)
        rows, cols = whole.H, whole.W
        stack = np.empty((len(self.phases(w)), N, rows, cols, w.C), dtype=x.dtype)
        (Dh, Dw) = w.dilation
        for p, (i0, r0, nr), (j0, c0, nc) in self.spans(w, (rows, cols)):
            phase = stack[p]
            phase[:, :i0] = 0
            phase[:, i0 + nr:] = 0
            phase[:, i0:i0 + nr, :j0] = 0
            phase[:, i0:i0 + nr, j0 + nc:] = 0
            copy_images(phase[:, i0:i0 + nr, j0:j0 + nc], x_nhwc[:, r0::Dh, c0::Dw][:, :nr, :nc])
        return stack.reshape(-1, rows, cols, w.C)

    def fuses_add(self, w: Window) -> bool:
        return False

    def forward(self, stack: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, w: Window,
                scale: np.ndarray | None = None, relu: bool = False) -> np.ndarray:
        (Dh, Dw), P = w.dilation, len(self.phases(w))
        N = stack.shape[0] // P
        inner = self.inner(w, N)
        tiles = inner.convolve(stack, inner.filters(weight), bias, scale, relu)
        tiles = tiles.reshape(P, N, *tiles.shape[1:])
        out = np.empty((N, *w.out, w.K), dtype=tiles.dtype)
        for p, (a, b) in enumerate(self.phases(w)):
            target = out[:, a::Dh, b::Dw]
            copy_images(target, tiles[p, :, :target.shape[1], :target.shape[2]])
        return nchw(out)

    def backward(self, stack: np.ndarray, dout: np.ndarray, weight: np.ndarray, has_bias: bool, w: Window,
                 input_grad: bool) -> tuple[np.ndarray | None, np.ndarray, np.ndarray | None]:
        (Dh, Dw), P = w.dilation, len(self.phases(w))
        N = stack.shape[0] // P
        inner, whole = self.tiled(w, N)
        d = channels_last(dout)
        db = bias_grad(d) if has_bias else None
        d_stack = np.empty((P, N, *whole.out, w.K), dtype=d.dtype)   # dY's phases, zero past their outputs
        for p, (a, b) in enumerate(self.phases(w)):
            source = d[:, a::Dh, b::Dw]
            h, v = source.shape[1:3]
            d_stack[p, :, h:] = 0
            d_stack[p, :, :h, v:] = 0
            copy_images(d_stack[p, :, :h, :v], source)
        dx_stack, dweight, _ = inner.backward(stack, nchw(d_stack.reshape(-1, *d_stack.shape[2:])), weight, False,
                                              whole, input_grad)
        if dx_stack is None:
            return None, dweight, db
        dx_phases = nhwc(dx_stack).reshape(P, N, *stack.shape[1:])
        # the phases' cells are disjoint; cells no phase reads (past the last window) get 0
        (Ph, Pw), (H2, W2) = w.P, w.out
        covered = (sum(self.span(a, Dh, Ph, w.H, whole.H)[2] for a in range(min(Dh, H2))) == w.H and
                   sum(self.span(b, Dw, Pw, w.W, whole.W)[2] for b in range(min(Dw, W2))) == w.W)
        dx = (np.empty if covered else np.zeros)((N, w.H, w.W, w.C), dtype=dx_phases.dtype)
        for p, (i0, r0, nr), (j0, c0, nc) in self.spans(w, (whole.H, whole.W)):
            copy_images(dx[:, r0::Dh, c0::Dw][:, :nr, :nc], dx_phases[p, :, i0:i0 + nr, j0:j0 + nc])
        return nchw(dx), dweight, db

    # --- the memory model -----------------------------------------------------------------
    def memory(self, w: Window, n: int, e: int) -> Cost:
        """Keeps the stack of phases; forward makes Winograd's transient for the stack (its
        input is the stack itself) and the output; backward dY's phases, Winograd's
        backward of the stack (its whole-tile dX of the stack included) and dX."""
        inner, whole = self.tiled(w, n)
        stacked = len(self.phases(w)) * n
        kept, forward, backward = inner.memory(whole, stacked, e)
        a_out = n * w.K * w.out[0] * w.out[1] * e
        d_stack = stacked * whole.out[0] * whole.out[1] * w.K * e
        dx = n * w.C * w.H * w.W * e
        return kept, forward - kept + a_out, d_stack + backward + dx

    def workspace(self, w: Window, n: int, e: int) -> int:
        inner, whole = self.tiled(w, n)
        return inner.workspace(whole, len(self.phases(w)) * n, e)


def channels_last(x: np.ndarray) -> np.ndarray:
    """NHWC x, as a contiguous copy when it lives NCHW: the phases then copy runs of
    depth columns, not single numbers."""
    return contiguous_nhwc(x) if lives_nchw(x) else nhwc(x)


register("conv", Phases())
