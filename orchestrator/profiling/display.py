"""A profile for people: one row per block with its bounds, memory and milliseconds per device."""

from __future__ import annotations

from rich.table import Table

from orchestrator.profiling.results import Profile


def _mib(n: float) -> str:
    return f"{n / 1024**2:.1f}"


def profile_to_rows(p: Profile) -> list[dict[str, str]]:
    """One row per block (and a total row): bounds, first node, memory, bytes after, ms per device."""
    rows: list[dict[str, str]] = []
    names = list(p.table.block_s)
    b = p.table.bounds
    for k in range(len(b) - 1):
        row = {
            "block": str(k),
            "nodes": f"{b[k]}..{b[k + 1] - 1}",
            "first node": p.block_names[k] if k < len(p.block_names) else "",
            "weights MiB": _mib(p.block_weights[k]),
            "memory MiB": _mib(p.block_memory[k]),
            "cut KiB": f"{p.cut_bytes[k + 1] / 1024:.1f}",
        }
        for n in names:
            row[f"{n} ms"] = f"{p.table.block_s[n][k] * 1e3:.2f}"
        rows.append(row)
    total = {
        "block": "total",
        "nodes": f"0..{b[-1] - 1}",
        "first node": "",
        "weights MiB": _mib(sum(p.block_weights)),
        "memory MiB": _mib(max(p.block_memory, default=0)),
        "cut KiB": "",
    }
    for n in names:
        total[f"{n} ms"] = f"{p.device_total_s(n) * 1e3:.2f}"
    rows.append(total)
    blank = {k: "" for k in total}
    rows.append(
        blank
        | {"block": "per frame", "first node": "beside compute, when busy"}
        | {f"{n} ms": f"{p.table.overhead_s.get(n, 0.0) * 1e3:.2f}" for n in names}
    )
    rows.append(
        blank
        | {"block": "round trip", "first node": "driver to node and back"}
        | {f"{n} ms": f"{p.table.roundtrip_s.get(n, 0.0) * 1e3:.2f}" for n in names}
    )
    return rows


def profile_table(p: Profile, title: str) -> Table:
    """The rows of `profile_to_rows` as a table to print."""
    rows = profile_to_rows(p)
    t = Table(title=title)
    for col in rows[0]:
        t.add_column(col, justify="right")
    for r in rows:
        t.add_row(*r.values())
    return t
