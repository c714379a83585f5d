"""Compile-time folding the CPU pipeline does instead of TVM's FoldConstant (which would also fold int8
weights' dequantize into float32 constants: see pipeline/tvm/schedules.py cpu_pipeline). This module imports TVM.
"""
from __future__ import annotations


def fold_constant_permutes():
    """A pass that permutes constant weights at compile time: the TFLite importer gives the classifier
    ``permute_dims(W)``, and without FoldConstant (see pipeline/tvm/schedules.py cpu_pipeline) that transpose
    ran on every inference (2048x1000 floats, 8 ms of 148 at 299x299 on a Xeon, 2026-12-06). Same bytes, only
    permuted."""
    import numpy as np
    import tvm
    from tvm import relax

    @relax.expr_functor.mutator
    class _Fold(relax.PyExprMutator):
        def visit_call_(self, call):
            call = super().visit_call_(call)
            if call.op == tvm.ir.Op.get("relax.permute_dims") and isinstance(call.args[0], tvm.ir.expr.Constant):
                axes = None if call.attrs.axes is None else [int(a) for a in call.attrs.axes]
                return relax.const(np.ascontiguousarray(call.args[0].value.numpy().transpose(axes)))
            return call

    @tvm.transform.module_pass(opt_level=0, name="FoldConstantPermutes")
    def _pass(mod, _ctx):
        functions = {gvar: _Fold().visit_expr(func) if isinstance(func, relax.Function) else func
                     for gvar, func in mod.functions_items()}
        return tvm.IRModule(functions, attrs=mod.attrs, global_infos=mod.global_infos)   # the input stays as is

    return _pass
