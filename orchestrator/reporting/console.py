"""What `orchestrator run` prints when a configuration is done, and when several were compared."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from orchestrator.figures import disruption


def print_summary(console: Console, rep: dict, run_dir: Path) -> None:
    """The headline figures of one configuration's report, and where its run folder is."""
    # a generation run's requests are its sequences' steps, one token each
    unit, what = ("steps", "step") if rep.get("task") == "generate" else ("images", "inference")
    requests = "steps" if what == "step" else "requests"
    t = Table(title=f"{rep['job']} [{rep['configuration']}]: {rep['requests']} {requests}, {rep['runtime']} runtime")
    t.add_column("figure")
    t.add_column("value", justify="right")
    fps = rep["throughput_fps"]
    t.add_row("throughput", f"{fps:.2f} {unit}/s" if fps else "not measured")
    for k in ("p50", "p90", "p99", "max"):
        v = (rep["latency_ms"] or {}).get(k)
        if v is not None:
            t.add_row(f"latency {k}", f"{v:.1f} ms")
    if rep.get("task") == "generate" and (line := generation_line(rep)) is not None:
        t.add_row("generation", line)
    for s in rep["stages"]:
        c = s.get("compute_ms") or {}
        t.add_row(f"stage {s['index']} on {s['device']}", f"{c.get('p50', float('nan')):.1f} ms p50")
    for name, u in (rep.get("gpu_use") or {}).items():
        where = "CUDA" if u["on_gpu"] else f"[bold red]{u['fallback']} (CPU fallback)"
        t.add_row(f"{name}'s GPU {u['gpu_index']}", where)
    for h in rep["hops"]:
        tm = h.get("transfer_ms") or {}
        t.add_row(f"hop {h['from']} -> {h['to']}", f"{tm.get('p50', float('nan')):.2f} ms p50, {h['bytes']} B")
    ag = rep["agreement"]
    if ag.get("max_abs_diff") is not None:
        t.add_row("agreement", f"max abs diff {ag['max_abs_diff']:.2e}, top-1 {ag['top1']}")
    acc = rep["accuracy"]
    t.add_row(
        "accuracy",
        f"top-1 {acc['top1']:.3f}, top-5 {acc['top5']:.3f}" if acc.get("top1") is not None else "not measured",
    )
    pv = rep.get("prediction_vs_measured") or {}
    if (pv.get("throughput_fps") or {}).get("error_pct") is not None:
        t.add_row(
            "predicted throughput",
            f"{pv['throughput_fps']['predicted']:.2f} {unit}/s ({pv['throughput_fps']['error_pct']:+.1f}%)",
        )
    if (line := energy_line(rep.get("energy_split"))) is not None:
        t.add_row(f"energy per {what}", line)
    t.add_row("errors", str(rep["errors"]))
    if rep.get("events") or rep.get("plans"):
        _add_disruption(t, rep)
    for f in (rep.get("fidelity") or {}).get("flagged") or []:
        t.add_row("[bold red]fidelity off >10%", f)
    console.print(t)
    console.print(f"run folder: {run_dir}")


def generation_line(rep: dict) -> str | None:
    """One line of a generation run (figures.generation): TTFT and TPOT p50, tokens/s in total and per
    sequence, whether the tokens are the whole model's (None where nothing was measured)."""
    ttft, tpot = (rep.get("ttft_ms") or {}).get("p50"), (rep.get("tpot_ms") or {}).get("p50")
    tps = rep.get("tokens_per_s") or {}
    total, per = tps.get("total"), (tps.get("per_sequence") or {}).get("p50")
    if ttft is None and tpot is None and total is None:
        return None

    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f} ms"

    match = rep.get("tokens_match")
    said = "not checked" if match is None else ("yes" if match else "[bold red]NO")
    pred = rep.get("predicted_generation") or {}
    planned = (
        f" (predicted {pred['tpot_ms']:.2f} ms, {pred['tpot_error_pct']:+.1f}% of the mean)"
        if pred.get("tpot_ms") is not None and pred.get("tpot_error_pct") is not None
        else ""
    )
    return (
        f"TTFT p50 {ms(ttft)}, TPOT p50 {ms(tpot)}{planned}, "
        f"{'-' if total is None else f'{total:.1f}'} tokens/s "
        f"({'-' if per is None else f'{per:.1f}'} per sequence p50), tokens match {said}"
    )


def energy_line(split: dict | None) -> str | None:
    """One line: energy per inference predicted and measured, computation and communication apart
    (None where neither was had)."""
    total = (split or {}).get("total") or {}
    pred, meas = total.get("predicted"), total.get("measured")
    if pred is None and meas is None:
        return None

    def said(fig: dict | None, label: str) -> str:
        if fig is None:
            return f"{label} -"
        return (
            f"{label} {fig['total_j'] * 1e3:.1f} mJ (comp {fig['computation_j'] * 1e3:.1f}, "
            f"comm {fig['communication_j'] * 1e3:.1f})"
        )

    err = total.get("error_pct")
    return (
        said(pred, "predicted")
        + "; "
        + said(meas, "measured")
        + (f", {err:+.1f}%" if err is not None else "")
        + " [measured: CPU time and bytes at the modelled power]"
    )


def _add_disruption(t: Table, rep: dict) -> None:
    """A row per plan in force and per event (figures.disruption), and the requests lost and resent."""
    for p in disruption.plan_rows(rep):
        t.add_row(f"plan {p['index']}", disruption.plan_text(p))
    shown, links = disruption.headline_events(disruption.disruption_rows(rep))
    for r in shown:
        t.add_row(disruption.event_title(r), disruption.event_text(r))
    if links:
        t.add_row(f"{links} link changes", "one line each in report.md")
    counts = disruption.lost_resent(rep)
    if counts:
        t.add_row("requests lost / resent", f"{counts[0]} / {counts[1]}")
    if rep.get("complete") is False:
        t.add_row("[bold red]run interrupted", "figures of what was measured until then")


def print_comparison(console: Console, rows: list[dict]) -> None:
    """One line per compared configuration (figures.compare.comparison_rows)."""
    t = Table(title="comparison")
    for col in ("configuration", "stages on", "throughput", "predicted", "p50 ms", "p99 ms"):
        t.add_column(col, justify="right" if col not in ("configuration", "stages on") else "left")
    for r in rows:
        t.add_row(
            r["name"],
            " > ".join(r["devices"]),
            f"{r['throughput_fps']:.2f}/s" if r["throughput_fps"] else "-",
            f"{r['predicted_fps']:.2f}/s" if r["predicted_fps"] else "-",
            f"{r['latency_p50_ms']:.1f}" if r["latency_p50_ms"] else "-",
            f"{r['latency_p99_ms']:.1f}" if r["latency_p99_ms"] else "-",
        )
    console.print(t)
