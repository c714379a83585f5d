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
    """What the int8 recovery ladder did, in a few words: "CLE on 3 layer pairs; all int8", "2 layers kept float
    (conv_a, conv_b) after CLE on 3 layer pairs", ""."""
    cle = next((r for r in recovery.get("rungs", []) if r.get("rung") == "cle" and r.get("applied")), None)
    equalized = f"CLE on {len(cle['pairs'])} layer pairs" if cle and recovery.get("equalized") else ""
    floated = recovery.get("float_layers") or []
    if recovery.get("status") == "recovered" and floated:
        return f"{len(floated)} layers kept float ({', '.join(floated)})" + (f" after {equalized}" if equalized else "")
    if equalized:
        return f"{equalized}; all int8"
    return ""
