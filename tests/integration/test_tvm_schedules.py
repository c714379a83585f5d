"""Every function the default CPU schedules touch must compute exactly what TVM's unscheduled
function computes (same reduction order), on a model with Xception's operator kinds in fp32 and int8."""
from __future__ import annotations

import re

import numpy as np
import pytest

SHAPE = re.compile(r'T\.Buffer\(\((.*?)\), "(\w+)"\)')


def legalized_functions(tflite_file, target, fused: bool = False):
    """The model's functions as the compile stage imports them: legalized, and with ``fused`` also fused (the
    epilogues the default schedules meet in a real build)."""
    import tvm
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    from pipeline.tvm.int8 import import_tflite
    from pipeline.tvm.schedules import fusion_passes

    mod = import_tflite(tflite_file)
    if fused:                                          # as the compile stage does before fusing
        from pipeline.tvm.conv_tiles import vector_lanes
        from pipeline.tvm.packing import pack_pointwise

        mod = pack_pointwise(mod, vector_lanes(target))
    with target:
        passes = fusion_passes(target) if fused else cpu.library_dispatch_passes(target) + cpu.legalize_passes(target)
        mod = tvm.transform.Sequential(passes)(mod)
    return [(gv.name_hint, f) for gv, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc)]


def check_scheduled_functions(functions, target, rules) -> int:
    """Each function a rule schedules, run scheduled and unscheduled on the same random inputs: bit-equal outputs.
    Functions that differ only by name are run once. Returns how many were compared."""
    import tvm

    rng = np.random.default_rng(0)
    compared, seen = 0, set()
    for name, func in functions:
        text = func.script().replace(name, "f")
        if text in seen:
            continue
        seen.add(text)
        sch = next((s for s in (rule.apply(func, target, False) for rule in rules) if s is not None), None)
        if sch is None:
            continue
        signature = func.script().split("T.func_attr")[0]
        shapes = [(tuple(int(x) for x in re.findall(r"T.int64\((\d+)\)", m.group(1))), m.group(2))
                  for m in SHAPE.finditer(signature)]
        args = [rng.standard_normal(s).astype(d) if d.startswith("float") else rng.integers(-100, 100, s).astype(d)
                for s, d in shapes]
        outputs = []
        for fn in (func, sch.mod["main"]):
            lib = tvm.compile(tvm.IRModule({"main": fn.with_attr("global_symbol", "main")}), target=target)
            tensors = [tvm.runtime.tensor(a) for a in args]
            lib["main"](*tensors)
            outputs.append(tensors[-1].numpy())
        np.testing.assert_array_equal(outputs[0], outputs[1], err_msg=f"{name} {shapes}")
        compared += 1
    return compared


@pytest.fixture(scope="module")
def tflite_models(tiny_build):
    options, _ = tiny_build("host")           # the run's shared host build (tests/conftest.py)
    return options.out_dir / "host"


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_scheduled_functions_match_unscheduled(tflite_models, precision):
    import tvm

    from pipeline.tvm.conv_tiles import ConvLike
    from pipeline.tvm.schedules import Injective

    target = tvm.target.Target({"kind": "llvm", "num-cores": 2})
    functions = legalized_functions(tflite_models / f"tiny_{precision}.tflite", target)
    assert check_scheduled_functions(functions, target, [ConvLike(), Injective()]) >= 4   # really scheduled


@pytest.mark.system
@pytest.mark.parametrize("mcpu", ["haswell", "skylake-avx512"])
def test_xception_299_fused_functions_match_unscheduled(xception_299, mcpu):
    """Xception's own map sizes and epilogues at 299x299 (147, 74, 37, 19, 10): a 1x1 tile of 4 pixels on 74x74
    crossed image rows and raced (2026-12-06), which the tiny model and the 71x71 reference never hit."""
    import tvm

    from pipeline.tvm.conv_tiles import ConvLike

    if ("avx512f" if mcpu == "skylake-avx512" else "avx2") not in open("/proc/cpuinfo").read().split():
        pytest.skip(f"this CPU cannot run {mcpu} code")
    target = tvm.target.Target({"kind": "llvm", "mcpu": mcpu, "num-cores": 2})
    assert check_scheduled_functions(legalized_functions(xception_299, target, fused=True), target, [ConvLike()]) >= 20


@pytest.fixture(scope="module")
def xception_299(tmp_path_factory):
    from pipeline.compiler import CompileOptions, compile_target
    from tests.conftest import write_target

    tmp = tmp_path_factory.mktemp("x299")
    targets = write_target(tmp / "targets", "one", ["tflite-fp32"])
    compile_target(CompileOptions(target="one", weights="random", input_size=299, num_classes=5, out_dir=tmp / "b",
                                  cache_dir=tmp / "c", eval_n=4, targets_dir=targets))
    return tmp / "b" / "one" / "xception_fp32.tflite"


def test_packed_weights_layout():
    from pipeline.tvm.packing import packed_weights

    kernel = np.arange(15, dtype="float32").reshape(1, 1, 3, 5)          # Ci 3, Co 5
    packed = packed_weights(kernel, 4)
    assert packed.shape == (2, 3, 4) and packed.flags["C_CONTIGUOUS"]
    for c in range(5):
        np.testing.assert_array_equal(packed[c // 4, :, c % 4], kernel[0, 0, :, c])
    assert not packed[1, :, 1:].any()                                     # zeros past Co


def test_pointwise_convolutions_read_packed_weights_and_compute_the_same():
    """Only stride-1 unpadded 1x1 float32 convolutions on a constant kernel are rewritten; the rewritten module
    gives the same bits as the original, compiled the same way."""
    import tvm
    from tvm import relax

    from pipeline.tvm.packing import pack_pointwise

    rng = np.random.default_rng(7)
    x = relax.Var("x", relax.TensorType((1, 6, 6, 8), "float32"))
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            conv = relax.op.nn.conv2d
            y = bb.emit(conv(x, relax.const(rng.standard_normal((1, 1, 8, 20)).astype("float32")),
                             data_layout="NHWC", kernel_layout="HWIO"))            # packed: 20 -> 2 blocks of 16
            y = bb.emit(relax.op.nn.relu(y))
            y = bb.emit(conv(y, relax.const(rng.standard_normal((3, 3, 20, 16)).astype("float32")), padding=1,
                             data_layout="NHWC", kernel_layout="HWIO"))            # 3x3: left alone
            y = bb.emit(conv(y, relax.const(rng.standard_normal((1, 1, 16, 16)).astype("float32")), strides=2,
                             data_layout="NHWC", kernel_layout="HWIO"))            # strided: left alone
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    mod = bb.get()
    packed = pack_pointwise(mod, 16)
    assert packed["main"].script().count("call_tir") == 1 and mod["main"].script().count("call_tir") == 0
    data = rng.standard_normal((1, 6, 6, 8)).astype("float32")
    outputs = [relax.VirtualMachine(tvm.compile(m, target="llvm"), tvm.cpu())["main"](tvm.runtime.tensor(data)).numpy()
               for m in (mod, packed)]
    np.testing.assert_array_equal(outputs[0], outputs[1])


@pytest.mark.parametrize("axes", [[1, 0], None])
def test_constant_permutes_are_folded_at_compile_time(axes):
    import tvm
    from tvm import relax

    from pipeline.tvm.folding import fold_constant_permutes

    weights = np.arange(12, dtype="float32").reshape(3, 4)
    x = relax.Var("x", relax.TensorType((1, 3), "float32"))
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        bb.emit_func_output(bb.emit(relax.op.matmul(x, relax.op.permute_dims(relax.const(weights.T.copy()), axes))))
    folded = fold_constant_permutes()(bb.get())
    assert "permute_dims" in bb.get().script() and "permute_dims" not in folded.script()
    lib = tvm.compile(folded, target="llvm")
    out = relax.VirtualMachine(lib, tvm.cpu())["main"](tvm.runtime.tensor(np.ones((1, 3), "float32"))).numpy()
    np.testing.assert_array_equal(out, np.ones((1, 3), "float32") @ weights)


# (H, W, Cin, Cout, kernel, groups): each register-tile branch of ConvLike (pipeline/tvm/conv_tiles.py register_tile)
TILES = [(6, 6, 8, 24, 1, 1),       # 36 pixels: 6 rows; 24 channels: 8 lanes
         (3, 3, 16, 40, 1, 1),      # 9 pixels: 9 rows (no divisor in 4..6)
         (7, 7, 16, 32, 1, 1),      # 49 pixels, prime-like: 7 rows (past the registers on AVX2)
         (7, 7, 24, 24, 3, 24),     # depthwise, width 7: a predicated tail
         (5, 7, 8, 16, 3, 1),       # a 3x3 convolution, width 7
         (17, 17, 8, 8, 1, 1),      # 289 pixels: no divisor in 4..13 on AVX2, the width in parts of 9 and 8
         (31, 31, 8, 8, 1, 1),      # 961 pixels: no divisor in 4..29 on AVX-512, parts of 16 and 15
         (4, 4, 256, 512, 1, 1),    # 512 KB of weights: chunks of 256 KB outermost, rows of 2 KB: packed
         (17, 17, 256, 512, 1, 1),  # both
         (4, 4, 128, 520, 1, 1),    # chunks of rows of 2,080 bytes: not packed
         (14, 14, 8, 8, 1, 1),      # 196 pixels: 4 divides them, not the width: 7 rows (4 raced, 2026-12-06)
         (5, 5, 16, 40, 1, 1),      # AVX-512: 40 channels, 32 in 16 lanes and a tail of 8 (channel_tail)
         (5, 7, 8, 40, 3, 1),       # the same with a 3x3 kernel
         (7, 7, 40, 40, 3, 40),     # depthwise: 9 weights per channel, no tail
         (3, 3, 32, 64, 1, 1)]      # AVX2: 3 rows of a 3x3 map (the exit flow at 71x71 ran unscheduled, 2026-12-06)


@pytest.mark.parametrize("mcpu", ["haswell", "skylake-avx512"])
def test_register_tiles_compute_what_the_unscheduled_convolution_computes(mcpu):
    import tvm
    from tvm import relax

    from pipeline.tvm.conv_tiles import ConvLike, aligned, channel_tail, register_tile, weight_chunk

    target = tvm.target.Target({"kind": "llvm", "mcpu": mcpu, "num-cores": 2})
    flags = open("/proc/cpuinfo").read().split()
    if ("avx512f" if mcpu == "skylake-avx512" else "avx2") not in flags:
        pytest.skip(f"this CPU cannot run {mcpu} code")
    rng = np.random.default_rng(3)
    rows_seen, parts_seen, chunks_seen, tails_seen, packed_seen = set(), set(), set(), set(), set()
    for h, w, ci, co, k, groups in TILES:
        x = relax.Var("x", relax.TensorType((1, h, w, ci), "float32"))
        kernel = rng.standard_normal((k, k, ci // groups, co)).astype("float32")
        weights = relax.const(kernel)
        bb = relax.BlockBuilder()
        with bb.function("main", [x]):
            y = bb.emit(relax.op.nn.relu(relax.op.nn.conv2d(x, weights, padding=k // 2, groups=groups,
                                                            data_layout="NHWC", kernel_layout="HWIO")))
            bb.emit_func_output(y)
        mod = relax.transform.LegalizeOps()(bb.get())
        (func,) = [f for _, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc) and "conv" in str(f)]
        sch = ConvLike().apply(func, target, False)
        assert sch is not None, (h, w, ci, co, k)
        lanes, rows = register_tile(co, h * w if k == 1 else w, k == 1, target, w if k == 1 else None)
        rows_seen.add(rows)
        parts_seen.add(k == 1 and ((h * w) % rows != 0 or not aligned(rows, w)))
        chunks_seen.add(weight_chunk(co // lanes, k * k * ci // groups, lanes) > 0)
        tails_seen.add(channel_tail(co, target, k * k * ci // groups))
        packed_seen.add("_global" in sch.mod["main"].script())      # weight chunks copied (_packed)
        data = rng.standard_normal((1, h, w, ci)).astype("float32")
        outputs = []
        for fn in (func, sch.mod["main"]):
            lib = tvm.compile(tvm.IRModule({"main": fn.with_attr("global_symbol", "main")}), target=target)
            args = [tvm.runtime.tensor(data), tvm.runtime.tensor(kernel),
                    tvm.runtime.tensor(np.zeros((1, h, w, co), "float32"))]
            lib["main"](*args)
            outputs.append(args[-1].numpy())
        np.testing.assert_array_equal(outputs[0], outputs[1], err_msg=str((h, w, ci, co, k, groups)))
    assert {9, 7, 6} <= rows_seen and parts_seen == chunks_seen == {True, False}   # every branch was taken
    assert tails_seen == ({0, 8} if mcpu == "skylake-avx512" else {0}) and packed_seen == {True, False}


@pytest.mark.parametrize("mcpu", ["haswell", "skylake-avx512"])
def test_vector_matrix_products_compute_what_the_unscheduled_one_computes(mcpu):
    """The classifier at batch 1, [1, K] x [K, N] plus a bias: channel blocks in registers (_vector_matrix); N with no
    vector width dividing it is left to dlight's GEMV rule."""
    import tvm
    from tvm import relax

    from pipeline.tvm.conv_tiles import ConvLike

    if ("avx512f" if mcpu == "skylake-avx512" else "avx2") not in open("/proc/cpuinfo").read().split():
        pytest.skip(f"this CPU cannot run {mcpu} code")
    target = tvm.target.Target({"kind": "llvm", "mcpu": mcpu, "num-cores": 2})
    rng = np.random.default_rng(5)
    for k, n, scheduled in [(256, 200, True), (64, 48, True), (64, 10, False)]:
        x = relax.Var("x", relax.TensorType((1, k), "float32"))
        weights, bias = rng.standard_normal((k, n)).astype("float32"), rng.standard_normal(n).astype("float32")
        bb = relax.BlockBuilder()
        with bb.function("main", [x]):
            with bb.dataflow():
                y = bb.emit_output(relax.op.add(relax.op.matmul(x, relax.const(weights)), relax.const(bias)))
            bb.emit_func_output(y)
        mod = relax.transform.FuseTIR()(relax.transform.FuseOps()(relax.transform.AnnotateTIROpPattern()(
            relax.transform.LegalizeOps()(bb.get()))))
        (func,) = [f for _, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]    # matmul + add, fused
        sch = ConvLike().apply(func, target, False)
        assert (sch is not None) == scheduled, (k, n)
        if sch is None:
            continue
        data = rng.standard_normal((1, k)).astype("float32")
        outputs = []
        for fn in (func, sch.mod["main"]):
            lib = tvm.compile(tvm.IRModule({"main": fn.with_attr("global_symbol", "main")}), target=target)
            args = [tvm.runtime.tensor(a) for a in (data, weights, bias, np.zeros((1, n), "float32"))]
            lib["main"](*args)
            outputs.append(args[-1].numpy())
        np.testing.assert_array_equal(outputs[0], outputs[1], err_msg=str((k, n)))
        assert np.abs(outputs[1]).max() > 0


@pytest.mark.parametrize("mcpu,channels,pixels,pointwise,width,expected", [
    ("haswell", 728, 81, True, 9, (8, 9)),           # AVX2: 16 registers; 728 channels take 8 lanes
    ("haswell", 256, 324, True, 18, (16, 6)),        # 16 floats = 2 registers each: 6 rows fill 12
    ("haswell", 728, 361, True, 19, (8, 13)),        # 19x19: as many as the registers hold (the width in parts)
    ("haswell", 728, 19, False, None, (8, 6)),       # a 3x3 kernel on width 19: a predicated tail
    ("skylake-avx512", 728, 81, True, 9, (8, 27)),   # 32 registers
    ("skylake-avx512", 1536, 25, True, 5, (16, 5)),
    ("skylake-avx512", 256, 5476, True, 74, (16, 29)),  # 74x74: 4 divides the pixels, not the width: parts
    ("haswell", 128, 21609, True, 147, (16, 6)),     # 147x147: 9 divides the pixels, not the width: parts
    ("haswell", 256, 5476, True, None, (16, 4)),     # without the width: any divisor of the pixels
    ("haswell", 2048, 9, True, 3, (16, 3)),          # 3x3: whole image rows fit, no width parts
])
def test_register_tile_fits_the_target(mcpu, channels, pixels, pointwise, width, expected):
    import tvm

    from pipeline.tvm.conv_tiles import register_tile

    target = tvm.target.Target({"kind": "llvm", "mcpu": mcpu, "mtriple": "x86_64-linux-gnu"})
    assert register_tile(channels, pixels, pointwise, target, width) == expected


@pytest.mark.parametrize("mcpu,channels,reduction,expected", [
    ("skylake-avx512", 728, 728, 8), ("skylake-avx512", 1000, 2048, 8), ("skylake-avx512", 736, 728, 0),
    ("skylake-avx512", 24, 728, 0), ("skylake-avx512", 36, 728, 0), ("haswell", 728, 728, 0),
    ("skylake-avx512", 728, 9, 0)])                  # depthwise 3x3: no parts
def test_channel_tail_only_where_a_half_vector_wastes_a_register(mcpu, channels, reduction, expected):
    import tvm

    from pipeline.tvm.conv_tiles import channel_tail

    target = tvm.target.Target({"kind": "llvm", "mcpu": mcpu, "mtriple": "x86_64-linux-gnu"})
    assert channel_tail(channels, target, reduction) == expected


@pytest.mark.parametrize("width,rows,expected", [(19, 13, [10, 9]), (37, 13, [13, 12, 12]), (37, 29, [19, 18]),
                                                 (12, 13, [12])])
def test_width_parts_are_even_and_fit(width, rows, expected):
    from pipeline.tvm.conv_tiles import width_parts

    assert width_parts(width, rows) == expected


@pytest.mark.parametrize("blocks,reduction,lanes,expected", [
    (91, 728, 8, 7),        # 728x728 (2.1 MB): 7 blocks of 8 = 163 KB, a divisor of 91
    (96, 1024, 16, 4),      # 1024x1536: 4 x 16 channels x 1024 x 4 B = 256 KB
    (16, 128, 16, 0),       # 128 KB of weights in all: no chunks
    (0, 728, 8, 0),         # channels the lanes do not divide
])
def test_weight_chunks_fit_the_budget(blocks, reduction, lanes, expected):
    from pipeline.tvm.conv_tiles import weight_chunk

    assert weight_chunk(blocks, reduction, lanes) == expected
