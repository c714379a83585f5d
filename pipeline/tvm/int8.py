"""Integer arithmetic for int8 TFLite models in TVM: convolutions, the classifier and residual adds computed as
LiteRT's int8 kernels compute them (exact int32 sums, float32 scale, round half to even; XNNPACK's fixed-point
add), not as TVM's frontend imports them (float on dequantized values, which lands steps away from LiteRT).
Must hold: every rewritten chain gives LiteRT's outputs bit for bit; chains without that exact form stay as
imported. Details: docs/int8.md and docs/internals.md (module notes).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import tvm
from tvm import relax
from tvm.relax.dpl import is_const, is_op, rewrite_call, wildcard

BIAS_SCALE_RTOL = 1e-5       # TFLite requires bias_scale == input_scale * weight_scale
FLOAT_EXACT = 2 ** 24        # float32 holds every integer below this exactly


def import_tflite(tflite_path: Path, isa=None) -> tvm.IRModule:
    """A TFLite file as a Relax module, int8 chains in integer arithmetic: what the compile stage
    builds and the tuner extracts tasks from. ``isa``: a ``pipeline.tvm.dot.DotIsa`` (the target's
    int8 dot-product instructions), or None for the portable form."""
    import tflite

    return import_model(tflite.Model.GetRootAsModel(Path(tflite_path).read_bytes(), 0), isa)


def import_model(model, isa=None) -> tvm.IRModule:
    """``import_tflite`` for an already parsed ``tflite.Model``."""
    from tvm.relax.frontend.tflite import from_tflite

    from pipeline.tvm.folding import fold_constant_permutes

    mod = from_tflite(model)
    return fold_constant_permutes()(integer_arithmetic(mod[0] if isinstance(mod, tuple) else mod, isa))


def integer_arithmetic(mod: tvm.IRModule, isa=None) -> tvm.IRModule:
    """``mod`` with every recognised int8 dequantize -> conv2d/matmul -> quantize chain in LiteRT's
    integer arithmetic; with ``isa``, as scheduled int8 x int8 -> int32 functions on its dot-product
    instructions (pipeline/tvm/dot.py)."""
    rewriter, adds, means = _Rewriter(isa), _AddRewriter(), _MeanRewriter()
    result = tvm.IRModule(dict(mod.functions_items()), attrs=mod.attrs, global_infos=mod.global_infos)
    for gvar, func in mod.functions_items():
        if isinstance(func, relax.Function):
            func = rewrite_call(rewriter.pattern, rewriter, func)
            func = rewrite_call(adds.pattern, adds, func)
            func = rewrite_call(means.pattern, means, func)
            result[gvar] = func
    for gvar, func in rewriter.builder.get().functions_items():
        result[gvar] = func
    result = relax.transform.DeadCodeElimination()(result)
    if rewriter.dotted:
        result = result.with_attr("xception_edge.int8_dot", isa.name)
        result = result.with_attr("xception_edge.int8_dot_functions", rewriter.dotted)
    if rewriter.count:
        result = result.with_attr("xception_edge.int8_rewrites", rewriter.count)
        result = result.with_attr("xception_edge.int8_float_exact", rewriter.float_accumulated)
    if adds.count:
        result = result.with_attr("xception_edge.int8_adds", adds.count)
    if means.count:
        result = result.with_attr("xception_edge.int8_means", means.count)
    return result


def rewrites(mod: tvm.IRModule) -> int:
    """How many chains ``integer_arithmetic`` rewrote in ``mod``."""
    return _attr(mod, "xception_edge.int8_rewrites")


def integer_adds(mod: tvm.IRModule) -> int:
    """How many residual adds ``integer_arithmetic`` wrote in XNNPACK's fixed-point form."""
    return _attr(mod, "xception_edge.int8_adds")


def integer_means(mod: tvm.IRModule) -> int:
    """How many global means ``integer_arithmetic`` wrote in LiteRT's int8 MEAN form."""
    return _attr(mod, "xception_edge.int8_means")


def dot_products(mod: tvm.IRModule) -> tuple[str, int]:
    """(the dot-product ISA, how many convolutions / products run on it) of a rewritten module."""
    if not mod.attrs or "xception_edge.int8_dot" not in mod.attrs:
        return "", 0
    return str(mod.attrs["xception_edge.int8_dot"]), _attr(mod, "xception_edge.int8_dot_functions")


def float_exact(mod: tvm.IRModule) -> int:
    """How many of them accumulate in float32 (exact: their partial sums stay below 2**24)."""
    return _attr(mod, "xception_edge.int8_float_exact")


def _attr(mod, name: str) -> int:
    return int(mod.attrs[name]) if mod.attrs and name in mod.attrs else 0


def _numpy(const) -> np.ndarray:
    return const.value.numpy()


def _scalar_int(const) -> int | None:
    value = _numpy(const)
    return int(value.reshape(-1)[0]) if value.size == 1 else None


class _Rewrite:
    """A rewrite_call callback: the rewritten call, or the call as it was when it is not in the form needed."""
    count = 0

    def __call__(self, expr, m):
        try:
            rewritten = self._rewrite(expr, m)
        except _Skip:
            return expr
        self.count += 1
        return rewritten

    def _rewrite(self, expr, m):
        raise NotImplementedError


class _Rewriter(_Rewrite):
    def __init__(self, isa=None):
        self.isa = isa
        self.builder = relax.BlockBuilder()    # holds the dot-product functions (shared by equal shapes)
        self.dotted = 0
        self.float_accumulated = 0
        self.x = wildcard()
        self.x_scale, self.x_zero = is_const(), is_const()
        self.w, self.w_scale, self.w_zero = is_const(), is_const(), is_const()
        self.w_shape = wildcard()
        self.b, self.b_scale, self.b_zero = is_const(), is_const(), is_const()
        self.y_scale, self.y_zero = is_const(), is_const()
        x = is_op("relax.dequantize")(self.x, self.x_scale, self.x_zero)
        w_int = self.w | is_op("relax.permute_dims")(self.w)
        w = is_op("relax.dequantize")(w_int, self.w_scale, self.w_zero)
        w = w | is_op("relax.reshape")(w, self.w_shape)
        self.conv = is_op("relax.nn.conv2d")(x, w)
        self.matmul = is_op("relax.matmul")(x, w)
        product = self.conv | self.matmul
        bias = is_op("relax.dequantize")(self.b, self.b_scale, self.b_zero)
        self.add = is_op("relax.add")(product, bias)
        self.quantize = is_op("relax.quantize")(self.add | product, self.y_scale, self.y_zero)
        self.pattern = self.quantize

    def _rewrite(self, expr, m):
        out_dtype = str(expr.attrs.out_dtype)
        x = m[self.x]
        if out_dtype not in ("int8", "uint8") or x.ty.dtype != out_dtype:
            raise _Skip
        x_zero, y_zero, w_zero = _scalar_int(m[self.x_zero]), _scalar_int(m[self.y_zero]), _numpy(m[self.w_zero])
        x_scale, y_scale = _numpy(m[self.x_scale]).astype(np.float32), _numpy(m[self.y_scale]).astype(np.float32)
        if x_zero is None or y_zero is None or x_scale.size != 1 or y_scale.size != 1 or np.any(w_zero != 0):
            raise _Skip
        weights = _numpy(m[self.w])
        if weights.dtype != np.int8:
            raise _Skip
        product = m[self.conv] if self.conv in m else m[self.matmul]
        # the weights as the product uses them (transposed / reshaped like the imported float weights)
        w_float = product.args[1]
        shape = [int(d) for d in w_float.ty.shape]
        if self.matmul in m and weights.ndim == 2 and tuple(shape) == weights.T.shape:
            weights = weights.T
        weights = weights.reshape(shape)
        out_axis = str(product.attrs.kernel_layout).index("O") if self.conv in m else len(shape) - 1
        channels = shape[out_axis]
        w_scale = np.broadcast_to(_numpy(m[self.w_scale]).astype(np.float32).reshape(-1), (channels,))
        bias = np.zeros(channels, np.int32)
        if self.add in m:
            if self.b not in m:
                raise _Skip
            b, b_scale = _numpy(m[self.b]), _numpy(m[self.b_scale]).astype(np.float32).reshape(-1)
            if b.dtype != np.int32 or np.any(_numpy(m[self.b_zero]) != 0) or b.size != channels:
                raise _Skip
            expected = x_scale.reshape(()) * w_scale
            if not np.allclose(np.broadcast_to(b_scale, (channels,)), expected, rtol=BIAS_SCALE_RTOL, atol=0):
                raise _Skip
            bias = b.reshape(channels)
        # XNNPACK: scale = input_scale * kernel_scale / output_scale, left to right, in float32
        scale = (np.float32(x_scale.reshape(())) * w_scale).astype(np.float32) / np.float32(y_scale.reshape(()))
        info = np.iinfo(out_dtype)

        if self.isa is not None:
            dotted = self._dot(x, product, weights, bias, scale, x_zero, y_zero, out_dtype, self.conv in m)
            if dotted is not None:
                return dotted
        # The largest |partial sum| any input can reach, per output channel. Below 2**24 every partial
        # sum is an integer that float32 holds exactly, in any summation order: the product can then
        # run on float32 arithmetic (the fp32 convolution's speed and tuning records) and still give
        # the exact int32 result. Otherwise it runs on int16 x int8 -> int32.
        in_info = np.iinfo(str(x.ty.dtype))
        x_range = max(abs(int(in_info.min) - x_zero), abs(int(in_info.max) - x_zero))
        w_abs = np.abs(weights.astype(np.int64)).sum(axis=tuple(i for i in range(len(shape)) if i != out_axis))
        in_float = int((x_range * w_abs + np.abs(bias.astype(np.int64))).max()) < FLOAT_EXACT
        acc_dtype = "float32" if in_float else "int32"
        if in_float:
            self.float_accumulated += 1
            data = relax.op.subtract(relax.op.astype(x, "float32"), relax.const(float(x_zero), "float32"))
            kernel = relax.op.astype(relax.const(weights, "int8"), "float32")   # the library keeps int8 weights
        else:
            data = relax.op.subtract(relax.op.astype(x, "int16"), relax.const(x_zero, "int16"))
            kernel = relax.const(weights, "int8")
        if self.conv in m:
            a = product.attrs
            acc = relax.op.nn.conv2d(data, kernel, strides=a.strides, padding=a.padding, dilation=a.dilation,
                                     groups=a.groups, data_layout=a.data_layout, kernel_layout=a.kernel_layout,
                                     out_layout=a.out_layout, out_dtype=acc_dtype)
        else:
            acc = relax.op.matmul(data, kernel, out_dtype=acc_dtype)
        acc = relax.op.add(acc, relax.const(bias.astype(acc_dtype), acc_dtype))
        y = relax.op.multiply(acc if in_float else relax.op.astype(acc, "float32"), relax.const(scale, "float32"))
        y = relax.op.clip(y, float(info.min - y_zero), float(info.max - y_zero))
        return relax.op.astype(relax.op.add(_round_half_even(y), relax.const(float(y_zero), "float32")), out_dtype)


    def _dot(self, x, product, weights, bias, scale, x_zero, y_zero, out_dtype, is_conv):
        """The chain as one scheduled dot-product function (pipeline/tvm/dot.py), or None when its form
        is not one it takes (layouts other than NHWC/HWIO, grouped but not depthwise, uint8)."""
        from pipeline.tvm import dot

        if out_dtype != "int8":
            return None
        shape_in = [int(d) for d in x.ty.shape]
        if is_conv:
            a = product.attrs
            if str(a.data_layout) != "NHWC" or str(a.out_layout) not in ("NHWC", ""):
                return None
            layout = str(a.kernel_layout)
            w_hwio = np.transpose(weights, [layout.index(ch) for ch in "HWIO"])
            groups, channels = int(a.groups), shape_in[3]
            conv = dot.ConvShape(tuple(shape_in), w_hwio.shape[:2], int(w_hwio.shape[3]),
                                 tuple(int(v) for v in a.strides), tuple(int(v) for v in a.padding),
                                 tuple(int(v) for v in a.dilation))
            x_in, reshape_out = x, None
        else:
            if len(shape_in) != 2 or weights.ndim != 2:
                return None
            groups, channels = 1, shape_in[1]
            w_hwio = weights.reshape(1, 1, *weights.shape)
            conv = dot.ConvShape((shape_in[0], 1, 1, shape_in[1]), (1, 1), int(weights.shape[1]))
            x_in, reshape_out = relax.op.reshape(x, conv.x), (shape_in[0], int(weights.shape[1]))
        if groups == 1:
            func = dot.conv_function(conv, self.isa, y_zero, x_zero)
            args = [dot.pack_weights(w_hwio, self.isa), dot.corrected_bias(w_hwio, bias, x_zero, self.isa.offset)]
            name = "int8_dot_conv"
        elif groups == channels == conv.out_channels and w_hwio.shape[2] == 1:
            func = dot.depthwise_function(conv, y_zero, x_zero)
            depthwise = np.ascontiguousarray(w_hwio[:, :, 0, :])
            args = [depthwise, dot.corrected_bias(w_hwio, bias, x_zero, 0)]
            name = "int8_depthwise"
        else:
            return None
        gvar = self.builder.add_func(func, name)
        self.dotted += 1
        call = relax.call_tir(gvar, [x_in, relax.const(args[0], "int8"), relax.const(args[1], "int32"),
                                     relax.const(scale.astype(np.float32), "float32")],
                              relax.TensorType(conv.out, out_dtype))
        return relax.op.reshape(call, reshape_out) if reshape_out else call


def _round_half_even(y):
    """Round half to even, like XNNPACK's magic-bias / lrintf (exact for |y| <= 2**22: y is clamped).

    Written out rather than R.round: TVM lowers round to nearbyint on LLVM targets, but to OpenCL C's
    round(), which rounds halves away from zero, on GPU targets."""
    r = relax.op.floor(relax.op.add(y, relax.const(0.5, "float32")))
    tie = relax.op.equal(relax.op.subtract(r, y), relax.const(0.5, "float32"))
    odd = relax.op.equal(relax.op.floor_mod(r, relax.const(2.0, "float32")), relax.const(1.0, "float32"))
    return relax.op.where(relax.op.logical_and(tie, odd), relax.op.subtract(r, relax.const(1.0, "float32")), r)


# XNNPACK's qs8 add takes input-to-output scale ratios in [2**-10, 2**8); outside it, LiteRT runs the add
# in its own reference kernel instead, whose arithmetic this rewrite does not model: left as imported.
ADD_RATIO_RANGE = (2.0 ** -10, 2.0 ** 8)
ADD_SHIFT_BITS = 20


class _AddRewriter(_Rewrite):
    """quantize([relu](add(dequantize(a), dequantize(b)))) -> XNNPACK's fixed-point qs8 add (module docstring)."""

    def __init__(self):
        self.a, self.b = wildcard(), wildcard()
        self.a_scale, self.a_zero = is_const(), is_const()
        self.b_scale, self.b_zero = is_const(), is_const()
        self.y_scale, self.y_zero = is_const(), is_const()
        added = is_op("relax.add")(is_op("relax.dequantize")(self.a, self.a_scale, self.a_zero),
                                   is_op("relax.dequantize")(self.b, self.b_scale, self.b_zero))
        self.relu = is_op("relax.nn.relu")(added)              # ADD with a fused ReLU
        self.pattern = is_op("relax.quantize")(added | self.relu, self.y_scale, self.y_zero)

    def _rewrite(self, expr, m):
        out_dtype = str(expr.attrs.out_dtype)
        a, b = m[self.a], m[self.b]
        if out_dtype != "int8" or a.ty.dtype != "int8" or b.ty.dtype != "int8":
            raise _Skip
        (a_zero, b_zero, y_zero), (a_scale, b_scale, y_scale) = _per_tensor(
            m, (self.a_zero, self.b_zero, self.y_zero), (self.a_scale, self.b_scale, self.y_scale))
        ratios = (a_scale / y_scale, b_scale / y_scale)                   # float32, like XNNPACK
        if not all(ADD_RATIO_RANGE[0] <= r < ADD_RATIO_RANGE[1] for r in ratios):
            raise _Skip
        exponent = int(np.frexp(max(ratios))[1]) - 1                       # floor(log2(ratio))
        shift = ADD_SHIFT_BITS - exponent
        a_mult, b_mult = (int(np.rint(np.ldexp(r, shift))) for r in ratios)
        bias = (1 << (shift - 1)) - a_mult * a_zero - b_mult * b_zero
        acc = relax.op.add(relax.op.add(
            relax.op.multiply(relax.op.astype(a, "int32"), relax.const(a_mult, "int32")),
            relax.op.multiply(relax.op.astype(b, "int32"), relax.const(b_mult, "int32"))),
            relax.const(bias, "int32"))
        y = relax.op.right_shift(acc, relax.const(shift, "int32"))         # arithmetic: rounds half up
        # the output range, less the zero point; a fused ReLU clamps at the zero point (real 0), like XNNPACK
        y = relax.op.clip(y, max(-128 - y_zero, 0) if self.relu in m else -128 - y_zero, 127 - y_zero)
        return relax.op.astype(relax.op.add(y, relax.const(y_zero, "int32")), "int8")


class _MeanRewriter(_Rewrite):
    """quantize(mean(dequantize(x))) -> LiteRT's int8 MEAN: the int32 sum of the raw int8 values (zero point
    included), times the float32 scale s_x / (s_y * n), plus the float32 bias z_y - n * z_x * scale, rounded half to
    even. TVM's import (the mean of dequantized values, quantized) rounds a near-tie the other way: 1 output in
    3,000 one step off on a 32x32 digits model (47.49998 steps, where LiteRT gives 48). Measured against LiteRT
    2.3 on every output of 400 random inputs; tests/unit/test_tvm_int8.py holds a numpy model of it."""

    def __init__(self):
        self.x, self.x_scale, self.x_zero = wildcard(), is_const(), is_const()
        self.y_scale, self.y_zero = is_const(), is_const()
        self.mean = is_op("relax.mean")(is_op("relax.dequantize")(self.x, self.x_scale, self.x_zero))
        self.pattern = is_op("relax.quantize")(self.mean, self.y_scale, self.y_zero)

    def _rewrite(self, expr, m):
        x, mean = m[self.x], m[self.mean]
        if str(expr.attrs.out_dtype) != "int8" or x.ty.dtype != "int8" or mean.attrs.axis is None:
            raise _Skip
        zeros, scales = _per_tensor(m, (self.x_zero, self.y_zero), (self.x_scale, self.y_scale))
        shape = [int(d) for d in x.ty.shape]
        axes = [int(a) % len(shape) for a in mean.attrs.axis]
        n = int(np.prod([shape[a] for a in axes]))
        scale, bias = mean_constants(float(scales[0]), zeros[0], float(scales[1]), zeros[1], n)
        total = relax.op.sum(relax.op.astype(x, "int32"), axis=axes, keepdims=bool(mean.attrs.keepdims))
        # LiteRT rounds the product to float32 before adding the bias. TVM's LLVM code generator fuses a float32
        # multiply and add into one FMA where the CPU has it (one rounding: the near-tie above goes the other way),
        # so the product is formed in float64, where it is exact (24 by 24 bits), and rounded to float32 by a cast
        y = relax.op.astype(relax.op.multiply(relax.op.astype(total, "float64"),
                                              relax.const(np.float64(scale), "float64")), "float32")
        y = relax.op.add(y, relax.const(bias, "float32"))
        y = relax.op.clip(_round_half_even(y), -128, 127)
        return relax.op.astype(y, "int8")


def mean_constants(x_scale: float, x_zero: int, y_scale: float, y_zero: int, n: int) -> tuple[np.float32, np.float32]:
    """The float32 scale and bias of LiteRT's int8 MEAN over ``n`` values (``_MeanRewriter``)."""
    f = np.float32
    scale = f(f(x_scale) / (f(y_scale) * f(n)))
    return scale, f(f(y_zero) - f(n * x_zero) * scale)


def _per_tensor(m, zero_patterns, scale_patterns) -> tuple[list[int], list[np.float32]]:
    """The matched zero points and float32 scales, each one value (per-tensor quantization), or _Skip."""
    zeros = [_scalar_int(m[z]) for z in zero_patterns]
    scales = [_numpy(m[s]).astype(np.float32) for s in scale_patterns]
    if any(z is None for z in zeros) or any(s.size != 1 for s in scales):
        raise _Skip
    return zeros, [np.float32(s.reshape(())) for s in scales]


class _Skip(Exception):
    """This chain is not in the form the integer rewrite needs: keep it as imported."""
