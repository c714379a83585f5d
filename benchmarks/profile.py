"""Per-operator profile of a TVM library: where one inference's time goes, function by function.

    python -m benchmarks.profile build/host [--file xception_fp32.so] [--threads 2] [--runs 5] [--json out.json]

TVM 0.27's Relax VM has no profiler of its own; its instrumentation hook is called before and after
every call instruction, so each fused TIR function (and VM builtin) is timed there. CPU kernels
run synchronously, so the wall time between the two calls is the kernel's. Runs on the device
(TVM runtime and numpy only). The figures are medians over --runs inferences after one warm-up.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.files import write_text_atomic
from benchmarks.errors import BenchError, PipelineError, fail
from benchmarks.manifest import check_hashes, load_manifest
from benchmarks.profile_report import format_profile
from benchmarks.runtimes import TvmSession


def profile_session(session: TvmSession, x: np.ndarray, runs: int = 5) -> dict:
    """Median per-inference time of every function the VM calls, and of the whole inference."""
    from tvm.runtime.vm import VMInstrumentReturnKind

    started: dict[str, list[float]] = {}
    current: dict[str, float] = {}
    calls: dict[str, int] = {}

    def instrument(_func, symbol, before, _ret, *_args):
        now = time.perf_counter()
        if before:
            started.setdefault(symbol, []).append(now)
        else:
            current[symbol] = current.get(symbol, 0.0) + now - started[symbol].pop()
            calls[symbol] = calls.get(symbol, 0) + 1
        return VMInstrumentReturnKind.NO_OP

    data = session.to_device(x)
    session.main(data, *session.weights)                # warm-up, not instrumented
    session.vm.set_instrument(instrument)
    per_run: list[dict[str, float]] = []
    totals = []
    try:
        for _ in range(runs):
            current.clear()
            calls.clear()
            begin = time.perf_counter()
            session.main(data, *session.weights)
            totals.append(time.perf_counter() - begin)
            per_run.append(dict(current))
        counted = dict(calls)
    finally:
        session.vm.set_instrument(lambda *_: VMInstrumentReturnKind.NO_OP)
    return summarize(per_run, totals, counted)


def summarize(per_run: list[dict[str, float]], totals: list[float], calls: dict[str, int]) -> dict:
    """Per-function medians (ms) over the runs, and the whole inference's median.

    ``instrumented_ms`` is the median over runs of the time spent inside functions, not the sum of the
    per-function medians: a delay that lands on a different function in each run raises every function's median,
    and their sum could then exceed the whole. Within one run the parts never exceed the whole, so neither do
    the medians of the two.
    """
    names = set().union(*per_run)
    rows = [{"name": n, "calls": calls.get(n, 0), "ms": 1e3 * statistics.median(r.get(n, 0.0) for r in per_run)}
            for n in names]
    total_ms = 1e3 * statistics.median(totals)
    for row in rows:
        row["share"] = row["ms"] / total_ms if total_ms else 0.0
    rows.sort(key=lambda r: -r["ms"])
    return {"total_ms": total_ms, "runs": len(totals), "functions": rows,
            "instrumented_ms": 1e3 * statistics.median(sum(r.values()) for r in per_run)}


def profile_artifact(build_dir: Path, art: dict, threads: int, runs: int) -> dict:
    session = TvmSession.load(build_dir / art["file"], threads, art.get("io"))
    x = np.load(build_dir / "eval" / "eval.npz")["inputs"][:1]
    return profile_session(session, x, runs) | {"file": art["file"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile", description=__doc__.splitlines()[0])
    parser.add_argument("build_dir", type=Path, help="a folder made by make compile (build/<target>)")
    parser.add_argument("--file", action="append", help="only this TVM library (repeatable; default: all CPU ones)")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--json", type=Path, help="also write the full profile here")
    args = parser.parse_args(argv)
    try:
        if args.runs < 1:
            raise BenchError(f"--runs {args.runs} must be 1 or more")
        manifest = load_manifest(args.build_dir)
        arts = [a for a in manifest["artifacts"] if a["format"] == "tvm" and a["device"] == "cpu"
                and (not args.file or a["file"] in args.file)]
        if not arts:
            raise BenchError(f"{args.build_dir}: no TVM CPU library" + (f" named {', '.join(args.file)}" if args.file else ""))
        check_hashes(args.build_dir, arts)
        profiles = [profile_artifact(args.build_dir, a, args.threads, args.runs) for a in arts]
        if args.json:
            write_text_atomic(args.json, json.dumps(profiles, indent=1))
    except (PipelineError, OSError) as exc:
        return fail(exc)
    for p in profiles:
        print(format_profile(p, p["file"], args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
