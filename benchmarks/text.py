"""Plain-text tables for terminal output (numpy-free, import-light)."""
from __future__ import annotations


def format_table(rows: list[tuple[str, ...]]) -> str:
    """Left-aligned columns; the first row is the header, underlined with dashes."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
