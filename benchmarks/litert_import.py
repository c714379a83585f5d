"""LiteRT's own `benchmark_model`, run on a phone over adb, brought into our results: its printed output parsed
into one result of benchmarks/results.schema.json (`where: "benchmark_model"`). It gives count, min, max, mean and
std of the timed runs (newer builds also a median, our p50): p90/p99 are null, and `latency_ms.summary` says so.
Random inputs: accuracy is null. Memory is the tool's periodic peak (`--report_peak_memory_footprint=true`).
The log must name one of the build's TFLite files with its size; `sha256=` (the phone's `sha256sum`) ties the
result to the manifest's bytes, and only then does the gate judge its memory (docs/benchmarks.md, On a phone).
"""
from __future__ import annotations

import hashlib
import re
from datetime import datetime, timezone
from pathlib import Path

from benchmarks.errors import BenchError
from benchmarks.manifest import load_manifest

STAT = re.compile(r"count=\d+(?: \w+=[\d.e+-]+)+")          # count=50 first=.. min=.. avg=.. std=.. [p5= median= p95=]
TIMINGS = re.compile(r"Inference timings in us: Init: ([\d.]+), First inference: ([\d.]+)")
PEAK = re.compile(r"Overall peak memory footprint \(MB\) via periodic monitoring: ([\d.]+)")
GRAPH = re.compile(r"Graph: \[([^\]]+)\]")
SIZE = re.compile(r"The input model file size \(MB\): ([\d.]+)")
THREADS = re.compile(r"(?:#threads used for CPU inference|Num threads): \[(-?\d+)\]")
GPU = re.compile(r"Use gpu\s*: \[1\]|Created TensorFlow Lite delegate for GPU")


def _stat(line: str) -> dict[str, float]:
    return {k: float(v) for k, v in (pair.split("=") for pair in line.split())}


def parse(text: str, where: str) -> dict:
    """The figures of one benchmark_model run: the last count= line is the timed runs, the first the warm-up.
    Newer builds add p5, median and p95 to it: the median is then our p50."""
    stats = [_stat(m.group(0)) for m in STAT.finditer(text)]
    timings = TIMINGS.search(text)
    graph = GRAPH.search(text)
    timed = stats[-1] if len(stats) >= 2 else {}
    if not {"count", "min", "max", "avg", "std"} <= set(timed) or not timings or not graph:
        missing = [name for name, ok in (("warm-up and timed count= lines", timed), ("'Inference timings in us'",
                   timings), ("'Graph: [...]'", graph)) if not ok]
        raise BenchError(f"{where} is not benchmark_model output: no {', no '.join(missing) or 'min/max/avg/std'} "
                         f"(run benchmark_model --graph=... and save all it prints: `adb shell ... > log.txt 2>&1`)")
    size, peak, threads = SIZE.search(text), PEAK.search(text), THREADS.search(text)
    return {"graph": graph.group(1), "size_mb": float(size.group(1)) if size else None,
            "warmup_n": int(stats[0]["count"]), "n": int(timed["count"]), "mean": timed["avg"] / 1e3,
            "std": timed["std"] / 1e3, "min": timed["min"] / 1e3, "max": timed["max"] / 1e3,
            "p50": timed["median"] / 1e3 if "median" in timed else None,
            "init_ms": float(timings.group(1)) / 1e3, "first_ms": float(timings.group(2)) / 1e3,
            "peak_rss_mb": float(peak.group(1)) if peak else None,
            "threads": int(threads.group(1)) if threads else 0, "gpu": bool(GPU.search(text))}


def import_log(build_dir: Path, log: Path, phone: str = "", sha256: str = "") -> dict:
    """One results document from a saved benchmark_model log of one of the build's TFLite artifacts."""
    try:
        text = log.read_text(errors="replace")
    except OSError as exc:
        raise BenchError(f"cannot read the benchmark_model log {log}: {exc.strerror}") from None
    run = parse(text, str(log))
    manifest = load_manifest(build_dir)
    tflite = {a["file"]: a for a in manifest["artifacts"] if a["format"] == "tflite"}
    name = Path(run["graph"]).name
    if name not in tflite:
        raise BenchError(f"{log}: benchmark_model ran {name}, which is not a TFLite artifact of {build_dir} "
                         f"(it has {', '.join(tflite) or 'none'})")
    art = tflite[name]
    # benchmark_model prints bytes / 1e6 with 6 significant digits
    if run["size_mb"] is not None and abs(run["size_mb"] - art["bytes"] / 1e6) > 1e-5 * art["bytes"] / 1e6:
        raise BenchError(f"{log}: the phone's {name} is {run['size_mb']} MB; the build's is "
                         f"{art['bytes'] / 1e6:.6g} MB: not the same file (push build/{build_dir.name}/{name} again)")
    if sha256 and sha256.lower() != art["sha256"]:
        raise BenchError(f"sha256={sha256} is not the manifest's sha256 of {name} ({art['sha256']}): the phone ran "
                         f"another file")
    now = datetime.now(timezone.utc)
    result = {
        "file": name, "runtime": "litert", "precision": art["precision"], "device": "gpu" if run["gpu"] else "cpu",
        "latency_ms": {"n": run["n"], "mean": run["mean"], "std": run["std"], "min": run["min"], "p50": run["p50"],
                       "p90": None, "p99": None, "max": run["max"],
                       "summary": "benchmark_model: mean, std, min, max" + (", median" if run["p50"] is not None
                                  else "") + " of the timed runs; no p90/p99"},
        "init_ms": run["init_ms"], "first_ms": run["first_ms"], "peak_rss_mb": run["peak_rss_mb"],
        "bytes": art["bytes"], "accuracy": None, "provider": "LiteRT benchmark_model (on the device)",
        "verified_runtime": False,
        "runtime_note": "LiteRT's benchmark_model binary on the device: its LiteRT build, not the ai-edge-litert "
                        "wheel make verify proves; random inputs, so no accuracy",
    } | ({"sha256": art["sha256"]} if sha256 else {})
    return {
        "schema": 1, "run_id": now.strftime("%Y%m%dT%H%M%SZ") + "-benchmark_model", "created":
        now.isoformat(timespec="seconds"), "target": manifest["target"], "where": "benchmark_model",
        "imported": {"tool": "benchmark_model", "log": log.name, "log_sha256": hashlib.sha256(text.encode()).hexdigest(),
                     "sha256_checked": bool(sha256)},
        "device": {"cpu_model": phone or "a phone (benchmark_model does not say which; give PHONE=)",
                   "cores": None, "threads": run["threads"], "governor": None, "throttled": None,
                   "before": {"temperature_c": None, "throttled": None, "freq_mhz": None},
                   "after": {"temperature_c": None, "throttled": None, "freq_mhz": None}},
        "budget": {"warmup": run["warmup_n"], "min_runs": run["n"], "min_seconds": None, "max_seconds": None},
        "eval": {"n": 0}, "results": [result], "skipped": [], "failed": [],
    }
