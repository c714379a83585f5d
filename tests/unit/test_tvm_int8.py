"""The int8 integer-arithmetic rewrite (pipeline/tvm/int8.py) against a numpy model of LiteRT's
(XNNPACK's) int8 convolution: int32 accumulation, float32 scale, clamp, round half to even."""
from __future__ import annotations

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")
from tvm import relax  # noqa: E402

from pipeline.tvm.int8 import float_exact, integer_arithmetic, rewrites  # noqa: E402

X_SCALE, X_ZERO, Y_SCALE, Y_ZERO = 0.0213, -7, 0.0457, 11


def conv_chain(weights: np.ndarray, w_scale: np.ndarray, bias: np.ndarray, w_zero: int = 0,
               bias_dtype: str = "int32"):
    """dequantize -> conv2d (3x3, same padding) -> add bias -> quantize, as TVM's TFLite frontend imports it."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 6, 6, weights.shape[2]), "int8"))
    with bb.function("main", [x]):
        with bb.dataflow():
            xf = bb.emit(relax.op.dequantize(x, relax.const(X_SCALE, "float32"), relax.const(X_ZERO, "int32"),
                                             axis=0))
            wf = bb.emit(relax.op.dequantize(relax.const(weights, "int8"), relax.const(w_scale, "float32"),
                                             relax.const(w_zero, "int32"), axis=3))
            conv = bb.emit(relax.op.nn.conv2d(xf, wf, padding=[1, 1, 1, 1], data_layout="NHWC",
                                              kernel_layout="HWIO"))
            b_scale = (np.float32(X_SCALE) * w_scale).astype(np.float32)
            bf = bb.emit(relax.op.dequantize(relax.const(bias.astype(bias_dtype), bias_dtype),
                                             relax.const(b_scale, "float32"), relax.const(0, "int32"), axis=0))
            y = bb.emit(relax.op.add(conv, bf))
            q = bb.emit_output(relax.op.quantize(y, relax.const(Y_SCALE, "float32"), relax.const(Y_ZERO, "int32"),
                                                 out_dtype="int8", axis=0))
        bb.emit_func_output(q)
    return bb.get()


def litert_arithmetic(x: np.ndarray, weights: np.ndarray, w_scale: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """What XNNPACK's qs8/qc8w convolution computes, written out independently in numpy."""
    padded = np.pad(x.astype(np.int64) - X_ZERO, ((0, 0), (1, 1), (1, 1), (0, 0)))   # zero point pads
    _, h, w, _ = x.shape
    acc = np.zeros((1, h, w, weights.shape[3]), np.int64)
    for i in range(3):
        for j in range(3):
            acc += np.einsum("nhwc,co->nhwo", padded[:, i:i + h, j:j + w, :], weights[i, j].astype(np.int64))
    acc += bias
    scale = (np.float32(X_SCALE) * w_scale.astype(np.float32)) / np.float32(Y_SCALE)
    y = acc.astype(np.float32) * scale.astype(np.float32)
    y = np.clip(y, -128 - Y_ZERO, 127 - Y_ZERO)
    return (np.rint(y) + Y_ZERO).astype(np.int8)      # np.rint: round half to even


def run(mod, x):
    executable = tvm.compile(mod, target="llvm")
    vm = relax.VirtualMachine(executable, tvm.cpu())
    return vm["main"](tvm.runtime.tensor(x)).numpy()


@pytest.fixture
def chain():
    rng = np.random.default_rng(3)
    weights = rng.integers(-127, 128, (3, 3, 5, 4)).astype(np.int8)
    w_scale = rng.uniform(0.002, 0.02, 4).astype(np.float32)
    bias = rng.integers(-3000, 3000, 4).astype(np.int32)
    x = rng.integers(-128, 128, (1, 6, 6, 5)).astype(np.int8)
    return x, weights, w_scale, bias


@pytest.mark.parametrize("accumulator", ["float32", "int32"])
def test_rewritten_convolution_is_litert_arithmetic(chain, accumulator, monkeypatch):
    """Both forms: float32 accumulation (partial sums provably below 2**24) and int32 (forced here
    by lowering that bound to 0)."""
    from pipeline.tvm import int8 as tvm_int8

    if accumulator == "int32":
        monkeypatch.setattr(tvm_int8, "FLOAT_EXACT", 0)
    x, weights, w_scale, bias = chain
    mod = integer_arithmetic(conv_chain(weights, w_scale, bias))
    assert rewrites(mod) == 1 and float_exact(mod) == (accumulator == "float32")
    text = mod["main"].script()
    assert "R.dequantize" not in text and f'out_dtype="{accumulator}"' in text
    expected = litert_arithmetic(x, weights, w_scale, bias)
    assert np.array_equal(run(mod, x), expected)
    # the outputs really span the range: clamping and both signs are exercised
    assert expected.min() == -128 and expected.max() == 127 and len(np.unique(expected)) > 50


def test_chains_in_another_form_are_left_as_imported(chain):
    x, weights, w_scale, bias = chain
    for mod in (conv_chain(weights, w_scale, bias, w_zero=3),             # weights with a zero point
                conv_chain(weights, w_scale, bias, bias_dtype="int8")):  # not an int32 bias
        rewritten = integer_arithmetic(mod)
        assert rewrites(rewritten) == 0
        assert "R.dequantize" in rewritten["main"].script()


def test_round_half_even_on_ties_and_near_ties():
    from pipeline.tvm.int8 import _round_half_even

    values = np.array([-3.5, -2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 3.5, 126.5, -127.5, 0.49999997, 1.5000001,
                       2.4999998, -0.50000006, 7.0, -7.0, 0.0], np.float32)
    bb = relax.BlockBuilder()
    y = relax.Var("y", relax.TensorType(values.shape, "float32"))
    with bb.function("main", [y]):
        with bb.dataflow():
            out = bb.emit_output(_round_half_even(y))
        bb.emit_func_output(out)
    assert np.array_equal(run(bb.get(), values), np.rint(values))


# The first residual add of a random-weight Xception at 96x96 (a: the 1x1 shortcut, b: the pooled branch):
# the float form TVM imports misses LiteRT by one step on some of its outputs.
ADD_Q = {"a": (8.39978238218464e-05, 8), "b": (0.003476582234725356, 7), "y": (0.0034934543073177338, 7)}


def add_chain(q=ADD_Q, shape=(256, 256), relu=False):
    """quantize(add(dequantize(a), dequantize(b))), as TVM's TFLite frontend imports an int8 ADD."""
    bb = relax.BlockBuilder()
    a = relax.Var("a", relax.TensorType(shape, "int8"))
    b = relax.Var("b", relax.TensorType(shape, "int8"))
    with bb.function("main", [a, b]):
        with bb.dataflow():
            af = bb.emit(relax.op.dequantize(a, relax.const(q["a"][0], "float32"), relax.const(q["a"][1], "int32")))
            bf = bb.emit(relax.op.dequantize(b, relax.const(q["b"][0], "float32"), relax.const(q["b"][1], "int32")))
            added = bb.emit(relax.op.add(af, bf))
            if relu:                                              # an ADD with a fused ReLU
                added = bb.emit(relax.op.nn.relu(added))
            y = bb.emit_output(relax.op.quantize(added, relax.const(q["y"][0], "float32"),
                                                 relax.const(q["y"][1], "int32"), out_dtype="int8"))
        bb.emit_func_output(y)
    return bb.get()


def xnnpack_add(a: np.ndarray, b: np.ndarray, q=ADD_Q, relu=False) -> np.ndarray:
    """XNNPACK's qs8 add, in Python integers: fixed-point multipliers with 20 bits below the larger
    input-to-output scale ratio, one int32 sum, an arithmetic shift that rounds half up."""
    import math

    ratio_a = float(np.float32(q["a"][0]) / np.float32(q["y"][0]))
    ratio_b = float(np.float32(q["b"][0]) / np.float32(q["y"][0]))
    shift = 20 - (math.frexp(max(ratio_a, ratio_b))[1] - 1)
    mult_a, mult_b = round(ratio_a * 2 ** shift), round(ratio_b * 2 ** shift)   # round(): half to even
    acc = (a.astype(np.int64) - q["a"][1]) * mult_a + (b.astype(np.int64) - q["b"][1]) * mult_b + 2 ** (shift - 1)
    low = q["y"][1] if relu else -128                           # a fused ReLU: nothing below real 0
    return np.clip((acc >> shift) + q["y"][1], max(low, -128), 127).astype(np.int8)


def run2(mod, a, b):
    executable = tvm.compile(mod, target="llvm")
    vm = relax.VirtualMachine(executable, tvm.cpu())
    return vm["main"](tvm.runtime.tensor(a), tvm.runtime.tensor(b)).numpy()


@pytest.mark.parametrize("relu", [False, True])
def test_residual_add_is_xnnpacks_fixed_point_add(relu):
    from pipeline.tvm.int8 import integer_adds

    grid_a, grid_b = np.meshgrid(np.arange(-128, 128), np.arange(-128, 128), indexing="ij")
    a, b = grid_a.astype(np.int8), grid_b.astype(np.int8)        # every pair of int8 inputs
    expected = xnnpack_add(a, b, relu=relu)
    imported = run2(add_chain(relu=relu), a, b)
    assert (imported != expected).sum() > 0                     # the float form really misses (the case this fixes)
    rewritten = integer_arithmetic(add_chain(relu=relu))
    assert integer_adds(rewritten) == 1
    np.testing.assert_array_equal(run2(rewritten, a, b), expected)


def test_adds_outside_xnnpacks_scale_range_are_left_as_imported():
    from pipeline.tvm.int8 import integer_adds

    far = dict(ADD_Q, a=(1e-9, 0))              # a / y below 2**-10: LiteRT does not run it in XNNPACK's qs8 add
    assert integer_adds(integer_arithmetic(add_chain(far))) == 0


def test_rewrite_on_the_hosts_dot_products(chain):
    """With this machine's dot-product ISA the same chain becomes one scheduled int8 x int8 -> int32 function
    (packed weights, no dequantize, no float weights) and still computes LiteRT's result."""
    from tvm.target.codegen import llvm_get_system_cpu

    from pipeline.tvm.dot import isa_for
    from pipeline.tvm.int8 import dot_products
    from pipeline.tvm.schedules import cpu_pipeline

    target = tvm.target.Target({"kind": "llvm", "mcpu": llvm_get_system_cpu()})
    isa = isa_for(target)
    if isa is None:
        pytest.skip("this CPU has no int8 dot-product instructions TVM can use")
    x, weights, w_scale, bias = chain
    mod = integer_arithmetic(conv_chain(weights, w_scale, bias), isa)
    assert rewrites(mod) == 1 and dot_products(mod) == (isa.name, 1)
    text = mod["main"].script()
    assert "R.call_tir" in text and "R.dequantize" not in text and "float32" not in text.split("R.call_tir")[0]
    executable = tvm.compile(mod, target=target, relax_pipeline=cpu_pipeline(target))
    got = relax.VirtualMachine(executable, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    assert np.array_equal(got, litert_arithmetic(x, weights, w_scale, bias))


# The global mean of a digits model whose TVM import missed LiteRT by one step on 1 output in 3,000 (a sum of 463
# steps above the zero point: 47.49998 output steps, which LiteRT rounds to 48)
MEAN_Q = {"x": (0.7002992630004883, -128), "y": (0.1066574677824974, -128)}


def mean_chain(shape, q=MEAN_Q):
    """quantize(mean(dequantize(x), axis=[1, 2])), as TVM's TFLite frontend imports an int8 MEAN."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(shape, "int8"))
    with bb.function("main", [x]):
        with bb.dataflow():
            xf = bb.emit(relax.op.dequantize(x, relax.const(q["x"][0], "float32"), relax.const(q["x"][1], "int32")))
            mean = bb.emit(relax.op.mean(xf, axis=[1, 2], keepdims=False))
            y = bb.emit_output(relax.op.quantize(mean, relax.const(q["y"][0], "float32"),
                                                 relax.const(q["y"][1], "int32"), out_dtype="int8"))
        bb.emit_func_output(y)
    return bb.get()


def litert_mean(x: np.ndarray, q=MEAN_Q) -> np.ndarray:
    """LiteRT's int8 MEAN over axes 1 and 2, in numpy: the int32 sum of the raw values, float32 scale and bias
    (the input zero point folded into the bias), rounded half to even."""
    f = np.float32
    n = x.shape[1] * x.shape[2]
    scale = f(f(q["x"][0]) / (f(q["y"][0]) * f(n)))
    bias = f(f(q["y"][1]) - f(n * q["x"][1]) * scale)
    total = x.astype(np.int32).sum(axis=(1, 2)).astype(f)
    return np.clip(np.rint(total * scale + bias), -128, 127).astype(np.int8)


def test_global_mean_is_litert_arithmetic():
    """Every sum an 8x8 window of int8 values can have (16,320 of them, one per output): the rewritten mean gives
    LiteRT's result on each; the imported float form misses some."""
    from pipeline.tvm.int8 import integer_means

    above = np.arange(255 * 64).reshape(255, 64)                 # the sum above the zero point, per output
    x = np.full((255, 8, 8, 64), -128, np.int64)
    flat = x.reshape(255, 64, 64)                                # (batch, position, channel)
    for position in range(64):                                   # spread each sum over the 64 positions
        flat[:, position, :] += np.clip(above - 255 * position, 0, 255)
    x = x.astype(np.int8)
    assert (x.astype(np.int64).sum(axis=(1, 2)) + 128 * 64 == above).all()
    expected = litert_mean(x)
    executable = tvm.compile(mean_chain(x.shape), target="llvm")
    imported = relax.VirtualMachine(executable, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    assert (imported != expected).sum() > 0                      # the float form really misses
    rewritten = integer_arithmetic(mean_chain(x.shape))
    assert integer_means(rewritten) == 1
    from tvm.target.codegen import llvm_get_system_cpu

    from pipeline.tvm.schedules import cpu_pipeline

    # also as the compile builds it, fused and scheduled for this CPU: with FMA instructions LLVM fuses a float32
    # multiply and add into one rounding (a float32 form of this rewrite missed the near-tie that way)
    native = tvm.target.Target({"kind": "llvm", "mcpu": llvm_get_system_cpu()})
    for executable in (tvm.compile(rewritten, target="llvm"),
                       tvm.compile(rewritten, target=native, relax_pipeline=cpu_pipeline(native))):
        got = relax.VirtualMachine(executable, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
        np.testing.assert_array_equal(got, expected)
