"""The Python API: compile one target through every stage, with caching, into build/<target>/.

    from pipeline.compiler import CompileOptions, compile_target
    result = compile_target(CompileOptions(target="rpi4"))
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

from pipeline.artifacts import Producer, linker
from pipeline.compile_options import CompileOptions, validate_options
from pipeline.model_inputs import prepare
from pipeline.output import TargetLock, ensure_writable
from pipeline.packaging import CompileResult, Package, package
from pipeline.progress import Progress
from pipeline.stage_runner import StageRunner
from pipeline.targets import ARTIFACT_KINDS, Target, load_target
from pipeline.tvm.link import describe
from pipeline.versions import tool_versions

XCEPTION_PARAMETERS = 22_910_480          # keras.applications.Xception, 1000 classes

__all__ = ["CompileOptions", "CompileResult", "compile_target", "runner_for"]


def compile_target(options: CompileOptions, progress: Progress | None = None,
                   versions: Mapping[str, str] | None = None) -> CompileResult:
    progress = progress or Progress(quiet=True)
    target = load_target(options.target, options.targets_dir)
    validate_options(options)
    ensure_writable(options.out_dir)
    with TargetLock(options.out_dir, target.name):
        if any(ARTIFACT_KINDS[kind].format == "tvm" for kind in target.artifacts):
            describe(linker(target))           # a missing linker is one line before any stage runs
        runner = runner_for(options, target, progress, versions)
        progress.log(f"compiling target {target.name}: {target.description}")
        if target.on_a_phone:
            progress.log(f"  {target.name} is an Android phone: {target.on_a_phone}; no TVM library is built "
                         f"for it (docs/targets.md, Android)")
        model = prepare(runner, options, needs_int8(target), progress)
        producer = Producer(options, target, runner, model, progress)
        artifacts = [producer.artifact(kind) for kind in target.artifacts]
        return package(Package(options, target, model, artifacts, runner.versions, producer.checker.host_cpu,
                               runner.runs), progress)


def runner_for(options: CompileOptions, target: Target, progress: Progress,
               versions: Mapping[str, str] | None = None) -> StageRunner:
    """The stage runner of one command on one target (compile, analyze, tune, verify)."""
    return StageRunner(options.cache_dir, dict(versions or tool_versions()), progress, options.out_dir / "logs",
                       target.name, lambda runner: cache_need(options, target, runner))


def needs_int8(target: Target) -> bool:
    return any(ARTIFACT_KINDS[k].precision == "int8" for k in target.artifacts)


def cache_need(options: CompileOptions, target: Target, runner: StageRunner) -> int:
    """Roughly what a compile of this model for this target writes to the stage cache: the model, its float copy,
    and each artifact at its precision's share of the float weights (fp16 half, int8 a quarter)."""
    built = runner.entries.get("build")
    if built is not None:
        model = built.file("model.keras").stat().st_size
    elif options.weights not in ("auto", "imagenet", "reference", "random") and Path(options.weights).is_file():
        model = Path(options.weights).stat().st_size
    else:
        model = 4 * XCEPTION_PARAMETERS
    share = {"fp32": 1.0, "fp16": 0.5}
    return int(model * (2 + sum(share.get(ARTIFACT_KINDS[k].precision, 0.25) for k in target.artifacts)))

