"""Compiled loops (numba, the optional extra ``cnnkit[fast]``) for the passes NumPy can only
make as several whole-array operations.

Batch norm, a CONV's epilogue (scale, bias, ReLU) and a residual block's sum and ReLU are
each a handful of NumPy operations (a column sum, a subtraction, a multiply, an add, a
compare: each reads and writes the whole block), bound by the number of operations
rather than by the arithmetic (measured: batch norm took 2-2.5x PyTorch's time, whose
fused loops read the block once). These loops make each pass in one read:

* batch norm forward reads x for the statistics, then reads x and writes y; backward
  reads dY and x for the two sums, then reads them again and writes dX. The fused ReLU's
  mask is not kept: y > 0 is computed again from x by the same float32 arithmetic;
* a CONV's epilogue is y = max(0, y * scale + bias) in place, in one pass instead of three;
* a residual block's out = max(0, a + b), with the ReLU's mask, in one pass instead of three;
* the shifted lowering's col2im (dX of an image-like input): its adds, one NumPy call per
  channel and kernel offset, in one call per block.

Each loop works on one block, serially and without the GIL, so the runtime's threads
share the blocks exactly as they share NumPy's (results depend on the thread count, not
on scheduling). Without numba, or with ``cnnkit.engine(compiled=False)``, the NumPy passes
run: the epilogue and the residual sum give the same numbers (the same float32
operations in the same order), batch norm the same within float32 rounding (its sums are
added in another order), which tests hold.
"""

from __future__ import annotations

from typing import Any

from ..runtime import runtime

_loops: Any = None     # the compiled functions, made on first use (numba's import costs 0.3 s)
_missing = False


def loops() -> Any:
    """The compiled loops (a namespace), or None: without numba, or while the engine says
    compiled=False."""
    global _loops, _missing
    if not runtime.options.compiled:
        return None
    if _loops is None and not _missing:
        try:
            import numba
        except ImportError:
            _missing = True
            return None
        _loops = _compile(numba)
    return _loops


def warm_up() -> None:
    """Compile the loops for float32 now (numba keeps them on disk for the next process),
    so that a first training step does not compile them: the memory benchmark counts
    this as the library's code, as PyTorch's is."""
    import numpy as np

    f = loops()
    if f is None:
        return
    x, v = np.ones((2, 4), np.float32), np.ones(4, np.float32)
    f.affine(x, v, v, v, True, np.empty_like(x))
    f.gradient_sums(x, x, v, v, v, True)
    f.input_gradient(x, x, v, v, v, True, v, v, v, np.empty_like(x))
    f.statistics(x, v)
    f.scale_shift_relu(x[None], v, v, True)
    f.scale_shift_relu_rows(np.ones((1, 4, 2), np.float32), v, v, True)
    f.add_relu(v, v, np.empty_like(v), True, np.empty(4, bool))
    tiles = np.ones((4, 4, 1, 4), np.float32)
    f.winograd2_input(np.ones((1, 4, 4, 4), np.float32), tiles)
    f.winograd2_output(tiles, np.empty((1, 2, 2, 4), np.float32), v, v, True)
    f.winograd2_gradient(np.ones((1, 2, 2, 4), np.float32), tiles)
    f.add_shifted(np.zeros((1, 2, 2, 1, 4), np.float32)[:, :, :, :, :3], np.ones((1, 2, 2, 1, 3), np.float32))


def version() -> str:
    """'numba X.Y' when the compiled loops run, '' when NumPy's passes do."""
    if loops() is None:
        return ""
    import numba
    return f"numba {numba.__version__}"


def _compile(numba: Any) -> Any:
    import types

    import numpy as np

    jit = numba.njit(nogil=True, cache=True)

    @jit
    def statistics(x, shift):
        """(2, C) float64: column sums of s = x - shift and of s^2."""
        m, c = x.shape
        sums = np.zeros((2, c))
        for i in range(m):
            for j in range(c):
                s = np.float64(x[i, j] - shift[j])
                sums[0, j] += s
                sums[1, j] += s * s
        return sums

    @jit
    def affine(x, shift, a, b, relu, out):
        """out = a (x - shift) + b per column, then max(0, .) if relu."""
        m, c = x.shape
        zero = out.dtype.type(0)
        for i in range(m):
            for j in range(c):
                y = (x[i, j] - shift[j]) * a[j] + b[j]
                out[i, j] = zero if (relu and y < zero) else y     # NaN stays NaN, as np.maximum

    @jit
    def gradient_sums(dy, x, shift, a, b, relu):
        """(2, C) float64: column sums of dY' and of dY' (x - shift), dY' = dY where the
        forward's y > 0 (relu) or dY."""
        m, c = x.shape
        zero = dy.dtype.type(0)
        sums = np.zeros((2, c))
        for i in range(m):
            for j in range(c):
                s = x[i, j] - shift[j]
                g = dy[i, j]
                if relu and not (s * a[j] + b[j] > zero):
                    g = zero
                sums[0, j] += g
                sums[1, j] += np.float64(g) * s
        return sums

    @jit
    def input_gradient(dy, x, shift, a, b, relu, p, q, r, dx):
        """dX = p dY' + q (x - shift) + r per column (dY' as in gradient_sums)."""
        m, c = x.shape
        zero = dy.dtype.type(0)
        for i in range(m):
            for j in range(c):
                s = x[i, j] - shift[j]
                g = dy[i, j]
                if relu and not (s * a[j] + b[j] > zero):
                    g = zero
                dx[i, j] = g * p[j] + s * q[j] + r[j]

    @jit
    def scale_shift_relu(t, scale, shift, relu):
        """t = max(0, t * scale + shift) in place, t (A, B, K), per channel k (the last axis)."""
        A, B, K = t.shape
        zero = t.dtype.type(0)
        for i in range(A):
            for j in range(B):
                for k in range(K):
                    y = t[i, j, k] * scale[k] + shift[k]
                    t[i, j, k] = zero if (relu and y < zero) else y

    @jit
    def scale_shift_relu_rows(t, scale, shift, relu):
        """The same for t (A, K, B), channels along the middle axis (a CONV's NCHW output)."""
        A, K, B = t.shape
        zero = t.dtype.type(0)
        for i in range(A):
            for k in range(K):
                for j in range(B):
                    y = t[i, k, j] * scale[k] + shift[k]
                    t[i, k, j] = zero if (relu and y < zero) else y

    @jit
    def add_relu(a, b, out, relu, mask):
        """out = a + b, then max(0, .) if relu, and mask = out > 0 if mask is not empty (1-D)."""
        zero = out.dtype.type(0)
        keep = mask.size > 0
        for i in range(out.size):
            y = a[i] + b[i]
            if relu and y < zero:
                y = zero
            out[i] = y
            if keep:
                mask[i] = y > zero

    # Winograd F(2x2, 3x3)'s transforms, tile by tile, the channels innermost: the same
    # additions in the same order as winograd.combine's passes (rows first, then columns),
    # so the same numbers.
    @jit
    def winograd2_input(xb, V):
        """V[i, j, tile] = (B^T d B)[i, j] for every 4x4 tile d of xb (n, 2t+2, 2Tw+2, C)."""
        n, Hb, Wb, C = xb.shape
        t, Tw = (Hb - 2) // 2, (Wb - 2) // 2
        for b in range(n):
            for ty in range(t):
                for tx in range(Tw):
                    tile = (b * t + ty) * Tw + tx
                    y, x = 2 * ty, 2 * tx
                    for s in range(4):               # B^T along the rows of column s
                        for c in range(C):
                            d0, d1 = xb[b, y, x + s, c], xb[b, y + 1, x + s, c]
                            d2, d3 = xb[b, y + 2, x + s, c], xb[b, y + 3, x + s, c]
                            V[0, s, tile, c] = d0 - d2
                            V[1, s, tile, c] = d1 + d2
                            V[2, s, tile, c] = d2 - d1
                            V[3, s, tile, c] = d1 - d3
                    for i in range(4):               # then along the columns, in place
                        for c in range(C):
                            z0, z1, z2, z3 = V[i, 0, tile, c], V[i, 1, tile, c], V[i, 2, tile, c], V[i, 3, tile, c]
                            V[i, 0, tile, c] = z0 - z2
                            V[i, 1, tile, c] = z1 + z2
                            V[i, 2, tile, c] = z2 - z1
                            V[i, 3, tile, c] = z1 - z3

    @jit
    def winograd2_output(M, target, scale, shift, relu):
        """target (n, 2t, 2Tw, K) = A^T M A for every tile, M (4, 4, tiles, K), then the
        epilogue max(0, . * scale + shift) per channel (relu)."""
        n, H, W, K = target.shape
        t, Tw = H // 2, W // 2
        zero = target.dtype.type(0)
        y1 = np.empty((2, 4, K), dtype=target.dtype)
        for b in range(n):
            for ty in range(t):
                for tx in range(Tw):
                    tile = (b * t + ty) * Tw + tx
                    for j in range(4):               # A^T along the rows of column j
                        for k in range(K):
                            y1[0, j, k] = (M[0, j, tile, k] + M[1, j, tile, k]) + M[2, j, tile, k]
                            y1[1, j, k] = (M[1, j, tile, k] - M[2, j, tile, k]) - M[3, j, tile, k]
                    for u in range(2):               # then along the columns, and the epilogue
                        for k in range(K):
                            o0 = ((y1[u, 0, k] + y1[u, 1, k]) + y1[u, 2, k]) * scale[k] + shift[k]
                            o1 = ((y1[u, 1, k] - y1[u, 2, k]) - y1[u, 3, k]) * scale[k] + shift[k]
                            target[b, 2 * ty + u, 2 * tx, k] = zero if (relu and o0 < zero) else o0
                            target[b, 2 * ty + u, 2 * tx + 1, k] = zero if (relu and o1 < zero) else o1

    @jit
    def winograd2_gradient(d, dM):
        """dM[i, j, tile] = (A dY A^T)[i, j] for every 2x2 tile of d (n, 2t, 2Tw, K)."""
        n, H, W, K = d.shape
        t, Tw = H // 2, W // 2
        for b in range(n):
            for ty in range(t):
                for tx in range(Tw):
                    tile = (b * t + ty) * Tw + tx
                    y, x = 2 * ty, 2 * tx
                    for k in range(K):
                        # A along the columns of each row: (d0, d0 + d1, d0 - d1, -d1); then the rows
                        a0, a1, b0, b1 = d[b, y, x, k], d[b, y, x + 1, k], d[b, y + 1, x, k], d[b, y + 1, x + 1, k]
                        ta0, ta1, ta2, ta3 = a0, a0 + a1, a0 - a1, -a1
                        tb0, tb1, tb2, tb3 = b0, b0 + b1, b0 - b1, -b1
                        dM[0, 0, tile, k], dM[0, 1, tile, k], dM[0, 2, tile, k], dM[0, 3, tile, k] = ta0, ta1, ta2, ta3
                        dM[1, 0, tile, k], dM[1, 1, tile, k] = ta0 + tb0, ta1 + tb1
                        dM[1, 2, tile, k], dM[1, 3, tile, k] = ta2 + tb2, ta3 + tb3
                        dM[2, 0, tile, k], dM[2, 1, tile, k] = ta0 - tb0, ta1 - tb1
                        dM[2, 2, tile, k], dM[2, 3, tile, k] = ta2 - tb2, ta3 - tb3
                        dM[3, 0, tile, k], dM[3, 1, tile, k], dM[3, 2, tile, k], dM[3, 3, tile, k] = -tb0, -tb1, -tb2, -tb3

    @jit
    def add_shifted(target, values):
        """target[o] += values[o] for each kernel offset o = (c, i, j) in turn, target a
        (C, Fh, Fw, n, run) view whose offsets overlap: col2im of the shifted lowering,
        the adds of NumPy's loop in its order (so the same sums), in one call per block."""
        C, Fh, Fw, n, run = target.shape
        for c in range(C):
            for i in range(Fh):
                for j in range(Fw):
                    for b in range(n):
                        for t in range(run):
                            target[c, i, j, b, t] += values[c, i, j, b, t]

    return types.SimpleNamespace(statistics=statistics, affine=affine, gradient_sums=gradient_sums,
                                 input_gradient=input_gradient, scale_shift_relu=scale_shift_relu,
                                 scale_shift_relu_rows=scale_shift_relu_rows, add_relu=add_relu,
                                 winograd2_input=winograd2_input, winograd2_output=winograd2_output,
                                 winograd2_gradient=winograd2_gradient, add_shifted=add_shifted)
