"""Every function the default CPU schedules touch must compute exactly what TVM's unscheduled
function computes (same reduction order), on a model with Xception's operator kinds in fp32 and int8."""
from __future__ import annotations

import re

import numpy as np
import pytest

SHAPE = re.compile(r'T\.Buffer\(\((.*?)\), "(\w+)"\)')


def legalized_functions(tflite_file, target):
    import tvm
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    from pipeline.tvm.int8 import import_tflite

    mod = import_tflite(tflite_file)                   # as the compile stage imports it
    with target:
        mod = tvm.transform.Sequential(cpu.library_dispatch_passes(target) + cpu.legalize_passes(target))(mod)
    return [(gv.name_hint, f) for gv, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc)]


@pytest.fixture(scope="module")
def tflite_models(tiny_build):
    options, _ = tiny_build("host")           # the run's shared host build (tests/conftest.py)
    return options.out_dir / "host"


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_scheduled_functions_match_unscheduled(tflite_models, precision):
    import tvm

    from pipeline.tvm.schedules import ConvLike, Injective

    target = tvm.target.Target({"kind": "llvm", "num-cores": 2})
    rng = np.random.default_rng(0)
    scheduled = 0
    for name, func in legalized_functions(tflite_models / f"tiny_{precision}.tflite", target):
        sch = ConvLike().apply(func, target, False) or Injective().apply(func, target, False)
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
        np.testing.assert_array_equal(outputs[0], outputs[1], err_msg=name)
        scheduled += 1
    assert scheduled >= 4          # convolutions and element-wise chains were really scheduled
