"""What the pipeline measured, rendered as terminal or Markdown tables: the compile summary, `make
verify`, `make tune` and `make peers`. Measuring lives in the modules that measure (compiler, verify,
tuning, peers); this module only reads their records.
"""
from __future__ import annotations

from pathlib import Path

from benchmarks.device import this_cpu
from benchmarks.gate_report import ladder_summary
from benchmarks.profile_report import format_profile
from benchmarks.text import format_table
from pipeline.peers import VARIANTS
from pipeline.tvm.records import MIN_GAIN, estimate, uses_tuned


def class_name(i: int, ev: dict) -> str:
    names = ev.get("class_names") or []
    return names[i] if i < len(names) else str(i)


def confusion_text(confusions: list[dict], ev: dict) -> str:
    """The most frequent float -> artifact disagreements, with class names where the eval set has them."""
    return ", ".join(f"{class_name(c['float'], ev)} -> {class_name(c['artifact'], ev)} x{c['n']}" for c in confusions)


def compile_table(manifest: dict) -> str:
    """`make compile`: the artifacts, their accuracy against float, where it was measured, notes."""
    table = _compile_table(manifest)
    sanity = manifest["eval"].get("sanity") or {}
    if sanity.get("status") == "suspect":           # under the table too: the banner has scrolled away by now
        table += (f"\nWARNING: the agreement figures above prove nothing: {sanity['why']}; `make gate` fails on it "
                  f"(check PREPROCESS=, EVAL= and the model's own model.evaluate)")
    return table


def _compile_table(manifest: dict) -> str:
    model = manifest["model"]
    ev = manifest["eval"]
    head = (f"target {manifest['target']} | model {model['name']} ({model['weights']} weights, input "
            f"{'x'.join(map(str, model['input_shape'][1:3]))}, {model['num_classes']} classes) | eval: "
            f"{ev['n']} images from {ev['source']}"
            + (f" ({len(ev['class_names'])} classes: {', '.join(ev['class_names'][:8])}"
               f"{', ...' if len(ev['class_names']) > 8 else ''})" if ev.get("class_names") else "")
            + (f", float top-1 {ev['float_top1'] * 100:.1f}%" if ev.get("float_top1") is not None else ""))
    here = manifest.get("compiled_on")
    if here:
        head += (f"\naccuracy measured on {here['cpu_model']} ({here['machine']}, int8: {here['int8_isa']}"
                 f"{', no VNNI' if here['int8_saturates'] else ''}) unless noted; target CPU int8: "
                 f"{manifest['config']['target'].get('int8_isa', '?')}")
    rows = [("artifact", "runtime", "device", "size", "agree top-1", "top-1", "top-5", "mean|dlogit|")]
    notes = []
    for a in manifest["artifacts"]:
        acc = a["accuracy"]
        pct = lambda v: "-" if v is None else f"{v * 100:.1f}%"
        if a.get("tuning"):
            t = a["tuning"]
            notes.append(f"{a['file']}: tuned schedules for {t['applied']} of {t['functions']} functions "
                         f"(records {t['records']}, {t['trials']} trials); default schedules for the rest")
        if "params" in a:
            notes.append(f"{a['file']}: its weights are {a['params']['file']} beside it ({_size(a['params']['bytes'])}, "
                         f"in the size): copy both")
        if "opencl_kernels" in a:
            notes.append(f"{a['file']}: OpenCL module with {a['opencl_kernels']} kernels; source {a['opencl_source']}")
        if acc is None:
            rows.append((a["file"], a["runtime"], a["device"], _size(a["bytes"]), "not run", "", "", ""))
            notes.append(f"{a['file']}: {a.get('accuracy_note', 'not run')}")
            continue
        rows.append((a["file"], a["runtime"], a["device"], _size(a["bytes"]),
                     pct(acc["agreement_top1"]), pct(acc["top1"]), pct(acc["top5"]),
                     f"{acc['mean_abs_logit_delta']:.4f}"))
        if acc["n"] != ev["n"]:
            notes.append(f"{a['file']}: checked on the first {acc['n']} of {ev['n']} eval images")
        if acc.get("confusions") and a["precision"] != "fp32":
            notes.append(f"{a['file']}: answers otherwise than float: {confusion_text(acc['confusions'], ev)}")
        where = acc.get("measured_on") or {}
        if where.get("emulated"):
            notes.append(f"{a['file']}: accuracy measured as the board runs it: {where['cpu_model']}")
        elif where.get("computes_as_target") is False:
            notes.append(f"{a['file']}: WARNING: this accuracy describes this machine, not the target: {where['why']}")
        q = a.get("quantization") or {}
        if "description" in q:
            notes.append(f"{a['file']}: {q['description']} ({q['why']}); {q['calib_method']} calibration")
            if q.get("float_layers"):
                notes.append(f"{a['file']}: kept float as TFLite recovery found: {', '.join(q['float_layers'])} "
                             f"({len(q['excluded_nodes'])} ONNX nodes)")
        elif q:
            notes.append(f"{a['file']}: {recovery_note(q)}")
        if a.get("float_layers"):
            notes.append(f"{a['file']}: built from the recovered TFLite file: {', '.join(a['float_layers'])} float")
        if "vs_litert" in acc:
            v = acc["vs_litert"]
            diff = (f"max {v['max_quant_steps']} quantization step(s)" if "max_quant_steps" in v
                    else f"max relative difference {v['max_rel_diff']:.1e}")
            verdict = ("within tolerance" if v["within_tolerance"] else
                       f"OUT OF TOLERANCE on {v['beyond_tolerance']} of {v['outputs']} outputs")
            notes.append(f"{a['file']}: against LiteRT on the same TFLite model: {diff} ({verdict}), "
                         f"top-1 agreement {v['agreement_top1'] * 100:.1f}%")
    return head + "\n\n" + format_table(rows) + "".join(f"\n  {n}" for n in notes)


def recovery_note(q: dict) -> str:
    """One line on a TFLite int8 artifact's calibration and recovery."""
    r = q.get("recovery") or {"status": "off"}
    head = f"{q['calib_method']} calibration ({q['calibration_images']} images)"
    if r["status"] == "recovered":
        return (f"{head}; RECOVERED: {ladder_summary(r)}, top-1 agreement on the calibration images "
                f"{r['before']['agreement_top1']:.1%} -> {r['after']['agreement_top1']:.1%} "
                f"(budget {r['budget']:.1%}), size x{r['size_bytes']['recovered'] / r['size_bytes']['int8']:.2f}")
    if r["status"] in ("cap reached", "not met"):
        return f"{head}; recovery FAILED ({r['status']}, cap {r['cap_layers']} layers): plain int8 kept"
    return f"{head}; recovery {r['status']}"


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"


def verify_table(report: dict) -> str:
    """`make verify`: one row per artifact run under emulation."""
    lines = [("artifact", "runtime", "match", "max difference", "emulated s", "XNNPACK", "detail")]
    for r in report["rows"]:
        diff = "-" if r["max_difference"] is None else f"{r['max_difference']:.3g}"
        xnn = {True: "active", False: "NOT active"}.get(r.get("xnnpack"), "")
        lines.append((r["file"], r["runtime"], "yes" if r["match"] else "NO", diff, f"{r['emulated_seconds']:.1f}",
                      xnn, r["detail"]))
    return format_table(lines)


def tuning_table(summary: dict) -> str:
    """`make tune`: per function, trials, default vs tuned time and which one compile uses."""
    rows = [("function", "precision", "calls", "trials", "default ms", "tuned ms", "used")]
    for key in summary["keys"]:
        e = summary["tasks"][key]
        best, default = e.get("best_ms"), e.get("default_ms")
        used = uses_tuned(e)
        rows.append((e["name"][:48], e.get("precision", ""), str(e.get("calls", 1)), str(e["trials"]),
                     "-" if default is None else f"{default:.4f}", "-" if best is None else f"{best:.4f}",
                     "tuned" if used else "default"))
    total = estimate(summary, summary["keys"])
    ratio = f"{total['ratio']:.2f}x" if total["ratio"] else "-"
    return (format_table(rows) + f"\n\nsum over the functions of the tuned models (x calls): default schedules "
            f"{total['default_ms_sum']:.2f} ms, with tuned ones where {MIN_GAIN:.0%} faster {total['chosen_ms_sum']:.2f} ms ({ratio}); "
            f"{summary.get('seconds_this_run', 0):.0f} s this run; records: {summary['records_dir']}")


# issue 33's goals, each (what, TVM variant, precision, against, at most)
PEER_GOALS = (("TVM fp32, default schedules / best peer fp32", "default schedules", "fp32", "best", 1.2),
              ("TVM fp32, tuned / best peer fp32", "tuned", "fp32", "best", 1.0),
              ("TVM int8, tuned / best peer int8", "tuned", "int8", "best", 1.0),
              ("TVM int8, default schedules / best peer int8", "default schedules", "int8", "best", 1.0),
              ("TVM peak RSS, tuned / LiteRT's, fp32", "tuned", "fp32", "rss", 1.1),
              ("TVM peak RSS, tuned / LiteRT's, int8", "tuned", "int8", "rss", 1.1))


def peer_summary(by: dict, device: dict, date: str) -> dict:
    """`make peers` as data (peers.json): the best peer per precision, TVM's ratio to it per variant, the peak RSS
    ratio to LiteRT, the CPU and its int8 ISA, and each goal met or not, all from the same run."""
    def p50(runtime, precision):
        r = by.get((runtime, precision))
        return r["latency_ms"]["p50"] if r else None

    def rss(runtime, precision):
        r = by.get((runtime, precision))
        return r["peak_rss_mb"] if r else None

    summary = {"date": date, "cpu_model": device.get("cpu_model"), "int8_isa": device.get("int8_isa"),
               "threads": device.get("threads"), "precisions": {}, "goals": []}
    for precision in ("fp32", "int8"):
        peers = {rt: p50(rt, precision) for rt in ("litert", "onnxruntime") if p50(rt, precision)}
        if not peers:
            continue
        best = min(peers, key=peers.get)
        entry = {"best_peer": best, "best_peer_p50_ms": peers[best], "peers_p50_ms": peers, "tvm": {}}
        for variant in ("untuned", "default schedules", "tuned"):
            mine = p50(f"tvm ({variant})", precision)
            if mine:
                lite = rss("litert", precision)
                entry["tvm"][variant] = {
                    "p50_ms": mine, "vs_best_peer": round(mine / peers[best], 3),
                    "peak_rss_mb": rss(f"tvm ({variant})", precision),
                    "rss_vs_litert": round(rss(f"tvm ({variant})", precision) / lite, 3)
                    if lite and rss(f"tvm ({variant})", precision) else None}
        summary["precisions"][precision] = entry
    for what, variant, precision, against, limit in PEER_GOALS:
        tvm = summary["precisions"].get(precision, {}).get("tvm", {}).get(variant)
        value = None if tvm is None else tvm["vs_best_peer" if against == "best" else "rss_vs_litert"]
        summary["goals"].append({"goal": what, "at_most": limit, "value": value,
                                 "met": None if value is None else value <= limit})
    return summary


def _peer_goals(summary: dict) -> list[str]:
    lines = []
    for precision, entry in summary["precisions"].items():
        lines.append(f"- best peer {precision}: {entry['best_peer']} ({entry['best_peer_p50_ms']:.1f} ms)")
    for g in summary["goals"]:
        if g["value"] is not None:
            lines.append(f"- {g['goal']}: {g['value']:.2f}x ({'meets' if g['met'] else 'misses'} the goal "
                         f"<= {g['at_most']:.1f}x)")
    tvm = {p: e["tvm"].get("tuned") for p, e in summary["precisions"].items()}
    if tvm.get("fp32") and tvm.get("int8"):
        speedup = tvm["fp32"]["p50_ms"] / tvm["int8"]["p50_ms"]
        lines.append(f"- TVM int8 (tuned) is {speedup:.2f}x faster than TVM fp32 (tuned) "
                     f"({'meets' if speedup >= 1.5 else 'misses'} the goal >= 1.5x)")
    return [""] + lines if lines else []


def peer_table(runs: dict[str, dict], profiles: list[dict] | None = None, records: Path | None = None) -> tuple[str, dict]:
    """`make peers`: LiteRT, ONNX Runtime and TVM variants from one run, with TVM's per-function profile; and the
    same as data (peer_summary)."""
    base = runs["peers"]
    by, failed = {}, []
    for name, results in runs.items():
        for r in results["results"]:
            label = r["runtime"] if r["runtime"] != "tvm" else f"tvm ({VARIANTS[name][2]})"
            by[(label, r["precision"])] = r
        failed += [f"{name}/{f['file']}: {f['reason']}" for f in results.get("failed", [])]
    d = base["device"]
    date = base["created"][:10]
    isa = d.get("int8_isa") or this_cpu()["int8_isa"]
    lines = [f"Xception {base['model']['input_shape'][1]}x{base['model']['input_shape'][2]}, batch 1, "
             f"{d['threads']} threads, one run on {date}: {d['cpu_model']} ({d['cores']} cores, int8 ISA: {isa}), "
             f"{d['platform']}.", "",
             "| runtime | precision | p50 ms | p90 ms | runs | int8 speed-up | vs LiteRT (same precision) | peak RSS MB |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    order = ["litert", "onnxruntime"] + [f"tvm ({VARIANTS[n][2]})" for n in ("peers-untuned", "peers", "peers-tuned")]
    for runtime in order:
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
    lines += [f"FAILED {f}" for f in failed]
    summary = peer_summary(by, d | {"int8_isa": isa}, date)
    lines += _peer_goals(summary)
    if records is not None:
        lines += ["", f"Tuned rows use the records in {records}."]
    for p in profiles or []:
        lines += ["", format_profile(p, f"Where the time goes, TVM {p['variant']}, {p['file']}").rstrip()]
    summary["records"] = None if records is None else str(records)
    return "\n".join(lines) + "\n", summary
