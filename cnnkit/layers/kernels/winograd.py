"""CONV 3x3 at stride 1 by Winograd's minimal filtering F(m x m, 3 x 3) (Lavin & Gray 2015).

Each m x m tile of the output comes from an (m+2) x (m+2) tile d of the padded input and
the 3x3 filter g as

    Y = A^T [ (G g G^T) * (B^T d B) ] A          (* elementwise)

and the elementwise product, summed over the input depth, is for each of the (m+2)^2
tile positions p one GEMM: M[p] = V[p] U[p], V[p] the transformed tiles (tiles, D1) and
U[p] the transformed filters (D1, K). That is (m+2)^2 multiplications per tile where the
direct CONV does 9 m^2: 16 for 36 (2.25x fewer) at m=2, 36 for 144 (4x) at m=4. The
transforms are additions over whole arrays of tiles, done block by block while the
block is in cache; the GEMMs are batched over the (m+2)^2 positions.

Backward: dX (stride 1) is the same transform on dY, fully padded, with the filters
flipped and their depth and filter axes swapped, as for every lowering; dW comes from
the same tiles: dU[p] = V[p]^T dM[p], with dM = A dY_tile A^T, and dg = G^T dU G.

Only 3x3 stride 1 undilated CONV without groups, padding at most 2 (so that dX's full
padding 2-P is not negative). Rounding: F(2x2, 3x3) has coefficients 0, +-1 and 1/2 and
is as exact as the direct sum; F(4x4, 3x3)'s larger coefficients cost about one decimal
digit in float32 (relative error ~1e-6 -> ~1e-5).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import DTypeLike

from ..geometry import Window
from ..im2col import Block, row_blocks
from ..layout import contiguous_nhwc, nchw, nhwc
from ..runtime import runtime
from . import Cost, compiled, register
from .blocked import add_into, bias_grad, epilogue

# (B^T, G, A^T) for F(m x m, 3 x 3), from Lavin & Gray (2015), points 0, +-1 (m=2) and
# 0, +-1, +-2 (m=4).
TRANSFORMS: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {
    2: (np.array([[1, 0, -1, 0],
                  [0, 1, 1, 0],
                  [0, -1, 1, 0],
                  [0, 1, 0, -1]], dtype=float),
        np.array([[1, 0, 0],
                  [1 / 2, 1 / 2, 1 / 2],
                  [1 / 2, -1 / 2, 1 / 2],
                  [0, 0, 1]]),
        np.array([[1, 1, 1, 0],
                  [0, 1, -1, -1]], dtype=float)),
    4: (np.array([[4, 0, -5, 0, 1, 0],
                  [0, -4, -4, 1, 1, 0],
                  [0, 4, -4, -1, 1, 0],
                  [0, -2, -1, 2, 1, 0],
                  [0, 2, -1, -2, 1, 0],
                  [0, 4, 0, -5, 0, 1]], dtype=float),
        np.array([[1 / 4, 0, 0],
                  [-1 / 6, -1 / 6, -1 / 6],
                  [-1 / 6, 1 / 6, -1 / 6],
                  [1 / 24, 1 / 12, 1 / 6],
                  [1 / 24, -1 / 12, 1 / 6],
                  [0, 0, 1]]),
        np.array([[1, 1, 1, 1, 1, 0],
                  [0, 1, -1, 2, -2, 0],
                  [0, 1, 1, 4, 4, 0],
                  [0, 1, -1, 8, -8, 1]], dtype=float)),
}


def combine(matrix: np.ndarray, inputs: list[np.ndarray], outputs: list[np.ndarray],
            scratch: np.ndarray | None) -> None:
    """outputs[r] = sum_c matrix[r, c] * inputs[c], whole arrays at a time: one add or
    subtract per coefficient +-1 (a coefficient +1 goes first), a multiply for the others.
    scratch (outputs' shape) holds c * input for the coefficients other than +-1."""
    for row, out in zip(matrix, outputs):
        terms = sorted(((c, x) for c, x in zip(row, inputs) if c), key=lambda t: t[0] != 1)
        (c, x), rest = terms[0], terms[1:]
        if c == 1 and rest and abs(rest[0][0]) == 1:
            (c2, x2), rest = rest[0], rest[1:]
            (np.add if c2 == 1 else np.subtract)(x, x2, out=out)
        elif c == 1:
            np.copyto(out, x)
        else:
            np.multiply(x, c, out=out)
        for c, x in rest:
            if c == 1:
                np.add(out, x, out=out)
            elif c == -1:
                np.subtract(out, x, out=out)
            else:
                assert scratch is not None
                np.multiply(x, c, out=scratch)
                np.add(out, scratch, out=out)


def terms(matrix: np.ndarray, dtype: DTypeLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """combine()'s sums as tables for the compiled loops: for each row of matrix, the
    columns with a nonzero coefficient (index), the coefficients (coef, in dtype: what a
    NumPy pass multiplies by) and how many (count), a coefficient +1 first as combine()
    puts it."""
    rows = [sorted(((c, j) for j, c in enumerate(row) if c), key=lambda t: t[0] != 1) for row in matrix]
    width = max(len(row) for row in rows)
    index = np.zeros((len(rows), width), dtype=np.int64)
    coef = np.zeros((len(rows), width), dtype=dtype)
    for r, row in enumerate(rows):
        for q, (c, j) in enumerate(row):
            index[r, q], coef[r, q] = j, c
    return index, coef, np.array([len(row) for row in rows], dtype=np.int64)


class Winograd:
    """F(m x m, 3 x 3) over NHWC tiles: 3x3, stride 1, no dilation or groups, P <= 2."""

    def __init__(self, m: int) -> None:
        self.m = m
        self.name = f"winograd{m}"
        self.alpha = m + 2
        self.B_T, self.G, self.A_T = TRANSFORMS[m]
        self._terms: dict[tuple[str, str], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def terms(self, which: str, dtype: DTypeLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The compiled loops' tables of B^T ('input'), A^T ('output') or A ('gradient')."""
        key = (which, np.dtype(dtype).str)
        if key not in self._terms:
            matrix = {"input": self.B_T, "output": self.A_T, "gradient": self.A_T.T}[which]
            self._terms[key] = terms(matrix, np.dtype(dtype))
        return self._terms[key]

    def why_not(self, w: Window) -> str | None:
        if w.F != (3, 3) or w.S != (1, 1) or w.dilation != (1, 1) or w.groups != 1 or max(w.P) > 2:
            return (f"it needs a 3x3 filter, stride 1, no dilation or groups and padding <= 2 (got F={w.F}, "
                    f"S={w.S}, dilation={w.dilation}, groups={w.groups}, P={w.P})")
        return None

    # --- geometry ---------------------------------------------------------------------
    def tiles(self, out: tuple[int, int]) -> tuple[int, int]:
        """Tile rows and columns covering an output of out = (H2, W2)."""
        return -(-out[0] // self.m), -(-out[1] // self.m)

    def padded(self, x_nhwc: np.ndarray, P: tuple[int, int], out: tuple[int, int]) -> np.ndarray:
        """x zero-padded by P, and on the bottom/right up to whole tiles (a new array)."""
        N, H, W, C = x_nhwc.shape
        Th, Tw = self.tiles(out)
        xp = np.empty((N, Th * self.m + 2, Tw * self.m + 2, C), dtype=x_nhwc.dtype)
        (ph, pw) = P
        xp[:, :ph] = 0
        xp[:, ph + H:] = 0
        xp[:, ph:ph + H, :pw] = 0
        xp[:, ph:ph + H, pw + W:] = 0
        xp[:, ph:ph + H, pw:pw + W] = x_nhwc
        return xp

    def pad(self, x: np.ndarray, w: Window) -> np.ndarray:
        return self.padded(nhwc(x), w.P, w.out)

    def blocks(self, N: int, Th: int, Tw: int, C: int, itemsize: int) -> list[Block]:
        """Blocks (n0, n1, t0, t1) of tile rows whose transformed tiles V fit the engine's
        block budget, as many per thread."""
        row_bytes = self.alpha ** 2 * Tw * C * itemsize
        options = runtime.options
        total = N * Th * row_bytes
        workers = max(1, min(options.threads, total // options.min_share_bytes))
        count = workers * -(-total // (workers * options.winograd_block_bytes))
        return list(row_blocks(N, Th, row_bytes, max(row_bytes, -(-total // count)), workers))

    # --- the three transforms -----------------------------------------------------------
    def filters(self, weight: np.ndarray) -> np.ndarray:
        """U = G g G^T for every (k, c), as (alpha^2, D1, K): one GEMM of the 3x3 filters'
        taps (K, 9, D1) by G (x) G, whose (alpha^2, K, D1) result the GEMMs read transposed."""
        K, C = weight.shape[:2]
        GG = np.kron(self.G, self.G).astype(weight.dtype)                       # (alpha^2, 9)
        taps = weight.transpose(0, 2, 3, 1).reshape(K, 9, C)                     # free for channels-last filters
        return np.tensordot(GG, taps, axes=([1], [1])).transpose(0, 2, 1)

    def filter_gradient(self, dU: np.ndarray) -> np.ndarray:
        """dg = G^T dU G for every (c, k), dU (alpha^2, D1, K): dW as (K, D1, 3, 3)."""
        a2, C, K = dU.shape
        GG = np.kron(self.G, self.G).astype(dU.dtype)
        taps = np.matmul(GG.T, dU.reshape(a2, C * K)).reshape(9, C, K)
        # in the parameters' channels-last memory (K, 3, 3, D1), so the update reads both alike
        return np.ascontiguousarray(taps.transpose(2, 0, 1)).reshape(K, 3, 3, C).transpose(0, 3, 1, 2)

    def input_tiles(self, xb: np.ndarray, Tw: int, V: np.ndarray, Z: np.ndarray, scratch: np.ndarray) -> None:
        """V[i, j] = (B^T d B)[i, j] for every tile d of the padded block xb (n, t*m+2, Tw*m+2, C):
        first along the rows (into Z), then along the columns."""
        m, a = self.m, self.alpha
        loops = compiled.loops()
        if loops is not None and m == 2:              # both directions in one pass, tile by tile
            loops.winograd2_input(xb[:, :, :Tw * m + 2], V.reshape(a, a, -1, xb.shape[3]))
            return
        if loops is not None:
            loops.winograd_input(xb[:, :, :Tw * m + 2], V.reshape(a, a, -1, xb.shape[3]), m,
                                 *self.terms("input", V.dtype))
            return
        n, rows = xb.shape[0], (xb.shape[1] - 2) // m
        by_row = [xb[:, r:r + m * rows:m] for r in range(a)]                  # (n, t, Wp, C) views
        z = [Z[i] for i in range(a)]
        combine(self.B_T, by_row, z, scratch[:z[0].size].reshape(z[0].shape))
        shape = (n, rows, Tw, xb.shape[3])
        for i in range(a):
            by_col = [z[i][:, :, s:s + m * Tw:m] for s in range(a)]            # (n, t, Tw, C) views
            outs = [V[i, j].reshape(shape) for j in range(a)]
            combine(self.B_T, by_col, outs, scratch[:outs[0].size].reshape(shape))

    def output_tiles(self, M: np.ndarray, target: np.ndarray, Y1: np.ndarray, scratch: np.ndarray) -> None:
        """target (n, t*m, Tw*m, K) = A^T M A for every tile, M (alpha, alpha, n, t, Tw, K)."""
        m = self.m
        y1 = [Y1[u] for u in range(m)]
        combine(self.A_T, list(M), y1, scratch[:y1[0].size].reshape(y1[0].shape))
        for u in range(m):
            outs = [target[:, u::m, v::m] for v in range(m)]
            combine(self.A_T, list(y1[u]), outs, scratch[:outs[0].size].reshape(outs[0].shape))

    def gradient_tiles(self, d: np.ndarray, dM: np.ndarray, T: np.ndarray, scratch: np.ndarray) -> None:
        """dM[i, j] = (A dY A^T)[i, j] for every m x m tile of d (n, t*m, Tw*m, K)."""
        m, a = self.m, self.alpha
        loops = compiled.loops()
        if loops is not None:                         # both directions in one pass, tile by tile
            loops.winograd_gradient(d, dM.reshape(a, a, -1, d.shape[3]), m, *self.terms("gradient", dM.dtype))
            return
        A = self.A_T.T
        t = [T[u] for u in range(m)]                                             # (alpha, n, t, Tw, K)
        for u in range(m):
            cols = [d[:, u::m, v::m] for v in range(m)]
            combine(A, cols, list(t[u]), scratch[:t[u][0].size].reshape(t[u][0].shape))
        for j in range(a):
            outs = [dM[i, j] for i in range(a)]
            combine(A, [t[u][j] for u in range(m)], outs, scratch[:outs[0].size].reshape(outs[0].shape))

    # --- passes -----------------------------------------------------------------------------
    def _buffers(self, n: int, t: int, Tw: int, C: int, K: int, dtype) -> list[np.ndarray]:
        """This thread's workspace carved into V, Z, M, Y1 and scratch for a block of t
        tile rows of n images."""
        space = runtime.workspace(self._need(n, t, Tw, C, K), dtype)
        return [space[start:start + size] for size, start in self._carve(n, t, Tw, C, K)]

    def _carve(self, n: int, t: int, Tw: int, C: int, K: int) -> list[tuple[int, int]]:
        a, m = self.alpha, self.m
        tiles, band = n * t * Tw, n * t * (Tw * m + 2) * C
        sizes = [a * a * tiles * C, a * band, a * a * tiles * K, m * a * tiles * K,
                 max(band, a * tiles * K, tiles * max(C, K))]
        starts = np.cumsum([0] + sizes[:-1])
        return [(size, int(start)) for size, start in zip(sizes, starts)]

    def _need(self, n: int, t: int, Tw: int, C: int, K: int) -> int:
        size, start = self._carve(n, t, Tw, C, K)[-1]
        return size + start

    def convolve(self, xp: np.ndarray, U: np.ndarray, bias: np.ndarray | None, scale: np.ndarray | None = None,
                 relu: bool = False) -> np.ndarray:
        """CONV of tile-padded NHWC xp by transformed filters U: (N, Th*m, Tw*m, K), each
        channel times scale before the bias, and max(0, .) of it with relu=True."""
        m, a = self.m, self.alpha
        N, Hp, Wp, C = xp.shape
        K = U.shape[2]
        Th, Tw = (Hp - 2) // m, (Wp - 2) // m
        out = np.empty((N, Th * m, Tw * m, K), dtype=np.result_type(xp, U))

        def run(block: Block) -> None:
            n0, n1, t0, t1 = block
            n, t = n1 - n0, t1 - t0
            tiles = n * t * Tw
            V, Z, M, Y1, scratch = self._buffers(n, t, Tw, C, K, out.dtype)
            V, M = V.reshape(a, a, tiles, C), M.reshape(a * a, tiles, K)
            self.input_tiles(xp[n0:n1, t0 * m:t1 * m + 2], Tw, V, Z.reshape(a, n, t, Wp, C), scratch)
            np.matmul(V.reshape(a * a, tiles, C), U, out=M)
            target = out[n0:n1, t0 * m:t1 * m]
            loops = compiled.loops()
            if loops is not None:                 # A^T M A and the epilogue in one pass
                factor = np.ones(K, out.dtype) if scale is None else scale.astype(out.dtype, copy=False)
                shift = np.zeros(K, out.dtype) if bias is None else bias.astype(out.dtype, copy=False)
                if m == 2:
                    loops.winograd2_output(M.reshape(a, a, tiles, K), target, factor, shift, relu)
                else:
                    loops.winograd_output(M.reshape(a, a, tiles, K), target, m, *self.terms("output", out.dtype),
                                          factor, shift, relu)
                return
            self.output_tiles(M.reshape(a, a, n, t, Tw, K), target, Y1.reshape(m, a, n, t, Tw, K), scratch)
            epilogue(target, slice(None), scale, bias, relu)

        runtime.run_blocks(run, self.blocks(N, Th, Tw, max(C, K), xp.itemsize))
        return out

    def fuses_add(self, w: Window) -> bool:
        return False

    def forward(self, xp: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, w: Window,
                scale: np.ndarray | None = None, relu: bool = False) -> np.ndarray:
        out = self.convolve(xp, self.filters(weight), bias, scale, relu)
        return nchw(_cropped(out, w.out))

    def backward(self, xp: np.ndarray, dout: np.ndarray, weight: np.ndarray, has_bias: bool, w: Window,
                 input_grad: bool) -> tuple[np.ndarray | None, np.ndarray, np.ndarray | None]:
        d = contiguous_nhwc(dout)              # the tiles read it channels-last (a copy only if it isn't)
        db = bias_grad(d) if has_bias else None
        dweight = self._filter_gradient(xp, d)
        dx = None
        if input_grad:
            flipped = weight[:, :, ::-1, ::-1].transpose(1, 0, 2, 3)           # (D1, K, 3, 3)
            full = w.full_padding                                              # 2 - P
            dx = nchw(_cropped(self.convolve(self.padded(d, full, (w.H, w.W)), self.filters(flipped), None),
                               (w.H, w.W)))
        return dx, dweight, db

    def _filter_gradient(self, xp: np.ndarray, d: np.ndarray) -> np.ndarray:
        """dW (K, D1, 3, 3) from the input tiles and dY: dU[p] = V[p]^T dM[p], dg = G^T dU G."""
        m, a = self.m, self.alpha
        N, Hp, Wp, C = xp.shape
        K = d.shape[3]
        Th, Tw = (Hp - 2) // m, (Wp - 2) // m
        H2, W2 = d.shape[1:3]
        if (H2, W2) != (Th * m, Tw * m):                                       # dY in whole tiles
            whole = np.zeros((N, Th * m, Tw * m, K), dtype=d.dtype)
            whole[:, :H2, :W2] = d
            d = whole

        def run(block: Block) -> np.ndarray:
            n0, n1, t0, t1 = block
            n, t = n1 - n0, t1 - t0
            tiles = n * t * Tw
            V, Z, dM, T, scratch = self._buffers(n, t, Tw, C, K, d.dtype)
            V, dM = V.reshape(a, a, tiles, C), dM.reshape(a, a, n, t, Tw, K)
            self.input_tiles(xp[n0:n1, t0 * m:t1 * m + 2], Tw, V, Z.reshape(a, n, t, Wp, C), scratch)
            self.gradient_tiles(d[n0:n1, t0 * m:t1 * m], dM, T.reshape(m, a, n, t, Tw, K), scratch)
            return np.matmul(V.reshape(a * a, tiles, C).transpose(0, 2, 1), dM.reshape(a * a, tiles, K))

        dU, = runtime.run_blocks(run, self.blocks(N, Th, Tw, max(C, K), xp.itemsize), fold=add_into)
        return self.filter_gradient(dU)

    # --- the memory model -----------------------------------------------------------------
    def memory(self, w: Window, n: int, e: int) -> Cost:
        """Keeps the tile-padded input; forward makes the transformed filters U and a
        whole-tile output (cropped by a copy when the tiles overhang); backward makes dY
        in whole tiles (when they overhang), a dU per thread, the padded dY, the flipped
        filters' U and a whole-tile dX (cropped likewise)."""
        m = self.m
        Th, Tw = self.tiles(w.out)
        U = self.alpha ** 2 * w.C * w.K * e
        xp = n * (Th * m + 2) * (Tw * m + 2) * w.C * e
        tiled_out = n * Th * m * Tw * m * w.K * e
        overhang = (Th * m, Tw * m) != w.out
        a_out = n * w.K * w.out[0] * w.out[1] * e
        fwd = xp + U + tiled_out + (a_out if overhang else 0)
        Bh, Bw = self.tiles((w.H, w.W))
        d_padded = n * (Bh * m + 2) * (Bw * m + 2) * w.K * e
        dx_tiled = n * Bh * m * Bw * m * w.C * e
        dx_crop = n * w.C * w.H * w.W * e if (Bh * m, Bw * m) != (w.H, w.W) else 0
        back = (tiled_out if overhang else 0) + runtime.options.threads * U + U + d_padded + dx_tiled + dx_crop
        return xp, fwd, back

    def workspace(self, w: Window, n: int, e: int) -> int:
        need = 0
        for (C, K), out in (((w.C, w.K), w.out), ((w.K, w.C), (w.H, w.W))):   # forward and dX's pass
            Th, Tw = self.tiles(out)
            cut = self.blocks(n, Th, Tw, max(C, K), e)
            n0, n1, t0, t1 = cut[0]
            threads = min(runtime.options.threads, len(cut))              # a workspace each
            need = max(need, threads * self._need(n1 - n0, t1 - t0, Tw, C, K))
        return need * e


def _cropped(out: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The H2 x W2 part of a whole-tile result, contiguous (a copy only when tiles overhang)."""
    if out.shape[1:3] == size:
        return out
    return np.ascontiguousarray(out[:, :size[0], :size[1]])


WINOGRAD2 = register("conv", Winograd(2))
register("conv", Winograd(4))
