"""Adreno GPU builds: the network in TVM's Adreno layout (NCHW4c) so that TVM 0.27's dlight Adreno rules apply:
channels padded to a multiple of 4, ConvertLayout to NCHW4c / OIHW4o, convolutions legalized with TOPI's Adreno
convolution (depthwise with ours), then dlight's Adreno rules in global buffers. ``adreno.Pool2D`` is left out:
it computes wrong results in TVM 0.27 (0.67 relative error measured). A model the layout cannot take gets TVM's
plain Adreno pipeline, and the stage says so. Details: docs/gpu.md and docs/internals.md (module notes).
"""
from __future__ import annotations

import numpy as np
import tvm
from tvm import relax, te, topi

BLOCK = 4
RULES = ("adreno.Conv2d", "adreno.LayoutTransform")


def _conv_attrs(call):
    return call.attrs.groups, str(call.attrs.data_layout), str(call.attrs.kernel_layout)


def _is_const(expr) -> bool:
    return type(expr).__name__ in ("Constant", "GenericConst")


def unsupported(mod: tvm.IRModule) -> str | None:
    """Why this model cannot take the NCHW4c layout, or None."""
    reasons = []

    @relax.expr_functor.visitor
    class Check(relax.PyExprVisitor):
        def visit_call_(self, call):
            super().visit_call_(call)
            if not (isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.nn.conv2d"):
                return
            groups, data_layout, kernel_layout = _conv_attrs(call)
            out = [int(d) for d in call.ty.shape]
            if data_layout != "NHWC" or len(out) != 4:
                reasons.append(f"a convolution in layout {data_layout}")
            elif out[3] % BLOCK:
                reasons.append(f"a convolution with {out[3]} output channels (not a multiple of {BLOCK})")
            elif groups != 1 and (groups != out[3] or any(int(d) != 1 for d in call.attrs.dilation)):
                reasons.append("a grouped (not depthwise) or dilated depthwise convolution")

    for _, func in mod.functions_items():
        if isinstance(func, relax.Function):
            Check().visit_expr(func)
    return reasons[0] if reasons else None


@relax.expr_functor.mutator
class _Prepare(relax.PyExprMutator):
    def visit_call_(self, call):
        call = super().visit_call_(call)
        if not isinstance(call.op, tvm.ir.Op):
            return call
        if (call.op.name == "relax.nn.conv2d" and _conv_attrs(call) == (1, "NHWC", "HWIO")
                and _is_const(call.args[1])):
            weights = call.args[1].value.numpy()
            extra = -weights.shape[2] % BLOCK
            if extra:
                zeros = np.zeros(weights.shape[:2] + (extra,) + weights.shape[3:], weights.dtype)
                data = relax.op.nn.pad(call.args[0], [0, 0, 0, 0, 0, 0, 0, extra])
                return relax.op.nn.conv2d(
                    data, relax.const(np.concatenate([weights, zeros], axis=2)), strides=call.attrs.strides,
                    padding=call.attrs.padding, dilation=call.attrs.dilation, groups=1, data_layout="NHWC",
                    kernel_layout="HWIO", out_layout="NHWC", out_dtype=call.attrs.out_dtype)
        if call.op.name == "relax.add" and _is_const(call.args[1]):
            bias = call.args[1].value.numpy()
            if bias.ndim == 1 and len(call.ty.shape) == 4:
                return relax.op.add(call.args[0], relax.const(bias.reshape(1, 1, 1, -1)))
        return call


def prepare(mod: tvm.IRModule) -> tvm.IRModule:
    """The stem padded to 4 input channels and 1-D biases made 4-D (see the module's text): the same function."""
    for gvar, func in list(mod.functions_items()):
        if isinstance(func, relax.Function):
            mod[gvar] = _Prepare().visit_expr(func)
    return relax.transform.Normalize()(mod)


def _depthwise_nchwc(data, kernel, strides, padding):
    """Depthwise convolution in NCHW4c with an OIHW4o kernel of shape (C/4, 1, kh, kw, 4)."""
    n, c, h, w, cb = data.shape
    _, _, kh, kw, _ = kernel.shape
    sh, sw = (int(s) for s in strides)
    top, left, bottom, right = (int(p) for p in padding)
    padded = topi.nn.pad(data, [0, 0, top, left, 0], [0, 0, bottom, right, 0], name="depthwise_pad")
    oh = (h + top + bottom - kh) // sh + 1
    ow = (w + left + right - kw) // sw + 1
    ry, rx = te.reduce_axis((0, kh), "ry"), te.reduce_axis((0, kw), "rx")
    # the block name must not contain "conv2d_NCHWc": adreno.Conv2d would take it for a full convolution
    return te.compute((n, c, oh, ow, cb), lambda b, o, y, x, k: te.sum(
        padded[b, o, y * sh + ry, x * sw + rx, k] * kernel[o, 0, ry, rx, k], axis=[ry, rx]),
        name="depthwise_NCHW4c")


def _legalize_conv2d(bb, call):
    from tvm.relax.transform.legalize_ops.nn import _nn_conv2d

    if str(call.attrs.data_layout) != f"NCHW{BLOCK}c":
        return _nn_conv2d(bb, call)
    if call.attrs.groups == 1:
        # TOPI's Adreno convolution, with the call's output type (TVM's own Adreno legalization drops it, so
        # an fp16 convolution would come out as fp32)
        return bb.call_te(topi.nn.conv2d_NCHWc_OIHWo, call.args[0], call.args[1], call.attrs.strides,
                          call.attrs.padding, call.attrs.dilation, str(call.attrs.data_layout),
                          str(call.attrs.out_layout), str(call.ty.dtype), primfunc_name_hint="conv2d_NCHWc_OIHWo")
    return bb.call_te(_depthwise_nchwc, call.args[0], call.args[1], call.attrs.strides, call.attrs.padding,
                      primfunc_name_hint="depthwise_conv2d_NCHW4c")


def pipeline(target: tvm.target.Target, rules: tuple[str, ...] = RULES):
    """The Relax pipeline for a prepared model (``prepare``) on an Adreno OpenCL target, with these dlight rules."""
    from tvm.s_tir import dlight as dl

    blocked = f"NCHW{BLOCK}c"
    passes = [
        tvm.tirx.transform.BindTarget(target),
        relax.transform.DecomposeOpsForInference(),
        relax.transform.ConvertLayout({"relax.nn.conv2d": [blocked, f"OIHW{BLOCK}o", blocked]}),
        relax.transform.Normalize(),
        relax.transform.FoldConstant(),        # the weights' layout transforms, done at compile time
        relax.transform.LegalizeOps({"relax.nn.conv2d": _legalize_conv2d}),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
        relax.transform.DeadCodeElimination(),
        relax.transform.Normalize(),
        dl.ApplyDefaultSchedule(*(getattr(dl.adreno, name.split(".")[1])() for name in rules)),
        dl.ApplyDefaultSchedule(dl.gpu.Reduction(), dl.gpu.GeneralReduction(), dl.gpu.Fallback()),
    ]

    @tvm.transform.module_pass(opt_level=0)
    def _pipeline(mod, _ctx):
        with target:
            return tvm.transform.Sequential(
                passes + relax.backend.gpu_generic.dataflow_lower_passes(target)
                + relax.backend.gpu_generic.finalize_passes(target))(mod)

    return _pipeline


def is_adreno(target: tvm.target.Target) -> bool:
    return target.kind.name == "opencl" and "adreno" in target.keys
