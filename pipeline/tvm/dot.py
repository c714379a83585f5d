"""Int8 convolutions and products on the CPU's integer dot-product instructions (sdot, VNNI, AVX2 VPMADDWD, NEON
SMULL+SADDLP): weights packed at compile time, the instruction innermost via ``tensorize``, the zero point folded
into the bias. Integer sums are exact in any order, so the result is LiteRT's bit for bit; depthwise convolutions
get int8 x int8 -> int16 -> int32 products vectorized over channels. This module imports TVM.
Details: docs/int8.md and docs/internals.md (module notes).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tvm import s_tir, te, tirx
from tvm.script import tirx as T

from pipeline.errors import first_line
from pipeline.tvm.intrinsics import load_tensor_intrinsics

# Importing TVM's intrinsics plainly takes a minute here, six with TensorFlow loaded (every build stage)
load_tensor_intrinsics()
from tvm.s_tir.tensor_intrin import arm_cpu  # noqa: E402 - registers TVM's ARM intrinsics, already imported above


@dataclass(frozen=True)
class DotIsa:
    name: str                 # sdot | neon | avx512-vnni | avx-vnni | avx2
    intrin: str               # the registered tensor intrinsic
    lanes: int                # L: output channels per instruction
    k: int                    # K: input channels per lane per instruction
    offset: int = 0           # added to the data: 128 where the instruction takes uint8 data (x86 VNNI)
    channel_tile: int = 2     # channel blocks per register tile
    instruction: str = ""     # what a disassembly of the library shows
    data_dtype: str = "int8"  # the activations as the instruction reads them (uint8: VNNI; int16: AVX2)


WIDTH_TILE = 4                # output pixels per register tile

AVX2_INTRIN = "xception_edge_dot_8x2_i16i8i32_avx2"
AVX512_VNNI_INTRIN = "xception_edge_dot_16x4_u8i8i32_avx512vnni"
AVX_VNNI_INTRIN = "xception_edge_dot_8x4_u8i8i32_avxvnni"

ISAS = {
    "sdot": DotIsa("sdot", arm_cpu.ARM_DOT_4x4_i8_SDOT_INTRIN, 4, 4, channel_tile=4, instruction="sdot"),
    "neon": DotIsa("neon", arm_cpu.ARM_DOT_4x4_i8_NEON_INTRIN, 4, 4, channel_tile=2, instruction="smull"),
    "avx512-vnni": DotIsa("avx512-vnni", AVX512_VNNI_INTRIN, 16, 4, offset=128, instruction="vpdpbusd",
                          data_dtype="uint8"),
    "avx-vnni": DotIsa("avx-vnni", AVX_VNNI_INTRIN, 8, 4, offset=128, instruction="vpdpbusd", data_dtype="uint8"),
    "avx2": DotIsa("avx2", AVX2_INTRIN, 8, 2, instruction="vpmaddwd", data_dtype="int16"),
}


def isa_for(target) -> DotIsa | None:
    """The dot-product form for an llvm target, from the features LLVM gives its mcpu and mattr; None
    where there is none (plain x86-64, other architectures): the int8 rewrite then keeps its portable form."""
    from tvm.target.codegen import target_has_features

    if target.kind.name != "llvm":
        return None
    triple = str(target.attrs.get("mtriple", "")) or _host_triple()
    with target:
        if triple.startswith("aarch64"):
            return ISAS["sdot"] if target_has_features("dotprod") else ISAS["neon"]
        if triple.startswith("x86_64"):
            if target_has_features("avx512vnni") and target_has_features("avx512bw"):
                return ISAS["avx512-vnni"]
            if target_has_features("avxvnni"):
                return ISAS["avx-vnni"]
            if target_has_features("avx2"):
                return ISAS["avx2"]
    return None


def self_check(isa: DotIsa, target) -> str | None:
    """Run one small convolution of ``isa`` on this machine (a native build) against the exact integer result:
    None when it matches, else why not. The compile stage falls back to the portable form then, so a CPU whose
    instructions behave otherwise than assumed costs speed, never correctness."""
    import tvm

    shape = ConvShape((1, 6, 6, 12), (3, 3), 2 * isa.lanes + 3, (1, 1), (1, 1, 1, 1))
    rng = np.random.default_rng(7)
    x = rng.integers(-128, 128, shape.x).astype(np.int8)
    w = rng.integers(-127, 128, (3, 3, 12, shape.out_channels)).astype(np.int8)
    bias = rng.integers(-5000, 5000, shape.out_channels).astype(np.int32)
    x_zero = -5
    padded = np.pad(x.astype(np.int64) - x_zero, ((0, 0), (1, 1), (1, 1), (0, 0)))
    exact = sum(np.einsum("nhwc,co->nhwo", padded[:, i:i + 6, j:j + 6], w[i, j].astype(np.int64))
                for i in range(3) for j in range(3)) + bias
    # scale 1/256 and output zero point 0: the int8 output is the exact sum / 256, rounded half to even
    expected = np.clip(np.rint(exact.astype(np.float32) / np.float32(256)), -128, 127).astype(np.int8)
    try:
        func = conv_function(shape, isa, 0, x_zero).with_attr("global_symbol", "main")
        lib = tvm.compile(tvm.IRModule({"main": func}), target=target)
        out = tvm.runtime.tensor(np.zeros(shape.out, np.int8))
        lib["main"](*(tvm.runtime.tensor(a) for a in (x, pack_weights(w, isa),
                                                      corrected_bias(w, bias, x_zero, isa.offset),
                                                      np.full(shape.out_channels, 1 / 256, np.float32))), out)
    except Exception as error:  # noqa: BLE001 - TVM raises many kinds: any failure means "do not use it"
        return f"{isa.name} could not be built or run here: {first_line(error)[:200]}"
    if not np.array_equal(out.numpy(), expected):
        return f"{isa.name} ({isa.instruction}) differs from the exact integer result on this CPU"
    return None


def _host_triple() -> str:
    from tvm.target.codegen import llvm_get_system_triple

    return str(llvm_get_system_triple())


# --- our intrinsics: the same description as TVM's (C[i] += A[k] * B[i, k]) ------------------------------

def description(lanes: int, k: int, a_dtype: str):
    """What every dot-product intrinsic computes, its meaning for tensorize: C[i] += A[j] * B[i, j] in int32,
    for i < lanes and j < k."""

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (k,), a_dtype, offset_factor=1)
        B = T.match_buffer(b, (lanes, k), "int8", offset_factor=1)
        C = T.match_buffer(c, (lanes,), "int32", offset_factor=1)
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:k], B[0:lanes, 0:k])
            T.writes(C[0:lanes])
            for i, j in T.grid(lanes, k):
                with T.sblock("update"):
                    vi, vj = T.axis.remap("SR", [i, j])
                    C[vi] = C[vi] + T.cast(A[vj], "int32") * T.cast(B[vi, vj], "int32")
    return desc


@T.prim_func(s_tir=True)
def _avx2_impl(a: T.handle, b: T.handle, c: T.handle) -> None:
    # VPMADDWD: int16 x int16 products summed in pairs into int32, never saturating for these operands
    # (unlike VPMADDUBSW's int16 sums). The activations come widened to int16 (the pad step writes them so:
    # one broadcast load per pixel); the weights stay int8 and are widened in registers (VPMOVSXBW).
    A = T.match_buffer(a, (2,), "int16", offset_factor=1)
    B = T.match_buffer(b, (8, 2), "int8", offset_factor=1)
    C = T.match_buffer(c, (8,), "int32", offset_factor=1)
    with T.sblock("root"):
        T.reads(C[0:8], A[0:2], B[0:8, 0:2])
        T.writes(C[0:8])
        a_pair = T.reinterpret(A.vload([0], "int16x2"), dtype="int32")
        a16 = T.reinterpret(T.broadcast(a_pair, 8), dtype="int16x16")
        b16 = T.Cast("int16x16", B.vload([0, 0], "int8x16"))
        C[T.ramp(T.int32(0), 1, 8)] = C.vload([0], "int32x8") + T.call_llvm_pure_intrin(
            "int32x8", "llvm.x86.avx2.pmadd.wd", b16, a16)


def vnni_impl(lanes: int, unsigned: str = "data"):
    # VPDPBUSD: uint8 x int8, 4 products per int32 lane, summed without saturation. 512-bit registers
    # (AVX512-VNNI) or 256-bit (AVX-VNNI, or AVX512-VNNI with AVX512VL). TVM's own VNNI intrinsic passes
    # int32 vectors, which the wheel's LLVM rejects (its vpdpbusd takes i8 vectors). ``unsigned``: which
    # multiplicand is the instruction's unsigned one: the data (ours); "weights" only for a test's control.
    width = lanes * 32

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (4,), "uint8", offset_factor=1)
        B = T.match_buffer(b, (lanes, 4), "int8", offset_factor=1)
        C = T.match_buffer(c, (lanes,), "int32", offset_factor=1)
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:4], B[0:lanes, 0:4])
            T.writes(C[0:lanes])
            a32 = T.reinterpret(A.vload([0], "uint8x4"), dtype="int32")
            data = T.broadcast(a32, lanes)
            weights = B.vload([0, 0], f"int8x{lanes * 4}")
            if unsigned == "data":
                u8, s8 = T.reinterpret(data, dtype=f"uint8x{lanes * 4}"), weights
            else:
                u8, s8 = T.reinterpret(weights, dtype=f"uint8x{lanes * 4}"), T.reinterpret(data, dtype=f"int8x{lanes * 4}")
            C[T.ramp(T.int32(0), 1, lanes)] = T.call_llvm_pure_intrin(
                f"int32x{lanes}", f"llvm.x86.avx512.vpdpbusd.{width}", C.vload([0], f"int32x{lanes}"), u8, s8)
    return impl


def register_once(name: str, desc, impl) -> None:
    """Register a tensor intrinsic under ``name`` unless it already is (a module imported twice, a test)."""
    from tvm.s_tir import TensorIntrin

    try:
        TensorIntrin.get(name, allow_missing=False)
    except Exception:  # noqa: BLE001 - TVM raises ValueError/TVMError when it is not registered yet
        TensorIntrin.register(name, desc, impl)


def _register():
    for name, desc, impl in ((AVX2_INTRIN, description(8, 2, "int16"), _avx2_impl),
                             (AVX512_VNNI_INTRIN, description(16, 4, "uint8"), vnni_impl(16)),
                             (AVX_VNNI_INTRIN, description(8, 4, "uint8"), vnni_impl(8))):
        register_once(name, desc, impl)


_register()


# --- packing (compile time) ---------------------------------------------------------------------------

def channel_blocks(out_channels: int, isa: DotIsa) -> tuple[int, int]:
    """(blocks of L output channels, blocks per register tile): the blocks a whole number of tiles, the extra
    ones zero weights whose sums are dropped."""
    blocks = -(-out_channels // isa.lanes)
    tile = min(isa.channel_tile, blocks)
    return -(-blocks // tile) * tile, tile


def pack_weights(weights_hwio: np.ndarray, isa: DotIsa) -> np.ndarray:
    """HWIO int8 weights as [O/L, KH, KW, C/K, L, K], zero-filled to whole blocks and tiles."""
    kh, kw, c, o = weights_hwio.shape
    cb, ob = -(-c // isa.k), channel_blocks(o, isa)[0]
    padded = np.zeros((kh, kw, cb * isa.k, ob * isa.lanes), np.int8)
    padded[:, :, :c, :o] = weights_hwio
    return np.ascontiguousarray(padded.reshape(kh, kw, cb, isa.k, ob, isa.lanes).transpose(4, 0, 1, 2, 5, 3))


def corrected_bias(weights_hwio: np.ndarray, bias: np.ndarray, x_zero: int, offset: int) -> np.ndarray:
    """bias - (x_zero + offset) * sum(W[..., o]): the zero point taken out of the integer sum."""
    sums = weights_hwio.astype(np.int64).sum(axis=(0, 1, 2))
    corrected = bias.astype(np.int64) - (x_zero + offset) * sums
    if np.abs(corrected).max(initial=0) >= 2 ** 31:
        raise OverflowError("corrected bias out of int32")
    return corrected.astype(np.int32)


# --- the functions ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ConvShape:
    x: tuple[int, int, int, int]              # NHWC
    kernel: tuple[int, int]
    out_channels: int
    strides: tuple[int, int] = (1, 1)
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)     # top, left, bottom, right
    dilation: tuple[int, int] = (1, 1)

    @property
    def out(self) -> tuple[int, int, int, int]:
        n, h, w, _ = self.x
        (kh, kw), (sh, sw), (dh, dw) = self.kernel, self.strides, self.dilation
        pt, pl, pb, pr = self.padding
        return (n, (h + pt + pb - dh * (kh - 1) - 1) // sh + 1, (w + pl + pr - dw * (kw - 1) - 1) // sw + 1,
                self.out_channels)


def _requantize(acc_value, scale, y_zero: int, out_dtype: str):
    """float32(acc) * scale, clamped, rounded half to even, + zero point: int8.py's epilogue, in TIR."""
    info = np.iinfo(out_dtype)
    y = acc_value.astype("float32") * scale
    y = tirx.max(tirx.min(y, tirx.const(float(info.max - y_zero), "float32")),
                 tirx.const(float(info.min - y_zero), "float32"))
    r = tirx.floor(y + tirx.const(0.5, "float32"))
    tie = tirx.all(r - y == tirx.const(0.5, "float32"),
                   r - tirx.floor(r * tirx.const(0.5, "float32")) * tirx.const(2.0, "float32")
                   == tirx.const(1.0, "float32"))                      # r is odd (r is a whole number)
    r = tirx.Select(tie, r - tirx.const(1.0, "float32"), r)
    return (r + tirx.const(float(y_zero), "float32")).astype(out_dtype)


def _padded(x, shape: ConvShape, channels: int, fill: int, offset: int, dtype: str, extra_width: int = 0):
    """x padded with ``fill`` (the zero point, + offset), its channels to ``channels``, ``extra_width`` more
    columns on the right (read only by outputs that are dropped), shifted by ``offset``; x itself when
    nothing is to be done."""
    n, h, w, c = shape.x
    pt, pl, pb, pr = shape.padding
    if not (pt or pl or pb or pr or offset or channels != c or extra_width or dtype != "int8"):
        return x

    def value(i, y, z, ch):
        inside = tirx.all(y >= pt, y < pt + h, z >= pl, z < pl + w, ch < c)
        shifted = (x[i, y - pt, z - pl, ch].astype("int32") + offset).astype(dtype)
        return tirx.if_then_else(inside, shifted, tirx.const(fill, dtype))

    return te.compute((n, h + pt + pb, w + pl + pr + extra_width, channels), value, name="pad")


def conv_function(shape: ConvShape, isa: DotIsa, y_zero: int, x_zero: int, out_dtype: str = "int8",
                  schedule: bool = True):
    """The scheduled PrimFunc (x, packed weights, bias', scale) -> int8 output of one convolution
    (``schedule=False``: the same computation unscheduled, the tests' reference)."""
    n, _, width, c = shape.x
    kh, kw = shape.kernel
    lanes, k = isa.lanes, isa.k
    cb, (ob, channel_tile) = -(-c // k), channel_blocks(shape.out_channels, isa)
    _, oh, ow, o = shape.out
    (sh, sw), (dh, dw) = shape.strides, shape.dilation
    # whole register tiles: the output width rounded up to WIDTH_TILE pixels, computed and then dropped
    width_tile = min(WIDTH_TILE, ow)
    ow_tiles = -(-ow // width_tile) * width_tile
    pt, pl, pb, pr = shape.padding
    extra = max(0, (ow_tiles - 1) * sw + (kw - 1) * dw + 1 - (width + pl + pr))
    x = te.placeholder(shape.x, "int8", name="x")
    w = te.placeholder((ob, kh, kw, cb, lanes, k), "int8", name="w")
    bias = te.placeholder((o,), "int32", name="bias")
    scale = te.placeholder((o,), "float32", name="scale")
    data = _padded(x, shape, cb * k, x_zero + isa.offset, isa.offset, isa.data_dtype, extra)
    rh, rw = te.reduce_axis((0, kh), name="rh"), te.reduce_axis((0, kw), name="rw")
    rc, rk = te.reduce_axis((0, cb), name="rc"), te.reduce_axis((0, k), name="rk")
    acc = te.compute(
        (n, oh, ow_tiles, ob, lanes),
        lambda i, y, z, b, lane: te.sum(
            data[i, y * sh + rh * dh, z * sw + rw * dw, rc * k + rk].astype("int32")
            * w[b, rh, rw, rc, lane, rk].astype("int32"), axis=[rh, rw, rc, rk]),
        name="acc")
    out = te.compute((n, oh, ow, o), lambda i, y, z, ch: _requantize(
        acc[i, y, z, ch // lanes, ch % lanes] + bias[ch], scale[ch], y_zero, out_dtype), name="out")
    func = te.create_prim_func([x, w, bias, scale, out])
    return _schedule_conv(func, isa, width_tile, channel_tile, data is not x) if schedule else func


def _schedule_conv(func, isa: DotIsa, wt: int, ct: int, padded: bool):
    sch = s_tir.Schedule(func)
    acc = sch.get_sblock("acc")
    i, y, z, b, lane, rh, rw, rc, rk = sch.get_loops(acc)
    zo, zi = sch.split(z, factors=[None, wt])
    bo, bi = sch.split(b, factors=[None, ct])
    sch.reorder(i, y, bo, zo, rh, rw, rc, zi, bi, lane, rk)     # a row's pixels per weight tile: weights stay in cache
    rows = sch.fuse(i, y)
    sch.parallel(rows)
    out = sch.get_sblock("out")
    sch.reverse_compute_at(out, zo)
    init = sch.decompose_reduction(acc, rh)
    sch.vectorize(sch.get_loops(init)[-1])
    sch.tensorize(lane, isa.intrin)
    sch.unroll(zi)
    sch.unroll(bi)
    inner = sch.get_loops(out)[-1]
    sch.vectorize(inner)
    if padded:
        pad = sch.get_sblock("pad")
        pi, py, pz, pc = sch.get_loops(pad)
        sch.parallel(sch.fuse(pi, py))
        sch.vectorize(pc if sch.get(pc).extent.value <= 64 else sch.split(pc, factors=[None, 16])[1])
    return _scheduled(sch.mod["main"])


def depthwise_function(shape: ConvShape, y_zero: int, x_zero: int, out_dtype: str = "int8", lanes: int = 16,
                       schedule: bool = True):
    """Depthwise (channel multiplier 1) convolution: int8 x int8 -> int16 products widened into int32 sums,
    vectorized over channels. Weights [KH, KW, C] int8 as they are; bias' corrected like conv_function's."""
    n, _, _, c = shape.x
    kh, kw = shape.kernel
    _, oh, ow, _ = shape.out
    (sh, sw), (dh, dw) = shape.strides, shape.dilation
    x = te.placeholder(shape.x, "int8", name="x")
    w = te.placeholder((kh, kw, c), "int8", name="w")
    bias = te.placeholder((c,), "int32", name="bias")
    scale = te.placeholder((c,), "float32", name="scale")
    data = _padded(x, shape, c, x_zero, 0, "int8")
    rh, rw = te.reduce_axis((0, kh), name="rh"), te.reduce_axis((0, kw), name="rw")
    acc = te.compute(
        (n, oh, ow, c),
        lambda i, y, z, ch: te.sum(
            (data[i, y * sh + rh * dh, z * sw + rw * dw, ch].astype("int16")
             * w[rh, rw, ch].astype("int16")).astype("int32"), axis=[rh, rw]),
        name="acc")
    out = te.compute((n, oh, ow, c), lambda i, y, z, ch: _requantize(
        acc[i, y, z, ch] + bias[ch], scale[ch], y_zero, out_dtype), name="out")
    func = te.create_prim_func([x, w, bias, scale, out])
    if not schedule:
        return func
    sch = s_tir.Schedule(func)
    acc_block = sch.get_sblock("acc")
    i, y, z, ch, rh_, rw_ = sch.get_loops(acc_block)
    vec = next((v for v in (lanes, 8, 4) if c % v == 0), 1)
    co, ci = sch.split(ch, factors=[None, vec])
    wt = next(t for t in (WIDTH_TILE, 3, 2, 1) if ow % t == 0)
    zo, zi = sch.split(z, factors=[None, wt])
    sch.reorder(i, y, zo, co, rh_, rw_, zi, ci)
    sch.parallel(sch.fuse(i, y))
    out_block = sch.get_sblock("out")
    sch.reverse_compute_at(out_block, co)
    if vec > 1:
        sch.vectorize(ci)
    init = sch.decompose_reduction(acc_block, rh_)
    if vec > 1:
        sch.vectorize(sch.get_loops(init)[-1])
    sch.unroll(zi)
    sch.vectorize(sch.get_loops(out_block)[-1])
    if data is not x:
        pad = sch.get_sblock("pad")
        pi, py, pz, pc = sch.get_loops(pad)
        sch.parallel(sch.fuse(pi, py))
        sch.vectorize(pc if c <= 64 else sch.split(pc, factors=[None, 16])[1])
    return _scheduled(sch.mod["main"])


def _scheduled(func):
    # op_pattern 8 (opaque): FuseOps keeps it a function of its own; the schedule is final
    return func.with_attr("tirx.is_scheduled", True).with_attr("op_pattern", 8).without_attr("global_symbol")
