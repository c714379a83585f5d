"""Rendering `make analyze`'s result (pipeline/analysis.py runs it): the worst layers as a table, Markdown, and a
plot of SQNR by layer."""
from __future__ import annotations

from pathlib import Path

from benchmarks.files import write_text_atomic
from benchmarks.text import format_table

FLOW_COLOURS = {"entry": "#1f77b4", "middle": "#2ca02c", "exit": "#d62728", "network": "#1f77b4"}


def render(result: dict, folder: Path) -> None:
    """analysis.md and sqnr_by_layer.png in ``folder``."""
    write_text_atomic(folder / "analysis.md", markdown(result))
    plot(result, folder / "sqnr_by_layer.png")


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


def rungs_table(result: dict) -> str:
    """What each rung of the recovery ladder would do: equalization, bias correction and 16x8 on the whole model,
    then equalization and float per top layer."""
    gains = result.get("rungs")
    if not gains:
        return ""
    cle = gains["cle"]
    if cle.get("applied") and "overall" in cle:
        head = (f"CLE ({len(cle['pairs'])} layer pairs, float outputs moved {cle['float_difference']:.1e}): whole-model "
                f"top-1 agreement {result['overall']['agreement_top1']:.3f} -> {cle['overall']['agreement_top1']:.3f}, "
                f"logit SQNR {result['overall']['sqnr_db']:.1f} -> {cle['overall']['sqnr_db']:.1f} dB")
    else:
        head = f"CLE: not applicable ({cle.get('reason', 'not applied')})"
    o = result["overall"]
    for name, what in (("bias", "bias correction ({layers} layers, best: {mode} shifts, sweep {sweep_chosen})"),
                       ("16x8", "16x8 (int16 activations, {scope})")):
        if name in gains:
            g = gains[name]
            head += (f"\n{what.format(**g)}: whole-model top-1 agreement {o['agreement_top1']:.3f} -> "
                     f"{g['overall']['agreement_top1']:.3f}, logit SQNR {o['sqnr_db']:.1f} -> "
                     f"{g['overall']['sqnr_db']:.1f} dB ({g['seconds']:.0f} s)")
    rows = [("layer", "alone: agr. (int8)", "alone: agr. after CLE", "whole model, it kept float: agr.", "float layers")]
    alone = {r["layer"]: (r.get("sensitivity") or {}) for r in result["layers"]}
    for r in gains["layers"]:
        mine = alone.get(r["layer"], {})
        rows.append((r["layer"], f"{mine['agreement_top1']:.3f}" if "agreement_top1" in mine else "-",
                     f"{r['cle_alone']['agreement_top1']:.3f}" if (r.get("cle_alone") or {}).get("agreement_top1")
                     is not None else "-",
                     f"{r['float']['agreement_top1']:.3f}", ", ".join(r["float"]["layers"])))
    return head + "\n" + format_table(rows) + f"\n({gains['not_measured']})"


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
    if result.get("rungs"):
        lines += ["## What each recovery rung would do", "", "```", rungs_table(result), "```", ""]
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
