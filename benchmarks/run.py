"""Device-side benchmark runner: ``python -m benchmarks.run build/<target>``.

Needs only numpy and the runtimes it finds (LiteRT or tflite-runtime, ONNX Runtime, the TVM
runtime); never imports TensorFlow, Keras or the ``pipeline`` package, so ``build/<target>/`` plus
``benchmarks/`` copied to a board is enough. Each artifact runs in its own subprocess so memory
figures are per artifact. Results: ``build/<target>/bench/<run-id>.json`` (benchmarks/results.schema.json).

Exit codes: 0 ok; 2 bad input (no manifest, tampered artifact, bad option); 3 an artifact failed.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from benchmarks import device
from benchmarks.errors import BenchError, PipelineError, fail
from benchmarks.files import write_text_atomic
from benchmarks.manifest import check_hashes, load_manifest
from benchmarks.metrics import accuracy, latency_stats
from benchmarks.text import results_summary

SCHEMA_VERSION = 1
MAX_SAMPLES_KEPT = 2000      # samples_ms keeps at most this many (evenly strided) for the plots


@dataclass(frozen=True)
class Budget:
    warmup: int = 3          # runs after the first inference, not measured
    min_runs: int = 10
    min_seconds: float = 2.0
    max_seconds: float = 30.0
    accuracy_seconds: float = 120.0   # the accuracy pass stops after this long (n is recorded)

    def __post_init__(self):
        """Limits are checked where a budget is made, whoever makes it (CLI, make, runner, tests)."""
        rules = (("warmup", "WARMUP / --warmup", self.warmup >= 0, ">= 0"),
                 ("min_runs", "MIN_RUNS / --min-runs", self.min_runs >= 1, ">= 1"),
                 ("min_seconds", "MIN_SECONDS / --min-seconds", self.min_seconds >= 0, ">= 0"),
                 ("max_seconds", "MAX_SECONDS / --max-seconds", self.max_seconds > 0, "> 0"),
                 ("accuracy_seconds", "ACC_SECONDS / --accuracy-seconds", self.accuracy_seconds > 0, "> 0"))
        for field, names, ok, rule in rules:
            if not ok:
                raise BenchError(f"latency budget: {names} = {getattr(self, field)!r} must be {rule}")


# One warm-up-free run and the accuracy pass over every image asked for: what verification and the
# compile-time check under emulation need (latency under qemu means nothing).
ONE_PASS = Budget(warmup=0, min_runs=1, min_seconds=0.0, max_seconds=0.001, accuracy_seconds=1e9)


# -- one artifact (child process) -------------------------------------------------------------------
def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _mb(kb: int | None) -> float | None:
    return None if kb is None else round(kb / 1024.0, 1)


def measure(path: Path, runtime: str, io: dict | None, eval_file: Path, threads: int, budget: Budget,
            eval_n: int, save_logits: Path | None = None, opencl_runtime: Path | None = None,
            device_kind: str = "cpu") -> dict:
    from benchmarks.runtimes import open_session, opencl_stats, run_all, software_vulkan

    data = np.load(eval_file)
    inputs = data["inputs"] if not eval_n else data["inputs"][:eval_n]
    x = inputs[:1]
    rss_start = _status_kb("VmRSS")
    start = time.perf_counter()
    session = open_session(path, runtime, threads, io, opencl_runtime, device_kind)
    init_ms = (time.perf_counter() - start) * 1e3
    start = time.perf_counter()
    session.run(x)
    first_ms = (time.perf_counter() - start) * 1e3
    for _ in range(budget.warmup):
        session.run(x)
    rss_warm = _status_kb("VmRSS")
    samples = []
    began = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        session.run(x)
        t1 = time.perf_counter()
        samples.append((t1 - t0) * 1e3)
        elapsed = t1 - began
        if elapsed >= budget.max_seconds or (len(samples) >= budget.min_runs and elapsed >= budget.min_seconds):
            break
    rss_steady = _status_kb("VmRSS")
    logits = run_all(session, inputs, seconds=budget.accuracy_seconds)
    if save_logits is not None:
        np.save(save_logits, logits)
    labels = data["labels"][:len(logits)] if "labels" in data.files else None
    provider = getattr(session, "provider", runtime)
    return {
        "latency_ms": latency_stats(samples),
        "samples_ms": [round(s, 4) for s in samples[::max(1, -(-len(samples) // MAX_SAMPLES_KEPT))]],
        "init_ms": init_ms,
        "first_ms": first_ms,
        "peak_rss_mb": _mb(_status_kb("VmHWM")),
        "rss_start_mb": _mb(rss_start),
        "rss_growth_mb": _mb(rss_steady - rss_warm) if rss_steady is not None and rss_warm is not None else None,
        "accuracy": accuracy(logits, data["logits"][:len(logits)], labels),
        "provider": provider,
        **runtime_provenance(provider),
        "measured_on": device.this_cpu(),
        "cpus_allowed": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
    } | ({"opencl": opencl_stats()} if opencl_runtime is not None else {}) | (
        {"vulkan": {"fully_accelerated": session.accelerated, "software": software_vulkan()}}
        if runtime == "litert" and device_kind == "gpu" else {})


# make verify proves the TFLite artifacts bit-exact with ai-edge-litert (the compiler's LiteRT); tflite-runtime,
# accepted on boards that have nothing else, has its own int8 kernels: on the reference Xception, 943 of 3,600
# int8 outputs came out one quantization step away from LiteRT's.
UNVERIFIED_PROVIDERS = {
    "tflite-runtime": "tflite-runtime, not ai-edge-litert: not the runtime `make verify` proves bit-exact; its int8 "
                      "kernels can round differently (reference Xception: 943 of 3,600 int8 outputs 1 step off "
                      "LiteRT's); install ai-edge-litert on the board for the proven numbers",
}


def runtime_provenance(provider: str) -> dict:
    """Whether the package that ran an artifact is the one `make verify` proved, and if not, why that matters."""
    note = UNVERIFIED_PROVIDERS.get(provider)
    return {"verified_runtime": note is None} | ({"runtime_note": note} if note else {})


# -- the whole build folder (parent process) ----------------------------------------------------------
def skip_reason(art: dict) -> str | None:
    from benchmarks.runtimes import opencl_driver, runtime_available, vulkan_driver

    if art["device"] == "gpu" and art["runtime"] == "litert" and vulkan_driver():
        return f"meant for LiteRT's GPU accelerator (WebGPU over Vulkan): {vulkan_driver()}"
    if art["format"] == "tvm" and art.get("arch") and art["arch"] != platform.machine():
        return f"built for {art['arch']}, this machine is {platform.machine()}"
    if art["device"] == "gpu" and opencl_driver():
        return f"meant for the GPU over OpenCL: {opencl_driver()}"
    if not runtime_available(art["runtime"]):
        return f"runtime {art['runtime']} is not installed here"
    return None


def child_command(build_dir: Path, art: dict, threads: int, budget: Budget, eval_n: int, out: Path,
                  python: list[str] | None = None, save_logits: Path | None = None) -> list[str]:
    """The command that measures one artifact (``python`` may be an emulator plus a guest Python)."""
    return [*(python or [sys.executable]), "-m", "benchmarks.run", "--child", str(build_dir / art["file"]),
            "--runtime", art["runtime"], "--io", json.dumps(art.get("io")), "--threads", str(threads),
            "--budget", json.dumps(asdict(budget)), "--eval-n", str(eval_n), "--out", str(out),
            *(["--save-logits", str(save_logits)] if save_logits else []),
            *(["--opencl-runtime", str(build_dir / art["opencl_runtime"]["file"])] if "opencl_runtime" in art else []),
            *(["--device", art["device"]] if art.get("device") == "gpu" else []),
            str(build_dir)]


def run_artifact(build_dir: Path, art: dict, threads: int, budget: Budget, eval_n: int,
                 python: list[str] | None = None) -> dict:
    """Measure one artifact in a fresh Python process (``python``: e.g. an emulator plus this Python);
    returns its result or raises RuntimeError."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        cmd = child_command(build_dir, art, threads, budget, eval_n, out, python)
        env = os.environ | {"TF_CPP_MIN_LOG_LEVEL": "2"}
        done = subprocess.run(cmd, cwd=Path(__file__).resolve().parent.parent, capture_output=True, text=True,
                              env=env)
        if done.returncode != 0 or not out.is_file():
            if done.returncode < 0:
                why = f"killed by {signal.Signals(-done.returncode).name}"
            else:
                why = f"exit code {done.returncode}"
            tail = " | ".join(done.stderr.strip().splitlines()[-3:])
            raise RuntimeError(f"{why}: {tail}" if tail else why)
        return json.loads(out.read_text())


def run_build(build_dir: Path, threads: int = 0, budget: Budget = Budget(), eval_n: int = 0,
              only: list[str] | None = None, log=print, python: list[str] | None = None) -> dict:
    """Measure every artifact of a build folder, each in its own process (``python``: the command that
    runs the child instead of this Python, e.g. ``qemu-x86_64 -cpu Haswell python``)."""
    if threads < 0:
        raise BenchError(f"THREADS (--threads) = {threads}: must be 0 (the target's bench.threads) or a positive "
                         f"number of threads")
    if eval_n < 0:
        raise BenchError(f"BENCH_EVAL_N (--eval-n) = {eval_n}: must be 0 (the whole eval set) or a positive "
                         f"number of images")
    manifest = load_manifest(build_dir)
    artifacts = [a for a in manifest["artifacts"] if not only or a["file"] in only]
    if only and len(artifacts) != len(set(only)):
        known = ", ".join(a["file"] for a in manifest["artifacts"])
        raise BenchError(f"--only names {sorted(set(only) - {a['file'] for a in artifacts})}, not in the manifest; "
                         f"artifacts: {known}")
    absent = [] if only else [a for a in artifacts if not (build_dir / a["file"]).exists()]
    if absent and len(absent) == len(artifacts):
        raise BenchError(f"none of the manifest's artifacts is in {build_dir}; copy at least one "
                         f"(e.g. {artifacts[0]['file']}) with manifest.json and eval/")
    artifacts = [a for a in artifacts if a not in absent]
    check_hashes(build_dir, artifacts)
    target = manifest.get("config", {}).get("target", {})
    cluster = target.get("cpu", {}).get("cpus") or []
    if not threads:
        threads = target.get("bench", {}).get("threads") or len(cluster) or os.cpu_count() or 1
    with device.pinned(cluster, log) as cpus:
        if cpus:
            log(f"  pinned to the {target['bench'].get('cluster', 'bench')} cluster: CPUs {cpus}")
        results = _measure_all(build_dir, manifest, artifacts, absent, threads, budget, eval_n, python, log)
    results["device"]["pinned_cpus"] = cpus
    return results


def _measure_all(build_dir: Path, manifest: dict, artifacts: list[dict], absent: list[dict], threads: int,
                 budget: Budget, eval_n: int, python: list[str] | None, log) -> dict:
    before = device.snapshot()
    results, failed = [], []
    # a partial copy (one artifact copied to a board): what is there is measured, the rest is listed as skipped
    skipped = [{"file": a["file"], "reason": "not in this folder (a partial copy); the others are measured"}
               for a in absent]
    for entry in skipped:
        log(f"  {entry['file']}: skipped ({entry['reason']})")
    for art in artifacts:
        reason = skip_reason(art)
        if reason:
            skipped.append({"file": art["file"], "reason": reason})
            log(f"  {art['file']}: skipped ({reason})")
            continue
        log(f"  {art['file']}: measuring ({art['runtime']}, {threads} threads)")
        try:
            measured = run_artifact(build_dir, art, threads, budget, eval_n, python)
        except RuntimeError as exc:
            failed.append({"file": art["file"], "reason": str(exc)})
            log(f"  {art['file']}: FAILED ({exc})")
            continue
        results.append({"file": art["file"], "runtime": art["runtime"], "precision": art["precision"],
                        "device": art["device"], "format": art["format"], "bytes": art["bytes"],
                        "sha256": art["sha256"]} | measured)
    after = device.snapshot()
    reasons = device.throttle_reasons(before["throttled"], after["throttled"])
    now = datetime.datetime.now(datetime.timezone.utc)
    return {
        "schema": SCHEMA_VERSION,
        "run_id": now.strftime("%Y%m%dT%H%M%SZ") + f"-{os.getpid()}",
        "created": now.isoformat(timespec="seconds"),
        "target": manifest["target"],
        "model": manifest["model"],
        "where": "local",
        "device": device.describe(threads) | {"before": before, "after": after, "throttled": bool(reasons),
                                             "throttle_reasons": reasons},
        "budget": asdict(budget),
        "eval": {"n": (min(eval_n, manifest["eval"]["n"]) if eval_n else manifest["eval"]["n"]),
                 "float_top1": manifest["eval"].get("float_top1"), "labels": manifest["eval"]["labels"],
                 **({"class_names": manifest["eval"]["class_names"]} if manifest["eval"].get("class_names") else {})},
        "results": results,
        "skipped": skipped,
        "failed": failed,
    }


def write_results(results: dict, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(path, json.dumps(results, indent=1) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    p.add_argument("build_dir", type=Path, help="a compiled target folder, e.g. build/host")
    p.add_argument("--threads", type=int, default=0, help="inference threads (default: the target's bench.threads)")
    p.add_argument("--warmup", type=int, default=Budget.warmup)
    p.add_argument("--min-runs", type=int, default=Budget.min_runs)
    p.add_argument("--min-seconds", type=float, default=Budget.min_seconds)
    p.add_argument("--max-seconds", type=float, default=Budget.max_seconds)
    p.add_argument("--eval-n", type=int, default=0, help="eval images for accuracy (default 0 = all)")
    p.add_argument("--accuracy-seconds", type=float, default=Budget.accuracy_seconds,
                   help="stop an artifact's accuracy pass after this long (default 120; n is recorded)")
    p.add_argument("--only", action="append", help="measure only this artifact file (repeatable)")
    p.add_argument("--out", type=Path, help="results file (default BUILD_DIR/bench/<run-id>.json)")
    p.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--runtime", help=argparse.SUPPRESS)
    p.add_argument("--io", help=argparse.SUPPRESS)
    p.add_argument("--budget", help=argparse.SUPPRESS)
    p.add_argument("--save-logits", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--opencl-runtime", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        result = measure(args.child, args.runtime, json.loads(args.io), args.build_dir / "eval" / "eval.npz",
                         args.threads, Budget(**json.loads(args.budget)), args.eval_n, args.save_logits,
                         args.opencl_runtime, args.device)
        write_results(result, args.out)
        if os.environ.get("XCEPTION_EDGE_MAPS"):       # make estimate: where each library was mapped (attribution)
            Path(os.environ["XCEPTION_EDGE_MAPS"]).write_text(Path("/proc/self/maps").read_text())
        return 0
    try:
        budget = Budget(args.warmup, args.min_runs, args.min_seconds, args.max_seconds, args.accuracy_seconds)
        log = lambda message: print(message, file=sys.stderr, flush=True)
        results = run_build(args.build_dir, args.threads, budget, args.eval_n, args.only, log)
        path = write_results(results, args.out or args.build_dir / "bench" / f"{results['run_id']}.json")
    except (PipelineError, OSError) as exc:
        return fail(exc)
    print(results_summary(results, path))
    return 3 if results["failed"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
