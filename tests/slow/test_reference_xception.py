"""The reference Xception (full architecture, digits, 71x71) compiled for host. Minutes: `make test-slow`."""
import hashlib

import pytest

from pipeline.compiler import CompileOptions, compile_target

pytestmark = pytest.mark.slow


def test_reference_xception_for_host(tmp_path):
    # The reference model and stage cache are the user's (default cache dir): built once, then re-used.
    result = compile_target(CompileOptions(target="host", weights="reference", out_dir=tmp_path / "build"))
    m = result.manifest
    assert m["model"]["weights"] == "reference" and m["model"]["input_shape"] == [1, 71, 71, 3]
    assert m["model"]["parameters"] > 20_000_000
    assert m["eval"]["labels"] and m["eval"]["float_top1"] >= 0.95
    by_file = {a["file"]: a for a in m["artifacts"]}
    for name in ("xception_int8.tflite", "xception_int8.onnx"):
        acc = by_file[name]["accuracy"]
        assert acc["agreement_top1"] >= 0.99, (name, acc)
        assert acc["top1"] >= m["eval"]["float_top1"] - 0.01, (name, acc)
    assert by_file["xception_int8.tflite"]["bytes"] < 0.3 * by_file["xception_fp32.tflite"]["bytes"]
    for a in m["artifacts"]:
        data = (tmp_path / "build" / "host" / a["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == a["sha256"]


def _tvm(tmp_path):
    result = compile_target(CompileOptions(target="host", weights="reference", out_dir=tmp_path / "build"))
    return {a["precision"]: a for a in result.manifest["artifacts"] if a["format"] == "tvm"}


def test_reference_xception_tvm_fp32_matches_litert_on_host(tmp_path):
    tvm = _tvm(tmp_path)
    assert tvm["fp32"]["accuracy"]["vs_litert"]["max_rel_diff"] <= 1e-4
    assert tvm["int8"]["accuracy"]["agreement_top1"] >= 0.99
    assert tvm["int8"]["accuracy"]["vs_litert"]["agreement_top1"] >= 0.995


def test_reference_xception_tvm_int8_within_one_step_of_litert(tmp_path):
    assert _tvm(tmp_path)["int8"]["accuracy"]["vs_litert"]["max_quant_steps"] <= 1
