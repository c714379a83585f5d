"""The weights of a Relax module moved out of it: every constant of at least LIFT_BYTES in ``main`` becomes a
parameter after the input, in the order they are met, and its array goes to the <stem>.params file
(benchmarks/tvm_params.py) that the runner passes back on each call. The computation is unchanged: a compiled
function reads a parameter where it read the constant.
"""
from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

LIFT_BYTES = 256           # smaller constants (zero points, a few scales) stay in the library


def lift(mod: tvm.IRModule) -> tuple[tvm.IRModule, list[np.ndarray]]:
    """``mod`` with main's large constants as parameters, and their arrays in parameter order."""
    func = mod["main"]
    mutator = _Lifter(mod)
    body = mutator.visit_expr(func.body)
    if not mutator.arrays:
        return mod, []
    lifted = tvm.IRModule(dict(mod.functions_items()), attrs=mod.attrs, global_infos=mod.global_infos)
    params = [param for _, param in mutator.lifted]
    lifted["main"] = relax.Function(list(func.params) + params, body, None, func.is_pure, func.attrs)
    return lifted, mutator.arrays


@relax.expr_functor.mutator
class _Lifter(relax.PyExprMutator):
    def __init__(self, mod):
        super().__init__(mod)
        self.arrays: list[np.ndarray] = []
        self.lifted: list = []               # (the constant's tensor, its parameter)

    def visit_generic_const_(self, op):
        value = op.value.numpy()
        if value.nbytes < LIFT_BYTES:
            return op
        for tensor, param in self.lifted:    # a constant used twice is one parameter
            if tensor.same_as(op.value):
                return param
        param = relax.Var(f"w{len(self.lifted)}", op.ty)
        self.lifted.append((op.value, param))
        self.arrays.append(value)
        return param
