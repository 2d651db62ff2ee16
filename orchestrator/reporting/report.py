"""Write a run folder's report.json, report.md and latencies.csv."""

from __future__ import annotations

import csv
import json
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from orchestrator.driving.driver import Record, Timing
from orchestrator.figures.metrics import HopSample, timeline_rows


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": sys.version.split()[0], "kernel": platform.release()}
    for pkg in ("onnx", "onnxruntime", "grpcio", "numpy", "protobuf", "docker"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def git_revision() -> str | None:
    try:
        r = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).resolve().parent
        )
        return r.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def host_facts() -> dict:
    import psutil

    return {
        "cpus": psutil.cpu_count(),
        "memory_bytes": psutil.virtual_memory().total,
        "machine": platform.machine(),
        "system": platform.system(),
    }


def write_latencies(
    path: Path, records: list[Record], samples: list[HopSample], num_stages: int, measured_ids: set[int]
) -> None:
    """One row per request: id, send time, per-stage compute, per-hop transfer, end-to-end."""
    hop_names: list[str] = []
    by_id: dict[int, dict[str, float]] = {}
    for h in samples:
        by_id.setdefault(h.id, {})[f"hop_{h.src}_to_{h.dst}_ms"] = h.transfer_ms
    rows = []
    for r in records:
        comp = {t.stage: (t.end_ns - t.start_ns) / 1e6 for t in r.timings if 0 <= t.stage < num_stages}
        hops = by_id.get(r.id, {})
        for h in hops:
            if h not in hop_names:
                hop_names.append(h)
        rows.append((r, comp, hops))
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "id",
                "measured",
                "send_time_s",
                *[f"stage_{k}_compute_ms" for k in range(num_stages)],
                *hop_names,
                "end_to_end_ms",
                "error",
            ]
        )
        for r, comp, hops in rows:
            w.writerow(
                [
                    r.id,
                    int(r.id in measured_ids),
                    f"{r.intended_ns / 1e9:.6f}",
                    *[f"{comp[k]:.3f}" if k in comp else "" for k in range(num_stages)],
                    *[f"{hops[h]:.3f}" if h in hops else "" for h in hop_names],
                    f"{r.latency_ms:.3f}" if r.done_ns else "",
                    r.error,
                ]
            )


def _fmt(v, nd=1) -> str:
    if v is None:
        return "not measured"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def _pct(v) -> str:
    return "n/a" if v is None else f"{v:+.1f}%"


def _load_text(rep: dict) -> str:
    load = rep.get("load") or {}
    if load.get("mode") == "open":
        text = f"open loop at {load['rate_hz']:g} requests/s (latency from the intended send time)"
    else:
        text = f"closed loop, {rep.get('concurrency')} in flight"
    return text + (f", for {load['duration_s']:g} s" if load.get("duration_s") else "")


def render_markdown(rep: dict) -> str:
    lat = rep.get("latency_ms") or {}
    ag = rep.get("agreement") or {}
    acc = rep.get("accuracy") or {}
    fid = rep.get("fidelity") or {}
    lines = [
        f"# Run {rep['job']}: {rep.get('configuration', rep['algorithm'])} ({rep['runtime']} runtime)",
        "",
        f"Model `{Path(rep['model']).name}` in {len(rep['stages'])} stages "
        f"({' > '.join(s['device'] for s in rep['stages'])}), algorithm `{rep['algorithm']}` for "
        f"{rep.get('objective')}; {rep['requests']} measured requests after {rep['warmup']} warm-up, "
        f"batch {rep['batch']}, {_load_text(rep)}.",
        "",
        "## Summary",
        "",
        "| figure | value |",
        "|---|---|",
        f"| throughput | {_fmt(rep.get('throughput_fps'), 2)} images/s |",
    ]
    for k in ("min", "mean", "p50", "p90", "p95", "p99", "p99.9", "max", "stddev"):
        if k in lat:
            lines.append(f"| latency {k} | {_fmt(lat.get(k))} ms |")
    diff = ag.get("max_abs_diff")
    lines += [
        f"| accuracy top-1 / top-5 | {_fmt(acc.get('top1'), 4)} / {_fmt(acc.get('top5'), 4)}"
        + (f" ({acc['images']} images)" if acc.get("images") else f" ({acc.get('why', '')})")
        + " |",
        f"| agreement with the whole model: max abs diff | {'not measured' if diff is None else f'{diff:.3g}'} |",
        f"| agreement with the whole model: top-1 | {_fmt(ag.get('top1'), 4)} ({ag.get('checked', 0)} images) |",
    ]
    for name, d in (rep.get("devices") or {}).items():
        pm = d.get("peak_memory_bytes")
        e = (rep.get("energy") or {}).get(name) or {}
        lines.append(
            f"| {name}: peak memory, energy per image | {_fmt(pm / 2**20 if pm else None)} MiB, "
            f"{_fmt(e.get('energy_per_image_j'), 3)} J (modelled) |"
        )
    flagged = fid.get("flagged") or []
    lines.append(f"| fidelity | {'; '.join(flagged) if flagged else 'no link or CPU cap off by more than 10%'} |")
    if rep.get("host_cpu_busy") is not None:
        lines.append(f"| host CPUs busy while driving | {rep['host_cpu_busy']:.0%} |")
    lines.append(f"| errors | {rep.get('errors', 0)} |")
    if rep.get("repeats"):
        sp = rep.get("repeat_spread") or {}
        lines += [
            "",
            f"## Repeats ({len(rep['repeats'])})",
            "",
            f"Throughput is the median of the runs; spread {_fmt(sp.get('spread_pct'))}% "
            f"({_fmt(sp.get('throughput_fps_min'), 2)} to {_fmt(sp.get('throughput_fps_max'), 2)} images/s).",
            "",
            "| run | throughput images/s | p50 ms | p99 ms |",
            "|---|---|---|---|",
        ]
        for i, r in enumerate(rep["repeats"]):
            rl = r.get("latency_ms") or {}
            lines.append(
                f"| {i + 1} | {_fmt(r.get('throughput_fps'), 2)} | {_fmt(rl.get('p50'))} | {_fmt(rl.get('p99'))} |"
            )
    pv = rep.get("prediction_vs_measured")
    if pv:
        tp, lt = pv["throughput_fps"], pv["latency_ms"]
        lines += [
            "",
            "## Predicted and measured",
            "",
            "| figure | predicted | measured | error |",
            "|---|---|---|---|",
            f"| throughput images/s at this load (pipeline full: {_fmt(tp.get('predicted_unloaded'), 2)}) | "
            f"{_fmt(tp['predicted'], 2)} | {_fmt(tp['measured'], 2)} | "
            f"{_pct(tp['error_pct'])} |",
            f"| latency ms at this load (measured p50; unloaded {_fmt(lt.get('predicted_unloaded'))} "
            f"predicted) | {_fmt(lt['predicted'])} | {_fmt(lt['measured_p50'])} | {_pct(lt['error_pct'])} |",
        ]
        for st in pv["stages"]:
            lines.append(
                f"| stage {st['index']} on {st['device']} ms per frame (busy; measured: compute mean) | "
                f"{_fmt(st['predicted_ms'], 2)} | "
                f"{_fmt(st['measured_ms'], 2)} | {_pct(st['error_pct'])} |"
            )
        for tr in pv["transfers"]:
            lines.append(
                f"| transfer {tr['from']} -> {tr['to']} ms (mean) | {_fmt(tr['predicted_ms'], 2)} | "
                f"{_fmt(tr['measured_ms'], 2)} | {_pct(tr['error_pct'])} |"
            )
        lines += [
            "",
            "A stage's predicted time is its step while kept busy; a stage that waits for its frames "
            "starts each one with a fresh CPU quota and computes faster than that.",
        ]
    if rep.get("comparison"):
        lines += [
            "",
            "## Configurations compared",
            "",
            "| configuration | stages on | throughput images/s | predicted | p50 ms | p99 ms |",
            "|---|---|---|---|---|---|",
        ]
        for r in rep["comparison"]:
            lines.append(
                f"| {r['name']} | {' > '.join(r['devices'])} | {_fmt(r['throughput_fps'], 2)} | "
                f"{_fmt(r['predicted_fps'], 2)} | {_fmt(r['latency_p50_ms'])} | {_fmt(r['latency_p99_ms'])} |"
            )
    if rep.get("breakdown"):
        lines += [
            "",
            "## Where the time goes",
            "",
            "| part | where | p50 ms | mean ms | share of end to end |",
            "|---|---|---|---|---|",
        ]
        for row in rep["breakdown"]:
            lines.append(
                f"| {row['part']} | {row['where']} | {_fmt(row['p50_ms'], 2)} | {_fmt(row['mean_ms'], 2)} | "
                f"{_fmt(row['share_pct'])}% |"
            )
        if rep.get("clocks"):
            offs = ", ".join(
                f"{d} {c['offset_ns'] / 1e6:+.3f} ms (+/- {c['uncertainty_ns'] / 1e6:.3f})"
                for d, c in rep["clocks"].items()
            )
            lines += [
                "",
                f"Node clocks against the orchestrator's (removed from the figures where larger than "
                f"their uncertainty): {offs}.",
            ]
    lines += [
        "",
        "## Stages",
        "",
        "| stage | device | queue p50 ms | compute p50 ms | compute p99 ms |",
        "|---|---|---|---|---|",
    ]
    for s in rep["stages"]:
        c, q = s.get("compute_ms") or {}, s.get("queue_ms") or {}
        lines.append(
            f"| {s['index']} | {s['device']} | {_fmt(q.get('p50'), 2)} | {_fmt(c.get('p50'), 2)} | "
            f"{_fmt(c.get('p99'), 2)} |"
        )
    lines += [
        "",
        "## Hops",
        "",
        "| from | to | bytes | link wait p50 ms | transfer p50 ms | transfer p99 ms |",
        "|---|---|---|---|---|---|",
    ]
    for h in rep["hops"]:
        t, w = h.get("transfer_ms") or {}, h.get("link_wait_ms") or {}
        lines.append(
            f"| {h['from']} | {h['to']} | {h['bytes']} | {_fmt(w.get('p50'), 2)} | {_fmt(t.get('p50'), 2)} "
            f"| {_fmt(t.get('p99'), 2)} |"
        )
    lines += [
        "",
        "## Devices",
        "",
        "| device | peak memory MiB | CPU mean of cap | CPU peak of cap | energy per image J | peak power W |",
        "|---|---|---|---|---|---|",
    ]
    energy = rep.get("energy") or {}
    for name, d in (rep.get("devices") or {}).items():
        pm = d.get("peak_memory_bytes")
        e = energy.get(name) or {}
        lines.append(
            f"| {name} | {_fmt(pm / 2**20 if pm else None)} | {_fmt(d.get('cpu_mean_of_cap'), 2)} | "
            f"{_fmt(d.get('cpu_peak_of_cap'), 2)} | {_fmt(e.get('energy_per_image_j'), 3)} | "
            f"{_fmt(e.get('peak_power_w'), 2)} |"
        )
    for name, g in (rep.get("gpu_energy") or {}).items():
        lines.append(
            f"| {name} GPU | | | | {_fmt(g.get('energy_per_image_j'), 3)} | {_fmt(g.get('peak_power_w'), 2)} "
            f"({g.get('method')}) |"
        )
    if energy:
        lines += [
            "",
            "Energy and power are modelled from each device's CPU share and its power model "
            "(idle_w + (max_w - idle_w) x CPU share of its cap), not measured; memory and CPU "
            "are measured.",
        ]
    if fid.get("links"):
        lines += [
            "",
            "## Fidelity: links",
            "",
            "| from | to | configured Mbit/s | achieved Mbit/s | error | configured delay ms | achieved delay ms "
            "| method |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for link in fid["links"]:
            cfg = link.get("configured_bps")
            ach = link.get("achieved_bps")
            err = link["error"] * 100 if link.get("error") is not None else None
            lines.append(
                f"| {link['from']} | {link['to']} | {_fmt(cfg / 1e6 if cfg else None, 2)} | "
                f"{_fmt(ach / 1e6 if ach else None, 2)} | {_pct(err)} | "
                f"{_fmt(link.get('configured_delay_ms'), 2)} | {_fmt(link.get('achieved_delay_ms'), 2)} | "
                f"{link.get('method', '')} |"
            )
    if fid.get("cpus"):
        lines += [
            "",
            "## Fidelity: CPU caps",
            "",
            "| device | configured CPUs | achieved CPUs | error |",
            "|---|---|---|---|",
        ]
        for c in fid["cpus"]:
            lines.append(
                f"| {c['device']} | {_fmt(c.get('configured'), 3)} | {_fmt(c.get('achieved'), 3)} | "
                f"{_pct(c['error'] * 100 if c.get('error') is not None else None)} |"
            )
    if rep.get("plots"):
        lines += ["", "## Plots", ""] + [f"![{Path(p).stem}]({p})" for p in rep["plots"]]
    if rep.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in rep["notes"]]
    return "\n".join(lines) + "\n"


def write_report(run_dir: Path, rep: dict) -> None:
    (run_dir / "report.json").write_text(json.dumps(rep, indent=2, default=str) + "\n")
    (run_dir / "report.md").write_text(render_markdown(rep))


def write_requests(path: Path, records: list[Record], measured_ids: set[int]) -> None:
    """Every request's raw stamps, so that `orchestrator report` can redraw the run."""
    with open(path, "w") as f:
        for r in records:
            f.write(
                json.dumps(
                    {
                        "id": r.id,
                        "key": r.key,
                        "measured": r.id in measured_ids,
                        "intended_ns": r.intended_ns,
                        "sent_ns": r.sent_ns,
                        "done_ns": r.done_ns,
                        "error": r.error,
                        "timings": [
                            [
                                t.stage,
                                t.device,
                                t.recv_ns,
                                t.start_ns,
                                t.end_ns,
                                t.send_ns,
                                t.bytes_out,
                                t.serialize_ns,
                                t.deserialize_ns,
                            ]
                            for t in r.timings
                        ],
                    }
                )
                + "\n"
            )


def read_requests(path: Path) -> tuple[list[Record], set[int]]:
    records, measured = [], set()
    for line in Path(path).read_text().splitlines():
        d = json.loads(line)
        r = Record(id=d["id"], sent_ns=d["sent_ns"], key=d["key"], intended_ns=d["intended_ns"])
        r.done_ns, r.error = d["done_ns"], d["error"]
        r.timings = [Timing(*t) for t in d["timings"]]
        records.append(r)
        if d["measured"]:
            measured.add(r.id)
    return records, measured


def read_stats(stats_dir: Path) -> dict[str, list[dict]]:
    return {
        p.stem: [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
        for p in sorted(Path(stats_dir).glob("*.jsonl"))
    }


def write_plots(
    run_dir: Path,
    rep: dict,
    records: list[Record],
    measured_ids: set[int],
    stats: dict[str, list[dict]],
    view: dict | None,
    offsets: dict[str, int] | None = None,
) -> list[str]:
    """Draw every plot of the run into run_dir/plots; return their paths relative to run_dir."""
    from orchestrator.figures.latency import per_second
    from orchestrator.reporting import plots

    out = run_dir / "plots"
    n = len(rep["stages"])
    measured = [r for r in records if r.id in measured_ids]
    made = [plots.latency_cdf([r.latency_ms for r in measured], out / "latency_cdf.png")]
    made.append(
        plots.throughput_over_time(
            per_second([r.done_ns / 1e9 for r in measured], [r.latency_ms for r in measured], rep["batch"]),
            out / "throughput.png",
        )
    )
    made.append(plots.breakdown(rep["stages"], rep["hops"], out / "breakdown.png"))
    if any(stats.values()):
        made.append(plots.device_usage(stats, out / "devices.png"))
    made.append(plots.timeline(timeline_rows(records, n, offsets), out / "timeline.png"))
    if view:
        rep["partition_view"] = view
        made.append(
            plots.partition_map(
                view["cost"],
                view["live_bytes"],
                view["cuts"],
                view["devices"],
                out / "partition.png",
                view.get("title", ""),
            )
        )
    if rep.get("comparison"):
        made.append(comparison_plot(run_dir, rep["comparison"]))
    return [str(p.relative_to(run_dir)) for p in made]


def comparison_plot(run_dir: Path, rows: list[dict]) -> Path:
    from orchestrator.reporting import plots

    return plots.comparison(
        [r["name"] for r in rows],
        [r["throughput_fps"] for r in rows],
        [r["latency_p50_ms"] for r in rows],
        [r["latency_p99_ms"] for r in rows],
        run_dir / "plots" / "comparison.png",
        predicted=[r.get("predicted_fps") for r in rows],
    )


def write_comparison(run_dir: Path, rep: dict) -> None:
    """Add the side-by-side table and plot to the first configuration's report."""
    path = str(comparison_plot(run_dir, rep["comparison"]).relative_to(run_dir))
    rep["plots"] = [p for p in rep.get("plots") or [] if p != path] + [path]
    write_report(run_dir, rep)


def rebuild(run_dir: Path) -> dict:
    """Redraw a run folder's plots and report.md from report.json, requests.jsonl and stats/."""
    run_dir = Path(run_dir)
    rep = json.loads((run_dir / "report.json").read_text())
    records, measured = read_requests(run_dir / "requests.jsonl")
    rep["plots"] = write_plots(
        run_dir,
        rep,
        records,
        measured,
        read_stats(run_dir / "stats"),
        rep.get("partition_view"),
        rep.get("clock_offsets_ns"),
    )
    write_report(run_dir, rep)
    return rep


def partition_view(plan, graph) -> dict:
    """What the partition plot needs: per-node cost, live bytes, and the chosen cuts."""
    cuts = []
    for s in plan.stages[:-1]:
        produced = [graph.prod[t] for t in s.outputs if graph.prod.get(t, -1) >= 0]
        cuts.append(max(produced) + 1 if produced else 0)
    return {
        "cost": list(graph.cost),
        "live_bytes": list(graph.live_bytes),
        "cuts": cuts,
        "devices": [s.device for s in plan.stages],
        "title": f"{Path(plan.model).name}: {len(plan.stages)} stages ({plan.algorithm})",
    }
