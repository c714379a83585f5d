"""`make verify` for GPU artifacts, without a GPU (docs/gpu.md). A TVM OpenCL library's twin, the same module
built with an x86 host, must carry byte-identical kernels, bytecode and weights, and run through our OpenCL
runtime on a CPU OpenCL (POCL; Intel's for fp16) within tolerance of LiteRT fp32 on the same TFLite file. An fp16
TFLite file runs on LiteRT's GPU accelerator over Mesa's lavapipe, GPU only, and must meet the model's agreement
gate. The twins and the host runtime are built through the stage cache.
"""
from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import numpy as np

from benchmarks.run import ONE_PASS, child_command
from pipeline.artifacts import opencl_runtime_entry
from pipeline.cache import canonical_json
from pipeline.host_tools import ensure_file, ensure_intel_opencl, ensure_lavapipe
from pipeline.progress import Progress
from pipeline.stage_runner import StageRunner
from pipeline.stages import opencl_runtime, tvm_build
from pipeline.targets import Target
from pipeline.verify_runs import outcome, row as verify_row, run_child

OPENCL_RELATIVE_TOLERANCE = 1e-4      # fp32 kernels on OpenCL against LiteRT fp32 (other kernels, other sums)
# fp16 kernels against LiteRT fp32, relative to the largest logit: fp16's unit roundoff is 2**-11 (4.9e-4) per
# operation, compounded over Xception's 36 convolutions; LiteRT's own fp16 GPU path lands about 2e-3 from float.
# 1e-2 catches a wrong kernel (off by O(1)); top-1 agreement with fp32 must be at least 99% besides.
FP16_RELATIVE_TOLERANCE = 1e-2
FP16_MIN_AGREEMENT = 0.99
SOFTWARE_OPENCL_PLATFORM = "Portable Computing Language"      # POCL: Debian's CPU OpenCL


def verify_opencl(build_dir: Path, manifest: dict, artifacts: list[dict], target: Target, n: int, work: Path,
                  runner: StageRunner, cache_dir: Path, progress: Progress) -> list[dict]:
    """One row per GPU TVM library (module docstring): twin identical, computes LiteRT's fp32 result on OpenCL."""
    from pipeline.tvm.library import elf_info, library_modules

    ensure_file(f"/usr/lib/{platform.machine()}-linux-gnu/libOpenCL.so.1", "ocl-icd-libopencl1", progress,
                "running OpenCL kernels")
    ensure_file("/etc/OpenCL/vendors/pocl.icd", "pocl-opencl-icd", progress, "a CPU OpenCL to run GPU kernels on")
    ensure_file("/usr/include/CL/cl.h", "opencl-headers", progress, "building the OpenCL runtime")
    progress.log(f"  our OpenCL runtime for this machine ({platform.machine()})")
    sidecar = opencl_runtime_entry(runner, platform.machine(), cache_dir, progress).file(opencl_runtime.FILE_NAME)
    pocl = os.environ | {"XC_OPENCL_PLATFORM": SOFTWARE_OPENCL_PLATFORM, "TF_CPP_MIN_LOG_LEVEL": "2"}
    rows = []
    for art in artifacts:
        fp16 = art["precision"] == "fp16"
        # fp16 kernels need cl_khr_fp16: Intel's CPU OpenCL has it, POCL does not
        env = os.environ | ensure_intel_opencl(cache_dir, progress) | {"TF_CPP_MIN_LOG_LEVEL": "2"} if fp16 else pocl
        tolerance = FP16_RELATIVE_TOLERANCE if fp16 else OPENCL_RELATIVE_TOLERANCE
        row = verify_row(art, n, "", 0.0, "gpu")
        problems = []
        # the runtime shipped for the board
        shipped = art.get("opencl_runtime")
        if shipped is None:
            problems.append("no OpenCL runtime shipped beside it")
        else:
            info = elf_info(build_dir / shipped["file"])
            text = (build_dir / shipped["file"]).read_bytes()
            missing = [r for r in opencl_runtime.REGISTERS if r.encode() not in text]
            if info["arch"] != target.arch or "libOpenCL.so.1" not in info["needed"] or missing:
                problems.append(f"{shipped['file']}: a {info['arch']} ELF needing {info['needed']}, "
                                f"missing registrations {missing}")
            row["opencl_runtime"] = {"arch": info["arch"], "needed": info["needed"]}
        # the twin: the same module with host code for this machine
        progress.log(f"  {art['file']}: building its twin with an {platform.machine()} host")
        spec = manifest["config"]["target"]["tvm"]["gpu"]
        twin = runner.stage(tvm_build, tvm_build.Config(
            kind=art["kind"], file_name="twin.so", target=canonical_json(spec), host=canonical_json({"kind": "llvm"}),
            host_cpu="", linker="native", linker_version="", arch=platform.machine()),
            {"tflite": build_dir / art["source_tflite"]}, f"twin {art['file']}")
        theirs = [(k, b) for k, b in library_modules(build_dir / art["file"]) if k != "_lib"]
        ours = [(k, b) for k, b in library_modules(twin.file("twin.so")) if k != "_lib"]
        row["identical_modules"] = [k for (k, b), (k2, b2) in zip(theirs, ours) if k == k2 and b == b2]
        if [k for k, _ in theirs] != row["identical_modules"] or len(theirs) != len(ours):
            problems.append(f"the x86-host twin differs in {sorted({k for k, _ in theirs} - set(row['identical_modules']))}")
        # the twin on OpenCL, and LiteRT on the fp32 TFLite file it came from, on the same images
        io = json.loads(twin.file("tvm.json").read_text())["io"]
        twin_art = art | {"file": str(twin.file("twin.so")), "io": io, "opencl_runtime": {"file": str(sidecar)}}
        progress.log(f"  {art['file']}: running the twin on {env['XC_OPENCL_PLATFORM']} on {n} eval images")
        code, stderr, seconds = run_child(child_command(build_dir, twin_art, 1, ONE_PASS, n, work / "gpu.json",
                                                   save_logits=work / "gpu.npy"), env)
        row["emulated_seconds"] = round(seconds, 1)
        litert = next((a for a in manifest["artifacts"] if a["file"] == art["source_tflite"]), None)
        if code:
            problems.append(f"OpenCL run failed: {outcome(code, stderr)}")
        elif litert is None:
            problems.append(f"{art['source_tflite']} is not in the build: add tflite-fp32 to the artifacts")
        else:
            stats = json.loads((work / "gpu.json").read_text()).get("opencl") or {}
            row["opencl"] = stats
            code, stderr, _ = run_child(child_command(build_dir, litert, 1, ONE_PASS, n, work / "litert.json",
                                                 save_logits=work / "litert.npy"), env)
            if code:
                problems.append(f"LiteRT run failed: {outcome(code, stderr)}")
            else:
                gpu_logits, lite = np.load(work / "gpu.npy"), np.load(work / "litert.npy")
                relative = float(np.max(np.abs(gpu_logits - lite))) / max(float(np.max(np.abs(lite))), 1e-12)
                agree = float(np.mean(np.argmax(gpu_logits, 1) == np.argmax(lite, 1)))
                row |= {"max_difference": relative, "agreement_top1_litert": agree}
                if relative > tolerance:
                    problems.append(f"{relative:.2e} relative from LiteRT fp32 (tolerance {tolerance:.0e})")
                if fp16 and agree < FP16_MIN_AGREEMENT:
                    problems.append(f"top-1 agreement with LiteRT fp32 {agree:.3f} < {FP16_MIN_AGREEMENT}")
                if not stats.get("kernels_built") or not stats.get("launches"):
                    problems.append("no OpenCL kernel ran")
        detail = (f"x86-host twin: {', '.join(row['identical_modules']) or 'nothing'} byte-identical; on "
                  f"{(row.get('opencl') or {}).get('device', '?')}: {(row.get('opencl') or {}).get('kernels_built', 0)} "
                  f"kernels, {(row.get('opencl') or {}).get('launches', 0)} launches; relative <= "
                  f"{tolerance:.0e} against LiteRT fp32, top-1 agreement "
                  f"{row.get('agreement_top1_litert', 0):.3f}; {opencl_runtime.FILE_NAME} for {target.arch}")
        if problems:
            detail = "; ".join(problems) + " | " + detail
        rows.append(row | {"match": not problems, "max_difference": row.get("max_difference"), "detail": detail})
        progress.log(f"  {art['file']}: {'ok' if not problems else 'FAILED: ' + '; '.join(problems)}")
    return rows


def verify_litert_gpu(build_dir: Path, artifacts: list[dict], reference: np.ndarray, min_agreement: float, n: int,
                       work: Path, cache_dir: Path, progress: Progress) -> list[dict]:
    """fp16 TFLite on LiteRT's GPU accelerator (WebGPU over Vulkan) on Mesa's lavapipe, asked for the GPU alone (a
    CPU fallback is an error): judged like ONNX int8, on the model's top-1 agreement gate against float."""
    icd = ensure_lavapipe(progress)
    shaders = cache_dir / "mesa-shader-cache"          # a cold Xception build of its shaders takes about 40 s
    shaders.mkdir(parents=True, exist_ok=True)
    env = os.environ | {"VK_ICD_FILENAMES": str(icd), "MESA_SHADER_CACHE_DIR": str(shaders),
                        "TF_CPP_MIN_LOG_LEVEL": "2"}
    rows = []
    for i, art in enumerate(artifacts):
        progress.log(f"  {art['file']}: running on LiteRT's GPU accelerator over lavapipe on {n} eval images")
        out, logits = work / f"gpu-litert-{i}.json", work / f"gpu-litert-{i}.npy"
        code, stderr, seconds = run_child(child_command(build_dir, art, 1, ONE_PASS, n, out, save_logits=logits), env)
        row = verify_row(art, n, "lavapipe", seconds, "gpu")
        failure = outcome(code, stderr)
        if failure:
            rows.append(row | {"match": False, "max_difference": None, "detail": f"LiteRT GPU run failed: {failure}"})
            progress.log(f"  {art['file']}: FAILED: {failure}")
            continue
        result = json.loads(out.read_text())
        gpu = np.load(logits)
        m = len(gpu)
        agree = float(np.mean(np.argmax(gpu, 1) == np.argmax(reference[:m], 1)))
        delta = float(np.max(np.abs(gpu - reference[:m])))
        accelerated = (result.get("vulkan") or {}).get("fully_accelerated", False)
        ok = accelerated and agree >= min_agreement
        rows.append(row | {"match": ok, "max_difference": delta, "agreement_top1_float": agree,
                           "fully_accelerated": accelerated,
                           "detail": f"fully accelerated on the GPU (WebGPU over lavapipe): {accelerated}; top-1 "
                                     f"agreement with float {agree:.3f} (gate >= {min_agreement:.3f}), max |dlogit| "
                                     f"{delta:.4f} against the float model"})
        progress.log(f"  {art['file']}: {'ok' if ok else 'FAILED'}")
    return rows
