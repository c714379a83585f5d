"""make analyze: the per-layer int8 analysis of a target's model, as a table, JSON and a plot in
OUT/<target>/analysis/ (the analyze stage computes it; this module runs it and presents it)."""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

from benchmarks.files import write_text_atomic
from benchmarks.text import format_table
from pipeline.errors import InputError
from pipeline.progress import Progress

FLOW_COLOURS = {"entry": "#1f77b4", "middle": "#2ca02c", "exit": "#d62728", "network": "#1f77b4"}


def analyze_target(options, n: int = 16, progress: Progress | None = None) -> tuple[dict, Path]:
    from pipeline.artifacts import Producer
    from pipeline.compile_options import validate_options
    from pipeline.compiler import runner_for
    from pipeline.model_inputs import prepare
    from pipeline.output import TargetLock, ensure_writable
    from pipeline.stages import analyze
    from pipeline.targets import ARTIFACT_KINDS, load_target

    progress = progress or Progress(quiet=True)
    if n < 0:
        raise InputError(f"ANALYZE_N={n} must be 0 (every quantized layer) or a positive number of layers")
    target = load_target(options.target, options.targets_dir)
    validate_options(options)
    if "tflite-int8" not in target.artifacts:
        int8 = [k for k in target.artifacts if ARTIFACT_KINDS[k].precision == "int8"]
        raise InputError(f"target {target.name} has no tflite-int8 artifact to analyze (its int8 artifacts: "
                         f"{', '.join(int8) or 'none'}); analyze a target that lists tflite-int8, e.g. host")
    ensure_writable(options.out_dir)
    with TargetLock(options.out_dir, target.name):
        # the int8 models as quantized before any recovery: the analysis shows what int8 does to each layer
        options = dataclasses.replace(options, recover=False)
        runner = runner_for(options, target, progress)
        progress.log(f"analyzing int8 on target {target.name}: {target.description}")
        model = prepare(runner, options, True, progress)
        producer = Producer(options, target, runner, model, progress)
        inputs = {"model": model.file("model.keras"), "calib": model.file("calib.npz")}
        if "onnx-int8" in target.artifacts:
            int8, int8_file = producer.converted("onnx-int8")
            fp32, fp32_file = producer.converted("onnx-fp32")
            inputs |= {"onnx_int8": int8.file(int8_file), "onnx_fp32": fp32.file(fp32_file)}
        entry = runner.stage(analyze, analyze.Config(options.calib_method, n), inputs, "analyze int8")
        result = json.loads(entry.file("analysis.json").read_text())
        result["model"] = model.gates_key
        result["target"] = target.name
        folder = options.out_dir / target.name / "analysis"
        staging = folder.with_name(".analysis.tmp")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        write_text_atomic(staging / "analysis.json", json.dumps(result, indent=1))
        write_text_atomic(staging / "analysis.md", markdown(result))
        plot(result, staging / "sqnr_by_layer.png")
        shutil.rmtree(folder, ignore_errors=True)
        staging.rename(folder)
    return result, folder


def worst(result: dict, limit: int = 10) -> list[dict]:
    """The layers recovery would keep float first (measured sensitivity), then the lowest SQNR."""
    ranked = sorted((r for r in result["layers"] if r.get("rank")), key=lambda r: r["rank"])
    rest = sorted((r for r in result["layers"] if not r.get("rank") and r["sqnr_db"] is not None),
                  key=lambda r: r["sqnr_db"])
    return (ranked + rest)[:limit]


def table(result: dict, limit: int = 10) -> str:
    rows = [("rank", "layer", "op", "flow", "SQNR dB", "rel. RMSE", "alone: top-1 agr.", "alone: logit SQNR dB")]
    for r in worst(result, limit):
        s = r.get("sensitivity") or {}
        rows.append((str(r.get("rank") or "-"), r["layer"], r["op"], r["flow"] or "",
                     f"{r['sqnr_db']:.1f}" if r["sqnr_db"] is not None else "n/a",
                     f"{r['relative_rmse']:.4f}" if r["relative_rmse"] is not None else "n/a",
                     f"{s['agreement_top1']:.3f}" if "agreement_top1" in s else "-",
                     f"{s['sqnr_db']:.1f}" if "sqnr_db" in s else "-"))
    return format_table(rows)


def markdown(result: dict) -> str:
    o = result["overall"]
    lines = [f"# int8 per-layer analysis: {result.get('model', '')} on {result.get('target', '')}", "",
             f"TFLite int8 ({result['calib_method']} calibration, {result['calibration_images']} images) against "
             f"float: top-1 agreement {o['agreement_top1']:.3f}, logit SQNR {o['sqnr_db']:.1f} dB.", "",
             f"SQNR: each layer's output against the float model's same tensor ({result['error_images']} images). "
             f"Sensitivity: {result['sensitivity_form']} ({result['sensitivity_measured']} of "
             f"{result['quantized_ops']} ops measured: those that lose the most SQNR themselves; "
             f"{result['sensitivity_images']} images).", "", "```", table(result, 15), "```", "",
             "![SQNR by layer](sqnr_by_layer.png)", ""]
    if result.get("onnx_layers"):
        lines += ["## ONNX int8", "", "Each quantized activation against the float ONNX model's (lowest SQNR first):",
                  "", "```", onnx_table(result), "```", ""]
    return "\n".join(lines)


def onnx_table(result: dict, limit: int = 10) -> str:
    rows = [("layer", "op", "flow", "SQNR dB", "rel. RMSE")]
    for r in sorted(result.get("onnx_layers") or [], key=lambda r: r["sqnr_db"])[:limit]:
        rows.append((r["layer"], r["op"], r["flow"] or "", f"{r['sqnr_db']:.1f}", f"{r['relative_rmse']:.4f}"))
    return format_table(rows)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = [r for r in result["layers"] if r["sqnr_db"] is not None]
    fig, ax = plt.subplots(figsize=(max(8, len(layers) * 0.12), 4))
    for part in dict.fromkeys(r["flow"] for r in layers):
        xs = [i for i, r in enumerate(layers) if r["flow"] == part]
        ax.bar(xs, [layers[i]["sqnr_db"] for i in xs], color=FLOW_COLOURS.get(part, "#7f7f7f"),
               label=f"{part} flow" if part != "network" else "layers")
    for i, r in enumerate(layers):
        if r.get("rank") and r["rank"] <= 3:
            ax.annotate(f"#{r['rank']} {r['layer']}", (i, r["sqnr_db"]), rotation=90, fontsize=7,
                        xytext=(0, 3), textcoords="offset points", ha="center", va="bottom")
    ax.set_xlabel("layer, in network order")
    ax.set_ylabel("SQNR against float (dB)")
    ax.set_title(f"int8 SQNR by layer ({result.get('model', '')}, {result['calib_method']}; #n: sensitivity rank)")
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
