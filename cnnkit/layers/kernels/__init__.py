"""Kernel strategies: how a layer's math is computed, swappable, held equal to the reference.

A layer says WHAT it computes (the notes' recipe, in the notes' symbols); a kernel says
HOW (blocks, layouts, threads). Every op has the reference loops of
``cnnkit.layers.reference`` and at least one fast kernel; tests hold each fast kernel
equal to the reference on the same cases.

CONV kernels are lowerings: they pad the input, lower receptive fields into rows of X_col
and multiply by W_row (forward), and give dW from the lowered input and dX by the
flipped-filter convolution or col2im (backward). The rule that picks one, per layer and
input size, is ``conv_lowering`` below. Pools, LRN and locally-connected layers have one
fast kernel each, beside the layer it computes.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from ...errors import CnnkitError
from ..geometry import Window
from ..runtime import runtime

Cost = tuple[int, int, int]   # bytes: (kept for backward, forward's transient, backward's transient)


class ConvLowering(Protocol):
    """How a CONV layer lowers its input and multiplies (the one interface of CONV kernels)."""

    name: str

    def why_not(self, w: Window) -> str | None:
        """None if this lowering computes this CONV, else the reason it doesn't."""

    def pad(self, x: np.ndarray, w: Window) -> np.ndarray:
        """NCHW x zero-padded by P, in the layout this lowering reads (kept for backward)."""

    def forward(self, xp: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, w: Window,
                scale: np.ndarray | None = None, relu: bool = False, add: np.ndarray | None = None) -> np.ndarray:
        """X_col . W_row^T (+ b), reshaped to the output volume (N, K, H2, W2). The eval-mode
        fusion of a following BN and ReLU: scale (K,) multiplies each output channel before
        b is added, and relu=True applies max(0, .), to each block while it is in cache.
        add= (N, K, H2, W2), channels-last in memory, is taken only where fuses_add(w): a
        residual block's shortcut, added before the ReLU."""

    def fuses_add(self, w: Window) -> bool:
        """Does forward take add= for this CONV (else the caller adds after it)?"""

    def backward(self, xp: np.ndarray, dout: np.ndarray, weight: np.ndarray, has_bias: bool, w: Window,
                 input_grad: bool) -> tuple[np.ndarray | None, np.ndarray, np.ndarray | None]:
        """(dX or None, dW in weight's shape, db or None) for dY = dout."""

    def memory(self, w: Window, n: int, itemsize: int) -> Cost:
        """Bytes this lowering keeps and makes for a batch of n (the memory model)."""

    def workspace(self, w: Window, n: int, itemsize: int) -> int:
        """Bytes of scratch it keeps between calls (the runtime's workspace)."""


class Kernel(Protocol):
    """How a pool, LRN or locally-connected layer computes forward and backward."""

    name: str

    def forward(self, layer: Any, x: np.ndarray) -> tuple[np.ndarray, Any]:
        """(output, what backward needs)."""

    def backward(self, layer: Any, saved: Any, dout: np.ndarray) -> tuple[np.ndarray | None, dict[str, np.ndarray]]:
        """(dX, parameter gradients)."""


_registry: dict[str, dict[str, Any]] = {}   # op -> {kernel name: kernel}, fast ones first


def register(op: str, kernel: Any) -> Any:
    """Make kernel available for op ('conv', 'pool', 'lrn', 'locally_connected')."""
    _registry.setdefault(op, {})[kernel.name] = kernel
    return kernel


def available(op: str) -> list[Any]:
    """Every kernel of op, the reference last."""
    kernels = list(_registry.get(op, {}).values())
    return sorted(kernels, key=lambda k: k.name == "reference")


def conv_lowering(w: Window, batch: int, nchw_input: bool = False, input_grad: bool = True) -> ConvLowering:
    """The rule that picks a CONV's lowering for an input size, batch and layout (and
    whether its backward gives dX):

    * the reference loops when the engine is told so (strategy='reference' or conv='reference');
    * a lowering named by ``cnnkit.engine(conv=...)``, if it computes this CONV;
    * 'pointwise' for a 1x1 stride-1 unpadded CONV of an input that lives NCHW
      (nchw_input: as a user passes a batch; inside a network activations live
      channels-last): per-image GEMMs W_row X_n, with no layout change;
    * 'direct' (loops compiled from LLVM IR, cnnkit[fast]) for a CONV wider than 1x1 of at
      most ``engine(direct_max_channels=...)`` (32) input and output channels at stride 1
      (``direct_pays``): its im2col GEMM would be 16-32 columns wide, which OpenBLAS runs
      well below its peak; for a dilated one of at most
      ``engine(direct_dilated_max_channels=...)`` (64), which saves the phases' copies; but
      not for an image's (1-4 channels) CONV whose dX is wanted, which 'shifted' gives for less;
    * 'shifted' for image-like inputs (1-4 channels) at stride 1 without groups: an NHWC
      receptive field is runs of D1 numbers there, an NCHW one runs of W2 numbers;
    * 'phases' for a dilated 3x3 stride-1 CONV whose phases (undilated CONVs of the
      input's cells y mod Dh, x mod Dw), stacked as a batch of Dh*Dw times the images,
      the rule would give to a Winograd lowering;
    * 'winograd2', F(2x2, 3x3), for 3x3 stride-1 CONVs of at least 64 input and output
      channels with at least max(D1, K)/16 output tiles per image: 2.25x fewer
      multiplications, but each of its 16 GEMMs streams a D1 x K filter matrix per block,
      which pays only over many tiles. With the compiled loops (cnnkit[fast]) its
      transforms are one pass each, and it is picked once the batch has at least max(D1, K)
      tiles and ``engine(winograd_compiled_min_macs=...)`` direct multiply-adds; with NumPy's passes (many calls per block) only when the batch's direct
      multiply-adds reach ``engine(winograd_min_macs=...)`` (measured: docs/bench.md);
    * 'winograd4', F(4x4, 3x3), 4x fewer multiplications, instead of 'winograd2' with the
      compiled loops where the batch has at least max(D1, K, 256) 4x4 tiles
      (``engine(winograd4_min_tiles=...)``), unless
      ``engine(winograd_tile=2)`` keeps F(2x2)'s exact rounding;
    * 'blocked' (im2col NHWC in cache-sized blocks) for everything else.

    A network's pass over one image with NumPy's BLAS sharing each GEMM between the threads
    (``engine(blas_share_images=...)``) takes Winograd only from
    ``engine(winograd_one_image_min_macs=...)`` multiply-adds: there im2col's single GEMM
    uses every thread and Winograd's transforms run on one.

    The batch enters only through Winograd's thresholds, so a batch split between MPI
    ranks changes a lowering (and a result's rounding, within float32 precision) only
    where a rank's share falls below it.
    """
    options = runtime.options
    lowerings = _registry["conv"]
    name = "reference" if options.strategy == "reference" else options.conv
    if name != "auto":
        lowering = lowerings[name]
        why = lowering.why_not(w)
        if why:
            raise CnnkitError(f"engine(conv={name!r}) cannot compute this CONV: {why}")
        return lowering
    if nchw_input and lowerings["pointwise"].why_not(w) is None:
        return lowerings["pointwise"]
    if direct_pays(w, input_grad):
        return lowerings["direct"]
    if lowerings["shifted"].why_not(w) is None:
        return lowerings["shifted"]
    phases = lowerings["phases"]
    if phases.why_not(w) is None and phases.winograd(w, batch) is not None:   # a dilated 3x3, where it pays
        return phases
    return winograd_for(w, batch) or lowerings["blocked"]


def direct_pays(w: Window, input_grad: bool = True) -> bool:
    """Does the rule give this CONV to the direct loops? Where it has at most
    direct_max_channels input and output channels (direct_dilated_max_channels if it is
    dilated) and a filter wider than 1x1, the loops compute it (llvmlite there, stride 1,
    16k filters), the engine runs compiled code (``engine(compiled=True)``, the default),
    and it is not an image's CONV whose dX is wanted: the loops' dX tiles are 8 channels
    wide, and shifted's col2im costs less for 1-4 (measured: docs/bench.md, thirteenth session)."""
    options = runtime.options
    limit = options.direct_max_channels if w.dilation == (1, 1) else options.direct_dilated_max_channels
    return (options.compiled and max(w.C, w.K) <= limit and w.F != (1, 1)
            and not (input_grad and w.C <= 4) and _registry["conv"]["direct"].why_not(w) is None)


def winograd_for(w: Window, batch: int) -> Any:
    """The Winograd lowering the rule gives this CONV at this batch (F(4x4) or F(2x2)), or
    None where neither pays (the Winograd half of ``conv_lowering``)."""
    options = runtime.options
    two, four = _registry["conv"]["winograd2"], _registry["conv"]["winograd4"]
    if two.why_not(w) is not None or min(w.C, w.K) < 64:
        return None
    rows, cols = two.tiles(w.out)
    macs = batch * w.out[0] * w.out[1] * w.C * w.K * 9
    if runtime.sharing_blas and macs < options.winograd_one_image_min_macs:
        return None     # BLAS's threads share im2col's one GEMM; Winograd's transforms run on one
    if 16 * rows * cols < max(w.C, w.K):
        return None
    if compiled.loops() is None:                # NumPy's passes: many calls per block
        return two if macs >= options.winograd_min_macs else None
    if batch * rows * cols < max(w.C, w.K) or macs < options.winograd_compiled_min_macs:
        return None                             # fewer tiles than the filters' channels
    rows, cols = four.tiles(w.out)
    if options.winograd_tile == 4 and batch * rows * cols >= max(w.C, w.K, options.winograd4_min_tiles):
        return four
    return two


def pick(op: str) -> Kernel:
    """The kernel of a pool, LRN or locally-connected layer: the reference loops when the
    engine is told so (strategy='reference'), the fast one otherwise."""
    kernels = _registry[op]
    if runtime.options.strategy == "reference":
        return kernels["reference"]
    return next(k for name, k in kernels.items() if name != "reference")


from .. import reference  # noqa: E402,F401  (the reference loops register themselves too)
from . import blocked, compiled, direct, jit, phases, pointwise, shifted, space_to_depth, winograd  # noqa: E402  (they register themselves)

__all__ = ["ConvLowering", "Kernel", "register", "available", "conv_lowering", "direct_pays", "winograd_for", "pick", "blocked",
           "compiled", "direct", "jit", "phases",
           "pointwise",
           "shifted", "space_to_depth", "winograd"]
