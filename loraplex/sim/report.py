"""Tables of simulation results: markdown (for docs) and plain text (for terminals)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

COLUMNS: list[tuple[str, str, str]] = [
    # (summary key, header, format)
    ("policy", "policy", "{}"),
    ("gpu_hours", "GPU-h", "{:,.1f}"),
    ("p50_s", "p50 s", "{:.2f}"),
    ("p95_s", "p95 s", "{:.2f}"),
    ("p99_s", "p99 s", "{:.2f}"),
    ("p50_x", "p50 x", "{:.3f}"),
    ("p95_x", "p95 x", "{:.3f}"),
    ("p99_x", "p99 x", "{:.3f}"),
    ("swap_ram", "RAM swaps/req", "{:.3f}"),
    ("swap_disk", "disk/req", "{:.3f}"),
    ("swap_source", "source/req", "{:.3f}"),
    ("swap_switch", "load+unload/req", "{:.3f}"),
    ("cold_starts", "pod starts", "{:,}"),
    ("waited", "waited for pod", "{:,}"),
    ("rejected", "429", "{:,}"),
    ("mean_gpus", "mean GPUs", "{:.1f}"),
    ("max_gpus", "max GPUs", "{}"),
]


def _cells(row: dict[str, Any], columns: Sequence[tuple[str, str, str]]) -> list[str]:
    out = []
    for key, _, fmt in columns:
        v = row.get(key, "")
        try:
            out.append(fmt.format(v))
        except (ValueError, TypeError):
            out.append(str(v))
    return out


def markdown_table(
    rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str, str]] = COLUMNS, baseline: str | None = None
) -> str:
    """A markdown table; with `baseline` (a policy name), a column of GPU-hours saved against it."""
    cols = list(columns)
    rows = [dict(r) for r in rows]
    if baseline is not None:
        base = next((r for r in rows if r["policy"] == baseline), None)
        if base is not None:
            for r in rows:
                r["vs_base"] = base["gpu_hours"] / r["gpu_hours"] if r["gpu_hours"] else float("inf")
            cols.insert(2, ("vs_base", f"fewer GPU-h than {baseline}", "{:.1f}x"))
    head = "| " + " | ".join(h for _, h, _ in cols) + " |"
    sep = "|" + "|".join("---" if i == 0 else "---:" for i in range(len(cols))) + "|"
    body = ["| " + " | ".join(_cells(r, cols)) + " |" for r in rows]
    return "\n".join([head, sep, *body])


def text_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str, str]] = COLUMNS) -> str:
    cells = [[h for _, h, _ in columns]] + [_cells(r, columns) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(columns))]
    lines = []
    for k, row in enumerate(cells):
        lines.append("  ".join(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(row)))
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)
