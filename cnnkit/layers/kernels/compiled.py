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
* a residual block's out = max(0, a + b), with the ReLU's mask, in one pass instead of three.

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

    return types.SimpleNamespace(statistics=statistics, affine=affine, gradient_sums=gradient_sums,
                                 input_gradient=input_gradient, scale_shift_relu=scale_shift_relu,
                                 scale_shift_relu_rows=scale_shift_relu_rows, add_relu=add_relu)
