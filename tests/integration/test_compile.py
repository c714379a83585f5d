"""A tiny model through every stage, the cache's behaviour, and the manifest contract."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from pipeline.compiler import CompileOptions, compile_target
from pipeline.versions import tool_versions
from tests.conftest import write_target

MANIFEST_ARTIFACT_KEYS = {"file", "format", "precision", "runtime", "device", "sha256", "bytes", "accuracy"}


@pytest.fixture(scope="module")
def compiled(tiny_build):
    """The run's shared host build (tests/conftest.py); tests that compile again write to their own folder."""
    return tiny_build("host")


def test_every_artifact_of_the_target_is_built(compiled):
    options, result = compiled
    m = result.manifest
    assert m["target"] == "host"
    kinds = {(a["format"], a["precision"], a["runtime"]) for a in m["artifacts"]}
    assert kinds == {("tflite", "fp32", "litert"), ("tflite", "int8", "litert"), ("tflite", "dynamic", "litert"),
                     ("onnx", "fp32", "onnxruntime"), ("onnx", "int8", "onnxruntime"),
                     ("tvm", "fp32", "tvm"), ("tvm", "int8", "tvm")}
    for a in m["artifacts"]:
        assert MANIFEST_ARTIFACT_KEYS <= a.keys()
        path = options.out_dir / "host" / a["file"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == a["sha256"]
        weights = a.get("params")
        assert path.stat().st_size + (weights["bytes"] if weights else 0) == a["bytes"]
        if a["format"] == "tvm":            # a CPU library's weights are beside it, not inside (read back whole)
            from benchmarks.tvm_params import read

            params = options.out_dir / "host" / weights["file"]
            assert hashlib.sha256(params.read_bytes()).hexdigest() == weights["sha256"]
            from pipeline.tvm.params import LIFT_BYTES

            arrays = read(params)
            assert arrays and all(w.nbytes >= LIFT_BYTES for w in arrays)


def test_manifest_contract(compiled):
    options, result = compiled
    m = json.loads((options.out_dir / "host" / "manifest.json").read_text())
    assert m == json.loads(json.dumps(result.manifest, default=str))
    assert m["model"]["name"] == "tiny" and m["model"]["weights"] == "file"
    assert m["model"]["input_shape"] == [1, 32, 32, 3] and m["model"]["num_classes"] == 10
    assert set(m["versions"]) >= {"tensorflow", "ai-edge-litert", "onnx", "onnxruntime", "apache-tvm", "python"}
    assert m["config"]["options"]["calib_n"] == 20 and m["config"]["target"]["name"] == "host"
    assert m["created"].endswith("+00:00")


def test_int8_is_checked_against_float(compiled):
    _, result = compiled
    for a in result.manifest["artifacts"]:
        acc = a["accuracy"]
        assert acc["n"] == 40                   # every artifact, TVM with default schedules too
        assert 0.0 <= acc["agreement_top1"] <= 1.0 and acc["mean_abs_logit_delta"] >= 0.0
        if a["precision"] == "fp32":
            assert acc["agreement_top1"] == 1.0 and acc["mean_abs_logit_delta"] < 1e-4
        if a["precision"] == "int8":
            assert acc["mean_abs_logit_delta"] > 0.0        # really quantized, not a float copy


def test_int8_tflite_is_full_integer(compiled):
    from ai_edge_litert.interpreter import Interpreter

    options, _ = compiled
    it = Interpreter(str(options.out_dir / "host" / "tiny_int8.tflite"))
    assert it.get_input_details()[0]["dtype"] == np.int8
    assert it.get_output_details()[0]["dtype"] == np.int8


def test_int8_onnx_is_qdq(compiled):
    import onnx

    options, _ = compiled
    ops = {n.op_type for n in onnx.load(options.out_dir / "host" / "tiny_int8.onnx").graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops


def test_eval_set_travels_with_the_artifacts(compiled):
    options, result = compiled
    data = np.load(options.out_dir / "host" / "eval" / "eval.npz")
    assert data["inputs"].shape == (40, 32, 32, 3) and data["inputs"].dtype == np.float32
    assert -1.0 <= data["inputs"].min() and data["inputs"].max() <= 1.0
    assert data["logits"].shape == (40, 10)
    assert "labels" not in data.files            # digits labels mean nothing to a user's model
    assert result.manifest["eval"]["file"] == "eval/eval.npz"


def test_softmax_is_stripped(compiled):
    data = np.load(compiled[0].out_dir / "host" / "eval" / "eval.npz")
    assert not np.allclose(data["logits"].sum(axis=1), 1.0)     # logits, not probabilities
    assert np.allclose(data["probs"].sum(axis=1), 1.0)


def test_second_run_is_all_cached(compiled):
    options, first = compiled
    again = compile_target(options)
    assert all(r.cached for r in again.runs)
    assert [a["sha256"] for a in again.manifest["artifacts"]] == [a["sha256"] for a in first.manifest["artifacts"]]


def _ran(result) -> set[str]:
    return {r.label for r in result.runs if not r.cached}


def test_new_calibration_images_rerun_only_downstream(compiled, tmp_path):
    options, _ = compiled
    rng = np.random.default_rng(0)
    for i in range(6):
        (tmp_path / "calib").mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(tmp_path / "calib" / f"{i}.png")
    result = compile_target(CompileOptions(**(vars(options) | {"calib_dir": tmp_path / "calib",
                                                                "out_dir": tmp_path / "build"})))
    assert _ran(result) == {"calibrate", "convert tflite-int8", "check tflite-int8",
                            "convert onnx-int8", "check onnx-int8", "tvm tvm-int8", "check tvm-int8"}
    assert result.manifest["calibration"]["n"] == 6


def test_tool_version_change_reruns_only_its_stages(compiled, tmp_path):
    options, _ = compiled
    versions = tool_versions() | {"onnxruntime": "0.0.1-test"}
    result = compile_target(CompileOptions(**(vars(options) | {"out_dir": tmp_path})), versions=versions)
    # convert uses onnxruntime (quantizer) and check uses it (runner); build and calibrate do not.
    assert "build" not in _ran(result) and "calibrate" not in _ran(result)
    assert {"convert onnx-int8", "check onnx-int8", "check tflite-int8"} <= _ran(result)


def test_config_change_reruns_only_downstream(compiled, tmp_path):
    options, _ = compiled
    # a CALIB_N no other test compiles the tiny model with (the stage cache is shared by the run)
    result = compile_target(CompileOptions(**(vars(options) | {"calib_n": 11, "out_dir": tmp_path})))
    assert _ran(result) == {"calibrate", "convert tflite-int8", "check tflite-int8",
                            "convert onnx-int8", "check onnx-int8", "tvm tvm-int8", "check tvm-int8"}


def test_random_weights_any_size(tmp_path):
    targets = write_target(tmp_path / "targets", "one", ["tflite-fp32"])
    result = compile_target(CompileOptions(target="one", weights="random", input_size=71, num_classes=5,
                                           out_dir=tmp_path / "b", cache_dir=tmp_path / "c", eval_n=4,
                                           targets_dir=targets))
    m = result.manifest
    assert m["model"]["weights"] == "random" and m["model"]["input_shape"] == [1, 71, 71, 3]
    assert m["model"]["num_classes"] == 5 and m["model"]["parameters"] > 20_000_000   # the full Xception


def test_a_no_op_recompile_keeps_results_and_a_real_change_says_what_it_removed(compiled, tmp_path, capsys):
    from pipeline.progress import Progress

    options, _ = compiled
    mine = CompileOptions(**(vars(options) | {"out_dir": tmp_path}))
    compile_target(mine)
    (tmp_path / "host" / "bench").mkdir()
    (tmp_path / "host" / "bench" / "run1.json").write_text("{}")
    (tmp_path / "host" / "gate").mkdir()
    compile_target(mine, Progress(quiet=True))
    assert (tmp_path / "host" / "bench" / "run1.json").read_text() == "{}"      # same artifacts: results kept
    compile_target(CompileOptions(**(vars(mine) | {"calib_n": 11})), Progress(quiet=True))
    assert not (tmp_path / "host" / "bench").exists() and not (tmp_path / "host" / "gate").exists()
    err = capsys.readouterr().err
    assert "removed bench/, gate/ of the previous build" in err and err.count("removed") == 1


def test_a_user_model_measured_on_the_digits_says_so(compiled, tmp_path, capsys):
    """No EVAL= for a user's model: the figures come from the digits, and the manifest and the console say
    they are not the model's own accuracy; with EVAL= they are."""
    from pipeline.progress import Progress

    options, result = compiled
    assert result.manifest["eval"]["representative"] is False
    compile_target(CompileOptions(**(vars(options) | {"out_dir": tmp_path / "a"})), Progress(quiet=True))
    assert "this model's accuracy figures are measured on the DIGITS test split" in capsys.readouterr().err
    rng = np.random.default_rng(1)
    for i in range(4):
        (tmp_path / "eval" / str(i % 2)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "eval" / str(i % 2) / f"{i}.png")
    targets = write_target(tmp_path / "targets", "one", ["tflite-fp32"])
    own = compile_target(CompileOptions(**(vars(options) | {"out_dir": tmp_path / "b", "eval_dir": tmp_path / "eval",
                                                            "target": "one", "targets_dir": targets})),
                         Progress(quiet=True))
    assert own.manifest["eval"]["representative"] is True and "DIGITS" not in capsys.readouterr().err
