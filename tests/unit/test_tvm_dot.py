"""The dot-product int8 functions (pipeline/tvm/dot.py), function by function: bit for bit what an independent
numpy model of LiteRT's (XNNPACK's) int8 convolution computes, and what the same function unscheduled
computes, on every ISA this machine can run; for the others, the instruction is really in the code."""
from __future__ import annotations

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

from pipeline.tvm import dot  # noqa: E402

X_ZERO, Y_ZERO = -7, 11
SHAPES = [
    dot.ConvShape((1, 9, 9, 5), (3, 3), 20, (1, 1), (1, 1, 1, 1)),     # 3x3, same padding, 5 channels (not a block)
    dot.ConvShape((1, 8, 8, 64), (1, 1), 40, (2, 2)),                 # strided 1x1 (a residual shortcut)
    dot.ConvShape((1, 12, 12, 32), (1, 1), 64),                       # pointwise
    dot.ConvShape((1, 1, 1, 96), (1, 1), 10),                         # the classifier as a 1x1
    dot.ConvShape((1, 11, 11, 8), (3, 3), 16, (2, 2), (0, 0, 0, 0)),  # the stem: 3x3 stride 2, valid
]
TARGETS = {
    "sdot": {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a76", "mattr": ["+neon", "+dotprod"]},
    "neon": {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72", "mattr": ["+neon"]},
    "avx512-vnni": {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "cascadelake"},
    "avx-vnni": {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "alderlake"},
    "avx2": {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "haswell"},
}
SYSTEM_FEATURE = {"avx512-vnni": "avx512vnni", "avx-vnni": "avxvnni", "avx2": "avx2"}


def litert_conv(x, w_hwio, bias, scale, shape: dot.ConvShape) -> np.ndarray:
    """(x - zp) * W summed exactly in int64, + bias, float32 scale, clamp, round half to even, + zp."""
    pt, pl, pb, pr = shape.padding
    padded = np.pad(x.astype(np.int64) - X_ZERO, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    n, oh, ow, o = shape.out
    (kh, kw), (sh, sw) = shape.kernel, shape.strides
    acc = np.zeros((n, oh, ow, o), np.int64)
    for i in range(kh):
        for j in range(kw):
            patch = padded[:, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw, :]
            acc += np.einsum("nhwc,co->nhwo", patch, w_hwio[i, j].astype(np.int64))
    y = (acc + bias).astype(np.float32) * scale
    return (np.rint(np.clip(y, -128 - Y_ZERO, 127 - Y_ZERO)) + Y_ZERO).astype(np.int8)


def operands(shape: dot.ConvShape, seed: int, depthwise: bool = False):
    rng = np.random.default_rng(seed)
    c, o = shape.x[3], shape.out_channels
    x = rng.integers(-128, 128, shape.x).astype(np.int8)
    w = rng.integers(-127, 128, (*shape.kernel, 1 if depthwise else c, o)).astype(np.int8)
    bias = rng.integers(-3000, 3000, o).astype(np.int32)
    # scales that spread the outputs over the whole int8 range (clamping both ends)
    scale = (rng.uniform(0.5, 1.5, o) * 150 / np.sqrt(c * shape.kernel[0] * shape.kernel[1]) / 128 / 60).astype(np.float32)
    return x, w, bias, scale


def conv_case(spec: dot.DotIsa, index: int):
    """SHAPES[index]'s operands as ``spec``'s function takes them (packed weights, corrected bias), and what
    LiteRT computes from them."""
    shape = SHAPES[index]
    x, w, bias, scale = operands(shape, index)
    args = (x, dot.pack_weights(w, spec), dot.corrected_bias(w, bias, X_ZERO, spec.offset), scale)
    return args, litert_conv(x, w, bias, scale, shape)


def run(func, target, *args, out_shape):
    lib = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target=target)
    out = tvm.runtime.tensor(np.zeros(out_shape, np.int8))
    lib["main"](*(tvm.runtime.tensor(a) for a in args), out)
    return out.numpy()


def host_has(isa: str) -> bool:
    from tvm.target.codegen import llvm_get_system_cpu, target_has_features

    with tvm.target.Target({"kind": "llvm", "mcpu": llvm_get_system_cpu()}):
        return bool(target_has_features(SYSTEM_FEATURE[isa]))


RUNNABLE = [isa for isa in SYSTEM_FEATURE if host_has(isa)]


@pytest.mark.parametrize("isa", list(TARGETS))
@pytest.mark.parametrize("index", range(len(SHAPES)))
def test_dot_product_convolution_is_litert_arithmetic(isa, index):
    """Every ISA's packing, data offset (uint8 data for VNNI) and zero-point correction, unscheduled, on this
    machine; the tensorized schedule too where this CPU has the instruction."""
    shape = SHAPES[index]
    spec = dot.ISAS[isa]
    args, expected = conv_case(spec, index)
    assert len(np.unique(expected)) > min(30, expected.size // 4)        # not a saturated, constant output
    unscheduled = run(dot.conv_function(shape, spec, Y_ZERO, X_ZERO, schedule=False),
                      tvm.target.Target({"kind": "llvm"}), *args, out_shape=shape.out)
    assert np.array_equal(unscheduled, expected)
    if isa in RUNNABLE:
        scheduled = run(dot.conv_function(shape, spec, Y_ZERO, X_ZERO), tvm.target.Target(TARGETS[isa]), *args,
                        out_shape=shape.out)
        assert np.array_equal(scheduled, expected)


def _stand_in(isa: str) -> dot.DotIsa:
    """The ISA's form with its instruction replaced by plain integer code of the same meaning (Intel's
    VPDPBUSD: C[i] += sum over j < 4 of uint8 A[j] * int8 B[i, j], exact in int32), registered once."""
    from dataclasses import replace

    spec = dot.ISAS[isa]
    name = f"test_stand_in_{spec.intrin}"
    meaning = dot.description(spec.lanes, spec.k, spec.data_dtype)
    dot.register_once(name, meaning, meaning)
    return replace(spec, intrin=name)


@pytest.mark.parametrize("isa", [isa for isa in ("avx512-vnni", "avx-vnni") if isa not in RUNNABLE])
@pytest.mark.parametrize("index", range(len(SHAPES)))
def test_vnni_schedule_is_litert_arithmetic_with_a_stand_in_instruction(isa, index):
    """Where this CPU has no VNNI (the CI and developer machines so far), the VNNI forms' tensorized schedule
    (16- or 8-lane channel blocks, 4-byte groups, the register tile, uint8 data padded with zp + 128) still runs
    here end to end, the instruction itself replaced by integer code of its meaning. The real instruction runs on
    Bochs' emulated Tiger Lake in tests/integration/test_x86_dot_emulated.py (qemu's TCG has no VNNI)."""
    shape = SHAPES[index]
    spec = _stand_in(isa)
    assert spec.offset == 128 and spec.data_dtype == "uint8"
    args, expected = conv_case(spec, index)
    func = dot.conv_function(shape, spec, Y_ZERO, X_ZERO)
    assert func.attrs["tirx.is_scheduled"]
    got = run(func, tvm.target.Target({"kind": "llvm"}), *args, out_shape=shape.out)
    assert np.array_equal(got, expected)


def test_the_self_check_passes_here_and_catches_a_wrong_instruction(monkeypatch):
    from tvm.target.codegen import llvm_get_system_cpu

    target = tvm.target.Target({"kind": "llvm", "mcpu": llvm_get_system_cpu()})
    isa = dot.isa_for(target)
    if isa is None:
        pytest.skip("this CPU has no int8 dot-product instructions TVM can use")
    assert dot.self_check(isa, target) is None
    real = dot.corrected_bias
    monkeypatch.setattr(dot, "corrected_bias", lambda *a: real(*a) + 200)       # a wrong zero-point correction
    assert "differs from the exact integer result" in dot.self_check(isa, target)


@pytest.mark.parametrize("index", [0, 4])
def test_depthwise_is_litert_arithmetic(index):
    shape = SHAPES[index]
    shape = dot.ConvShape(shape.x, shape.kernel, shape.x[3], shape.strides, shape.padding)
    x, w, bias, scale = operands(shape, 10 + index, depthwise=True)
    dense = np.zeros((*shape.kernel, shape.x[3], shape.x[3]), np.int8)       # the same filter as a full conv
    for ch in range(shape.x[3]):
        dense[:, :, ch, ch] = w[:, :, 0, ch]
    expected = litert_conv(x, dense, bias, scale, shape)
    args = (x, np.ascontiguousarray(w[:, :, 0, :]), dot.corrected_bias(w, bias, X_ZERO, 0), scale)
    target = tvm.target.Target({"kind": "llvm"})
    for scheduled in (True, False):
        got = run(dot.depthwise_function(shape, Y_ZERO, X_ZERO, schedule=scheduled), target, *args,
                  out_shape=shape.out)
        assert np.array_equal(got, expected), scheduled


@pytest.mark.parametrize("isa", list(TARGETS))
def test_each_isa_emits_its_instruction(isa):
    """Built for its own target, every form holds its dot-product instruction (what runs where this machine
    cannot run it: the ARM ones are run bit-exact under qemu by make verify)."""
    spec = dot.ISAS[isa]
    target = tvm.target.Target(TARGETS[isa])
    assert dot.isa_for(target) == spec
    lib = tvm.tirx.build(tvm.IRModule({"main": dot.conv_function(SHAPES[0], spec, Y_ZERO, X_ZERO)
                                       .with_attr("global_symbol", "main")}), target=target)
    assert spec.instruction in lib.inspect_source("asm")


def test_plain_x86_64_has_no_dot_isa():
    assert dot.isa_for(tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "x86-64"})) is None


def test_aarch64_dot_instruction_scan_against_the_assembler(tmp_path):
    """The .text scan that make verify uses counts exactly the SDOT instructions LLVM wrote."""
    from pipeline.tvm.library import aarch64_dot_instructions

    counts = {}
    for isa in ("sdot", "neon"):
        lib = tvm.tirx.build(tvm.IRModule({"main": dot.conv_function(SHAPES[2], dot.ISAS[isa], Y_ZERO, X_ZERO)
                                           .with_attr("global_symbol", "main")}), target=tvm.target.Target(TARGETS[isa]))
        lib.write_to_file(str(tmp_path / f"{isa}.o"))
        asm = lib.inspect_source("asm")
        written = sum(1 for line in asm.splitlines() if line.strip().startswith(("sdot", "udot")))
        counts[isa] = (aarch64_dot_instructions(tmp_path / f"{isa}.o"), written)
    assert counts["sdot"][0] == counts["sdot"][1] > 0
    assert counts["neon"] == (0, 0)
