"""tvm: a TVM-compiled library from the pipeline's own TFLite artifact (fp32 or int8), for the target's exact CPU or
its GPU (OpenCL module + host code; refused when the OpenCL module has no kernels). Outputs: <file_name>,
tvm.json (target used, io quantization, kernel count), <stem>.params for CPU builds (the weights, which main takes
after its input: pipeline/tvm/params.py), and <stem>.cl for OpenCL builds.
Details: docs/internals.md (module notes).
"""
from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from pipeline.errors import StageError
from pipeline.progress import Progress
from pipeline.targets import ARTIFACT_KINDS
from pipeline.tvm.link import describe, linker_options
from pipeline.tvm.records import TUNING_FILES, estimate

NAME = "tvm"
VERSION = 31
TOOLS = ("apache-tvm", "apache-tvm-ffi", "tflite", "ziglang", "numpy")


@dataclass(frozen=True)
class Config:
    kind: str                 # tvm-fp32 | tvm-int8 | tvm-gpu-fp32 | tvm-gpu-fp16
    file_name: str            # e.g. xception_int8.so
    target: str               # JSON of the TVM target (dict or tag), as the target file gives it
    host: str                 # JSON of the host target for GPU builds, or "null"
    host_cpu: str             # native builds: this machine's CPU model (mcpu is then detected by LLVM)
    linker: str               # "zig:<triple>" (shipped libraries), a linker command, or "native" (host twins)
    linker_version: str       # the linker's exact version (pipeline/tvm/link.py describe): part of the cache key
    arch: str
    schedules: str = "default"  # CPU targets: "default" (pipeline/tvm/schedules.py) or "none"


def run(inputs: Mapping[str, Path], config: Config, out: Path, progress: Progress) -> None:
    import tflite
    import tvm

    from pipeline.tvm import adreno
    from pipeline.tvm.dot import isa_for
    from pipeline.tvm.int8 import dot_products, float_exact, import_model, integer_adds, integer_means, rewrites

    from tvm.target.codegen import llvm_get_system_cpu

    target_spec = json.loads(config.target)
    if config.host_cpu:                       # a native build: this machine's exact CPU
        target_spec = target_spec | {"mcpu": llvm_get_system_cpu()}
    host_spec = json.loads(config.host)
    target = tvm.target.Target(target_spec, host=host_spec) if host_spec else tvm.target.Target(target_spec)

    buffer = inputs["tflite"].read_bytes()
    model = tflite.Model.GetRootAsModel(buffer, 0)
    io = _io_quantization(model)
    started = time.monotonic()
    progress.log(f"  importing {inputs['tflite'].name} into Relax")
    # the target's int8 dot-product instructions, for CPU builds with our schedules ("none": TVM's bare output)
    isa = isa_for(target) if target.kind.name == "llvm" and config.schedules == "default" else None
    if isa is not None and config.host_cpu:
        isa = _checked_here(isa, target, progress)
    mod = import_model(model, isa)
    dot_isa, dotted = dot_products(mod)
    adreno_layout = None
    if adreno.is_adreno(target):
        why_not = adreno.unsupported(mod)
        if why_not:
            progress.warn(f"this model has {why_not}: TVM's Adreno convolution schedules need the NCHW4c layout; "
                          f"built with TVM's plain Adreno pipeline instead")
        else:
            mod = adreno.prepare(mod)
            adreno_layout = f"NCHW{adreno.BLOCK}c"
            progress.log(f"  Adreno: NCHW{adreno.BLOCK}c layout, TVM's {' and '.join(adreno.RULES)} schedule rules")
    if config.kind == "tvm-gpu-fp16":
        from tvm import relax

        # mobile GPUs run fp16 at about twice their fp32 rate: fp16 compute and storage inside, fp32 at the edges
        mod = relax.transform.ToMixedPrecision(out_dtype="float16")(mod)
        progress.log("  fp16 compute (Relax ToMixedPrecision), fp32 input and output")
    if dotted:
        progress.log(f"  {rewrites(mod)} int8 convolutions / products in integer arithmetic as LiteRT computes them: "
                     f"{dotted} as int8 x int8 -> int32 on {dot_isa} ({isa.instruction}; depthwise: int16 products "
                     f"widened into int32), weights packed at compile time")
    elif rewrites(mod):
        progress.log(f"  {rewrites(mod)} int8 convolutions / products in integer arithmetic as LiteRT computes them "
                     f"({float_exact(mod)} accumulated exactly in float32, the others in int32)")
    progress.log(f"  compiling for {json.dumps(target_spec)} ({config.schedules} CPU schedules)"
                 if target.kind.name == "llvm" else f"  compiling for {json.dumps(target_spec)}")
    tuning, params, arrays = None, None, []
    if target.kind.name == "llvm":              # the weights in a file beside the library, not inside it
        from benchmarks import tvm_params
        from pipeline.tvm.params import lift

        if config.schedules == "default":       # before the lift: the packed weights are constants there
            from pipeline.tvm.conv_tiles import vector_lanes
            from pipeline.tvm.packing import pack_pointwise

            mod = pack_pointwise(mod, vector_lanes(target))
        mod, arrays = lift(mod)
        if arrays:
            params = {"file": Path(config.file_name).stem + tvm_params.SUFFIX, "arrays": len(arrays),
                      "bytes": int(sum(a.nbytes for a in arrays))}
    if target.kind.name == "llvm" and config.schedules == "default":
        from pipeline.tvm.schedules import cpu_pipeline

        database, stats = None, {}
        if TUNING_FILES[0] in inputs:
            database, tuning = _tuned(inputs, target)
        executable = tvm.compile(mod, target=target, relax_pipeline=cpu_pipeline(target, database, stats))
        if tuning is not None:
            tuning |= {"applied": stats.get("tuned", 0), "functions": stats.get("functions", 0),
                       "replay_failed": stats.get("replay_failed", [])}
            progress.log(f"  tuned schedules for {tuning['applied']} of {tuning['functions']} functions "
                         f"(the others: default schedules)")
            if tuning["replay_failed"]:
                progress.warn(f"{len(tuning['replay_failed'])} functions have a record that TVM could not replay "
                              f"on them; they keep the default schedules: {', '.join(tuning['replay_failed'][:5])}"
                              + (" ..." if len(tuning["replay_failed"]) > 5 else ""))
    elif adreno_layout:
        executable = tvm.compile(mod, target=target, relax_pipeline=adreno.pipeline(target))
    else:
        executable = tvm.compile(mod, target=target)
    compile_seconds = time.monotonic() - started

    # built for the processor its kind names, checked on the built module: a GPU artifact holds OpenCL
    # kernels, a CPU artifact holds none (nothing is cached or shipped otherwise)
    source = _opencl_source(executable.mod)
    kernels = opencl_kernel_count(source)
    if ARTIFACT_KINDS[config.kind].device == "gpu":
        if not kernels:
            raise StageError(f"TVM built no OpenCL kernels for {config.file_name} (target {json.dumps(target_spec)}): "
                             f"the functions were not GPU-scheduled and would run on the CPU; refusing the artifact")
        (out / (Path(config.file_name).stem + ".cl")).write_text(source)
    elif source:
        raise StageError(f"{config.file_name} is a CPU artifact ({config.kind}) but TVM built an OpenCL module into it "
                         f"(target {json.dumps(target_spec)}); refusing the artifact: give CPU kinds an llvm target")

    progress.log(f"  linking {config.file_name} ({config.linker})")
    library = out / config.file_name
    executable.export_library(str(library), **linker_options(config.linker))
    if params:                               # written after the library: its header names the library's sha256
        from benchmarks.files import sha256_file

        tvm_params.write(out / params["file"], arrays, sha256_file(library))
    del arrays
    details = {
        "kind": config.kind,
        "tvm_target": _plain(target.export()),
        "arch": config.arch,
        "io": io,
        "linker": describe(config.linker),
        "schedules": (("tuned + default" if tuning and tuning["applied"] else config.schedules)
                      if target.kind.name == "llvm"
                      else f"adreno ({adreno_layout}; {', '.join(adreno.RULES)}) + tvm default (GPU)" if adreno_layout
                      else "tvm default (GPU)"),
        "tuning": tuning,
        "params": params,
        "int8_integer_chains": rewrites(mod), "int8_float_exact": float_exact(mod),
        "int8_integer_adds": integer_adds(mod), "int8_integer_means": integer_means(mod),
        "int8_dot": {"isa": dot_isa, "instruction": isa.instruction, "functions": dotted} if dotted else None,
        "opencl_kernels": kernels,
        "compile_seconds": round(compile_seconds, 1),
        "total_seconds": round(time.monotonic() - started, 1),
    }
    (out / "tvm.json").write_text(json.dumps(details, indent=1, default=str))


def _checked_here(isa, target, progress: Progress):
    """A native build's dot-product form, run once on this CPU against the exact integer result first; on a
    mismatch the next form that passes (AVX2's, then the portable one), with a warning."""
    from pipeline.tvm.dot import ISAS, self_check

    for candidate in dict.fromkeys([isa, ISAS["avx2"]] if isa.name.endswith("vnni") else [isa]):
        why = self_check(candidate, target)
        if why is None:
            return candidate
        progress.warn(f"{why}; not used")
    return None


def _tuned(inputs: Mapping[str, Path], target):
    """The tuned schedules that beat the default ones, and what the manifest says about them."""
    from benchmarks.files import sha256_file
    from pipeline.tvm import tuning as tvm_tuning

    summary_file, workloads_gz, records_gz = (inputs[name] for name in TUNING_FILES)
    database, winners, summary = tvm_tuning.winning_database(summary_file, workloads_gz, records_gz)
    keys = {task.key for task in tvm_tuning.extract(inputs["tflite"], target, "")}
    return database, {
        "records": str(summary_file.parent),
        "sha256": {path.name: sha256_file(path) for path in (summary_file, workloads_gz, records_gz)},
        "distinct_functions": len(keys), "with_records": len(keys & set(summary["tasks"])),
        "with_faster_records": len(winners & keys),
        "trials": sum(summary["tasks"][k]["trials"] for k in keys & set(summary["tasks"])),
        "tuned_on": summary.get("tuned_on"), "estimate": estimate(summary, keys),
    }


def _plain(value):
    """TVM's exported target (FFI maps, arrays, nested targets) as plain JSON-able Python values."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if hasattr(value, "export"):
        return _plain(value.export())
    if hasattr(value, "items"):
        return {str(k): _plain(v) for k, v in value.items() if not (k == "tag" and not v)}
    if isinstance(value, (list, tuple)) or hasattr(value, "__len__"):
        return [_plain(v) for v in value]
    return str(value)


def _io_quantization(model) -> dict:
    """dtype, scale and zero point of the model's input and output, read from the TFLite schema."""
    import tflite

    names = {getattr(tflite.TensorType, k): k.lower() for k in dir(tflite.TensorType) if k.isupper()}
    graph = model.Subgraphs(0)

    def describe(index: int) -> dict:
        tensor = graph.Tensors(index)
        quant = tensor.Quantization()
        scale = float(quant.Scale(0)) if quant is not None and quant.ScaleLength() else None
        zero = int(quant.ZeroPoint(0)) if quant is not None and quant.ZeroPointLength() else None
        return {"dtype": names[tensor.Type()], "shape": [int(d) for d in tensor.ShapeAsNumpy()],
                "scale": scale, "zero_point": zero}

    return {"input": describe(graph.Inputs(0)), "output": describe(graph.Outputs(0))}


def opencl_kernel_count(source: str) -> int:
    """The kernels of TVM's OpenCL source: one `// Function: <name>` chunk each (every chunk also declares
    all the others, so counting `__kernel void` would count them again per chunk)."""
    return len(set(re.findall(r"^// Function: (\S+)", source, flags=re.M)))


def _opencl_source(module) -> str:
    def find(m):
        if m.kind == "opencl":
            return m
        for child in m.imports:
            found = find(child)
            if found is not None:
                return found
        return None

    opencl = find(module)
    return opencl.inspect_source() if opencl is not None else ""
