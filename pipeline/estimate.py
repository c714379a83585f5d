"""`make estimate TARGET=t`: instructions per inference of every ARM CPU artifact, counted under qemu-user as
the board's core (pipeline/insn_counts.py), and an *estimate* of its latency there (pipeline/core_model.py), with
the ratios TVM/LiteRT and int8/fp32 of both. Written to OUT/t/estimate/estimate.json and printed, labelled
estimate throughout. On an x86 AVX2 target it runs the validation instead (pipeline/estimate_x86.py).
"""
from __future__ import annotations

from pathlib import Path

from benchmarks.manifest import load_manifest
from benchmarks.text import format_table
from pipeline.core_model import CALIBRATION, CoreCosts, costs, estimate
from pipeline.emulation import CORES, ensure_emulator
from pipeline.errors import ConfigError
from pipeline.insn_counts import CLASSES, ensure_plugin, per_inference, write_report
from pipeline.progress import Progress
from pipeline.targets import Target
from pipeline.versions import tool_versions

COUNTED = ("litert", "onnxruntime", "tvm")


def estimate_target(build_dir: Path, target: Target, cache_dir: Path, progress: Progress,
                    only: list[str] | None = None, core: str | None = None) -> tuple[Path, str]:
    if target.arch == "x86_64":
        if target.cpu.core == "host" or any(f.startswith("avx512") for f in target.cpu.features):
            raise ConfigError(f"make estimate on x86 validates AVX2 code, which qemu-x86_64 can run; target "
                              f"{target.name} is built for {target.cpu.core} {' '.join(target.cpu.features)}: use "
                              f"TARGET=x86-avx2")
        if core:
            raise ConfigError("ESTIMATE_CORE (--core) is for ARM targets; the x86 validation runs on this CPU")
    elif target.arch != "aarch64":
        raise ConfigError(f"make estimate counts ARM artifacts under qemu-aarch64; target {target.name} is "
                          f"{target.arch}")
    core = core or target.cpu.core
    if target.arch == "aarch64" and core not in CORES:
        raise ConfigError(f"no emulated core {core!r}; known: {', '.join(CORES)}")
    manifest = load_manifest(build_dir)
    arts = [a for a in manifest["artifacts"] if a["runtime"] in COUNTED and a.get("device", "cpu") == "cpu"
            and (not only or a["file"] in only)]
    if only and len(arts) != len(set(only)):
        raise ConfigError(f"--only names no CPU artifact of {build_dir}: "
                          f"{', '.join(sorted(set(only) - {a['file'] for a in arts}))}")
    if target.arch == "x86_64":
        return validation_report(build_dir, target, arts, cache_dir, progress)
    emulator = ensure_emulator(cache_dir, progress)
    plugin = ensure_plugin(cache_dir)
    rows = []
    for art in arts:
        progress.log(f"counting {art['file']} under qemu as {core} (1 thread; two runs, their difference is "
                     f"per inference)")
        rows.append(per_inference(build_dir, art, emulator, core, plugin))
    rates, threads = costs(core), target.bench.threads or target.cpu.cores
    for row in rows:
        row["estimate"] = estimate(row["by_class"], rates, threads)
    meta = {"kind": "instruction counts and latency estimate", "target": target.name, "core": core, "threads": 1,
            "method": "qemu-user TCG plugin (pipeline/native/insn_classes.c); (count of 2K inferences - count of "
                      "K) / K, after the same load and warm-up; Python's hash seed fixed",
            "estimate": {"label": "estimate, not measured", "core": rates.name, "ghz": rates.ghz,
                         "rates": rates.rate, "issue": rates.issue, "source": rates.source,
                         "threads": threads, "calibration": CALIBRATION,
                         "method": "cycles = lower + alpha * (upper - lower) at the core's clock; bounds and alpha "
                                   "in pipeline/core_model.py; alpha and its range from the x86 validation"},
            "tools": {k: tool_versions()[k] for k in ("ai-edge-litert", "onnxruntime", "apache-tvm")}}
    found = ratios(rows)
    path = write_report(build_dir / "estimate", rows, meta | {"ratios": found})
    return path, table(rows, core, found) + "\n\n" + estimate_table(rows, rates, threads)


def ratios(rows: list[dict]) -> dict[str, float]:
    """TVM/LiteRT per precision and int8/fp32 per runtime, of instructions per inference, and of estimated
    milliseconds ("estimated ms ..." keys) where there is an estimate."""
    out = _ratios({(r["runtime"], r["precision"]): r["instructions"] for r in rows if r["consistent"]})
    timed = {(r["runtime"], r["precision"]): r["estimate"]["ms"] for r in rows
             if r["consistent"] and "ms" in r.get("estimate", {})}
    return out | {f"estimated ms {k}": v for k, v in _ratios(timed).items()}


def _ratios(by: dict) -> dict[str, float]:
    out = {}
    for precision in ("fp32", "int8"):
        if by.get(("tvm", precision)) and by.get(("litert", precision)):
            out[f"tvm/litert {precision}"] = by[("tvm", precision)] / by[("litert", precision)]
    for runtime in COUNTED:
        if by.get((runtime, "int8")) and by.get((runtime, "fp32")):
            out[f"{runtime} int8/fp32"] = by[(runtime, "int8")] / by[(runtime, "fp32")]
    return out


def table(rows: list[dict], core: str, extra: dict[str, float]) -> str:
    head = ("artifact", "runtime", "M instructions", *CLASSES)
    lines = [head] + [(r["file"] + ("" if r["consistent"] else " (!)"), r["runtime"], f"{r['instructions'] / 1e6:.1f}",
                       *(f"{r['by_class'][c] / r['instructions']:.1%}" if r["instructions"] else "-" for c in CLASSES))
                      for r in rows]
    text = f"instructions per inference under qemu as {core}, 1 thread (counts, not time)\n\n" + format_table(lines)
    if not all(r["consistent"] for r in rows):
        text += ("\n(!) its two runs disagree: a class shrank from K to 2K inferences, so the runs did "
                 "timing-dependent work beside the inferences; not one inference's count, and left out of the ratios")
    if extra:
        text += "\n\n" + ", ".join(f"{k}: {v:.2f}" for k, v in extra.items())
    for r in rows:                          # where each artifact's instructions go (library: function)
        top = list(r["top_functions"].items())[:3]
        text += f"\n  {r['file']}: " + "; ".join(f"{name} {n / r['instructions']:.0%}" for name, n in top)
    return text


def validation_report(build_dir: Path, target: Target, arts: list[dict], cache_dir: Path,
                      progress: Progress) -> tuple[Path, str]:
    from benchmarks.device import this_cpu
    from pipeline.estimate_x86 import QEMU_X86_CPU, validate

    rows, found = validate(build_dir, arts, cache_dir, progress)
    meta = {"kind": "estimate validation", "target": target.name, "counted_as": QEMU_X86_CPU, "threads": 1,
            "method": "instructions per inference by class under qemu-x86_64 (pipeline/native/insn_classes.c); "
                      "lower/upper cycle bounds from this core's per-class rates (pipeline/core_model.py); "
                      "measured p50 at 1 thread natively, times the busy clock (pipeline/native/clock.c)",
            "validation": found, "machine": this_cpu(),
            "tools": {k: tool_versions()[k] for k in ("ai-edge-litert", "onnxruntime", "apache-tvm")}}
    path = write_report(build_dir / "estimate", rows, meta)
    return path, validation_table(rows, found)


def validation_table(rows: list[dict], found: dict) -> str:
    head = ("artifact", "M instructions", "lower Mcycles", "upper Mcycles", "measured Mcycles", "alpha",
            "predicted (others' alpha)", "error")
    lines = [head]
    for r in rows:
        used = "error" in r
        lines.append((r["file"] + ("" if r["same_code"] else " (*)"), f"{r['instructions'] / 1e6:.1f}",
                      f"{r['lower_cycles'] / 1e6:.1f}", f"{r['upper_cycles'] / 1e6:.1f}",
                      f"{r['measured_cycles'] / 1e6:.1f}", f"{r['alpha']:.2f}",
                      f"{r['predicted_cycles'] / 1e6:.1f}" if used else "-", f"{r['error']:+.0%}" if used else "-"))
    text = (f"estimate validation on this {found['core']} at {found['busy_ghz']:.2f} GHz busy, 1 thread: counted "
            f"under qemu-x86_64, measured here\n\n" + format_table(lines))
    if not all(r["same_code"] for r in rows):
        text += ("\n(*) this CPU has AVX-512: the runtime runs other kernels natively than the AVX2 ones counted; "
                 "shown, left out of alpha")
    if found["alpha"] is not None:
        text += f"\n\nalpha {found['alpha']:.2f} (range {found['alpha_range'][0]:.2f} to {found['alpha_range'][1]:.2f})"
    if found["leave_one_out_error"]:
        lo, hi = found["leave_one_out_error"]
        text += f"; leave-one-out error {lo:+.0%} to {hi:+.0%}; ranks agree: {found['ranks_agree']}"
    eff = found["thread_efficiency_2"]
    if eff:
        text += "\n2-thread efficiency (t1 / t2 / 2): " + ", ".join(f"{k} {v:.2f}" for k, v in eff.items())
    return text


def estimate_table(rows: list[dict], rates: CoreCosts, threads: int) -> str:
    """The estimate, labelled: bounds always; the calibrated figure and its range where there is a calibration."""
    calibrated = CALIBRATION is not None
    head = ("artifact", "bounds ms (1 thread)", *(("ESTIMATE ms 1 thread", "range", f"ESTIMATE ms {threads} threads")
                                                  if calibrated else ()))
    lines = [head]
    for r in rows:
        e = r["estimate"]
        cells = [r["file"], f"{e['bounds_ms'][0]:.1f} - {e['bounds_ms'][1]:.1f}"]
        if calibrated:
            lo, hi = e["range_ms_1_thread"]
            cells += [f"{e['ms_1_thread']:.1f}", f"{lo:.1f} - {hi:.1f}", f"{e['ms']:.1f}"]
        lines.append(tuple(cells))
    text = (f"ESTIMATE, not measured: {rates.name} at {rates.ghz} GHz ({rates.source}); per-class rates and "
            f"bounds in pipeline/core_model.py\n\n" + format_table(lines))
    if calibrated:
        c = CALIBRATION
        text += (f"\nalpha {c['alpha']:.2f} from the x86 validation ({c['measured']}): leave-one-out error "
                 f"{c['error'][0]:+.0%} to {c['error'][1]:+.0%}; threads scaled at efficiency "
                 f"{c['thread_efficiency']:.2f} per added thread (measured at 2 threads, extrapolated beyond)")
    else:
        text += "\nno calibration: bounds only (lower: all classes overlapped; upper: none overlapped)"
    return text
