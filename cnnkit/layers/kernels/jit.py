"""Direct-convolution loops compiled at run time from LLVM IR (llvmlite, part of ``cnnkit[fast]``).

A CONV with few channels lowers to a GEMM only 16-32 columns wide, and OpenBLAS runs those at
60-66 GFLOP/s per core on the AMD EPYC of docs/bench.md whatever the operands' orientation.
PyTorch's oneDNN runs a JIT-compiled direct convolution there. These loops are that: the
output of a block of P pixels x 8J channels stays in 16 vector registers (P*J accumulators,
J filter vectors and one broadcast input value) while the receptive fields stream past, so
each filter vector loaded feeds P fused multiply-adds and each input value J. numba cannot
be made to keep such a tile in registers (its loops over arrays were not vectorised:
docs/bench.md, sixth session), so the tile is written as LLVM IR with <8 x float> values,
and LLVM allocates the registers and schedules it for the host CPU.

Two loops, both on padded NHWC input xp (N, Hp, Wp, C) at stride 1 and any dilation:

* ``conv(xp, w, out)``: out (N, H, W, K) = the notes' sum over the Fh x Fw x C receptive
  field of xp times w (Fh, Fw, C, K); the reduction for one tile runs over (i, j, c).
  A K that is not a multiple of 16 runs on filters padded with zero filters to one.
* ``weight_grad(xp, dy, dw)``: dw (Fh, Fw, C, K) += sum over output pixels of xp at the
  pixel's offset (i, j) times dY (N, H, W, K); a tile is P input channels x 8J filters at
  one offset, and the reduction runs over the pixels.

The reduction order is fixed (offsets, then channels; pixels in order), so results do not
depend on threads; they differ from a GEMM's by float32 rounding (the sums are added in
another order). Each call works on what it is given, without the GIL (ctypes lets it go),
so the runtime's threads share blocks of images.
"""

from __future__ import annotations

import ctypes
import threading
from typing import Any, Callable

import numpy as np

PIXELS = 6      # pixels per tile of conv(): 6 x 2 vector accumulators, 2 filter vectors, 1 broadcast
VECTORS = 2     # 8-float vectors of output channels per tile (16 channels)
CHANNELS = 6    # input channels per tile of weight_grad()

_lock = threading.Lock()
_compiled: dict[tuple[str, int, int, int, int, int], Callable[..., None]] = {}
_engine: Any = None
_missing = False


def available() -> bool:
    """Can the loops be compiled here (llvmlite importable, a target machine for the host)?"""
    global _missing
    if _missing:
        return False
    try:
        import llvmlite.binding as llvm
    except ImportError:
        _missing = True
        return False
    _missing = not hasattr(llvm, "create_pass_builder")     # llvmlite >= 0.44: the new pass manager
    return not _missing


class _IR:
    """Lines of LLVM IR with fresh SSA names (%v1, %v2, ...), for the generators below."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.count = 0

    def __call__(self, text: str) -> str:
        """Emit 'name = text' and return the name."""
        self.count += 1
        name = f"%v{self.count}"
        self.lines.append(f"  {name} = {text}")
        return name

    def add(self, a: object, b: object) -> str:
        return self(f"add i64 {a}, {b}")

    def mul(self, a: object, b: object) -> str:
        return self(f"mul i64 {a}, {b}")

    def image_row(self, r: str, H: str) -> str:
        """Where output row r of the batch (image r // H, row r % H) starts in x (%sN, %sH)."""
        return self.add(self.mul(self(f"udiv i64 {r}, {H}"), "%sN"), self.mul(self(f"urem i64 {r}, {H}"), "%sH"))

    def at(self, base: str, index: str) -> str:
        return self(f"getelementptr inbounds float, float* {base}, i64 {index}")

    def at_most(self, left: str, P: object) -> str:
        """min(left, P): the last tile (or band) is narrower."""
        return self(f"select i1 {self(f'icmp ugt i64 {left}, {P}')}, i64 {P}, i64 {left}")

    def tiles(self, width: str, P: int, call: Callable[[int], str]) -> None:
        """Call the tile function made for `width` (1 to P: call(p) is its call) and go on
        at 'tiled:'."""
        self.emit(f"switch i64 {width}, label %tile{P} [" + " ".join(f"i64 {p}, label %tile{p}" for p in range(1, P)) + "]")
        for p in range(1, P + 1):
            self.emit(f"tile{p}:")
            self.emit(call(p))
            self.emit("br label %tiled")
        self.emit("tiled:")

    def emit(self, text: str) -> None:
        self.lines.append(text if text.endswith(":") else f"  {text}")

    def vector_at(self, base: str, index: str) -> str:
        """The pointer to the <8 x float> at base[index]."""
        p = self(f"getelementptr inbounds float, float* {base}, i64 {index}")
        return self(f"bitcast float* {p} to <8 x float>*")

    def broadcast(self, base: str, index: str) -> str:
        """<8 x float> of base[index] in every lane."""
        p = self(f"getelementptr inbounds float, float* {base}, i64 {index}")
        s = self(f"load float, float* {p}, align 4")
        e = self(f"insertelement <8 x float> undef, float {s}, i32 0")
        return self(f"shufflevector <8 x float> {e}, <8 x float> undef, <8 x i32> zeroinitializer")


def _tile(ir: _IR, acc: list[list[str]], scalars: list[str], vectors: list[str]) -> None:
    """acc[p][j] += scalars[p] (broadcast) * vectors[j], the accumulators kept in allocas
    that LLVM promotes to registers."""
    for p, s in enumerate(scalars):
        for j, v in enumerate(vectors):
            a = ir(f"load <8 x float>, <8 x float>* {acc[p][j]}, align 32")
            f = ir(f"call <8 x float> @llvm.fma.v8f32(<8 x float> {s}, <8 x float> {v}, <8 x float> {a})")
            ir.emit(f"store <8 x float> {f}, <8 x float>* {acc[p][j]}, align 32")


def _reduce(ir: _IR, acc: list[list[str]], label: str, entry: str, limit: str,
            vectors: tuple[str, Callable[[str], str]], scalars: tuple[str, Callable[[str], list[str]]]) -> None:
    """The tile's reduction: a loop `label` over %label_i = 0 .. limit - 1 (entered from the
    block `entry`), acc[p][j] += broadcast(xs[at_x(i)[p]]) * vs[at_v(i) + 8j] for
    vectors = (vs, at_v) and scalars = (xs, at_x)."""
    (vs, at_v), (xs, at_x), i = vectors, scalars, f"%{label}_i"
    ir.emit(f"br label %{label}")
    ir.emit(f"{label}:")
    ir.emit(f"{i} = phi i64 [0, %{entry}], [{i}_next, %{label}]")
    v_at = at_v(i)
    loaded = [ir(f"load <8 x float>, <8 x float>* {ir.vector_at(vs, ir.add(v_at, 8 * q))}, align 4")
              for q in range(len(acc[0]))]
    _tile(ir, acc, [ir.broadcast(xs, index) for index in at_x(i)], loaded)
    ir.emit(f"{i}_next = add i64 {i}, 1")
    done = ir(f"icmp eq i64 {i}_next, {limit}")
    ir.emit(f"br i1 {done}, label %{label}_end, label %{label}")
    ir.emit(f"{label}_end:")


def _accumulators(ir: _IR, P: int, J: int) -> list[list[str]]:
    acc = [[ir("alloca <8 x float>, align 32") for _ in range(J)] for _ in range(P)]
    for row in acc:
        for a in row:
            ir.emit(f"store <8 x float> zeroinitializer, <8 x float>* {a}, align 32")
    return acc


def _counter(ir: _IR) -> str:
    c = ir("alloca i64")
    ir.emit(f"store i64 0, i64* {c}")
    return c


def _loop(ir: _IR, counter: str, label: str, limit: str) -> str:
    """Open a loop: 'label:' loads counter (< limit, checked at the bottom by _next)."""
    ir.emit(f"br label %{label}")
    ir.emit(f"{label}:")
    return ir(f"load i64, i64* {counter}")


def _next(ir: _IR, counter: str, value: str, label: str, limit: str, step: str = "1") -> None:
    n = ir(f"add i64 {value}, {step}")
    ir.emit(f"store i64 {n}, i64* {counter}")
    done = ir(f"icmp uge i64 {n}, {limit}")
    ir.emit(f"br i1 {done}, label %{label}_end, label %{label}")
    ir.emit(f"{label}_end:")


STRIDES = "i64 %sN, i64 %sH, i64 %sW, i64 %sC"   # the input's, in numbers: any layout of padded xp


def _conv_tile(P: int, J: int, Fh: int, Fw: int, Dh: int, Dw: int) -> str:
    """conv_tileP(x, w, o, C, K, strides): one tile of conv(). x at the tile's first input
    pixel, w at filter column kb of (Fh, Fw, C, K), o at the tile's first output; filter
    tap (i, j) reads the input Dh*i rows and Dw*j columns on (the dilation)."""
    ir = _IR()
    ir.emit(f"define internal void @conv_tile{P}(float* noalias %x, float* noalias %w, float* noalias %o, "
            f"i64 %C, i64 %K, {STRIDES}) alwaysinline {{")
    ir.emit("entry:")
    acc = _accumulators(ir, P, J)
    i, j = _counter(ir), _counter(ir)
    iv = _loop(ir, i, "rows", str(Fh))
    ir.emit(f"store i64 0, i64* {j}")
    jv = _loop(ir, j, "cols", str(Fw))
    x_at = ir.add(ir.mul(ir.mul(iv, Dh), "%sH"), ir.mul(ir.mul(jv, Dw), "%sW"))
    w_at = ir.mul(ir.mul(ir.add(ir.mul(iv, Fw), jv), "%C"), "%K")
    _reduce(ir, acc, "depth", "cols", "%C", ("%w", lambda c: ir.add(w_at, ir.mul(c, "%K"))),
            ("%x", lambda c: [ir.add(ir.add(x_at, ir.mul(c, "%sC")), ir.mul("%sW", p)) for p in range(P)]))
    _next(ir, j, jv, "cols", str(Fw))
    _next(ir, i, iv, "rows", str(Fh))
    for p in range(P):
        for q in range(J):
            r = ir(f"load <8 x float>, <8 x float>* {acc[p][q]}, align 32")
            at = ir.vector_at("%o", ir.add(ir.mul("%K", p), 8 * q))
            ir.emit(f"store <8 x float> {r}, <8 x float>* {at}, align 4")
    ir.emit("ret void")
    ir.emit("}")
    return "\n".join(ir.lines)


def _conv_ir(name: str, Fh: int, Fw: int, J: int, Dh: int, Dw: int) -> str:
    """name(x, w, o, N, H, W, C, K, strides): every output row of every image, in tiles of
    P pixels (a narrower one at a row's end) by 8J channels: PIXELS by 8*VECTORS, or for a
    K of 8k (a few-channel input's dX) twice as many pixels by 8."""
    P = PIXELS * VECTORS // J
    parts = [_conv_tile(p, J, Fh, Fw, Dh, Dw) for p in range(1, P + 1)]
    ir = _IR()
    ir.emit(f"define void @{name}(float* noalias %x, float* noalias %w, float* noalias %o, "
            f"i64 %N, i64 %H, i64 %W, i64 %C, i64 %K, {STRIDES}) {{")
    ir.emit("entry:")
    rows = ir.mul("%N", "%H")
    r, q, kb = _counter(ir), _counter(ir), _counter(ir)
    rv = _loop(ir, r, "image_rows", rows)
    x_row = ir.image_row(rv, "%H")
    o_row = ir.mul(ir.mul(rv, "%W"), "%K")
    ir.emit(f"store i64 0, i64* {q}")
    qv = _loop(ir, q, "pixels", "%W")
    width = ir.at_most(ir(f"sub i64 %W, {qv}"), P)
    x_tile = ir.at("%x", ir.add(x_row, ir.mul(qv, "%sW")))
    o_tile = ir.add(o_row, ir.mul(qv, "%K"))
    ir.emit(f"store i64 0, i64* {kb}")
    kv = _loop(ir, kb, "filters", "%K")
    w_col, o_at = ir.at("%w", kv), ir.at("%o", ir.add(o_tile, kv))
    ir.tiles(width, P, lambda p: f"call void @conv_tile{p}(float* {x_tile}, float* {w_col}, float* {o_at}, "
             "i64 %C, i64 %K, i64 %sN, i64 %sH, i64 %sW, i64 %sC)")
    _next(ir, kb, kv, "filters", "%K", str(8 * J))
    _next(ir, q, qv, "pixels", "%W", width)
    _next(ir, r, rv, "image_rows", rows)
    ir.emit("ret void")
    ir.emit("}")
    return "\n".join(parts + ir.lines)


def _grad_tile(P: int, J: int) -> str:
    """grad_tileP(x, d, dw, offsets, H, W, K, strides, dH): dw[r:r+P, kb:kb+8J] += the sum
    over a band of H output rows of x at offsets[0:P] from each pixel times d (at filter kb;
    its rows dH numbers apart, its pixels K)."""
    ir = _IR()
    ir.emit(f"define internal void @grad_tile{P}(float* noalias %x, float* noalias %d, float* noalias %dw, "
            f"i64* noalias %off, i64 %H, i64 %W, i64 %K, {STRIDES}, i64 %dH) alwaysinline {{")
    ir.emit("entry:")
    acc = _accumulators(ir, P, J)
    offsets = [ir(f"load i64, i64* {ir(f'getelementptr inbounds i64, i64* %off, i64 {p}')}") for p in range(P)]
    r = _counter(ir)
    rv = _loop(ir, r, "image_rows", "%H")
    x_row, d_row = ir.mul(rv, "%sH"), ir.mul(rv, "%dH")
    _reduce(ir, acc, "pixels", "image_rows", "%W", ("%d", lambda q: ir.add(d_row, ir.mul(q, "%K"))),
            ("%x", lambda q: [ir.add(ir.add(x_row, ir.mul(q, "%sW")), offsets[p]) for p in range(P)]))
    _next(ir, r, rv, "image_rows", "%H")
    for p in range(P):
        for q in range(J):
            at = ir.vector_at("%dw", ir.add(ir.mul("%K", p), 8 * q))
            old = ir(f"load <8 x float>, <8 x float>* {at}, align 4")
            sum_ = ir(f"load <8 x float>, <8 x float>* {acc[p][q]}, align 32")
            ir.emit(f"store <8 x float> {ir(f'fadd <8 x float> {old}, {sum_}')}, <8 x float>* {at}, align 4")
    ir.emit("ret void")
    ir.emit("}")
    return "\n".join(ir.lines)


def _grad_ir(name: str) -> str:
    """name(x, d, dw, N, H, W, R, K, strides, dN, dH, B, offsets): band by band of B output
    rows of an image (its X and dY rows then stay in L1 across the passes), tiles of
    CHANNELS rows of dW (R = Fh*Fw*C rows, (offset, channel) pairs, whose input numbers sit
    offsets[r] from a pixel's: a 3-channel image's 5x5 filters fill whole tiles too) by
    8*VECTORS filters."""
    P, J = CHANNELS, VECTORS
    parts = [_grad_tile(p, J) for p in range(1, P + 1)]
    ir = _IR()
    ir.emit(f"define void @{name}(float* noalias %x, float* noalias %d, float* noalias %dw, "
            f"i64 %N, i64 %H, i64 %W, i64 %R, i64 %K, {STRIDES}, i64 %dN, i64 %dH, i64 %B, i64* noalias %off) {{")
    ir.emit("entry:")
    per_image = ir("udiv i64 " + ir.add("%H", ir("sub i64 %B, 1")) + ", %B")
    bands = ir.mul("%N", per_image)
    b, r, kb = _counter(ir), _counter(ir), _counter(ir)
    bv = _loop(ir, b, "bands", bands)
    n, h0 = ir(f"udiv i64 {bv}, {per_image}"), ir.mul(ir(f"urem i64 {bv}, {per_image}"), "%B")
    rows = ir.at_most(ir(f"sub i64 %H, {h0}"), "%B")
    x_band = ir.add(ir.mul(n, "%sN"), ir.mul(h0, "%sH"))
    d_band = ir.add(ir.mul(n, "%dN"), ir.mul(h0, "%dH"))
    ir.emit(f"store i64 0, i64* {r}")
    rv = _loop(ir, r, "dw_rows", "%R")
    width = ir.at_most(ir(f"sub i64 %R, {rv}"), P)
    x_at = ir.at("%x", x_band)
    offsets = ir(f"getelementptr inbounds i64, i64* %off, i64 {rv}")
    dw_r = ir.mul(rv, "%K")
    ir.emit(f"store i64 0, i64* {kb}")
    kv = _loop(ir, kb, "filters", "%K")
    d_at, dw_at = ir.at("%d", ir.add(d_band, kv)), ir.at("%dw", ir.add(dw_r, kv))
    ir.tiles(width, P, lambda p: f"call void @grad_tile{p}(float* {x_at}, float* {d_at}, float* {dw_at}, "
             f"i64* {offsets}, i64 {rows}, i64 %W, i64 %K, i64 %sN, i64 %sH, i64 %sW, i64 %sC, i64 %dH)")
    _next(ir, kb, kv, "filters", "%K", str(8 * J))
    _next(ir, r, rv, "dw_rows", "%R", width)
    _next(ir, b, bv, "bands", bands)
    ir.emit("ret void")
    ir.emit("}")
    return "\n".join(parts + ir.lines)


def _transpose_ir(name: str) -> str:
    """name(src, dst, N, H, W, C, sN, sC, sH, dN, dH, dW): dst[n, h, w, c] = src[n, c, h, w]
    for W and C multiples of 8 (src's columns and dst's channels contiguous), 8 x 8 blocks
    at a time: 8 channels' rows of 8 columns loaded as vectors, transposed in registers by
    three rounds of shuffles (pairs, then pairs of pairs, then halves), stored as 8
    pixels' depth columns."""
    ir = _IR()
    ir.emit(f"define void @{name}(float* noalias %src, float* noalias %dst, i64 %N, i64 %H, i64 %W, i64 %C, "
            "i64 %sN, i64 %sC, i64 %sH, i64 %dN, i64 %dH, i64 %dW) {")
    ir.emit("entry:")
    rows = ir.mul("%N", "%H")
    r, c0, w0 = _counter(ir), _counter(ir), _counter(ir)
    rv = _loop(ir, r, "image_rows", rows)
    n, h = ir(f"udiv i64 {rv}, %H"), ir(f"urem i64 {rv}, %H")
    src_row = ir.add(ir.mul(n, "%sN"), ir.mul(h, "%sH"))
    dst_row = ir.add(ir.mul(n, "%dN"), ir.mul(h, "%dH"))
    ir.emit(f"store i64 0, i64* {c0}")
    cv = _loop(ir, c0, "channels", "%C")
    ir.emit(f"store i64 0, i64* {w0}")
    wv = _loop(ir, w0, "columns", "%W")
    at = ir.add(ir.add(src_row, ir.mul(cv, "%sC")), wv)
    v = [ir(f"load <8 x float>, <8 x float>* {ir.vector_at('%src', ir.add(at, ir.mul('%sC', i)))}, align 4")
         for i in range(8)]

    def shuffle(a: str, b: str, lanes: list[int]) -> str:
        mask = ", ".join(f"i32 {k}" for k in lanes)
        return ir(f"shufflevector <8 x float> {a}, <8 x float> {b}, <8 x i32> <{mask}>")

    low, high = [0, 8, 1, 9, 4, 12, 5, 13], [2, 10, 3, 11, 6, 14, 7, 15]       # pairs of rows
    t = [shuffle(v[i], v[i + 1], lanes) for i in range(0, 8, 2) for lanes in (low, high)]
    low, high = [0, 1, 8, 9, 4, 5, 12, 13], [2, 3, 10, 11, 6, 7, 14, 15]       # pairs of pairs
    u = [shuffle(t[i + k], t[i + k + 2], lanes) for i in (0, 4) for k in (0, 1) for lanes in (low, high)]
    low, high = [0, 1, 2, 3, 8, 9, 10, 11], [4, 5, 6, 7, 12, 13, 14, 15]       # halves: columns j and j + 4
    out = [shuffle(u[j], u[j + 4], low) for j in range(4)] + [shuffle(u[j], u[j + 4], high) for j in range(4)]
    to = ir.add(ir.add(dst_row, ir.mul(wv, "%dW")), cv)
    for j, o in enumerate(out):
        ir.emit(f"store <8 x float> {o}, <8 x float>* {ir.vector_at('%dst', ir.add(to, ir.mul('%dW', j)))}, align 4")
    _next(ir, w0, wv, "columns", "%W", "8")
    _next(ir, c0, cv, "channels", "%C", "8")
    _next(ir, r, rv, "image_rows", rows)
    ir.emit("ret void")
    ir.emit("}")
    return "\n".join(ir.lines)


_FMA = "declare <8 x float> @llvm.fma.v8f32(<8 x float>, <8 x float>, <8 x float>)"


def _function(kind: str, Fh: int = 0, Fw: int = 0, J: int = VECTORS, dilation: tuple[int, int] = (1, 1)) -> Callable[..., None]:
    """The compiled loop `kind` ('conv' or 'weight_grad') for Fh x Fw filters of this
    dilation and tiles 8J filters wide, made once (weight_grad's takes its offsets as numbers)."""
    key = (kind, Fh, Fw, J, *dilation)
    with _lock:
        if key not in _compiled:
            name = f"{kind}_{Fh}x{Fw}_{J}_d{dilation[0]}x{dilation[1]}"
            if kind == "conv":
                _compiled[key] = _compile(name, _conv_ir(name, Fh, Fw, J, *dilation), [ctypes.c_int64] * 9)
            elif kind == "transpose":
                _compiled[key] = _compile(name, _transpose_ir(name), [ctypes.c_int64] * 10, arrays=2)
            else:
                _compiled[key] = _compile(name, _grad_ir(name), [ctypes.c_int64] * 12 + [ctypes.c_void_p])
        return _compiled[key]


def _compile(name: str, ir: str, arguments: list[Any], arrays: int = 3) -> Callable[..., None]:
    global _engine
    import llvmlite.binding as llvm

    if _engine is None:
        llvm.initialize_native_target()
        llvm.initialize_native_asmprinter()
        machine = llvm.Target.from_default_triple().create_target_machine(
            cpu=llvm.get_host_cpu_name(), features=llvm.get_host_cpu_features().flatten(), opt=3)
        _engine = (llvm.create_mcjit_compiler(llvm.parse_assembly(""), machine), machine)
    engine, machine = _engine
    module = llvm.parse_assembly(ir + "\n" + _FMA)
    module.verify()
    builder = llvm.create_pass_builder(machine, llvm.create_pipeline_tuning_options(speed_level=3))
    builder.getModulePassManager().run(module, builder)
    engine.add_module(module)
    engine.finalize_object()
    signature = ctypes.CFUNCTYPE(None, *[ctypes.c_void_p] * arrays, *arguments)
    return signature(engine.get_function_address(name))


def _strides(x: np.ndarray) -> tuple[int, ...]:
    """x's strides in numbers (x: a 4-D view, e.g. (N, Hp, Wp, C) of padded input in any layout)."""
    assert x.dtype == np.float32 and all(s % 4 == 0 and s >= 0 for s in x.strides), (x.dtype, x.strides)
    return tuple(s // 4 for s in x.strides)


def conv(xp: np.ndarray, w: np.ndarray, out: np.ndarray, dilation: tuple[int, int] = (1, 1)) -> None:
    """out (N, H, W, K) = the stride-1 CONV of padded xp, a (N, Hp, Wp, C) view in any
    layout (NHWC, or NCHW transposed), with w (Fh, Fw, C, K) at this dilation: w and out
    C-contiguous float32, K a multiple of 8."""
    N, Hp, Wp, C = xp.shape
    Fh, Fw, _, K = w.shape
    _, H, W, _ = out.shape
    (Dh, Dw) = dilation
    assert K % 8 == 0 and Hp >= H + Dh * (Fh - 1) and Wp >= W + Dw * (Fw - 1), (xp.shape, w.shape, out.shape, dilation)
    assert all(a.dtype == np.float32 and a.flags.c_contiguous for a in (w, out))
    if N and H and W:
        J = VECTORS if K % (8 * VECTORS) == 0 else 1
        _function("conv", Fh, Fw, J, dilation)(xp.ctypes.data, w.ctypes.data, out.ctypes.data, N, H, W, C, K, *_strides(xp))


L1_BYTES = 24 * 1024   # a band's X and dY rows, within a core's 32 KB L1 data cache


def weight_grad(xp: np.ndarray, d: np.ndarray, dw: np.ndarray, dilation: tuple[int, int] = (1, 1)) -> None:
    """dw (Fh, Fw, C, K) += the sum over the output pixels of padded xp (a (N, Hp, Wp, C) view
    in any layout) at offset (Dh i, Dw j) times dY d (N, H, W, K; its pixels contiguous, K
    numbers apart: a view of a padded dY will do): dw C-contiguous, all float32, K a
    multiple of 16."""
    N, Hp, Wp, C = xp.shape
    Fh, Fw, _, K = dw.shape
    _, H, W, _ = d.shape
    (Dh, Dw) = dilation
    assert K % (8 * VECTORS) == 0 and Hp >= H + Dh * (Fh - 1) and Wp >= W + Dw * (Fw - 1), (xp.shape, d.shape, dw.shape)
    d_strides = _strides(d)
    assert dw.dtype == np.float32 and dw.flags.c_contiguous and d_strides[2:] == (K, 1), d.strides
    if N and H and W:
        band_bytes = 4 * (W * K + Wp * C)      # one more output row's dY and input row
        band = max(1, min(H, (L1_BYTES - 4 * Dh * (Fh - 1) * Wp * C) // band_bytes))
        sN, sH, sW, sC = _strides(xp)
        offsets = (np.arange(Fh)[:, None, None] * (Dh * sH) + np.arange(Fw)[None, :, None] * (Dw * sW)
                   + np.arange(C)[None, None, :] * sC).astype(np.int64).ravel()
        _function("weight_grad")(xp.ctypes.data, d.ctypes.data, dw.ctypes.data, N, H, W, Fh * Fw * C, K,
                                       sN, sH, sW, sC, *d_strides[:2], band, offsets.ctypes.data)


def channels_last(src: np.ndarray, dst: np.ndarray) -> None:
    """dst (N, H, W, C) = src (N, C, H, W) transposed, for float32 views whose columns (src)
    and channels (dst) are contiguous: the 8 x 8 blocks in registers, the last W % 8
    columns and C % 8 channels by NumPy (a layout copy NumPy makes one number at a time)."""
    N, C, H, W = src.shape
    assert dst.shape == (N, H, W, C) and src.dtype == dst.dtype == np.float32, (src.shape, dst.shape)
    assert src.strides[3] == 4 and dst.strides[3] == 4, (src.strides, dst.strides)
    W8, C8 = W - W % 8, C - C % 8
    if N and H and W8 and C8:
        sN, sC, sH, _ = _strides(src)
        dN, dH, dW, _ = _strides(dst)
        _function("transpose")(src.ctypes.data, dst.ctypes.data, N, H, W8, C8, sN, sC, sH, dN, dH, dW)
    if W8 < W:
        dst[:, :, W8:] = src[:, :, :, W8:].transpose(0, 2, 3, 1)
    if C8 < C:
        dst[:, :, :W8, C8:] = src[:, C8:, :, :W8].transpose(0, 2, 3, 1)
