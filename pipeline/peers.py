"""Peer comparison on this machine: Xception 299x299 through LiteRT, ONNX Runtime and TVM, one run.

Compiles Xception with random weights (latency does not depend on the weights) for a target that
asks for fp32 and int8 of every runtime, then measures every artifact with the device-side runner
in one run, with the same thread count, and writes a dated Markdown table naming the machine.
"""
from __future__ import annotations

from pathlib import Path

from benchmarks import run
from pipeline.compiler import CompileOptions, compile_target
from pipeline.progress import Progress

PEER_ARTIFACTS = ("tflite-fp32", "tflite-int8", "onnx-fp32", "onnx-int8", "tvm-fp32", "tvm-int8")


def write_peer_target(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    listed = ", ".join(f'"{k}"' for k in PEER_ARTIFACTS)
    (folder / "peers.toml").write_text(
        '# written by `make peers`: every runtime at fp32 and int8 on this machine\n'
        f'description = "this machine, peer comparison"\narch = "x86_64"\nartifacts = [{listed}]\n'
        '[cpu]\ncore = "host"\ncores = 0\n[bench]\nthreads = 0\n[tvm]\ntarget = { kind = "llvm" }\n')
    return folder


def compare(out_dir: Path, cache_dir: Path, threads: int, input_size: int = 299, budget: run.Budget = run.Budget(),
            progress: Progress | None = None) -> tuple[dict, str]:
    progress = progress or Progress()
    targets = write_peer_target(out_dir / "peer-targets")
    compile_target(CompileOptions(target="peers", weights="random", input_size=input_size, num_classes=1000,
                                  calib_n=16, eval_n=8, out_dir=out_dir, cache_dir=cache_dir, targets_dir=targets),
                   progress)
    results = run.run_build(out_dir / "peers", threads, budget, eval_n=8, log=progress.log)
    run.write_results(results, out_dir / "peers" / "bench" / f"{results['run_id']}.json")
    return results, peer_table(results)


def peer_table(results: dict) -> str:
    by = {(r["runtime"], r["precision"]): r for r in results["results"]}
    d = results["device"]
    date = results["created"][:10]
    lines = [f"Xception {results['model']['input_shape'][1]}x{results['model']['input_shape'][2]}, batch 1, "
             f"{d['threads']} threads, one run on {date}: {d['cpu_model']} ({d['cores']} cores), "
             f"{d['platform']}.", "",
             "| runtime | precision | p50 ms | p90 ms | runs | int8 speed-up | vs LiteRT (same precision) | peak RSS MB |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for runtime in ("litert", "onnxruntime", "tvm"):
        for precision in ("fp32", "int8"):
            r = by.get((runtime, precision))
            if r is None:
                continue
            p50 = r["latency_ms"]["p50"]
            fp32 = by.get((runtime, "fp32"))
            speedup = f"{fp32['latency_ms']['p50'] / p50:.2f}x" if precision == "int8" and fp32 else ""
            litert = by.get(("litert", precision))
            ratio = f"{p50 / litert['latency_ms']['p50']:.2f}x" if litert else "-"
            rss = "-" if r["peak_rss_mb"] is None else f"{r['peak_rss_mb']:.0f}"
            lines.append(f"| {runtime} | {precision} | {p50:.1f} | {r['latency_ms']['p90']:.1f} | "
                         f"{r['latency_ms']['n']} | {speedup} | {ratio} | {rss} |")
    return "\n".join(lines) + "\n"
