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
* a CONV's epilogue is y = max(0, y * scale + bias) in place, in one pass instead of three
  (with a residual block's shortcut added before the ReLU, in eval mode);
* a residual block's out = max(0, a + b), with the ReLU's mask, in one pass instead of three;
* the shifted lowering's col2im (dX of an image-like input): its adds, one NumPy call per
  channel and kernel offset, in one call per block;
* Winograd's transforms (input tiles, output tiles with the epilogue, dY's tiles) for
  F(2x2, 3x3) and F(4x4, 3x3), tile by tile, in one pass each;
* max pooling: the F*F offsets' maximum (and switches) in one pass instead of four
  NumPy operations per offset, and backward's routing of each gradient to its switch;
* Adam's update (optim.Adam): a dozen whole-chunk NumPy operations in one pass.

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
    f.scale_shift_add_relu(x[None], v, v, x[None], True)
    f.scale_shift_relu_rows(np.ones((1, 4, 2), np.float32), v, v, True)
    f.add_relu(v, v, np.empty_like(v), True, np.empty(4, bool))
    cells, sw = np.ones((1, 2, 2, 4), np.float32), np.zeros((1, 1, 1, 4), np.uint8)
    f.max_pool(cells, np.empty((1, 1, 1, 4), np.float32), 2, 2, 2, 2)
    f.max_pool_switches(cells, np.empty((1, 1, 1, 4), np.float32), sw, 2, 2, 2, 2)
    f.max_pool_route(np.zeros_like(cells), np.ones((1, 1, 1, 4), np.float32), sw, 2, 2, 2, 2, False)
    one = np.float32(1)
    f.adam(v.copy(), v, v.copy(), v.copy(), one, one, one, one, one, one, one, one)
    tiles = np.ones((4, 4, 1, 4), np.float32)
    f.winograd2_input(np.ones((1, 4, 4, 4), np.float32), tiles)
    f.winograd2_output(tiles, np.empty((1, 2, 2, 4), np.float32), v, v, True)
    from .winograd import Winograd
    for m in (2, 4):
        a, lowering = m + 2, Winograd(m)
        tiles = np.ones((a, a, 1, 4), np.float32)
        f.winograd_input(np.ones((1, a, a, 4), np.float32), tiles, m, *lowering.terms("input", np.float32))
        f.winograd_output(tiles, np.empty((1, m, m, 4), np.float32), m, *lowering.terms("output", np.float32),
                          v, v, True)
        f.winograd_gradient(np.ones((1, m, m, 4), np.float32), tiles, m, *lowering.terms("gradient", np.float32))
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

    # error_model="numpy": a float division by zero gives inf or nan as NumPy's does, where
    # numba's default raises, and checks each division for it, which keeps LLVM from
    # vectorising the loop (Adam's update: 27 ms -> 10 ms for 11M numbers)
    jit = numba.njit(nogil=True, cache=True, error_model="numpy")

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
    def scale_shift_add_relu(t, scale, shift, a, relu):
        """t = max(0, (t * scale + shift) + a) in place, t and a (A, B, K): the epilogue of a
        residual block's last CONV, its sum with the shortcut made while the block is in cache."""
        A, B, K = t.shape
        zero = t.dtype.type(0)
        for i in range(A):
            for j in range(B):
                for k in range(K):
                    y = (t[i, j, k] * scale[k] + shift[k]) + a[i, j, k]
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

    # F(2x2, 3x3)'s input and output transforms written out: 1.3-2x faster than the general
    # loops below at 32-256 channels (measured; docs/bench.md), the same numbers.
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

    # Winograd's transforms F(m x m, 3 x 3), tile by tile, the channels innermost: each
    # output is a sum of terms coefficient * input, terms (index, coefficient) as the rows of
    # winograd.terms() list them, added in winograd.combine's order (rows first, then
    # columns; no fused multiply-add), so the same numbers as its passes.
    @jit
    def winograd_input(xb, V, m, index, coef, count):
        """V[i, j, tile] = (B^T d B)[i, j] for every (m+2) x (m+2) tile d of xb
        (n, t*m + 2, Tw*m + 2, C), B^T's rows as terms."""
        n, Hb, Wb, C = xb.shape
        a = index.shape[0]
        t, Tw = (Hb - 2) // m, (Wb - 2) // m
        Z = np.empty((a, a, C), dtype=V.dtype)
        for b in range(n):
            for ty in range(t):
                for tx in range(Tw):
                    tile = (b * t + ty) * Tw + tx
                    y, x = m * ty, m * tx
                    for i in range(a):                    # B^T along the rows of each column s
                        for s in range(a):
                            z = Z[i, s]
                            src, c0 = xb[b, y + index[i, 0], x + s], coef[i, 0]
                            for c in range(C):
                                z[c] = c0 * src[c]
                            for k in range(1, count[i]):
                                src, ck = xb[b, y + index[i, k], x + s], coef[i, k]
                                for c in range(C):
                                    z[c] = z[c] + ck * src[c]
                    for i in range(a):                    # then along the columns
                        for j in range(a):
                            v = V[i, j, tile]
                            z, c0 = Z[i, index[j, 0]], coef[j, 0]
                            for c in range(C):
                                v[c] = c0 * z[c]
                            for k in range(1, count[j]):
                                z, ck = Z[i, index[j, k]], coef[j, k]
                                for c in range(C):
                                    v[c] = v[c] + ck * z[c]

    @jit
    def winograd_output(M, target, m, index, coef, count, scale, shift, relu):
        """target (n, t*m, Tw*m, K) = A^T M A for every tile, M (a, a, tiles, K), A^T's rows as
        terms, then the epilogue max(0, . * scale + shift) per channel (relu)."""
        n, H, W, K = target.shape
        a = M.shape[0]
        t, Tw = H // m, W // m
        zero = target.dtype.type(0)
        Y1 = np.empty((m, a, K), dtype=target.dtype)
        o = np.empty(K, dtype=target.dtype)
        for b in range(n):
            for ty in range(t):
                for tx in range(Tw):
                    tile = (b * t + ty) * Tw + tx
                    for u in range(m):                    # A^T along the rows of each column j
                        for j in range(a):
                            y1 = Y1[u, j]
                            src, c0 = M[index[u, 0], j, tile], coef[u, 0]
                            for k in range(K):
                                y1[k] = c0 * src[k]
                            for q in range(1, count[u]):
                                src, cq = M[index[u, q], j, tile], coef[u, q]
                                for k in range(K):
                                    y1[k] = y1[k] + cq * src[k]
                    for u in range(m):                    # then along the columns, and the epilogue
                        for v in range(m):
                            y1, c0 = Y1[u, index[v, 0]], coef[v, 0]
                            for k in range(K):
                                o[k] = c0 * y1[k]
                            for q in range(1, count[v]):
                                y1, cq = Y1[u, index[v, q]], coef[v, q]
                                for k in range(K):
                                    o[k] = o[k] + cq * y1[k]
                            out = target[b, m * ty + u, m * tx + v]
                            for k in range(K):
                                r = o[k] * scale[k] + shift[k]
                                out[k] = zero if (relu and r < zero) else r

    @jit
    def winograd_gradient(d, dM, m, index, coef, count):
        """dM[i, j, tile] = (A dY A^T)[i, j] for every m x m tile of d (n, t*m, Tw*m, K), A's
        rows (a of them, m wide) as terms: along the columns first, then the rows."""
        n, H, W, K = d.shape
        a = index.shape[0]
        t, Tw = H // m, W // m
        T = np.empty((m, a, K), dtype=dM.dtype)
        for b in range(n):
            for ty in range(t):
                for tx in range(Tw):
                    tile = (b * t + ty) * Tw + tx
                    y, x = m * ty, m * tx
                    for u in range(m):
                        for j in range(a):
                            row = T[u, j]
                            src, c0 = d[b, y + u, x + index[j, 0]], coef[j, 0]
                            for k in range(K):
                                row[k] = c0 * src[k]
                            for q in range(1, count[j]):
                                src, cq = d[b, y + u, x + index[j, q]], coef[j, q]
                                for k in range(K):
                                    row[k] = row[k] + cq * src[k]
                    for i in range(a):
                        for j in range(a):
                            out = dM[i, j, tile]
                            src, c0 = T[index[i, 0], j], coef[i, 0]
                            for k in range(K):
                                out[k] = c0 * src[k]
                            for q in range(1, count[i]):
                                src, cq = T[index[i, q], j], coef[i, q]
                                for k in range(K):
                                    out[k] = out[k] + cq * src[k]

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

    @jit
    def adam(p, g, m, v, beta1, beta2, one_minus_beta1, one_minus_beta2, step_size, v_correction, eps, decay):
        """One Adam step over flat arrays in place: optim.Adam's NumPy operations in their
        order, scalars in the arrays' dtype (so the same numbers), one read of p, g, m, v."""
        for i in range(p.size):
            gi = g[i]
            if decay != 0:
                gi = gi + decay * p[i]
            mi = m[i] * beta1
            mi = mi + one_minus_beta1 * gi
            m[i] = mi
            vi = v[i] * beta2
            vi = vi + one_minus_beta2 * gi * gi
            v[i] = vi
            denom = np.sqrt(vi) / v_correction + eps
            p[i] = p[i] - step_size * (mi / denom)

    @jit
    def max_pool(xp, out, Fh, Fw, Sh, Sw):
        """out[b, y, x] = max of the window at (y*Sh, x*Sw) of padded NHWC xp: the offsets in
        pool.WindowOffsets' order with np.maximum's rule (a nan wins), in one pass."""
        n, Ho, Wo, C = out.shape
        for b in range(n):
            for y in range(Ho):
                for x in range(Wo):
                    o, first = out[b, y, x], xp[b, y * Sh, x * Sw]
                    for c in range(C):
                        o[c] = first[c]
                    for i in range(Fh):
                        for j in range(Fw):
                            if i + j == 0:
                                continue
                            src = xp[b, y * Sh + i, x * Sw + j]
                            for c in range(C):
                                v, m = src[c], o[c]
                                o[c] = v if (v > m or v != v) else m

    @jit
    def max_pool_switches(xp, out, switches, Fh, Fw, Sh, Sw):
        """max_pool, and each maximum's offset i*Fw + j into switches: the last offset that
        was strictly greater than every one before it (ties keep the first; a nan does not
        move the switch), as pool.WindowOffsets' NumPy passes record it. The offsets are
        kept in 32-bit lanes like the float32 compares' (AVX2 vectorises that select, not
        one into uint8) and narrowed once per cell."""
        n, Ho, Wo, C = out.shape
        chosen = np.empty(C, np.int32)
        for b in range(n):
            for y in range(Ho):
                for x in range(Wo):
                    o, s, first = out[b, y, x], switches[b, y, x], xp[b, y * Sh, x * Sw]
                    for c in range(C):
                        o[c] = first[c]
                        chosen[c] = 0
                    for i in range(Fh):
                        for j in range(Fw):
                            if i + j == 0:
                                continue
                            k = np.int32(i * Fw + j)
                            src = xp[b, y * Sh + i, x * Sw + j]
                            for c in range(C):
                                v, m = src[c], o[c]
                                above = v > m
                                o[c] = v if (above or v != v) else m
                                chosen[c] = k if above else chosen[c]
                    for c in range(C):
                        s[c] = chosen[c]

    @jit
    def max_pool_route(dxp, d, switches, Fh, Fw, Sh, Sw, assign):
        """Each gradient d[b, y, x, c] into the input cell its switch names, offset by offset
        as pool.WindowOffsets' NumPy passes add them (so the same sums); assign=True for
        windows that tile the input (each cell written once, zeros included)."""
        n, Ho, Wo, C = d.shape
        zero = d.dtype.type(0)
        for k in range(Fh * Fw):
            i, j = k // Fw, k % Fw
            kk = switches.dtype.type(k)
            for b in range(n):
                for y in range(Ho):
                    for x in range(Wo):
                        t, g, s = dxp[b, y * Sh + i, x * Sw + j], d[b, y, x], switches[b, y, x]
                        # selects, no branch per channel: AVX2 vectorises them (adding a
                        # +0 leaves every sum as it was: dxp starts at +0, never becomes -0)
                        if assign:
                            for c in range(C):
                                t[c] = g[c] if s[c] == kk else zero
                        else:
                            for c in range(C):
                                t[c] = t[c] + (g[c] if s[c] == kk else zero)

    return types.SimpleNamespace(adam=adam, max_pool=max_pool, max_pool_switches=max_pool_switches,
                                 max_pool_route=max_pool_route, statistics=statistics, affine=affine, gradient_sums=gradient_sums,
                                 input_gradient=input_gradient, scale_shift_relu=scale_shift_relu,
                                 scale_shift_add_relu=scale_shift_add_relu,
                                 scale_shift_relu_rows=scale_shift_relu_rows, add_relu=add_relu,
                                 winograd2_input=winograd2_input, winograd2_output=winograd2_output,
                                 winograd_input=winograd_input, winograd_output=winograd_output,
                                 winograd_gradient=winograd_gradient, add_shifted=add_shifted)
