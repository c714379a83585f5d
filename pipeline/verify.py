"""`make verify TARGET=rpi4`: run every ARM CPU artifact under qemu-user with the target's core and
compare with the host run of the same artifact, using the benchmark harness' own runner.

LiteRT and ONNX Runtime artifacts run on both sides as they are. A TVM library for aarch64 cannot
run on x86, so its host side is a twin built by the TVM stage from the same TFLite file for this
machine's CPU (FMA-capable, like aarch64). LiteRT and TVM int8 must match bit for bit, fp32 within
1e-5 relative. ONNX Runtime's int8 kernels differ by CPU (ARM accumulates exactly; x86 without VNNI
saturates int16 sums), so an ONNX int8 artifact is judged on what the board computes: its top-1
agreement with the float model must meet the model's gate (benchmarks/gates.toml); the difference
to the host run is recorded, with the host's int8 ISA.

GPU (OpenCL) TVM libraries are proven without a GPU: the same module built with an x86 host must carry
byte-identical OpenCL kernels, VM bytecode and weights (only the host code differs); that twin runs through
our OpenCL runtime (pipeline/native/opencl_runtime.cc, built for this machine) on a CPU OpenCL (POCL) and must
match LiteRT running the same fp32 TFLite file within 1e-4 relative, with the kernel count and the device
name as proof that it ran on OpenCL; the runtime shipped for the board is checked to be an ELF for its
architecture that needs the OpenCL ICD loader and registers what TVM looks up.
"""
from __future__ import annotations

import concurrent.futures
import datetime
import json
import os
import platform
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.device import this_cpu
from benchmarks.gate import GATES_FILE, load_thresholds
from benchmarks.manifest import check_hashes, load_manifest, model_gates_key
from benchmarks.run import ONE_PASS, child_command, write_results
from benchmarks.runtimes import RUNTIMES
from pipeline.cache import canonical_json
from pipeline.emulation import CORES, ensure_emulator
from pipeline.host_tools import ensure_file, ensure_intel_opencl, ensure_lavapipe, ensure_tool
from pipeline.errors import InputError, MissingDependencyError
from pipeline.progress import Progress
from pipeline.targets import Target

ROOT = Path(__file__).resolve().parent.parent
FP32_RELATIVE_TOLERANCE = 1e-5
OPENCL_RELATIVE_TOLERANCE = 1e-4      # fp32 kernels on OpenCL against LiteRT fp32 (other kernels, other sums)
# fp16 kernels against LiteRT fp32, relative to the largest logit: fp16's unit roundoff is 2**-11 (4.9e-4) per
# operation, compounded over Xception's 36 convolutions; LiteRT's own fp16 GPU path lands about 2e-3 from float
# on the reference. 1e-2 leaves room for that and catches a wrong kernel (a wrong result is off by O(1)); top-1
# agreement with fp32 must be at least 99% besides.
FP16_RELATIVE_TOLERANCE = 1e-2
FP16_MIN_AGREEMENT = 0.99
SOFTWARE_OPENCL_PLATFORM = "Portable Computing Language"      # POCL: Debian's CPU OpenCL
VERIFIED_RUNTIMES = RUNTIMES                         # every runtime a CPU artifact can have


def _run(cmd: list[str], env: dict | None = None) -> tuple[int, str, float]:
    started = time.monotonic()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    return done.returncode, done.stderr, time.monotonic() - started


def _outcome(code: int, stderr: str) -> str | None:
    if code == 0:
        return None
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    if "Illegal instruction" in stderr or "signal 4" in stderr:
        return "killed by SIGILL (an instruction the emulated core lacks)"
    return f"exit {code}: " + " | ".join(stderr.strip().splitlines()[-2:])


def _missing_isa(library: Path, core: str) -> str | None:
    """Which instruction set an ARM library uses that the core lacks, when we can tell."""
    from pipeline.tvm.library import aarch64_dot_instructions

    dots = aarch64_dot_instructions(library)
    if dots and "asimddp" not in CORES[core][1].split():
        return (f"killed by SIGILL: {library.name} holds {dots} SDOT/UDOT instructions (ARMv8.2 dot product, "
                f"Linux cpuinfo 'asimddp'), which {core} lacks; build it for a target whose cores have them")
    return None


def _host_twin(build_dir: Path, art: dict, work: Path) -> dict:
    """The same TFLite model compiled by the TVM stage for this machine, as a runner artifact record."""
    from benchmarks.device import cpu_model
    from pipeline.stages import tvm_build

    source = build_dir / art["source_tflite"]
    if not source.is_file():
        raise InputError(f"{art['file']}: its source {art['source_tflite']} is not in {build_dir}; "
                         f"add the TFLite kind to the target's artifacts")
    out = work / f"twin-{Path(art['file']).stem}"
    out.mkdir()
    config = tvm_build.Config(kind=art["kind"], file_name="twin.so", target=canonical_json({"kind": "llvm"}),
                              host="null", host_cpu=cpu_model(), linker="native", linker_version="", arch=platform.machine())
    tvm_build.run({"tflite": source}, config, out, Progress(quiet=True))
    io = json.loads((out / "tvm.json").read_text())["io"]
    return art | {"file": str(out / "twin.so"), "io": io}


def compare_onnx_int8(emulated: np.ndarray, host: np.ndarray, reference: np.ndarray, min_agreement: float,
                      host_cpu: dict) -> tuple[bool, float, str, dict]:
    """ONNX Runtime int8 under emulation: judged against the float model (the gate's agreement), with the
    difference to the host run of the same file recorded (it depends on the host's int8 instructions)."""
    n = len(emulated)
    agree = int(np.sum(np.argmax(emulated, 1) == np.argmax(reference[:n], 1)))
    host_agree = int(np.sum(np.argmax(emulated, 1) == np.argmax(host, 1)))
    diff = float(np.max(np.abs(emulated - host))) if emulated.size else 0.0
    figures = {"agreement_top1_float": agree / max(n, 1), "agreement_top1_host": host_agree / max(n, 1),
               "mean_abs_logit_delta_float": float(np.mean(np.abs(emulated - reference[:n])))}
    ok = n > 0 and agree / n >= min_agreement
    saturating = ", saturating" if host_cpu["int8_saturates"] else ""
    detail = (f"top-1 agreement with float {agree}/{n} (gate >= {min_agreement:.3f}), mean |dlogit| "
              f"{figures['mean_abs_logit_delta_float']:.4f}; against the host run ({host_cpu['int8_isa']}{saturating}): "
              f"max |diff| {diff:.3g}, top-1 {host_agree}/{n}")
    return ok, diff, detail, figures


def compare(kind_precision: str, emulated: np.ndarray, host: np.ndarray) -> tuple[bool, float, str]:
    diff = float(np.max(np.abs(emulated - host))) if emulated.size else 0.0
    if kind_precision == "int8":
        return diff == 0.0, diff, "bit-exact"
    relative = diff / max(float(np.max(np.abs(host))), 1e-12)
    return relative <= FP32_RELATIVE_TOLERANCE, relative, f"relative <= {FP32_RELATIVE_TOLERANCE:.0e}"


def verify_target(build_dir: Path, target: Target, cache_dir: Path, n: int = 4,
                  progress: Progress | None = None, only: list[str] | None = None, core: str = "") -> dict:
    """``core``: emulate another core than the target's (VERIFY_CORE=), e.g. an rpi5 build on a Cortex-A72:
    what a library built for the wrong board does there."""
    progress = progress or Progress()
    if target.arch != "aarch64":
        raise InputError(f"make verify emulates aarch64 boards; target {target.name} is {target.arch} "
                         f"(aarch64 targets: rpi4, rpi5, android-arm64)")
    manifest = load_manifest(build_dir)
    artifacts = [a for a in manifest["artifacts"] if a["device"] == "cpu" and a["runtime"] in VERIFIED_RUNTIMES
                 and (not only or a["file"] in only)]
    check_hashes(build_dir, [a for a in manifest["artifacts"] if not only or a["file"] in only])
    reference = np.load(build_dir / "eval" / "eval.npz")["logits"]
    host_cpu = this_cpu()
    min_agreement = load_thresholds(GATES_FILE, model_gates_key(manifest), target.name).min_agreement_top1
    core = core or target.cpu.core
    if core not in CORES:
        raise InputError(f"VERIFY_CORE={core!r} is not a core the emulator knows; accepted: {', '.join(CORES)}")
    emulator = ensure_emulator(cache_dir, progress)
    emulator.set_core(core, target.cpu.cores or 4)
    threads = target.bench.threads or 4
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        # the emulated runs (most of the time: Python and each runtime start under qemu) run side by side, one per
        # core of this machine; the host runs and the comparisons follow, artifact by artifact
        workers = max(1, min(len(artifacts), os.cpu_count() or 1))
        progress.log(f"  running {len(artifacts)} artifact(s) under qemu ({core}) on {n} eval images, "
                     f"{workers} at a time")
        with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
            emulated = [pool.submit(_run, child_command(build_dir, art, threads, ONE_PASS, n, work / f"emu-{i}.json",
                                                        emulator.python(), work / f"emu-{i}.npy"),
                                    emulator.env(core))
                        for i, art in enumerate(artifacts)]
        for i, art in enumerate(artifacts):
            emu_logits, host_logits = work / f"emu-{i}.npy", work / f"host-{i}.npy"
            code, stderr, seconds = emulated[i].result()
            row = {"file": art["file"], "runtime": art["runtime"], "precision": art["precision"],
                   "emulated_core": core, "emulated_seconds": round(seconds, 1), "n": n}
            failure = _outcome(code, stderr)
            if failure and "SIGILL" in failure and art["runtime"] == "tvm":
                failure = _missing_isa(build_dir / art["file"], core) or failure
            if art["runtime"] == "litert":
                row["xnnpack"] = "XNNPACK delegate" in stderr
            if failure:
                rows.append(row | {"match": False, "max_difference": None, "detail": failure})
                progress.log(f"  {art['file']}: FAILED under emulation: {failure}")
                continue
            host_art = _host_twin(build_dir, art, work) if art["runtime"] == "tvm" else art
            code, stderr, _ = _run(child_command(build_dir, host_art, threads, ONE_PASS, n, work / "host.json",
                                                 save_logits=host_logits), os.environ | {"TF_CPP_MIN_LOG_LEVEL": "2"})
            if code:
                rows.append(row | {"match": False, "max_difference": None,
                                   "detail": f"host run failed: {_outcome(code, stderr)}"})
                continue
            if art["runtime"] == "onnxruntime" and art["precision"] == "int8":
                ok, diff, detail, figures = compare_onnx_int8(np.load(emu_logits), np.load(host_logits), reference,
                                                              min_agreement, host_cpu)
                rows.append(row | figures | {"match": ok, "max_difference": diff, "detail": detail})
                continue
            ok, diff, rule = compare(art["precision"], np.load(emu_logits), np.load(host_logits))
            against = "host TVM build of the same TFLite model" if art["runtime"] == "tvm" else "host run, same file"
            rows.append(row | {"match": ok, "max_difference": diff, "detail": f"{rule} against the {against}"})
        gpu = [a for a in manifest["artifacts"] if a["device"] == "gpu" and (not only or a["file"] in only)]
        opencl = [a for a in gpu if a["format"] == "tvm"]
        skipped = []
        litert_gpu = [a for a in gpu if a["runtime"] == "litert"]
        if litert_gpu:
            try:
                rows += _verify_litert_gpu(build_dir, litert_gpu, reference, min_agreement, n, work, cache_dir,
                                           progress)
            except MissingDependencyError as exc:       # no lavapipe here: said, not silently passed
                skipped += [{"file": a["file"], "reason": str(exc)} for a in litert_gpu]
        if opencl:
            rows += _verify_opencl(build_dir, manifest, opencl, target, n, work, cache_dir, progress)
    now = datetime.datetime.now(datetime.timezone.utc)
    report = {"kind": "verify", "target": target.name, "created": now.isoformat(timespec="seconds"),
              "emulator": {"qemu": emulator.qemu, "sysroot": str(emulator.sysroot), "core": core},
              "host": host_cpu,
              "rows": rows, "skipped": skipped, "passed": bool(rows) and all(r["match"] for r in rows)}
    write_results(report, build_dir / "bench" / f"verify-{now.strftime('%Y%m%dT%H%M%SZ')}.json")
    return report




def _verify_opencl(build_dir: Path, manifest: dict, artifacts: list[dict], target: Target, n: int, work: Path,
                   cache_dir: Path, progress: Progress) -> list[dict]:
    """One row per GPU TVM library (module docstring): twin identical, computes LiteRT's fp32 result on OpenCL."""
    from pipeline.stages import opencl_runtime, tvm_build
    from pipeline.tvm.library import elf_info, library_modules

    ensure_file(f"/usr/lib/{platform.machine()}-linux-gnu/libOpenCL.so.1", "ocl-icd-libopencl1", progress,
                "running OpenCL kernels")
    ensure_file("/etc/OpenCL/vendors/pocl.icd", "pocl-opencl-icd", progress, "a CPU OpenCL to run GPU kernels on")
    ensure_file("/usr/include/CL/cl.h", "opencl-headers", progress, "building the OpenCL runtime")
    compiler = Path(ensure_tool("g++", "g++", progress)).name
    import tvm

    site = Path(tvm.__file__).parent.parent
    sidecar_dir = work / "opencl-runtime"
    sidecar_dir.mkdir()
    progress.log(f"  building our OpenCL runtime for this machine ({platform.machine()})")
    opencl_runtime.run({"source": opencl_runtime.SOURCE, "libtvm_runtime": site / "tvm" / "lib" / "libtvm_runtime.so",
                        "libtvm_ffi": site / "tvm_ffi" / "lib" / "libtvm_ffi.so"},
                       opencl_runtime.Config(arch=platform.machine(), compiler=compiler, compiler_version=""),
                       sidecar_dir, progress)
    pocl = os.environ | {"XC_OPENCL_PLATFORM": SOFTWARE_OPENCL_PLATFORM, "TF_CPP_MIN_LOG_LEVEL": "2"}
    rows = []
    for art in artifacts:
        fp16 = art["precision"] == "fp16"
        # fp16 kernels need cl_khr_fp16: Intel's CPU OpenCL has it, POCL does not
        env = os.environ | ensure_intel_opencl(cache_dir, progress) | {"TF_CPP_MIN_LOG_LEVEL": "2"} if fp16 else pocl
        tolerance = FP16_RELATIVE_TOLERANCE if fp16 else OPENCL_RELATIVE_TOLERANCE
        row = {"file": art["file"], "runtime": "tvm", "precision": art["precision"], "device": "gpu", "n": n,
               "emulated_core": "", "emulated_seconds": 0.0}
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
        twin = work / f"twin-{Path(art['file']).stem}"
        twin.mkdir()
        spec = manifest["config"]["target"]["tvm"]["gpu"]
        tvm_build.run({"tflite": build_dir / art["source_tflite"]},
                      tvm_build.Config(kind=art["kind"], file_name="twin.so", target=canonical_json(spec),
                                       host=canonical_json({"kind": "llvm"}), host_cpu="", linker="native",
                                       linker_version="", arch=platform.machine()), twin, Progress(quiet=True))
        theirs = [(k, b) for k, b in library_modules(build_dir / art["file"]) if k != "_lib"]
        ours = [(k, b) for k, b in library_modules(twin / "twin.so") if k != "_lib"]
        row["identical_modules"] = [k for (k, b), (k2, b2) in zip(theirs, ours) if k == k2 and b == b2]
        if [k for k, _ in theirs] != row["identical_modules"] or len(theirs) != len(ours):
            problems.append(f"the x86-host twin differs in {sorted({k for k, _ in theirs} - set(row['identical_modules']))}")
        # the twin on OpenCL, and LiteRT on the fp32 TFLite file it came from, on the same images
        io = json.loads((twin / "tvm.json").read_text())["io"]
        twin_art = art | {"file": str(twin / "twin.so"), "io": io,
                          "opencl_runtime": {"file": str(sidecar_dir / opencl_runtime.FILE_NAME)}}
        progress.log(f"  {art['file']}: running the twin on {env['XC_OPENCL_PLATFORM']} on {n} eval images")
        code, stderr, seconds = _run(child_command(build_dir, twin_art, 1, ONE_PASS, n, work / "gpu.json",
                                                   save_logits=work / "gpu.npy"), env)
        row["emulated_seconds"] = round(seconds, 1)
        litert = next((a for a in manifest["artifacts"] if a["file"] == art["source_tflite"]), None)
        if code:
            problems.append(f"OpenCL run failed: {_outcome(code, stderr)}")
        elif litert is None:
            problems.append(f"{art['source_tflite']} is not in the build: add tflite-fp32 to the artifacts")
        else:
            stats = json.loads((work / "gpu.json").read_text()).get("opencl") or {}
            row["opencl"] = stats
            code, stderr, _ = _run(child_command(build_dir, litert, 1, ONE_PASS, n, work / "litert.json",
                                                 save_logits=work / "litert.npy"), env)
            if code:
                problems.append(f"LiteRT run failed: {_outcome(code, stderr)}")
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


def _verify_litert_gpu(build_dir: Path, artifacts: list[dict], reference: np.ndarray, min_agreement: float, n: int,
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
        code, stderr, seconds = _run(child_command(build_dir, art, 1, ONE_PASS, n, out, save_logits=logits), env)
        row = {"file": art["file"], "runtime": "litert", "precision": art["precision"], "device": "gpu", "n": n,
               "emulated_core": "lavapipe", "emulated_seconds": round(seconds, 1)}
        failure = _outcome(code, stderr)
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
