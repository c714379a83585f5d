"""`make estimate TARGET=t`: instructions per inference of every ARM CPU artifact, counted under qemu-user as
the board's core (pipeline/insn_counts.py), with the ratios TVM/LiteRT and int8/fp32 of those counts.
Written to OUT/t/estimate/estimate.json and printed. Instruction counts, not time: no latency is claimed.
"""
from __future__ import annotations

from pathlib import Path

from benchmarks.manifest import load_manifest
from benchmarks.text import format_table
from pipeline.emulation import CORES, ensure_emulator
from pipeline.errors import ConfigError
from pipeline.insn_counts import CLASSES, ensure_plugin, per_inference, write_report
from pipeline.progress import Progress
from pipeline.targets import Target
from pipeline.versions import tool_versions

COUNTED = ("litert", "onnxruntime", "tvm")


def estimate_target(build_dir: Path, target: Target, cache_dir: Path, progress: Progress,
                    only: list[str] | None = None, core: str | None = None) -> tuple[Path, str]:
    if target.arch != "aarch64":
        raise ConfigError(f"make estimate counts ARM artifacts under qemu-aarch64; target {target.name} is "
                          f"{target.arch}")
    core = core or target.cpu.core
    if core not in CORES:
        raise ConfigError(f"no emulated core {core!r}; known: {', '.join(CORES)}")
    manifest = load_manifest(build_dir)
    arts = [a for a in manifest["artifacts"] if a["runtime"] in COUNTED and a.get("device", "cpu") == "cpu"
            and (not only or a["file"] in only)]
    if only and len(arts) != len(set(only)):
        raise ConfigError(f"--only names no CPU artifact of {build_dir}: "
                          f"{', '.join(sorted(set(only) - {a['file'] for a in arts}))}")
    emulator = ensure_emulator(cache_dir, progress)
    plugin = ensure_plugin(cache_dir)
    rows = []
    for art in arts:
        progress.log(f"counting {art['file']} under qemu as {core} (1 thread; two runs, their difference is "
                     f"per inference)")
        rows.append(per_inference(build_dir, art, emulator, core, plugin))
    meta = {"kind": "instruction counts", "target": target.name, "core": core, "threads": 1,
            "method": "qemu-user TCG plugin (pipeline/native/insn_classes.c); (count of 2K inferences - count of "
                      "K) / K, after the same load and warm-up; Python's hash seed fixed",
            "estimate": None, "why_no_estimate": "no per-class throughput model yet: counts only",
            "tools": {k: tool_versions()[k] for k in ("ai-edge-litert", "onnxruntime", "apache-tvm")}}
    found = ratios(rows)
    path = write_report(build_dir / "estimate", rows, meta | {"ratios": found})
    return path, table(rows, core, found)


def ratios(rows: list[dict]) -> dict[str, float]:
    """TVM/LiteRT per precision and int8/fp32 per runtime, of instructions per inference."""
    by = {(r["runtime"], r["precision"]): r["instructions"] for r in rows if r["consistent"]}
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
