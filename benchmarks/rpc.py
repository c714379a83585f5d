"""Benchmark TVM artifacts on boards through a TVM RPC tracker (the device-farm path).

Each artifact asks the tracker for a session under KEY, so several boards registered under one key
are used as TVM uses them. Latency comes from TVM's time_evaluator on the board; accuracy from the
eval set run remotely. Peak RSS cannot be read over RPC and is reported as null.
"""
from __future__ import annotations

import datetime
import gc
import math
import os
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from benchmarks.metrics import accuracy, latency_stats
from benchmarks.errors import BenchError
from benchmarks.manifest import check_hashes, load_manifest
from benchmarks.run import SCHEMA_VERSION, Budget


def parse_tracker(text: str) -> tuple[str, int]:
    """RPC=host:port of a TVM RPC tracker (benchmarks and `make tune` alike), or one line naming it."""
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise BenchError(f"RPC={text!r} is not host:port (e.g. 127.0.0.1:9190)")
    return host, int(port)


def _measure_remote(remote, build_dir: Path, art: dict, inputs, data, labels, budget: Budget, key: str) -> dict:
    from benchmarks.runtimes import TvmSession, library_weights, run_all

    dev = remote.cl(0) if art["device"] == "gpu" else remote.cpu(0)
    start = time.perf_counter()
    remote.upload(str(build_dir / art["file"]))
    weights = library_weights(build_dir / art["file"])           # sent to the device's memory once
    session = TvmSession(remote.load_module(art["file"]), dev, art["io"], f"tvm rpc {key}", weights)
    init_ms = (time.perf_counter() - start) * 1e3
    start = time.perf_counter()
    session.run(inputs[:1])
    first_ms = (time.perf_counter() - start) * 1e3
    repeat = max(budget.min_runs, math.ceil(budget.min_seconds * 1e3 / max(first_ms, 1e-3)))
    repeat = max(1, min(repeat, int(budget.max_seconds * 1e3 / max(first_ms, 1e-3))))
    timer = session.vm.time_evaluator("main", dev, number=1, repeat=repeat)
    samples = [r * 1e3 for r in timer(session.to_device(inputs[:1]), *session.weights).results]
    logits = run_all(session, inputs, seconds=budget.accuracy_seconds)
    return {"file": art["file"], "runtime": "tvm", "precision": art["precision"], "device": art["device"],
            "format": "tvm", "bytes": art["bytes"], "sha256": art["sha256"], "latency_ms": latency_stats(samples),
            "samples_ms": samples, "init_ms": init_ms, "first_ms": first_ms, "peak_rss_mb": None,
            "rss_growth_mb": None, "provider": session.provider,
            "accuracy": accuracy(logits, data["logits"][:len(logits)],
                                 None if labels is None else labels[:len(logits)])}


def run_over_rpc(build_dir: Path, tracker: str, key: str, budget: Budget = Budget(), eval_n: int = 0,
                 log=print, session_timeout: float = 600) -> dict:
    import tvm
    from tvm import rpc

    host, port = parse_tracker(tracker)
    manifest = load_manifest(build_dir)
    artifacts = [a for a in manifest["artifacts"] if a["format"] == "tvm"]
    if not artifacts:
        raise BenchError(f"{build_dir}/manifest.json lists no TVM artifacts; the RPC path runs TVM libraries only")
    check_hashes(build_dir, artifacts)
    data = np.load(build_dir / "eval" / "eval.npz")
    inputs = data["inputs"] if not eval_n else data["inputs"][:eval_n]
    labels = data["labels"][:len(inputs)] if "labels" in data.files else None
    try:
        client = rpc.connect_tracker(host, port)
    except (OSError, tvm.error.TVMError) as exc:
        raise BenchError(f"cannot reach the TVM RPC tracker at {tracker}: {exc}") from None
    results, failed = [], []
    for art in artifacts:
        log(f"  {art['file']}: requesting a '{key}' device from the tracker at {tracker}")
        try:
            remote = client.request(key, priority=1, session_timeout=session_timeout, max_retry=3)
        except (RuntimeError, tvm.error.TVMError) as exc:
            raise BenchError(f"the tracker at {tracker} has no free device under key {key!r}: {exc}") from None
        try:
            results.append(_measure_remote(remote, build_dir, art, inputs, data, labels, budget, key))
        except (RuntimeError, tvm.error.TVMError) as exc:
            failed.append({"file": art["file"], "reason": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"})
            log(f"  {art['file']}: FAILED ({failed[-1]['reason']})")
        finally:
            del remote                  # hand the board back to the tracker before the next request
            gc.collect()
        if results and results[-1]["file"] == art["file"]:
            log(f"  {art['file']}: p50 {results[-1]['latency_ms']['p50']:.2f} ms over {results[-1]['latency_ms']['n']} runs")
    now = datetime.datetime.now(datetime.timezone.utc)
    unknown = {"temperature_c": None, "throttled": None, "freq_mhz": None}
    return {
        "schema": SCHEMA_VERSION, "run_id": now.strftime("%Y%m%dT%H%M%SZ") + f"-rpc{os.getpid()}",
        "created": now.isoformat(timespec="seconds"), "target": manifest["target"], "model": manifest["model"],
        "where": "rpc", "tracker": tracker, "key": key,
        "device": {"cpu_model": f"TVM RPC device '{key}'", "cores": None, "threads": 0, "governor": None,
                   "before": unknown, "after": unknown, "throttled": False, "throttle_reasons": []},
        "budget": asdict(budget),
        "eval": {"n": len(inputs), "float_top1": manifest["eval"].get("float_top1"), "labels": labels is not None,
                 **({"class_names": manifest["eval"]["class_names"]} if manifest["eval"].get("class_names") else {})},
        "results": results, "skipped": [], "failed": failed,
    }
