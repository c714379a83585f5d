"""Artifact production: one ArtifactKind record (pipeline/targets.py) drives each kind's stages: conversion
(TFLite, ONNX), TVM builds (CPU and OpenCL), our OpenCL runtime, and the accuracy check of each. Must hold: a TVM
library computes what LiteRT computes on the TFLite file it came from, or the compile fails (never shipped).
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.device import cpu_model
from benchmarks.gate_report import ladder_summary
from benchmarks.manifest import Artifact
from pipeline.accuracy import Checker, onnx_int8_scheme
from pipeline.cache import CacheEntry, canonical_json
from pipeline.compile_options import CompileOptions
from pipeline.emulation import GUEST_SITE, ensure_emulator
from pipeline.errors import MissingDependencyError, StageError
from pipeline.host_tools import ensure_file, ensure_tool
from pipeline.model_inputs import Prepared
from pipeline.progress import Progress
from pipeline.stage_runner import StageRunner
from pipeline.stages import convert, opencl_runtime, tvm_build
from pipeline.targets import ARTIFACT_KINDS, Target
from pipeline.tvm.link import ZIG, describe, zig_spec
from pipeline.tvm.records import TUNING_FILES, records_elsewhere, records_path


@dataclass
class MadeArtifact:
    """One artifact: its manifest entry, and the cached files it is copied from (never in the manifest)."""
    entry: Artifact
    path: Path
    extra: dict[str, Path] = field(default_factory=dict)     # files shipped beside it (OpenCL source, runtime)


class Producer:
    """Makes a target's artifacts from a prepared model; everything it needs is given at construction."""

    def __init__(self, options: CompileOptions, target: Target, runner: StageRunner, model: Prepared,
                 progress: Progress):
        self.options, self.target, self.runner, self.model, self.progress = options, target, runner, model, progress
        self.checker = Checker(runner, target, options.cache_dir, progress)

    def artifact(self, kind: str) -> MadeArtifact:
        made = ARTIFACT_KINDS[kind]
        head = {"kind": kind, "format": made.format, "precision": made.precision, "runtime": made.runtime,
                "device": made.device}
        result = self.tvm(kind) if made.format == "tvm" else self.file_artifact(kind)
        result.entry = head | result.entry
        return result

    def file_artifact(self, kind: str) -> MadeArtifact:
        """A TFLite or ONNX file, converted and checked."""
        made, file_name = self.converted(kind)
        accuracy = self.checker.check(kind, ARTIFACT_KINDS[kind].runtime,
                                      {"artifact": made.file(file_name), "eval": self.model.file("eval.npz")})
        entry = {"file": file_name, "sha256": made.files[file_name], "accuracy": accuracy}
        if kind == "onnx-int8":
            details = json.loads(made.file("convert.json").read_text())
            entry["quantization"] = details["quantization"] | {"why": onnx_int8_scheme(self.target)[1]}
        if kind == "tflite-int8":
            entry["quantization"] = json.loads(made.file("convert.json").read_text())["quantization"]
            say_recovery(self.progress, file_name, entry["quantization"]["recovery"])
        return MadeArtifact(entry, made.file(file_name))

    def converted(self, kind: str) -> tuple[CacheEntry, str]:
        """The convert stage's entry for one TFLite/ONNX kind (also the source of TVM builds)."""
        made, opts = ARTIFACT_KINDS[kind], self.options
        file_name = f"{self.model.name}_{made.precision}.{made.extension}"
        inputs = {"model": self.model.file("model.keras")}
        if made.needs_calibration:
            inputs["calib"] = self.model.file("calib.npz")
        scheme = onnx_int8_scheme(self.target)[0] if kind == "onnx-int8" else ""
        config = convert.Config(kind, file_name, scheme)
        if made.needs_calibration:
            config = dataclasses.replace(config, calib_method=opts.calib_method)
        if kind == "tflite-int8":
            config = dataclasses.replace(config, equalize=opts.equalize, rungs=opts.recover_rungs)
            if opts.recover:
                budget = recovery_budget(self.model, self.target)
                config = dataclasses.replace(config, recover_budget=budget.min_agreement_top1,
                                             recover_max_drop=budget.max_top1_drop_points, recover_cap=opts.recover_cap)
        if kind == "onnx-int8" and (opts.recover or opts.equalize == "on"):
            # ONNX Runtime's quantizer recalibrates on every call: too slow to search; it takes the model the
            # TFLite ladder chose (equalized or not) and keeps float the Keras layers it kept float
            tflite = self.converted("tflite-int8")[0]
            recovery = tflite_recovery(tflite)
            if recovery.get("equalized"):
                inputs["model"] = tflite.file("equalized.keras")
            if recovery.get("status") == "recovered":
                layers = dict.fromkeys(l for ls in recovery.get("float_keras_layers", []) for l in ls)
                config = dataclasses.replace(config, float_layers=tuple(layers),
                                             activations16=recovery.get("activations") == "int16")
        return self.runner.stage(convert, config, inputs, f"convert {kind}"), file_name

    def tvm(self, kind: str) -> MadeArtifact:
        """A TVM library built from the TFLite file of its precision; CPU libraries built for this machine are
        checked against LiteRT on that file."""
        target, made = self.target, ARTIFACT_KINDS[kind]
        precision, device = made.precision, made.device
        source, source_file = self.converted("tflite-int8" if precision == "int8" else "tflite-fp32")
        sixteen = precision == "int8" and "tvm" in tflite_recovery(source)       # TVM cannot import 16x8
        if sixteen:
            source_file = convert.TVM_SOURCE
        file_name = f"{self.model.name}_{precision}{'_opencl' if device == 'gpu' else ''}.so"
        native = target.arch == platform.machine()
        spec, detect_cpu = tvm_spec(target, device)
        config = tvm_build.Config(kind=kind, file_name=file_name, target=canonical_json(spec),
                                  host=canonical_json(target.tvm.target_for(device)[1]),
                                  host_cpu=cpu_model() if detect_cpu else "",
                                  linker=linker(target), linker_version=describe(linker(target))["version"],
                                  arch=target.arch, schedules=target.tvm.schedules)
        inputs = {"tflite": source.file(source_file)}
        records = records_dir(self.options, target, self.model) if device == "cpu" and target.tvm.schedules == "default" else None
        if records is not None and (records / TUNING_FILES[0]).exists():
            inputs |= {name: records / name for name in TUNING_FILES}
            self.progress.log(f"  applying tuning records from {records} (tuned on {target.int8_isa})")
        elif records is not None:
            others = records_elsewhere(self.options.tuning_dir, self.options.records_target or target.name,
                                       self.model.shape_id, target.int8_isa)
            if others:
                self.progress.log(f"  no tuning records for {target.int8_isa} (this target's instruction set) in "
                                  f"{records.parent.parent}: those for {', '.join(others)} are not applied; "
                                  f"`make tune TARGET={target.name}` tunes for this one")
        built = self.runner.stage(tvm_build, config, inputs, f"tvm {kind}")
        info = json.loads(built.file("tvm.json").read_text())
        record = {"file": file_name, "sha256": built.files[file_name],
                  "tvm_target": info["tvm_target"], "arch": target.arch, "io": info["io"],
                  "schedules": info["schedules"], "tuning": info.get("tuning"), "linker": info["linker"],
                  "int8_integer_chains": info.get("int8_integer_chains", 0),
                  "int8_float_exact": info.get("int8_float_exact", 0),
                  "int8_integer_adds": info.get("int8_integer_adds", 0),
                  "int8_integer_means": info.get("int8_integer_means", 0),
                  "int8_dot": info.get("int8_dot"),
                  "source_tflite": source_file, "accuracy": None}
        if precision == "int8":
            recovery = tflite_recovery(source)
            if sixteen:
                recovery = recovery["tvm"]
                record["built_from"] = f"the float rung's int8 model: {recovery['why']}"
            if recovery.get("status") == "recovered" and recovery["float_layers"]:
                record["float_layers"] = recovery["float_layers"]      # from the recovered TFLite file
        extra = {}
        params = info.get("params")
        if params:                      # the weights, beside the library (benchmarks/tvm_params.py)
            record["params"] = {"file": params["file"], "sha256": built.files[params["file"]],
                                "bytes": built.file(params["file"]).stat().st_size}
            extra[params["file"]] = built.file(params["file"])
        if device == "gpu":
            record["opencl_source"] = Path(file_name).stem + ".cl"
            record["opencl_kernels"] = info["opencl_kernels"]
            record["accuracy_note"] = "not run here: OpenCL artifacts need the board's GPU"
            runtime, name = self.opencl_runtime(), opencl_runtime.FILE_NAME
            record["opencl_runtime"] = json.loads(runtime.file("opencl_runtime.json").read_text()) | {
                "sha256": runtime.files[name]}
            extra |= {record["opencl_source"]: built.file(record["opencl_source"]), name: runtime.file(name)}
        elif not native:
            record["accuracy_note"] = f"not run here: built for {target.arch}, this machine is {platform.machine()}"
        else:
            record["accuracy"] = self.checker.check(
                kind, "tvm", {"artifact": built.file(file_name), "eval": self.model.file("eval.npz"),
                              "tvm_info": built.file("tvm.json"), "litert_twin": source.file(source_file)} | (
                    {"params": built.file(params["file"])} if params else {}),
                self.checker.tvm_limit(self.model.info["input_shape"]))
            within_tolerance(file_name, source_file, record["accuracy"]["vs_litert"], target.name)
        return MadeArtifact(record, built.file(file_name), extra)

    def opencl_runtime(self) -> CacheEntry:
        return opencl_runtime_entry(self.runner, self.target.arch, self.options.cache_dir, self.progress)


def opencl_runtime_entry(runner: StageRunner, arch: str, cache_dir: Path, progress: Progress) -> CacheEntry:
    """Our TVM OpenCL runtime for ``arch``: shipped beside GPU artifacts, so that a board needs only the pip TVM
    runtime, its OpenCL driver and this file (``make verify`` builds it for this machine to run the twins)."""
    ensure_file("/usr/include/CL/cl.h", "opencl-headers", progress, "building the OpenCL runtime")
    if arch == platform.machine():
        compiler = ensure_tool("g++", "g++", progress)
        spec = importlib.util.find_spec("tvm")
        site = Path(spec.origin).parent.parent if spec and spec.origin else None
        if site is None:
            raise MissingDependencyError("the OpenCL runtime links against TVM's runtime: run `make setup`")
    else:
        compiler = ensure_tool(f"{arch}-linux-gnu-g++", f"g++-{arch.replace('_', '-')}-linux-gnu", progress)
        # TVM's runtime libraries for the board's architecture: the emulated board's (its pip wheels)
        site = ensure_emulator(cache_dir, progress).sysroot / GUEST_SITE.lstrip("/")
    inputs = {"source": opencl_runtime.SOURCE, "libtvm_runtime": site / "tvm" / "lib" / "libtvm_runtime.so",
              "libtvm_ffi": site / "tvm_ffi" / "lib" / "libtvm_ffi.so"}
    return runner.stage(opencl_runtime, opencl_runtime.Config(arch=arch, compiler=Path(compiler).name,
                                                              compiler_version=describe(compiler)["version"]),
                        inputs, f"opencl runtime {arch}")


def tvm_spec(target: Target, device: str = "cpu") -> tuple[dict | str, bool]:
    """The target's TVM target for a CPU or GPU artifact as the stage gets it, and whether LLVM should detect
    this CPU."""
    native = target.arch == platform.machine()
    spec, _ = target.tvm.target_for(device)
    llvm = isinstance(spec, dict) and spec.get("kind") == "llvm"      # options below are the CPU target's
    if native and llvm and target.cpu.cores == 0 and "num-cores" not in spec:
        spec = spec | {"num-cores": os.cpu_count() or 1}
    if llvm and "num-cores" not in spec and target.cpu.cores:
        spec = spec | {"num-cores": target.cpu.cores}          # MetaSchedule needs it
    detect_cpu = native and llvm and "mcpu" not in spec and "mtriple" not in spec
    return spec, detect_cpu


def linker(target: Target) -> str:
    """The linker spec of the target's TVM libraries: the pinned zig cc for every architecture, native included,
    unless the target file names its own (pipeline/tvm/link.py)."""
    name = target.tvm.linker
    return zig_spec(target.arch) if name == ZIG else name


def records_dir(options: CompileOptions, target: Target, model: Prepared) -> Path | None:
    """The MetaSchedule records for this target and model, or None (not wanted)."""
    if options.tuning_dir is None:
        return None
    return records_path(options.tuning_dir, options.records_target or target.name, model.shape_id, target.int8_isa)


def recovery_budget(model: Prepared, target: Target):
    """What int8 recovery aims at: the gate's thresholds for this model and target."""
    from benchmarks.gate import GATES_FILE, load_thresholds

    return load_thresholds(GATES_FILE, model.gates_key, target.name)


def tflite_recovery(converted: CacheEntry) -> dict:
    """The int8 recovery record of a tflite-int8 convert stage entry (its status, float layers, ...)."""
    return json.loads(converted.file("convert.json").read_text())["quantization"]["recovery"]


def within_tolerance(file_name: str, source_file: str, vs: dict, target_name: str) -> None:
    """A TVM library computes what LiteRT computes on the TFLite file it came from (int8: within one quantization
    step, fp32: 1e-4 relative) or the compile fails: an artifact that misses is wrong, not slightly less accurate."""
    if vs["within_tolerance"]:
        return
    if "max_quant_steps" in vs:
        off = f"{vs['max_quant_steps']} quantization steps (tolerance {vs['tolerance_steps']})"
    else:
        off = f"{vs['max_rel_diff']:.2e} relative (tolerance {vs['tolerance_rel']:.0e})"
    raise StageError(f"{file_name} differs from LiteRT running {source_file} by up to {off} on "
                     f"{vs['beyond_tolerance']} of {vs['outputs']} outputs: an operator of this model is not in "
                     f"LiteRT's arithmetic in TVM; no artifacts were written (target {target_name}; "
                     f"leave tvm-* out of its artifacts to ship the others)")


def say_recovery(progress: Progress, file_name: str, recovery: dict) -> None:
    if recovery["status"] == "recovered":
        size = recovery["size_bytes"]["recovered"] / recovery["size_bytes"]["int8"]
        latency = recovery["latency_ms_here"]["recovered"] / max(recovery["latency_ms_here"]["int8"], 1e-9)
        progress.log(f"{file_name}: recovered: {ladder_summary(recovery)}; on the calibration images "
                     f"{recovery['before']['why']} -> {recovery['after']['why']}; size x{size:.2f}, latency here "
                     f"x{latency:.2f}")
        if "tvm" in recovery:
            tvm = recovery["tvm"]
            floated = f"{len(tvm['float_layers'])} layers kept float" if tvm["status"] == "recovered" else (
                f"all int8, the float rung {tvm['status']}")
            progress.log(f"  TVM int8 falls back: {tvm['why']} ({floated}: {tvm['after']['why']}; size "
                         f"x{tvm['size_bytes']['recovered'] / tvm['size_bytes']['int8']:.2f}, latency here (LiteRT) "
                         f"x{tvm['latency_ms_here']['recovered'] / max(tvm['latency_ms_here']['int8'], 1e-9):.2f})")
    elif recovery["status"] in ("cap reached", "not met"):
        tried = [f"{r['rung']}: {r.get('reason') or r['after']['why']}" for r in recovery.get("rungs", [])
                 if r["rung"] in ("cle", "bias", "16x8") and (r.get("reason") or r.get("after"))]
        progress.warn(f"{file_name}: int8 recovery failed ({recovery['status']}, cap {recovery['cap_layers']} "
                      f"float layers): {recovery['after']['why']} on the calibration images"
                      f"{' (' + '; '.join(tried) + ')' if tried else ''}; the gate will fail")
