"""`orchestrator report`: redraw a run folder's plots and report.md from the files the run left."""

from __future__ import annotations

from pathlib import Path

from orchestrator.reporting.files import read_requests, read_stats
from orchestrator.reporting.markdown import load_report, write_report
from orchestrator.reporting.plots import write_plots


def rebuild(run_dir: Path) -> dict:
    """Redraw from report.json, requests.jsonl and stats/; return the report as written again."""
    run_dir = Path(run_dir)
    rep = load_report(run_dir)
    records, measured = read_requests(run_dir / "requests.jsonl")
    plots = write_plots(run_dir, rep, records, measured, read_stats(run_dir / "stats"), rep.get("clock_offsets_ns"))
    rep = rep | {"plots": plots}
    write_report(run_dir, rep)
    return rep
