"""Weights of 1x1 convolutions packed at compile time, [ceil(Co/B), Ci, B] for the target's vector width B (zeros
past Co), so a register tile's weight vectors are read in order (in HWIO, 728-channel rows are 2,912 bytes apart).
Each such conv2d becomes a call_tir of a function reading the packed constant; its reduction order is the
conv2d's, so results are bit-identical. Applied before the weights are lifted into the .params file. Imports TVM.
"""
from __future__ import annotations

import numpy as np
import tvm
from tvm import relax, te


def pack_pointwise(mod: tvm.IRModule, block: int) -> tvm.IRModule:
    """``mod`` with every float32 NHWC/HWIO stride-1 unpadded 1x1 conv2d on a constant kernel reading packed weights."""
    rewriter = _Packer(mod, block)
    functions = {gvar: rewriter.visit_expr(func) if isinstance(func, relax.Function) else func
                 for gvar, func in mod.functions_items()}
    result = rewriter.builder_.get()
    for gvar, func in functions.items():
        result[gvar] = func
    return result


def packed_weights(kernel: np.ndarray, block: int) -> np.ndarray:
    """A [1, 1, Ci, Co] kernel as [ceil(Co/block), Ci, block], zeros past Co."""
    ci, co = kernel.shape[2], kernel.shape[3]
    blocks = -(-co // block)
    padded = np.zeros((ci, blocks * block), kernel.dtype)
    padded[:, :co] = kernel[0, 0]
    return np.ascontiguousarray(padded.reshape(ci, blocks, block).transpose(1, 0, 2))


def _packed_conv(shape, co: int, blocks: int, block: int):
    n, h, w, ci, co, blocks, block = (tvm.tirx.const(v, "int64") for v in (*shape, co, blocks, block))
    x = te.placeholder((n, h, w, ci), "float32", name="x")
    weights = te.placeholder((blocks, ci, block), "float32", name="w")
    k = te.reduce_axis((tvm.tirx.const(0, "int64"), ci), name="rc")
    out = te.compute((n, h, w, co),
                     lambda a, y, z, c: te.sum(x[a, y, z, k] * weights[c // block, k, c % block], axis=k),
                     name="conv2d_nhwc")
    return te.create_prim_func([x, weights, out]).without_attr("global_symbol")


@relax.expr_functor.mutator
class _Packer(relax.PyExprMutator):
    def __init__(self, mod, block: int):
        super().__init__(mod)
        self.block = block

    def visit_call_(self, call):
        call = super().visit_call_(call)
        if call.op != tvm.ir.Op.get("relax.nn.conv2d") or not isinstance(call.args[1], tvm.ir.expr.Constant):
            return call
        a = call.attrs
        kernel = call.args[1].value.numpy()
        ty = call.args[0].ty
        shape = [int(d) for d in ty.shape] if getattr(ty, "shape", None) is not None else None
        if (a.data_layout != "NHWC" or a.kernel_layout != "HWIO" or a.out_layout not in ("", "NHWC")
                or int(a.groups) != 1
                or any(int(s) != 1 for s in a.strides) or any(int(p) != 0 for p in a.padding)
                or any(int(d) != 1 for d in a.dilation) or kernel.shape[:2] != (1, 1) or kernel.dtype != np.float32
                or shape is None or ty.dtype != "float32"):
            return call
        co = kernel.shape[3]
        blocks = -(-co // self.block)
        gvar = self.builder_.add_func(_packed_conv(shape, co, blocks, self.block), "conv2d_packed")
        return relax.call_tir(gvar, [call.args[0], relax.const(packed_weights(kernel, self.block))],
                              relax.TensorType(shape[:3] + [co], "float32"))
