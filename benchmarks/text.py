"""Plain-text tables for terminal output (numpy-free, import-light): the generic table, and the
runner's results as `make bench` prints them. Measuring lives in benchmarks.run."""
from __future__ import annotations

from benchmarks.files import typical_ms


def format_table(rows: list[tuple[str, ...]]) -> str:
    """Left-aligned columns; the first row is the header, underlined with dashes."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def results_table(results: dict) -> str:
    rows = [("artifact", "runtime", "p50 ms", "p90 ms", "n", "init ms", "peak RSS MB", "agree top-1", "top-1", "eval n")]
    for r in results["results"]:
        acc = r["accuracy"] or {"agreement_top1": None, "top1": None, "n": 0}      # None: imported, random inputs
        lat = r["latency_ms"]
        rows.append((r["file"], r["runtime"], f"{typical_ms(lat):.2f}", "-" if lat["p90"] is None else f"{lat['p90']:.2f}",
                     str(r["latency_ms"]["n"]), f"{r['init_ms']:.0f}",
                     "-" if r["peak_rss_mb"] is None else f"{r['peak_rss_mb']:.0f}",
                     "-" if acc["agreement_top1"] is None else f"{acc['agreement_top1'] * 100:.1f}%",
                     "-" if acc["top1"] is None else f"{acc['top1'] * 100:.1f}%",
                     str(acc["n"])))
    return format_table(rows)


def results_summary(results: dict, path) -> str:
    """What the runner and `make bench` print: the table, skips, failures, throttling, the file."""
    lines = [results_table(results)]
    lines += [f"  skipped {s['file']}: {s['reason']}" for s in results["skipped"]]
    lines += [f"  FAILED {f['file']}: {f['reason']}" for f in results["failed"]]
    env = results.get("runtime_env")             # over ssh: which Python ran it, and whether it is the verified one
    if env:
        lines.append(f"  runtimes: {env['python']}: " + (f"the environment make provision installed (wheel set "
                     f"{env['set_id']}), unchanged: verified" if env["verified"] else f"NOT verified: {env['why']}"))
    lines += [f"  NOTE {r['file']}: {r['runtime_note']}" for r in results["results"]
              if r.get("runtime_note") and not (env and r["runtime_note"] == env.get("why"))]
    lines += [f"  NOTE {r['file']}: ran on {r['opencl']['device']} ({r['opencl']['platform']}), a software OpenCL on "
              f"the CPU: a correctness run, not GPU speed" for r in results["results"]
              if (r.get("opencl") or {}).get("software")]
    lines += [f"  NOTE {r['file']}: ran on Mesa's lavapipe (Vulkan on the CPU): a correctness run, not GPU speed"
              for r in results["results"] if (r.get("vulkan") or {}).get("software")]
    if results["device"]["throttled"]:
        lines.append(f"  THROTTLED run: {', '.join(results['device']['throttle_reasons'])}")
    return "\n".join(lines) + f"\n\nresults: {path}"
