"""Rendering a gate report (benchmarks/gate.py judges): the terminal table and JUnit XML for CI."""
from __future__ import annotations

import xml.etree.ElementTree as ET

from benchmarks.text import format_table


def fmt(v) -> str:
    return "-" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))


def junit(report: dict) -> str:
    checks = report["checks"]
    suite = ET.Element("testsuite", name=f"gate-{report['target']}", tests=str(len(checks)),
                       failures=str(sum(c["status"] == "fail" for c in checks)),
                       skipped=str(sum(c["status"] == "skip" for c in checks)), timestamp=report["created"])
    for c in checks:
        case = ET.SubElement(suite, "testcase", classname=f"gate.{report['target']}.{c['artifact']}", name=c["metric"])
        if c["status"] == "fail":
            ET.SubElement(case, "failure", message=c["message"], type="GateFailed").text = c["message"]
        elif c["status"] == "skip":
            ET.SubElement(case, "skipped", message=c["detail"])
        ET.SubElement(case, "system-out").text = f"source: {c['source']}"
    return ET.tostring(suite, encoding="unicode", xml_declaration=True)


def table(report: dict) -> str:
    rows = [("artifact", "metric", "value", "threshold", "result", "source")]
    for c in report["checks"]:
        thr = "" if c["threshold"] is None else f"{c['op']} {fmt(c['threshold'])}"
        rows.append((c["artifact"], c["metric"], fmt(c["value"]), thr, c["status"].upper(),
                     c["source"] if c["status"] != "skip" else c["detail"]))
    return format_table(rows)


def ladder_summary(recovery: dict) -> str:
    """What the int8 recovery ladder did, in a few words: "CLE on 3 layer pairs; all int8", "CLE on 3 layer pairs,
    bias correction on 4 layers, 16x8 (int16 activations) for the whole model; int8 weights, no float layer",
    "2 layers kept float (conv_a, conv_b) after CLE on 3 layer pairs", ""."""
    applied = {r.get("rung"): r for r in recovery.get("rungs", []) if r.get("applied")}
    done = []
    if "cle" in applied and recovery.get("equalized"):
        done.append(f"CLE on {len(applied['cle']['pairs'])} layer pairs")
    if "bias" in applied and recovery.get("bias_corrected"):
        done.append(f"bias correction on {len(applied['bias']['layers'])} layers")
    sixteen = recovery.get("activations") == "int16"
    if sixteen:
        done.append("16x8 (int16 activations) for the whole model")
    floated = recovery.get("float_layers") or []
    if recovery.get("status") == "recovered" and floated:
        return f"{len(floated)} layers kept float ({', '.join(floated)})" + (f" after {', '.join(done)}" if done
                                                                              else "")
    if done:
        return ", ".join(done) + ("; int8 weights, no float layer" if sixteen else "; all int8")
    return ""
