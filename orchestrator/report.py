"""Write a run folder's report.json, report.md and latencies.csv."""

from __future__ import annotations

import csv
import json
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from .driver import Record
from .metrics import HopSample, hops_of


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
        r = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                           cwd=Path(__file__).resolve().parent)
        return r.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def host_facts() -> dict:
    import psutil

    return {"cpus": psutil.cpu_count(), "memory_bytes": psutil.virtual_memory().total,
            "machine": platform.machine(), "system": platform.system()}


def write_latencies(path: Path, records: list[Record], samples: list[HopSample], num_stages: int,
                    warmup: int) -> None:
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
        w.writerow(["id", "warmup", "send_time_s", *[f"stage_{k}_compute_ms" for k in range(num_stages)],
                    *hop_names, "end_to_end_ms", "error"])
        for r, comp, hops in rows:
            w.writerow([r.id, int(r.id < warmup), f"{r.sent_ns / 1e9:.6f}",
                        *[f"{comp[k]:.3f}" if k in comp else "" for k in range(num_stages)],
                        *[f"{hops[h]:.3f}" if h in hops else "" for h in hop_names],
                        f"{r.latency_ms:.3f}" if r.done_ns else "", r.error])


def _fmt(v, nd=1) -> str:
    if v is None:
        return "not measured"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def render_markdown(rep: dict) -> str:
    lat = rep.get("latency_ms") or {}
    ag = rep.get("agreement") or {}
    lines = [f"# Run {rep['job']} ({rep['runtime']} runtime)", "",
             f"Model `{rep['model']}`, {len(rep['stages'])} stages, algorithm `{rep['algorithm']}`; "
             f"{rep['requests']} measured requests after {rep['warmup']} warm-up, "
             f"batch {rep['batch']}, {rep['concurrency']} in flight.", "",
             "| figure | value |", "|---|---|",
             f"| throughput | {_fmt(rep.get('throughput_fps'), 2)} images/s |"]
    for k in ("min", "mean", "p50", "p90", "p95", "p99", "p99.9", "max", "stddev"):
        if k in lat:
            lines.append(f"| latency {k} | {_fmt(lat.get(k))} ms |")
    diff = ag.get("max_abs_diff")
    lines += [f"| agreement: max abs diff | {'not measured' if diff is None else f'{diff:.3g}'} |",
              f"| agreement: top-1 | {_fmt(ag.get('top1'), 4)} ({ag.get('checked', 0)} images) |",
              f"| accuracy top-1 / top-5 | {_fmt((rep.get('accuracy') or {}).get('top1'))} / "
              f"{_fmt((rep.get('accuracy') or {}).get('top5'))} |",
              f"| errors | {rep.get('errors', 0)} |", "",
              "## Stages", "", "| stage | device | compute p50 ms | compute p99 ms | queue p50 ms | predicted s |",
              "|---|---|---|---|---|---|"]
    pred = (rep.get("predicted") or {}).get("stage_s") or []
    for s in rep["stages"]:
        c, q = s.get("compute_ms") or {}, s.get("queue_ms") or {}
        p = pred[s["index"]] if s["index"] < len(pred) else None
        lines.append(f"| {s['index']} | {s['device']} | {_fmt(c.get('p50'), 2)} | {_fmt(c.get('p99'), 2)} | "
                     f"{_fmt(q.get('p50'), 2)} | {_fmt(p, 4)} |")
    lines += ["", "## Hops", "", "| from | to | bytes | transfer p50 ms | transfer p99 ms |", "|---|---|---|---|---|"]
    for h in rep["hops"]:
        t = h.get("transfer_ms") or {}
        lines.append(f"| {h['from']} | {h['to']} | {h['bytes']} | {_fmt(t.get('p50'), 2)} | {_fmt(t.get('p99'), 2)} |")
    lines += ["", "## Devices", "",
              "| device | peak memory MiB | CPU mean of cap | CPU peak of cap | energy per image J | peak power W |",
              "|---|---|---|---|---|---|"]
    energy = rep.get("energy") or {}
    for name, d in (rep.get("devices") or {}).items():
        pm = d.get("peak_memory_bytes")
        e = energy.get(name) or {}
        lines.append(f"| {name} | {_fmt(pm / 2**20 if pm else None)} | {_fmt(d.get('cpu_mean_of_cap'), 2)} | "
                     f"{_fmt(d.get('cpu_peak_of_cap'), 2)} | {_fmt(e.get('energy_per_image_j'), 3)} | "
                     f"{_fmt(e.get('peak_power_w'), 2)} |")
    if energy:
        lines.append("")
        lines.append("Energy and power are modelled from each device's CPU share and its power model "
                     "(idle_w + (max_w - idle_w) x CPU share of its cap), not measured.")
    fid = rep.get("fidelity") or {}
    if fid.get("links"):
        lines += ["", "## Link fidelity", "", "| from | to | configured Mbit/s | achieved Mbit/s | error | method |",
                  "|---|---|---|---|---|---|"]
        for link in fid["links"]:
            cfg = link.get("configured_bps")
            ach = link.get("achieved_bps")
            lines.append(f"| {link['from']} | {link['to']} | {_fmt(cfg / 1e6 if cfg else None, 2)} | "
                         f"{_fmt(ach / 1e6 if ach else None, 2)} | {_fmt(link.get('error'), 3)} | "
                         f"{link.get('method', '')} |")
    if rep.get("plots"):
        lines += ["", "## Plots", ""] + [f"![{Path(p).stem}]({p})" for p in rep["plots"]]
    if rep.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in rep["notes"]]
    return "\n".join(lines) + "\n"


def write_report(run_dir: Path, rep: dict) -> None:
    (run_dir / "report.json").write_text(json.dumps(rep, indent=2, default=str) + "\n")
    (run_dir / "report.md").write_text(render_markdown(rep))


def timeline_rows(records: list[Record], samples: list[HopSample], num_stages: int) -> list[dict]:
    """Per request: its stages' compute spans and its hops' send/receive times, for the timeline."""
    hops = {}
    for r in records:
        for src, dst, _, send_ns, recv_ns in hops_of(r, num_stages):
            hops.setdefault(r.id, []).append((src, dst, send_ns, recv_ns))
    return [{"id": r.id, "sent_ns": r.sent_ns, "done_ns": r.done_ns,
             "stages": [(t.stage, t.device, t.start_ns, t.end_ns) for t in r.timings if 0 <= t.stage < num_stages],
             "hops": hops.get(r.id, [])} for r in records if r.done_ns and not r.error]


def write_plots(run_dir: Path, rep: dict, records: list[Record], samples: list[HopSample],
                stats: dict[str, list[dict]], partition_view: dict | None) -> list[str]:
    """Draw every plot of the run into run_dir/plots; return their paths relative to run_dir."""
    from . import plots
    from .latency import per_second

    out = run_dir / "plots"
    n = len(rep["stages"])
    measured = [r for r in records if r.id >= rep["warmup"] and r.done_ns and not r.error]
    made = [plots.latency_cdf([r.latency_ms for r in measured], out / "latency_cdf.png")]
    made.append(plots.throughput_over_time(
        per_second([r.done_ns / 1e9 for r in measured], [r.latency_ms for r in measured], rep["batch"]),
        out / "throughput.png"))
    made.append(plots.breakdown(rep["stages"], rep["hops"], out / "breakdown.png"))
    if any(stats.values()):
        made.append(plots.device_usage(stats, out / "devices.png"))
    made.append(plots.timeline(timeline_rows(records, samples, n), out / "timeline.png"))
    if partition_view:
        made.append(plots.partition_map(partition_view["cost"], partition_view["live_bytes"],
                                        partition_view["cuts"], partition_view["devices"],
                                        out / "partition.png", partition_view.get("title", "")))
    return [str(p.relative_to(run_dir)) for p in made]


def partition_view(plan, graph) -> dict:
    """What the partition plot needs: per-node cost, live bytes, and the chosen cuts."""
    cuts = []
    for s in plan.stages[:-1]:
        produced = [graph.prod[t] for t in s.outputs if graph.prod.get(t, -1) >= 0]
        cuts.append(max(produced) + 1 if produced else 0)
    return {"cost": list(graph.cost), "live_bytes": list(graph.live_bytes), "cuts": cuts,
            "devices": [s.device for s in plan.stages],
            "title": f"{Path(plan.model).name}: {len(plan.stages)} stages ({plan.algorithm})"}
