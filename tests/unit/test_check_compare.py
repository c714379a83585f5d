import numpy as np

from pipeline.stages.check import compare_with_litert

INT8_IO = {"output": {"dtype": "int8", "scale": 0.5, "zero_point": 0}}
FP32_IO = {"output": {"dtype": "float32"}}


def test_int8_steps_are_counted_not_hidden():
    twin = np.array([[2.0, 0.0, 0.0], [0.0, 0.0, 2.0]], dtype=np.float32)
    tvm = twin.copy()
    tvm[0, 1] = 0.5            # one step: within tolerance
    tvm[1, 2] = 3.0            # two steps: beyond
    r = compare_with_litert("x", tvm, twin, INT8_IO)
    assert r["max_quant_steps"] == 2 and r["beyond_tolerance"] == 1 and not r["within_tolerance"]
    assert r["agreement_top1"] == 1.0 and r["outputs"] == 6
    tvm[1, 0] = 4.0            # now row 1's top-1 flips
    assert compare_with_litert("x", tvm, twin, INT8_IO)["agreement_top1"] == 0.5


def test_fp32_relative_tolerance():
    twin = np.array([[10.0, 1.0]], dtype=np.float32)
    assert compare_with_litert("x", twin + 1e-4, twin, FP32_IO)["within_tolerance"]
    r = compare_with_litert("x", twin + 0.01, twin, FP32_IO)
    assert not r["within_tolerance"] and r["beyond_tolerance"] == 2 and abs(r["max_rel_diff"] - 1e-3) < 1e-6
