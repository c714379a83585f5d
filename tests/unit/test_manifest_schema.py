"""The manifest is a contract: benchmarks/manifest.schema.json, checked before a compile publishes it."""
from __future__ import annotations

import copy
import json

import jsonschema
import pytest

from pipeline.packaging import MANIFEST_SCHEMA, validate_manifest
from pipeline.errors import StageError

CPU = {"cpu_model": "AMD EPYC", "machine": "x86_64", "int8_isa": "avx2", "int8_saturates": True}
SAMPLE = {
    "target": "host",
    "model": {"name": "tiny", "weights": "file", "weights_requested": "/m/tiny.keras", "weights_note": None,
              "weights_file": "/m/tiny.keras", "input_shape": [1, 32, 32, 3], "num_classes": 10, "outputs": "logits",
              "parameters": 1234},
    "artifacts": [
        {"kind": "onnx-int8", "format": "onnx", "precision": "int8", "runtime": "onnxruntime", "device": "cpu",
         "file": "tiny_int8.onnx", "sha256": "0" * 64, "bytes": 100,
         "accuracy": {"n": 8, "agreement_top1": 1.0, "top1": None, "top5": None, "mean_abs_logit_delta": 0.01,
                      "measured_on": CPU | {"computes_as_target": True, "why": "same"}},
         "quantization": {"scheme": "u8s8-reduce-range", "activations": "uint8", "weights": "int8",
                          "reduce_range": True, "why": "no VNNI", "calib_method": "minmax"}},
        {"kind": "tvm-int8", "format": "tvm", "precision": "int8", "runtime": "tvm", "device": "cpu",
         "file": "tiny_int8.so", "sha256": "1" * 64, "bytes": 100, "accuracy": None, "accuracy_note": "not run",
         "arch": "aarch64", "io": {"input": {}, "output": {}}, "tvm_target": {"kind": "llvm"},
         "source_tflite": "tiny_int8.tflite", "schedules": "default", "int8_integer_chains": 4, "int8_float_exact": 4,
         "int8_integer_adds": 0, "int8_integer_means": 1},
    ],
    "eval": {"file": "eval/eval.npz", "n": 8, "source": "digits test split", "labels": False, "float_top1": None,
             "representative": True},
    "calibration": {"source": "digits calib split", "n": 10, "images": None},
    "versions": {"python": "3.11.7", "pipeline": "0.1.0"},
    "compiled_on": CPU,
    "config": {"target": {"name": "host", "arch": "x86_64", "artifacts": ["onnx-int8"], "cpu": {}, "bench": {},
                          "int8_isa": "avx2"}, "options": {}, "stages": []},
    "created": "2026-11-23T00:00:00+00:00",
}


def test_the_sample_is_valid():
    validate_manifest(SAMPLE)
    jsonschema.Draft202012Validator.check_schema(json.loads(MANIFEST_SCHEMA.read_text()))


@pytest.mark.parametrize("path,value,where", [
    (("artifacts", 0, "sha256"), "not-a-digest", "artifacts/0/sha256"),
    (("artifacts", 0, "accuracy", "measured_on", "int8_isa"), "avx9", "artifacts/0/accuracy/measured_on/int8_isa"),
    (("artifacts", 1, "arch"), "riscv64", "artifacts/1/arch"),
    (("compiled_on",), None, "compiled_on"),
    (("eval", "n"), 0, "eval/n"),
])
def test_a_broken_manifest_is_refused_naming_where(path, value, where):
    broken = copy.deepcopy(SAMPLE)
    node = broken
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(StageError, match=f"breaks benchmarks/manifest.schema.json at {where}"):
        validate_manifest(broken)


def test_a_tvm_artifact_without_its_fields_is_refused():
    broken = copy.deepcopy(SAMPLE)
    del broken["artifacts"][1]["io"]
    with pytest.raises(StageError, match="artifacts/1"):
        validate_manifest(broken)


def test_an_unknown_top_level_key_is_refused():
    with pytest.raises(StageError, match="Additional properties"):
        validate_manifest(SAMPLE | {"stray": 1})



def _props(node: dict) -> dict:
    return node["properties"]


@pytest.mark.parametrize("record,find", [
    ("Manifest", lambda s: s),
    ("ModelInfo", lambda s: _props(s)["model"]),
    ("EvalInfo", lambda s: _props(s)["eval"]),
    ("Config", lambda s: _props(s)["config"]),
    ("Cpu", lambda s: s["$defs"]["cpu"]),
    ("Artifact", lambda s: s["$defs"]["artifact"]),
    ("Accuracy", lambda s: s["$defs"]["accuracy"]),
])
def test_the_typed_record_and_the_schema_name_the_same_fields(record, find):
    """benchmarks.manifest.Manifest (what the compiler builds and the readers return) and the schema file
    (what a manifest is checked against) must not drift apart: same fields, same required ones."""
    import benchmarks.manifest as typed

    node = find(json.loads(MANIFEST_SCHEMA.read_text()))
    cls = getattr(typed, record)
    assert set(cls.__annotations__) == set(node["properties"]), record
    assert set(cls.__required_keys__) == set(node["required"]), record
