"""CONV of few channels at stride 1 computed directly, by loops compiled from LLVM IR (``jit``).

The notes' sum over each receptive field, with no X_col at all: a tile of output pixels x
16 filters stays in the CPU's vector registers while the field streams past (how oneDNN
computes the CONVs PyTorch runs on a CPU). Where a CONV has at most 32 input and output
channels, its im2col GEMM is 16-32 columns wide and OpenBLAS runs it at 60-66 GFLOP/s per
core here, while the compiled tile runs at 80-90 (docs/bench.md, thirteenth session).

* forward: out = conv(xp, W) in blocks of whole images (or bands of rows of one image)
  shared between the engine's threads, the epilogue (scale, bias, shortcut, ReLU) on each
  block while it is in cache;
* backward: dX is the notes' "convolution with spatially flipped filters" of dY (padded by
  F - 1 - P), the same loop; dW[i, j, c, k] = sum over pixels of X at offset (i, j) times
  dY, a second loop, per block of images, each block's sum folded in block order (so the
  result does not depend on the threads).

float32 only (other dtypes go to the blocked lowering), 16k filters; dX of 8 or 16k
channels, a few-channel input's computed wider aside. Results equal the exact sum within
float32 rounding (tests/layers/test_direct.py).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ..geometry import Window
from ..im2col import Block, block_input, block_rows, row_blocks
from ..layout import lives_nchw, nchw, nhwc, pad_nchw, pad_nhwc, padded_nhwc
from ..runtime import runtime
from . import Cost, jit, register
from .blocked import Blocked, add_into, bias_grad, epilogue


def filter_taps(weight: np.ndarray, width: int) -> np.ndarray:
    """Filters (K, C, Fh, Fw) as (Fh, Fw, C, width): the loop's order, zero filters past K."""
    K, C, Fh, Fw = weight.shape
    taps = np.zeros((Fh, Fw, C, width), dtype=np.float32)
    taps[..., :K] = weight.transpose(2, 3, 1, 0)
    return taps


def flipped_taps(weight: np.ndarray, width: int) -> np.ndarray:
    """The transposed CONV's filters for dX: (Fh, Fw, K, width), spatially flipped, zero past C."""
    K, C, Fh, Fw = weight.shape
    taps = np.zeros((Fh, Fw, K, width), dtype=np.float32)
    taps[..., :C] = weight[:, :, ::-1, ::-1].transpose(2, 3, 0, 1)
    return taps


def padded_width(n: int) -> int:
    """n channels rounded up to what the loops' tiles hold: 8, or 16k."""
    step = 8 if n <= 8 else 8 * jit.VECTORS
    return -(-n // step) * step


def image_blocks(N: int, rows: int, row_bytes: int, budget: int) -> list[Block]:
    """Blocks of whole images, or bands of one image's rows, of at most `budget` bytes, in
    one run per thread (row_blocks)."""
    return list(row_blocks(N, rows, row_bytes, max(row_bytes, budget), runtime.options.threads))


def forward_blocks(N: int, H2: int, W2: int, K: int) -> list[Block]:
    """Four blocks of output rows per thread (the threads take them as they finish): whole
    images, or bands of rows when the batch has fewer images."""
    threads = runtime.options.threads
    row_bytes = W2 * K * 4
    return image_blocks(N, H2, row_bytes, -(-N * H2 * row_bytes // (4 * threads)))


def convolve(xp: np.ndarray, taps: np.ndarray, out: np.ndarray, w: Window, cut: list[Block],
             finish: Callable[[Block, np.ndarray], None] | None = None) -> None:
    """out (N, H2, W2, K) = the stride-1 CONV of padded NHWC xp with taps (Fh, Fw, C, width)
    at w's dilation, block by block; finish(block, rows) sees each block's (rows, K) output
    while it is in cache."""
    K, width = out.shape[3], taps.shape[3]

    def run(block: Block) -> None:
        n0, n1, h0, h1 = block
        x = block_input(xp, block, w.F[0], 1, w.dilation[0])
        target = out[n0:n1, h0:h1]
        if width == K:
            jit.conv(x, taps, target, w.dilation)
        else:                               # filters padded to 8 or 16k: computed aside, then copied
            size = target.size // K * width
            wide = runtime.workspace(size, np.float32)[:size].reshape(*target.shape[:3], width)
            jit.conv(x, taps, wide, w.dilation)
            target[...] = wide[..., :K]
        if finish is not None:
            finish(block, target.reshape(-1, K))

    runtime.run_blocks(run, cut)


class Direct:
    """Direct loops compiled from LLVM IR: stride 1, any dilation, no groups, 16k filters.
    (Each forward re-arranges the filters, a few KB for these layers.)"""

    name = "direct"

    def why_not(self, w: Window) -> str | None:
        if not jit.available():
            return "it needs llvmlite (pip install 'cnnkit[fast]')"
        if w.S != (1, 1) or w.groups != 1:
            return f"it needs stride 1 and no groups (got S={w.S}, groups={w.groups})"
        if w.K % (8 * jit.VECTORS):
            return f"it needs a multiple of {8 * jit.VECTORS} filters (got K={w.K})"
        if min(w.full_padding) < 0:
            return f"it needs padding of at most dilation*(F - 1) (got P={w.P}, F={w.F}, dilation={w.dilation})"
        return None

    def pad(self, x: np.ndarray, w: Window) -> np.ndarray:
        """An (N, Hp, Wp, C) view of x zero-padded: padded NCHW as a user passes a batch (the
        loops read any layout, and an NCHW copy is a fast one), NHWC inside a network."""
        if x.dtype != np.float32 or not lives_nchw(x):
            return padded_nhwc(x, w.P)
        return nhwc(pad_nchw(x, w.P) if w.P != (0, 0) else x)

    def fuses_add(self, w: Window) -> bool:
        return True

    def forward(self, xp: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, w: Window,
                scale: np.ndarray | None = None, relu: bool = False, add: np.ndarray | None = None) -> np.ndarray:
        if xp.dtype != np.float32 or weight.dtype != np.float32:
            return _blocked.forward(xp, weight, bias, w, scale, relu, add)
        N, (H2, W2), K = xp.shape[0], w.out, w.K
        out = np.empty((N, H2, W2, K), dtype=np.float32)
        shortcut = None if add is None else nhwc(add)

        def finish(block: Block, rows: np.ndarray) -> None:
            epilogue(rows, slice(None), scale, bias, relu,
                     add=None if shortcut is None else block_rows(shortcut, block))

        convolve(xp, filter_taps(weight, K), out, w, forward_blocks(N, H2, W2, K), finish)
        return nchw(out)

    def backward(self, xp: np.ndarray, dout: np.ndarray, weight: np.ndarray, has_bias: bool, w: Window,
                 input_grad: bool) -> tuple[np.ndarray | None, np.ndarray, np.ndarray | None]:
        if xp.dtype != np.float32 or dout.dtype != np.float32 or weight.dtype != np.float32:
            return _blocked.backward(xp, dout, weight, has_bias, w, input_grad)
        N, (H2, W2), (Fh, Fw), C, K = dout.shape[0], w.out, w.F, w.C, w.K
        dx = None
        if input_grad:      # dY padded once: the flipped CONV's input, and (its middle) dW's dY
            (Qh, Qw) = w.full_padding
            d_padded = pad_nhwc(nhwc(dout), (Qh, Qw)) if max(Qh, Qw) > 0 else np.ascontiguousarray(nhwc(dout))
            d = d_padded[:, Qh:Qh + H2, Qw:Qw + W2]
            dx = np.empty((N, w.H, w.W, C), dtype=np.float32)
            convolve(d_padded, flipped_taps(weight, padded_width(C)), dx, w, forward_blocks(N, w.H, w.W, C))
        else:
            d_padded = d = np.ascontiguousarray(nhwc(dout))          # (N, H2, W2, K)
        db = bias_grad(d_padded) if has_bias else None               # the padding adds only zeros
        # dW by blocks of images (the loop takes each in bands that stay in L1), summed in order
        chunks = forward_blocks(N, H2, W2, K)

        def run(chunk: Block) -> np.ndarray:
            n0, n1, h0, h1 = chunk
            part = np.zeros((Fh, Fw, C, K), dtype=np.float32)
            jit.weight_grad(block_input(xp, chunk, Fh, 1, w.dilation[0]), d[n0:n1, h0:h1], part, w.dilation)
            return part

        dw, = runtime.run_blocks(run, chunks, fold=add_into)
        return (None if dx is None else nchw(dx)), dw.transpose(3, 2, 0, 1), db

    def memory(self, w: Window, n: int, e: int) -> Cost:
        """The padded input is kept; forward makes the output; backward pads dY (for dX)
        and makes dX and one dW per chunk in flight (a few: counted as the threads')."""
        (H2, W2), K, C = w.out, w.K, w.C
        xp = n * (w.H + 2 * w.P[0]) * (w.W + 2 * w.P[1]) * C * e
        a_out, a_in = n * K * H2 * W2 * e, n * C * w.H * w.W * e
        taps = w.F[0] * w.F[1] * C * padded_width(max(C, K)) * e
        full = w.full_padding
        dpad = n * (H2 + 2 * full[0]) * (W2 + 2 * full[1]) * K * e
        copy_buffer = 8192 * e      # NumPy copies a strided view (the padding) through 8192 items
        return (xp, xp + a_out + taps + copy_buffer,
                a_out + dpad + a_in + taps * (1 + runtime.options.threads) + copy_buffer)

    def workspace(self, w: Window, n: int, e: int) -> int:
        """Where C is not 8 or 16k, dX of a block is computed that wide aside."""
        if padded_width(w.C) == w.C:
            return 0
        return n * w.H * w.W * padded_width(w.C) * e


_blocked = Blocked()
register("conv", Direct())
