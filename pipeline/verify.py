"""`make verify TARGET=rpi4`: every ARM CPU artifact run under qemu-user as the target's core, with the benchmark
runner, against the host run of the same artifact (a TVM library: its twin built for this machine from the same
TFLite file, through the stage cache). Must hold: LiteRT and TVM int8 bit-exact, fp32 within 1e-5 relative; ONNX
Runtime int8 (its kernels differ by CPU) meets the model's agreement gate (docs/verification.md). GPU artifacts:
verify_gpu.py.
"""
from __future__ import annotations

import concurrent.futures
import datetime
import json
import os
import platform
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.device import this_cpu
from benchmarks.gate import GATES_FILE, load_thresholds
from benchmarks.manifest import check_hashes, load_manifest, model_gates_key
from benchmarks.run import ONE_PASS, child_command, write_results
from benchmarks.runtimes import RUNTIMES
from pipeline.cache import canonical_json
from pipeline.emulation import CORES, ensure_emulator
from pipeline.errors import InputError, MissingDependencyError
from pipeline.progress import Progress
from pipeline.stage_runner import StageRunner
from pipeline.stages import tvm_build
from pipeline.targets import Target, available_targets, load_target
from pipeline.verify_gpu import verify_litert_gpu, verify_opencl
from pipeline.verify_runs import outcome, row as verify_row, run_child
from pipeline.versions import tool_versions

FP32_RELATIVE_TOLERANCE = 1e-5
VERIFIED_RUNTIMES = RUNTIMES                         # every runtime a CPU artifact can have


def _missing_isa(library: Path, core: str) -> str | None:
    """Which instruction set an ARM library uses that the core lacks, when we can tell."""
    from pipeline.tvm.library import aarch64_dot_instructions

    dots = aarch64_dot_instructions(library)
    if dots and "asimddp" not in CORES[core][1].split():
        return (f"killed by SIGILL: {library.name} holds {dots} SDOT/UDOT instructions (ARMv8.2 dot product, "
                f"Linux cpuinfo 'asimddp'), which {core} lacks; build it for a target whose cores have them")
    return None


def host_twin(runner: StageRunner, build_dir: Path, art: dict) -> dict:
    """The same TFLite model compiled by the TVM stage for this machine (cached), as a runner artifact record."""
    from benchmarks.device import cpu_model

    source = build_dir / art["source_tflite"]
    if not source.is_file():
        raise InputError(f"{art['file']}: its source {art['source_tflite']} is not in {build_dir}; "
                         f"add the TFLite kind to the target's artifacts")
    config = tvm_build.Config(kind=art["kind"], file_name="twin.so", target=canonical_json({"kind": "llvm"}),
                              host="null", host_cpu=cpu_model(), linker="native", linker_version="", arch=platform.machine())
    twin = runner.stage(tvm_build, config, {"tflite": source}, f"twin {art['file']}")
    io = json.loads(twin.file("tvm.json").read_text())["io"]
    return art | {"file": str(twin.file("twin.so")), "io": io}


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
        boards = [name for name in available_targets() if load_target(name).arch == "aarch64"]   # the shipped ones
        raise InputError(f"make verify emulates aarch64 boards; target {target.name} is {target.arch} "
                         f"(aarch64 targets: {', '.join(boards)})")
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
    runner = StageRunner(cache_dir, dict(tool_versions()), progress, build_dir.parent / "logs", target.name)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        # the emulated runs (most of the time: Python and each runtime start under qemu) run side by side, one per
        # core of this machine; the host runs and the comparisons follow, artifact by artifact
        workers = max(1, min(len(artifacts), os.cpu_count() or 1))
        progress.log(f"  running {len(artifacts)} artifact(s) under qemu ({core}) on {n} eval images, "
                     f"{workers} at a time")
        with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
            emulated = [pool.submit(run_child, child_command(build_dir, art, threads, ONE_PASS, n, work / f"emu-{i}.json",
                                                        emulator.python(), work / f"emu-{i}.npy"),
                                    emulator.env(core))
                        for i, art in enumerate(artifacts)]
        for i, art in enumerate(artifacts):
            emu_logits, host_logits = work / f"emu-{i}.npy", work / f"host-{i}.npy"
            code, stderr, seconds = emulated[i].result()
            row = verify_row(art, n, core, seconds)
            failure = outcome(code, stderr)
            if failure and "SIGILL" in failure and art["runtime"] == "tvm":
                failure = _missing_isa(build_dir / art["file"], core) or failure
            if art["runtime"] == "litert":
                row["xnnpack"] = "XNNPACK delegate" in stderr
            if failure:
                rows.append(row | {"match": False, "max_difference": None, "detail": failure})
                progress.log(f"  {art['file']}: FAILED under emulation: {failure}")
                continue
            host_art = host_twin(runner, build_dir, art) if art["runtime"] == "tvm" else art
            code, stderr, _ = run_child(child_command(build_dir, host_art, threads, ONE_PASS, n, work / "host.json",
                                                 save_logits=host_logits), os.environ | {"TF_CPP_MIN_LOG_LEVEL": "2"})
            if code:
                rows.append(row | {"match": False, "max_difference": None,
                                   "detail": f"host run failed: {outcome(code, stderr)}"})
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
                rows += verify_litert_gpu(build_dir, litert_gpu, reference, min_agreement, n, work, cache_dir,
                                           progress)
            except MissingDependencyError as exc:       # no lavapipe here: said, not silently passed
                skipped += [{"file": a["file"], "reason": str(exc)} for a in litert_gpu]
        if opencl:
            rows += verify_opencl(build_dir, manifest, opencl, target, n, work, runner, cache_dir, progress)
    now = datetime.datetime.now(datetime.timezone.utc)
    report = {"kind": "verify", "target": target.name, "created": now.isoformat(timespec="seconds"),
              "emulator": {"qemu": emulator.qemu, "sysroot": str(emulator.sysroot), "core": core},
              "host": host_cpu,
              "rows": rows, "skipped": skipped, "passed": bool(rows) and all(r["match"] for r in rows)}
    write_results(report, build_dir / "bench" / f"verify-{now.strftime('%Y%m%dT%H%M%SZ')}.json")
    return report
