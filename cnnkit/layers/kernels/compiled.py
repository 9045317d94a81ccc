"""Compiled loops for batch norm (numba, the optional extra ``cnnkit[fast]``).

Batch norm in NumPy is a handful of whole-block passes (a column sum, a subtraction, a
square, a multiply, an add, a compare: each reads and writes the block), bound by the
number of operations rather than the arithmetic (measured: 2-2.5x PyTorch's time, whose
two fused loops read the block once each). These loops make the same passes in one read
each: forward reads x for the statistics, then reads x and writes y; backward reads dY
and x for the two sums, then reads them again and writes dX. The fused ReLU's mask is
not kept: y > 0 is computed again from x, by the same float32 arithmetic as forward.

Each loop works on one block of rows (positions) by (channels), serially and without
the GIL, so the runtime's threads share the blocks exactly as they share NumPy's
(results depend on the thread count, not on scheduling). Without numba, or with
``cnnkit.engine(compiled=False)``, batch norm makes its NumPy passes; the two agree
within float32 rounding (sums are added in a different order), which tests hold.
"""

from __future__ import annotations

from typing import Any

_loops: Any = None     # the compiled functions, made on first use (numba's import costs 0.3 s)
_missing = False


def batch_norm_loops() -> Any:
    """The compiled batch-norm loops (a namespace), or None without numba."""
    global _loops, _missing
    if _loops is None and not _missing:
        try:
            import numba
        except ImportError:
            _missing = True
            return None
        _loops = _compile(numba)
    return _loops


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
                out[i, j] = y if (y > zero or not relu) else zero

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

    return types.SimpleNamespace(statistics=statistics, affine=affine, gradient_sums=gradient_sums,
                                 input_gradient=input_gradient)
