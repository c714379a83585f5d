"""Render benchmark results: Markdown table, PNG plots and one self-contained HTML page.

``python -m benchmarks.report build/<target>`` reads the newest ``bench/*.json`` (or ``--results``)
and writes ``build/<target>/report/``. It only reads results; measuring lives in benchmarks.run.
"""
from __future__ import annotations

import argparse
import base64
import html
import os
import shutil
from pathlib import Path

import numpy as np

from benchmarks.files import RESULTS_SCHEMA, read_json, results_newest_first, typical_ms, write_text_atomic
from benchmarks.errors import BenchError, PipelineError, fail
from benchmarks.manifest import fp32_twin, load_manifest


def latest_results(build_dir: Path) -> Path:
    runs = results_newest_first(build_dir)
    if not runs:
        raise BenchError(f"no benchmark results in {build_dir}/bench/; run `make bench` first")
    return runs[0][1]


def rows(results: dict) -> list[dict]:
    """One row per artifact with the derived figures (speed-up over fp32 on the same runtime, ...)."""
    float_top1 = results.get("eval", {}).get("float_top1")
    out = []
    for r in results["results"]:
        acc = r["accuracy"] or {}                    # None: an imported run on random inputs (benchmark_model)
        twin = fp32_twin(results["results"], r)
        base = typical_ms(twin["latency_ms"]) if twin else None
        # float top-1 on the same images: the runner's own figure, or the whole-set one if n is whole
        same_images = acc.get("float_top1")
        if same_images is None and acc.get("n") == results.get("eval", {}).get("n"):
            same_images = float_top1
        if not acc:
            change = "not measured (random inputs)"
        elif acc["top1"] is not None and same_images is not None:
            change = f"{(acc['top1'] - same_images) * 100:+.2f} pt top-1"
        else:
            change = f"{(acc['agreement_top1'] - 1) * 100:+.2f} pt agreement"
        out.append({
            "file": r["file"], "runtime": r["runtime"], "precision": r["precision"],
            "p50": typical_ms(r["latency_ms"]), "p90": r["latency_ms"]["p90"],
            "speedup": (base / typical_ms(r["latency_ms"])) if base else None,
            "rss": r["peak_rss_mb"], "mb": r["bytes"] / 1e6, "change": change,
            "agreement": acc.get("agreement_top1"), "top1": acc.get("top1"),
        })
    return out


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def markdown(results: dict) -> str:
    d = results["device"]
    lines = [f"# Benchmark: {results['target']} ({results['run_id']})", "",
             f"- where: {results['where']}" + (f" ({results.get('remote') or results.get('tracker')})"
                                               if results["where"] != "local" else ""),
             f"- device: {d['cpu_model']}, {d['cores']} cores, {d['threads']} threads, governor {d['governor']}",
             f"- created: {results['created']}; eval images: {results['eval']['n']}",
             f"- throttled: {'YES: ' + ', '.join(d.get('throttle_reasons', [])) if d['throttled'] else 'no' if d['throttled'] is False else 'not known'}",
             *([f"- imported from LiteRT's benchmark_model output ({results['imported']['log']}): random inputs, so no "
                f"accuracy; latency as the tool gives it ({results['results'][0]['latency_ms'].get('summary', '')})"]
               if results.get("imported") else []), "",
             "| artifact | runtime | precision | p50 ms | p90 ms | speed-up vs fp32 | peak RSS MB | size MB | accuracy vs float |",
             "|---|---|---|---:|---:|---:|---:|---:|---|"]
    for r in rows(results):
        speedup = "-" if r["speedup"] is None else f"{r['speedup']:.2f}x"
        rss = "-" if r["rss"] is None else f"{r['rss']:.0f}"
        lines.append(f"| {r['file']} | {r['runtime']} | {r['precision']} | {r['p50']:.2f} | {_ms(r['p90'])} | "
                     f"{speedup} | {rss} | {r['mb']:.1f} | {r['change']} |")
    names = results["eval"].get("class_names") or []
    label = lambda i: names[i] if i < len(names) else str(i)
    disagree = [(r["file"], r["accuracy"]["confusions"]) for r in results["results"]
                if (r["accuracy"] or {}).get("confusions") and r["precision"] != "fp32"]
    if disagree:
        lines += ["", "## Where int8 answers otherwise than float", "", "| artifact | float class -> artifact class (images) |",
                  "|---|---|"]
        for file, pairs in disagree:
            text = ", ".join(f"{label(c['float'])} -> {label(c['artifact'])} ({c['n']})" for c in pairs)
            lines.append(f"| {file} | {text} |")
    for s in results.get("skipped", []):
        lines.append(f"\nskipped {s['file']}: {s['reason']}")
    for f in results.get("failed", []):
        lines.append(f"\nFAILED {f['file']}: {f['reason']}")
    return "\n".join(lines) + "\n"


def plots(results: dict, folder: Path) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = rows(results)
    names = [r["file"] for r in table]
    paths = {}

    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(names)), 4.5))
    samples = [r.get("samples_ms") or [typical_ms(r["latency_ms"])] for r in results["results"]]
    ax.boxplot(samples, showfliers=True)
    ax.set_xticks(range(1, len(names) + 1), names, rotation=30, ha="right")
    ax.set_yscale("log")
    ax.set_ylabel("latency per inference (ms, log)")
    ax.set_title(f"Latency distribution: {results['target']}")
    paths["latency"] = _save(fig, folder / "latency.png")

    paths["accuracy_latency"] = _save(accuracy_latency_figure(table), folder / "accuracy_latency.png")

    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(names)), 4.5))
    ax.bar(names, [r["mb"] for r in table], color=["#4c72b0" if r["precision"] == "fp32" else "#dd8452" for r in table])
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_ylabel("size (MB)")
    ax.set_title("Artifact size")
    paths["size"] = _save(fig, folder / "size.png")
    per_class = per_class_figure(results)
    if per_class is not None:
        paths["per_class"] = _save(per_class, folder / "per_class.png")
    return paths


def per_class_figure(results: dict):
    """Top-1 per class, float against each artifact (labelled eval sets only), or None."""
    import matplotlib.pyplot as plt

    labelled = [r for r in results["results"] if (r["accuracy"] or {}).get("per_class")]
    if not labelled:
        return None
    names = results["eval"].get("class_names") or []
    classes = labelled[0]["accuracy"]["per_class"]["class"]
    ticks = [names[c] if c < len(names) else str(c) for c in classes]
    width = 0.8 / (len(labelled) + 1)
    fig, ax = plt.subplots(figsize=(max(7, 0.5 * len(classes) * (len(labelled) + 1)), 4.8))
    x = np.arange(len(classes))
    ax.bar(x, [v * 100 for v in labelled[0]["accuracy"]["per_class"]["float_top1"]], width, label="float (Keras)",
           color="#999999")
    for i, r in enumerate(labelled, start=1):
        pc = r["accuracy"]["per_class"]
        if pc["class"] == classes:
            ax.bar(x + i * width, [v * 100 for v in pc["top1"]], width, label=r["file"])
    ax.set_xticks(x + width * len(labelled) / 2, ticks, rotation=30 if len(classes) > 6 else 0, ha="right")
    ax.set_ylim(0, 100)
    ax.set_ylabel("top-1 (%)")
    ax.set_title("Top-1 per class")
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False)
    return fig


def accuracy_latency_figure(table: list[dict]):
    """Accuracy against p50 latency, one marker and colour per artifact named in a legend beside the axes (labels
    printed at the points fall on each other when artifacts are close); the y axis ends at 100%."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.8))
    markers, colours = "osD^v<>ph*X", plt.get_cmap("tab10").colors
    ys = []
    for i, r in enumerate(t for t in table if t["agreement"] is not None):
        y = (r["top1"] if r["top1"] is not None else r["agreement"]) * 100
        ys.append(y)
        ax.scatter(r["p50"], y, s=55, marker=markers[i % len(markers)], color=colours[i % len(colours)],
                   label=f"{r['file']} ({r['runtime']})", edgecolors="black", linewidths=0.4, zorder=3)
    low = min(ys, default=0.0)
    ax.set_ylim(max(0.0, low - max(1.0, (100 - low) * 0.15)), 100.0)
    ax.grid(True, which="both", alpha=0.3)
    if ys:
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False)
    else:                              # an imported run on random inputs: no accuracy to plot
        ax.text(0.5, 0.5, "no accuracy measured in this run", ha="center", va="center", transform=ax.transAxes)
    ax.set_xscale("log")
    ax.set_xlabel("p50 latency (ms, log)")
    ax.set_ylabel("top-1 accuracy (%)" if any(r["top1"] is not None for r in table) else "top-1 agreement with float (%)")
    ax.set_title("Accuracy against latency")
    return fig


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.png")
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def html_page(results: dict, md: str, images: dict[str, Path]) -> str:
    table = rows(results)
    head = ("<tr>" + "".join(f"<th>{h}</th>" for h in ("artifact", "runtime", "precision", "p50 ms", "p90 ms",
                                                        "speed-up vs fp32", "peak RSS MB", "size MB",
                                                        "accuracy vs float")) + "</tr>")
    body = ""
    for r in table:
        cells = (r["file"], r["runtime"], r["precision"], f"{r['p50']:.2f}", _ms(r["p90"]),
                 "-" if r["speedup"] is None else f"{r['speedup']:.2f}x",
                 "-" if r["rss"] is None else f"{r['rss']:.0f}", f"{r['mb']:.1f}", r["change"])
        body += "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>\n"
    intro = "".join(f"<li>{html.escape(line[2:])}</li>" for line in md.splitlines() if line.startswith("- "))
    pictures = "".join(
        f'<figure><img alt="{name}" src="data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()}">'
        f"<figcaption>{name.replace('_', ' ')}</figcaption></figure>" for name, path in images.items())
    sections = md.split("\n## ")[1:]              # the Markdown's later sections (where int8 answers otherwise)
    extra = "".join(f"<h2>{html.escape(sec.splitlines()[0])}</h2><pre>{html.escape(chr(10).join(sec.splitlines()[1:]).strip())}</pre>"
                    for sec in sections)
    # on load, the page says how many of its images decoded (a headless browser reads it back: tests/integration)
    check = ("<script>addEventListener('load',()=>{const i=[...document.images];document.body.dataset.images="
             "'loaded '+i.filter(x=>x.complete&&x.naturalWidth>0).length+' of '+i.length})</script>")
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(results['target'])} benchmark</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}td:first-child,th:first-child{{text-align:left}}
img{{max-width:100%}}figure{{margin:1.5em 0}}</style></head>
<body><h1>Benchmark: {html.escape(results['target'])}</h1><ul>{intro}</ul>
<table>{head}\n{body}</table>{extra}{pictures}{check}</body></html>
"""


def _board_ram(build_dir: Path) -> tuple[str, int]:
    """(target, its RAM in MB) from the build's manifest; 0 when it does not say."""
    try:
        manifest = load_manifest(build_dir)
    except BenchError:
        return "", 0
    target = manifest.get("config", {}).get("target", {})
    return target.get("name", ""), int(target.get("ram_mb") or 0)


def memory_section(results: dict, board: tuple[str, int]) -> str:
    """Each artifact's measured peak RSS as a share of the board's RAM (`make gate` checks it against
    max_ram_fraction in gates.toml)."""
    name, ram = board
    measured = [r for r in results["results"] if r["peak_rss_mb"] is not None]
    if not ram or not measured:
        return ""
    lines = ["", f"## Memory on the board ({name}: {ram} MB RAM)", "",
             "| artifact | peak RSS MB | share of RAM | RAM left |", "|---|---:|---:|---:|"]
    for r in measured:
        lines.append(f"| {r['file']} | {r['peak_rss_mb']:.0f} | {r['peak_rss_mb'] / ram:.1%} | "
                     f"{ram - r['peak_rss_mb']:.0f} MB |")
    return "\n".join(lines) + "\n"


def estimate_section(build_dir: Path) -> str:
    """`make estimate`'s figures, when it ran: labelled ESTIMATE, in their own table, never beside a measured
    latency."""
    import json

    path = build_dir / "estimate" / "estimate.json"
    if not path.is_file():
        return ""
    data = json.loads(path.read_text())
    est = data.get("estimate") or {}
    if data.get("kind") == "estimate validation" or not est:
        return ""
    cal = est.get("calibration")
    lines = ["", f"## ESTIMATE, not measured: {data['core']} (make estimate)", "",
             f"Instructions per inference counted under qemu as a {data['core']}, 1 thread; cycles from per-class "
             f"rates ({est['source']}) at {est['ghz']} GHz. "
             + (f"Calibrated on x86 ({cal['measured']}): leave-one-out error {cal['error'][0]:+.0%} to "
                f"{cal['error'][1]:+.0%}." if cal else "No calibration: bounds only."), "",
             "| artifact | M instructions | bounds ms, 1 thread | ESTIMATE ms, 1 thread | ESTIMATE ms, "
             f"{est['threads']} threads |", "|---|---:|---:|---:|---:|"]
    for r in data["counts"]:
        e = r.get("estimate")
        if not e:
            continue
        one = (f"{e['ms_1_thread']:.1f} ({e['range_ms_1_thread'][0]:.1f}-{e['range_ms_1_thread'][1]:.1f})"
               if "ms_1_thread" in e else "-")
        threads = f"{e['ms']:.1f}" if "ms" in e else "-"
        lines.append(f"| {r['file']} | {r['instructions'] / 1e6:.1f} | {e['bounds_ms'][0]:.1f}-{e['bounds_ms'][1]:.1f} "
                     f"| {one} | {threads} |")
    return "\n".join(lines) + "\n"


def render(build_dir: Path, results_file: Path | None = None) -> dict[str, Path]:
    if results_file is None and not results_newest_first(build_dir) and estimate_section(build_dir):
        return render_estimate_only(build_dir)
    results_file = results_file or latest_results(build_dir)
    results = read_json(results_file, "benchmark results file", RESULTS_SCHEMA)
    if not results["results"]:
        raise BenchError(f"{results_file} holds no measured artifact; nothing to report")
    folder = build_dir / "report"
    folder.mkdir(parents=True, exist_ok=True)
    md = markdown(results) + memory_section(results, _board_ram(build_dir)) + estimate_section(build_dir)
    images = plots(results, folder)
    analysis = build_dir / "analysis" / "sqnr_by_layer.png"
    if analysis.is_file():              # make analyze ran: its per-layer int8 plot joins the report
        shutil.copyfile(analysis, folder / ".int8_sqnr_by_layer.png.tmp")
        os.replace(folder / ".int8_sqnr_by_layer.png.tmp", folder / "int8_sqnr_by_layer.png")
        images["int8_sqnr_by_layer"] = folder / "int8_sqnr_by_layer.png"
        md += ("\n## int8 per layer (make analyze)\n\nSQNR of each int8 layer against float, in network order; "
               "the table and sensitivity ranking are in ../analysis/analysis.md.\n\n"
               "![int8 SQNR by layer](int8_sqnr_by_layer.png)\n")
    out = {"markdown": folder / "report.md", "html": folder / "report.html"} | images
    write_text_atomic(out["markdown"], md)
    write_text_atomic(out["html"], html_page(results, md, images))
    return out


def render_estimate_only(build_dir: Path) -> dict[str, Path]:
    """No measurement yet (no board): the report is the estimate alone, labelled as such."""
    folder = build_dir / "report"
    folder.mkdir(parents=True, exist_ok=True)
    md = "# No measured latency yet\n" + estimate_section(build_dir)
    out = {"markdown": folder / "report.md"}
    write_text_atomic(out["markdown"], md)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__.splitlines()[0])
    p.add_argument("build_dir", type=Path)
    p.add_argument("--results", type=Path, help="a results file (default: the newest in BUILD_DIR/bench/)")
    args = p.parse_args(argv)
    try:
        out = render(args.build_dir, args.results)
    except (PipelineError, OSError) as exc:
        return fail(exc)
    print(out["markdown"].read_text())
    for name, path in out.items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
