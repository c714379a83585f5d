"""`make estimate` on an x86 AVX2 target: the estimate's method checked where latency can be measured.
Each CPU artifact is counted under ``qemu-x86_64 -cpu Haswell`` (the boards' plugin), then measured natively at 1
and 2 threads; the busy clock (pipeline/native/clock.c) turns ms into cycles. alpha (where measured cycles fall
between the bounds) and its leave-one-out error are what the ARM estimate borrows. On a CPU with AVX-512, LiteRT
and ONNX Runtime run other kernels natively than the AVX2 ones counted: shown, marked, left out of alpha.
"""
from __future__ import annotations

import os
import statistics
from concurrent.futures import ThreadPoolExecutor
import sys
from dataclasses import dataclass
from pathlib import Path

from benchmarks.device import cpu_flags
from pipeline.core_model import between, bounds, costs, host_core
from pipeline.errors import ConfigError
from pipeline.host_tools import built_from_c, ensure_tool, run_tool
from pipeline.progress import Progress

CLOCK_SOURCE = Path(__file__).resolve().parent / "native" / "clock.c"
QEMU_X86_CPU = "Haswell"        # AVX2 + FMA, no AVX-512: what qemu 7.2's TCG executes
THREADS = (1, 2)


@dataclass(frozen=True)
class X86Emulator:
    """The insn_counts view of qemu-x86_64 running this machine's own Python as a Haswell."""
    qemu: str

    def python(self) -> list[str]:
        return [self.qemu, "-cpu", QEMU_X86_CPU, sys.executable]

    def env(self, core: str) -> dict:
        return os.environ | {"TF_CPP_MIN_LOG_LEVEL": "2"}

    def set_core(self, core: str, cores: int) -> None:
        """Nothing to set: qemu-x86_64's CPUID is the model's, /proc is this machine's."""


def busy_clock_ghz(cache_dir: Path) -> float:
    """This core's clock while busy, measured by a chain of dependent adds (built once, cached by source hash)."""
    binary = built_from_c(cache_dir, CLOCK_SOURCE, "clock", [], "the clock probe")
    return float(run_tool([str(binary)], "measuring the busy clock").stdout.split()[0])


def validate(build_dir: Path, arts: list[dict], cache_dir: Path, progress: Progress) -> tuple[list[dict], dict]:
    """Counted, measured and bounded rows for each artifact, and the summary: alpha, leave-one-out errors,
    ranking, thread efficiency."""
    from benchmarks.run import Budget, run_artifact
    from pipeline.insn_counts import ensure_plugin, per_inference

    flags = set(cpu_flags())
    if "avx2" not in flags or "fma" not in flags:
        raise ConfigError("the estimate's x86 validation measures AVX2 code natively; this CPU has no AVX2 + FMA")
    wide = "avx512f" in flags
    core = costs(host_core())
    emulator = X86Emulator(ensure_tool("qemu-x86_64", "qemu-user", progress))
    plugin = ensure_plugin(cache_dir)
    budget = Budget(warmup=3, min_runs=20, min_seconds=3.0, max_seconds=30.0, accuracy_seconds=1e-3)
    # qemu's TCG runs AVX2 floating point in helpers: about two minutes per fp32 inference of the reference, so
    # the artifacts are counted side by side, one per core, and each count is kept for the same bytes
    progress.log(f"counting {len(arts)} artifacts under qemu-x86_64 as a {QEMU_X86_CPU}, 1 thread each, "
                 f"{os.cpu_count()} at a time (minutes: fp32 floating point is emulated in software)")

    def count(art: dict) -> dict:
        row = per_inference(build_dir, art, emulator, QEMU_X86_CPU.lower(), plugin, runs=1, cache_dir=cache_dir)
        progress.log(f"  counted {art['file']}: {row['instructions'] / 1e6:.1f} M instructions per inference"
                     + (" (kept from an earlier count)" if row.get("cached") else ""))
        return row

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        rows = list(pool.map(count, arts))
    for art, row in zip(arts, rows):     # measured together, after the counting, so nothing of it runs beside
        progress.log(f"measuring {art['file']} here at {' and '.join(map(str, THREADS))} threads")
        row["measured_ms"] = {t: run_artifact(build_dir, art, t, budget, 1)["latency_ms"]["p50"] for t in THREADS}
        row["same_code"] = art["runtime"] == "tvm" or not wide
    ghz = busy_clock_ghz(cache_dir)
    for row in rows:
        lower, upper = bounds(row["by_class"], core)
        cycles = row["measured_ms"][1] * ghz * 1e6
        row |= {"lower_cycles": lower, "upper_cycles": upper, "measured_cycles": cycles,
                "alpha": between(lower, upper, cycles)}
    return rows, summary(rows, core.name, ghz)


def summary(rows: list[dict], core: str, ghz: float) -> dict:
    """alpha over the rows that ran the counted code; each such row predicted from the others' median alpha."""
    used = [r for r in rows if r["same_code"]]
    alphas = [r["alpha"] for r in used]
    for r in used:
        others = [a for other, a in zip(used, alphas) if other is not r] or alphas
        a = statistics.median(others)
        r["predicted_cycles"] = r["lower_cycles"] + a * (r["upper_cycles"] - r["lower_cycles"])
        r["error"] = r["predicted_cycles"] / r["measured_cycles"] - 1
    order = lambda key: [r["file"] for r in sorted(used, key=lambda r: r[key])]
    efficiency = {r["file"]: r["measured_ms"][1] / r["measured_ms"][2] / 2 for r in rows if 2 in r["measured_ms"]}
    return {"core": core, "busy_ghz": ghz, "rows_used": len(used),
            "alpha": statistics.median(alphas) if alphas else None,
            "alpha_range": [min(alphas), max(alphas)] if alphas else None,
            "leave_one_out_error": [min(r["error"] for r in used), max(r["error"] for r in used)] if len(used) > 1
            else None,
            "ranks_agree": order("predicted_cycles") == order("measured_cycles") if len(used) > 1 else None,
            "thread_efficiency_2": efficiency}
