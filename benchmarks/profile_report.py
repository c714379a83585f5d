"""Rendering a TVM profile (benchmarks/profile.py measures): the functions grouped by kind and the slowest ones,
as Markdown tables."""
from __future__ import annotations

import re


def kind_of(name: str) -> str:
    """A function's kind: its name without the numbers TVM appends to tell same-kind functions apart
    (``fused_conv2d18_add9_relu7`` -> ``fused_conv2d_add_relu``, ``int8_dot_conv9`` -> ``int8_dot_conv``)."""
    return re.sub(r"(?<!int)(?<!float)(?<!\d)\d+(?=_|$)", "", name)


def by_kind(rows: list[dict]) -> list[dict]:
    """The functions' rows summed per kind, slowest first."""
    kinds: dict[str, dict] = {}
    for r in rows:
        kind = kind_of(r["name"])
        k = kinds.setdefault(kind, {"kind": kind, "functions": 0, "calls": 0, "ms": 0.0, "share": 0.0})
        k["functions"] += 1
        for field in ("calls", "ms", "share"):
            k[field] += r[field]
    return sorted(kinds.values(), key=lambda k: -k["ms"])


def markdown_rows(rows: list[dict], label: str, key: str, counts: tuple[str, ...], top: int, others: str) -> list[str]:
    """Markdown: a row per entry (its ``key``, ``counts`` columns, ms, share); past ``top``, one row for the rest."""
    def line(name: str, entries: list[dict]) -> str:
        cells = [name, *(str(sum(e[c] for e in entries)) for c in counts),
                 f"{sum(e['ms'] for e in entries):.2f}", f"{sum(e['share'] for e in entries) * 100:.1f}%"]
        return "| " + " | ".join(cells) + " |"

    head = [label, *counts, "ms", "share"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    lines += [line(r[key], [r]) for r in rows[:top]]
    if rows[top:]:
        lines.append(line(f"({len(rows[top:])} {others})", rows[top:]))
    return lines


def format_profile(profile: dict, title: str, top: int = 12, top_kinds: int = 6) -> str:
    rows = profile["functions"]
    kinds = by_kind(rows)
    lines = [f"{title}: {profile['total_ms']:.1f} ms per inference (median of {profile['runs']}, instrumented), "
             f"{len(rows)} functions of {len(kinds)} kinds.", ""]
    lines += markdown_rows(kinds, "kind", "kind", ("functions", "calls"), top_kinds, "other kinds")
    lines += ["", f"The {min(top, len(rows))} slowest functions:", ""]
    lines += markdown_rows(rows, "function", "name", ("calls",), top, "others")
    return "\n".join(lines) + "\n"
