"""make analyze: the per-layer int8 analysis of a target's model (the analyze stage measures it, on the int8 model
before recovery), published in OUT/<target>/analysis/ as JSON with its rendering (analysis_report.py)."""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

from benchmarks.files import write_text_atomic
from pipeline.analysis_report import render
from pipeline.errors import InputError
from pipeline.progress import Progress

def analyze_target(options, n: int = 16, progress: Progress | None = None) -> tuple[dict, Path]:
    from pipeline.artifacts import Producer
    from pipeline.compile_options import validate_options
    from pipeline.compiler import runner_for
    from pipeline.model_inputs import prepare
    from pipeline.output import TargetLock, ensure_writable
    from pipeline.stages import analyze
    from pipeline.targets import ARTIFACT_KINDS, load_target

    progress = progress or Progress(quiet=True)
    if n < 0:
        raise InputError(f"ANALYZE_N={n} must be 0 (every quantized layer) or a positive number of layers")
    target = load_target(options.target, options.targets_dir)
    validate_options(options)
    if "tflite-int8" not in target.artifacts:
        int8 = [k for k in target.artifacts if ARTIFACT_KINDS[k].precision == "int8"]
        raise InputError(f"target {target.name} has no tflite-int8 artifact to analyze (its int8 artifacts: "
                         f"{', '.join(int8) or 'none'}); analyze a target that lists tflite-int8, e.g. host")
    ensure_writable(options.out_dir)
    with TargetLock(options.out_dir, target.name):
        # the int8 models as quantized before any recovery: the analysis shows what int8 does to each layer
        options = dataclasses.replace(options, recover=False, equalize="off")
        runner = runner_for(options, target, progress)
        progress.log(f"analyzing int8 on target {target.name}: {target.description}")
        model = prepare(runner, options, True, progress)
        producer = Producer(options, target, runner, model, progress)
        inputs = {"model": model.file("model.keras"), "calib": model.file("calib.npz")}
        if "onnx-int8" in target.artifacts:
            int8, int8_file = producer.converted("onnx-int8")
            fp32, fp32_file = producer.converted("onnx-fp32")
            inputs |= {"onnx_int8": int8.file(int8_file), "onnx_fp32": fp32.file(fp32_file)}
        entry = runner.stage(analyze, analyze.Config(options.calib_method, n), inputs, "analyze int8")
        result = json.loads(entry.file("analysis.json").read_text())
        result["model"] = model.gates_key
        result["target"] = target.name
        folder = options.out_dir / target.name / "analysis"
        staging = folder.with_name(".analysis.tmp")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        write_text_atomic(staging / "analysis.json", json.dumps(result, indent=1))
        render(result, staging)
        shutil.rmtree(folder, ignore_errors=True)
        staging.rename(folder)
    return result, folder
