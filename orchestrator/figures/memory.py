"""Memory as the nodes held it, beside what the planner predicted for each stage.

The planner predicts a node's resident (anonymous) memory (partition.memory); the samplers measure
it apart from the page cache (runtimes/stats.py). A stage is compared with its device's peak
resident memory where the device runs that stage alone: a device holding several stages, or none,
has no single prediction to hold against.
"""

from __future__ import annotations

from orchestrator.partition.plan import Plan
from orchestrator.runtimes.stats import StatsLine, memory_peaks

TOLERANCE = 0.10  # the memory model's promise: within 10% of the measured peak resident memory
PAGE_CACHE_NOTE = (
    "memory: page cache not measured on this runtime (plain processes share the host's); "
    "resident memory is each node's anonymous memory (RssAnon)"
)


def memory_figures(plan: Plan, stats: dict[str, list[StatsLine]]) -> dict:
    """report.json's `memory`: per stage, predicted beside measured; whether page cache was measured."""
    peaks = memory_peaks(stats)
    per_device: dict[str, int] = {}
    for s in plan.stages:
        per_device[s.device] = per_device.get(s.device, 0) + 1
    stages = []
    for s in plan.stages:
        p = peaks.get(s.device)
        measured = p.resident if p is not None and per_device[s.device] == 1 else None
        error = round(s.memory_bytes / measured - 1.0, 4) if s.memory_bytes and measured else None
        stages.append(
            {
                "index": s.index,
                "device": s.device,
                "memory_mode": s.memory_mode,
                "predicted_bytes": s.memory_bytes,
                "peak_resident_bytes": measured,
                "error": error,
                "within_tolerance": None if error is None else abs(error) <= TOLERANCE,
            }
        )
    compared = [x["within_tolerance"] for x in stages if x["within_tolerance"] is not None]
    return {
        "stages": stages,
        "tolerance": TOLERANCE,
        "all_within_tolerance": all(compared) if compared else None,
        "resident_measured": any(p.resident is not None for p in peaks.values()),
        "page_cache_measured": any(p.page_cache is not None for p in peaks.values()),
    }


def memory_notes(figures: dict) -> list[str]:
    """What the report should say about its memory figures."""
    notes = []
    if figures["resident_measured"] and not figures["page_cache_measured"]:
        notes.append(PAGE_CACHE_NOTE)
    off = [x for x in figures["stages"] if x["within_tolerance"] is False]
    if off:
        notes.append(
            "memory: predicted resident memory off by more than "
            f"{figures['tolerance']:.0%} for "
            + ", ".join(f"stage {x['index']} on {x['device']} ({x['error']:+.1%})" for x in off)
        )
    return notes
