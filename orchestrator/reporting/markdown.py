"""The run folder's report: report.json with every figure, report.md for people, and the
comparison of several configurations or runs written into the first one's report."""

from __future__ import annotations

import json
from pathlib import Path

from orchestrator.errors import UserError
from orchestrator.figures.disruption import (
    disruption_rows,
    event_text,
    event_title,
    headline_events,
    lost_resent,
    plan_rows,
)
from orchestrator.reporting.plots import comparison_plot


def _fmt(v, nd=1) -> str:
    if v is None:
        return "not measured"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def _pct(v) -> str:
    return "n/a" if v is None else f"{v:+.1f}%"


def _mib(v) -> str:
    return _fmt(v / 2**20 if v is not None else None)


def _memory_section(mem: dict | None) -> list[str]:
    """Each stage's predicted resident memory beside its device's measured peak."""
    if not mem or not mem.get("stages"):
        return []
    lines = [
        "",
        "## Memory: predicted and measured",
        "",
        "Resident is the node's anonymous memory (what the device's limit kills for); the page cache "
        "(the model files it read, reclaimable) is apart, in the table above.",
        "",
        "| stage | device | mode | predicted MiB | peak resident MiB | error |",
        "|---|---|---|---|---|---|",
    ]
    for x in mem["stages"]:
        lines.append(
            f"| {x['index']} | {x['device']} | {x['memory_mode']} | {_mib(x.get('predicted_bytes'))} | "
            f"{_mib(x.get('peak_resident_bytes'))} | {_pct(None if x.get('error') is None else x['error'] * 100)} |"
        )
    return lines


def _mj(v) -> str:
    return "-" if v is None else f"{v * 1e3:.2f}"


def _energy_rows(name: str, fig: dict | None, kind: str) -> str:
    if fig is None:
        return f"| {name} | {kind} | - | - | - | - | - | - |"
    return (
        f"| {name} | {kind} | {_mj(fig['compute_j'])} | {_mj(fig['idle_j'])} | {_mj(fig['radio_j'])} | "
        f"{_mj(fig['computation_j'])} | {_mj(fig['communication_j'])} | {_mj(fig['total_j'])} |"
    )


def _energy_section(split: dict | None) -> list[str]:
    """Energy per inference as DIME reports it: predicted beside measured, per device and in all,
    computation (compute + idle) and communication (radio) apart, each figure labelled."""
    if not split or not split.get("devices"):
        return []
    total = split.get("total") or {}
    lines = [
        "",
        "## Energy per inference",
        "",
        f"mJ per inference (one image; {split.get('images')} measured over {_fmt(split.get('window_s'), 2)} s). "
        "Computation is compute (above idle) plus idle; communication is the radio energy of the bytes "
        "sent and received.",
        "",
        "| device | figure | compute | idle | radio | computation | communication | total |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, row in split["devices"].items():
        lines.append(_energy_rows(name, row.get("predicted"), "predicted (modelled)"))
        lines.append(_energy_rows(name, row.get("measured"), "measured"))
        if row.get("gpu"):
            lines.append(f"| {name} GPU | measured (NVML) | | | | | | {_mj(row['gpu']['total_j'])} |")
    lines.append(_energy_rows("all", total.get("predicted"), "predicted (modelled)"))
    lines.append(_energy_rows("all", total.get("measured"), "measured"))
    pred, meas = total.get("predicted"), total.get("measured")
    if pred is not None and meas is not None:
        lines += [
            "",
            f"Energy {_mj(pred['total_j'])} mJ predicted (computation {_mj(pred['computation_j'])}, communication "
            f"{_mj(pred['communication_j'])}); {_mj(meas['total_j'])} mJ measured (computation "
            f"{_mj(meas['computation_j'])}, communication {_mj(meas['communication_j'])}); error of the "
            f"predicted total {_pct(total.get('error_pct'))}.",
        ]
    labels = split.get("labels") or {}
    lines += ["", f"- predicted: {labels.get('predicted')}", f"- measured: {labels.get('measured')}"]
    if split.get("method"):
        lines.append(f"- how: {split['method']}")
    if any(row.get("gpu") for row in split["devices"].values()):
        lines.append(f"- GPU: {labels.get('gpu')}, beside the device's figures and not in its total")
    lines += [f"- {n}" for n in split.get("notes") or []]
    return lines


def _levels_section(levels: dict | None) -> list[str]:
    """The DVFS levels the run put in force (driving.levels)."""
    if not levels:
        return []
    lines = [
        "",
        "## DVFS levels",
        "",
        "| device | level CPUs | read back | applied | why |",
        "|---|---|---|---|---|",
    ]
    for name, e in levels.items():
        back = "-" if e.get("read_back") is None else f"{e['read_back']:g}"
        lines.append(
            f"| {name} | {e['cpus']:g} | {back} | {'yes' if e.get('applied') else 'no'} | {e.get('why') or ''} |"
        )
    return lines


def _load_text(rep: dict) -> str:
    load = rep.get("load") or {}
    if load.get("mode") == "open":
        text = f"open loop at {load['rate_hz']:g} requests/s (latency from the intended send time)"
    else:
        text = f"closed loop, {rep.get('concurrency')} in flight"
    return text + (f", for {load['duration_s']:g} s" if load.get("duration_s") else "")


def _disruption_summary(rep: dict) -> list[str]:
    """Summary table lines: one per event (figures.disruption), the requests lost and resent, an
    interrupted run."""
    shown, links = headline_events(disruption_rows(rep))
    lines = [f"| {event_title(r)} | {event_text(r)} |" for r in shown]
    if links:
        lines.append(f"| {links} link changes | one line each under Disruption |")
    counts = lost_resent(rep)
    if counts:
        lines.append(f"| requests lost / resent | {counts[0]} / {counts[1]} |")
    if rep.get("complete") is False:
        lines.append("| run interrupted | the figures are of what was measured until then |")
    return lines


def _disruption_section(rep: dict) -> list[str]:
    """Every event with the time each step took after it, and every plan in force."""
    lines = [
        "",
        "## Disruption",
        "",
        "Seconds from the first measured request; each step after an event counted from the event "
        "(re-planned: the planning itself in brackets); recovered: throughput back within 10% of its "
        "new steady level for 3 s; p99 latency in the 5 s before and after.",
        "",
        "| at s | event | where | detail | applied ms | detected ms | re-planned ms | redeployed ms "
        "| recovered s | lost | resent | p99 before -> after ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in disruption_rows(rep):
        planning = f" ({_fmt(r['replan_ms'], 0)})" if r["replan_ms"] is not None else ""
        lines.append(
            f"| {r['at_s']:.1f} | {r['kind']} | {r['where']} | {r['detail']} | {_since(r['applied_ms'], 0)} | "
            f"{_since(r['detected_ms'], 0)} | {_since(r['replanned_ms'], 0)}{planning} | "
            f"{_since(r['redeployed_ms'], 0)} | {_since(r['recovered_s'])} | {r['lost']} | {r['resent']} | "
            f"{_since(r['p99_before_ms'])} -> {_since(r['p99_after_ms'])} |"
        )
    plans = plan_rows(rep)
    if plans:
        lines += [
            "",
            "## Plans",
            "",
            "| plan | from s | to s | stages in order | reason | predicted images/s |",
            "|---|---|---|---|---|---|",
        ]
        for p in plans:
            lines.append(
                f"| {p['index']} | {p['from_s']:.1f} | {'end' if p['to_s'] is None else _since(p['to_s'])} | "
                f"{p['stages']} | {p['reason']} | {_since(p['predicted_fps'], 2)} |"
            )
    return lines


def _pct_row(name: str, p: dict | None, nd: int = 2) -> str:
    p = p or {}
    return f"| {name} | {_fmt(p.get('p50'), nd)} | {_fmt(p.get('p99'), nd)} | {_fmt(p.get('mean'), nd)} |"


def _match_text(rep: dict) -> str:
    if rep.get("tokens_match") is None:
        return "not checked"
    if rep["tokens_match"]:
        return "yes, every sequence"
    return "no: sequences " + ", ".join(str(i) for i in rep.get("tokens_mismatch") or []) + " differ"


def _phase_rows(rep: dict) -> list[str]:
    """One row per part of a step (figures.metrics.breakdown_table), prefill beside decode."""
    pre = (rep.get("prefill") or {}).get("breakdown") or []
    dec = (rep.get("decode") or {}).get("breakdown") or []
    keyed = {"prefill": {(r["part"], r["where"]): r for r in pre}, "decode": {(r["part"], r["where"]): r for r in dec}}
    parts = list(dict.fromkeys([(r["part"], r["where"]) for r in pre] + [(r["part"], r["where"]) for r in dec]))
    lines = []
    for part, where in parts:
        cells = []
        for phase in ("prefill", "decode"):
            r = keyed[phase].get((part, where))
            cells += ["-", "-"] if r is None else [_fmt(r["mean_ms"], 3), f"{_fmt(r['share_pct'])}%"]
        lines.append(f"| {part} | {where} | {' | '.join(cells)} |")
    return lines


def generation_section(rep: dict) -> list[str]:
    """A generation run's figures (figures.generation): time to first token, time per output token,
    tokens per second, whether the tokens are the whole model's, KV cache per device, energy per
    token, and a step's time prefill beside decode."""
    seqs = rep.get("sequences") or {}
    tps = rep.get("tokens_per_s") or {}
    pre, dec = rep.get("prefill") or {}, rep.get("decode") or {}
    lines = [
        "",
        "## Generation",
        "",
        f"{seqs.get('measured', 0)} measured sequences ({seqs.get('tokens_generated', 0)} tokens in "
        f"{seqs.get('steps', 0)} steps) after {seqs.get('warmup', 0)} warm-up; {seqs.get('failed', 0)} failed"
        + (f" (first: {seqs['first_error']})" if seqs.get("first_error") else "")
        + ". A step's round trip is from its send to its token coming back; the time per output token is "
        "the time between two tokens of one sequence.",
        "",
        "| figure | p50 | p99 | mean |",
        "|---|---|---|---|",
        _pct_row("time to first token (ms)", rep.get("ttft_ms")),
        _pct_row("time per output token (ms)", rep.get("tpot_ms")),
        _pct_row("tokens/s per sequence", tps.get("per_sequence")),
        _pct_row("prefill step round trip (ms)", pre.get("step_ms")),
        _pct_row("decode step round trip (ms)", dec.get("step_ms")),
        "",
        "| figure | value |",
        "|---|---|",
        f"| tokens/s in total | {_fmt(tps.get('total'), 2)} |",
        f"| tokens equal to the whole model's greedy decode | {_match_text(rep)} |",
    ]
    pg = rep.get("predicted_generation") or {}
    for key, err_key, what, unit in (
        ("ttft_ms", "ttft_error_pct", "time to first token, mean", " ms"),
        ("tpot_ms", "tpot_error_pct", "time per output token, mean", " ms"),
        ("tokens_per_s", "tokens_per_s_error_pct", "tokens/s in total", ""),
    ):
        if pg.get(key) is not None:
            err = pg.get(err_key)
            said = f" ({err:+.1f}% of the measured)" if err is not None else ""
            lines.append(f"| predicted {what} | {_fmt(pg[key], 2)}{unit}{said} |")
    ept = rep.get("energy_per_token_j")
    if ept:
        lines.append(
            f"| energy per token | predicted {_mj(ept.get('predicted'))} mJ, measured {_mj(ept.get('measured'))} mJ "
            f"({ept.get('formula')}) |"
        )
    kv = rep.get("kv_cache_bytes")
    if kv is None:
        lines.append("| KV cache peak per device | not measured |")
    for dev, b in (kv or {}).items():
        lines.append(f"| KV cache peak on {dev} | {_fmt(b)} B ({_mib(b)} MiB) |")
    rows = _phase_rows(rep)
    if rows:
        lines += [
            "",
            "### A step's time: prefill and decode",
            "",
            "Means in ms per step; share of the step's mean round trip.",
            "",
            "| part | where | prefill ms | prefill share | decode ms | decode share |",
            "|---|---|---|---|---|---|",
            *rows,
        ]
    hops = {(h["from"], h["to"]): [h, None] for h in pre.get("hops") or []}
    for h in dec.get("hops") or []:
        hops.setdefault((h["from"], h["to"]), [None, None])[1] = h
    if hops:
        lines += ["", "| hop | prefill bytes per step | decode bytes per step |", "|---|---|---|"]
        for (a, b), (hp, hd) in hops.items():
            lines.append(
                f"| {a} -> {b} | {_fmt((hp or {}).get('bytes_per_step'))} | {_fmt((hd or {}).get('bytes_per_step'))} |"
            )
    return lines


def _since(v, nd=1) -> str:
    return "-" if v is None else f"{v:.{nd}f}"


def render_markdown(rep: dict) -> str:
    """report.md: the summary table, then predicted against measured, comparison, breakdown, stages,
    hops, devices, fidelity, plots and notes."""
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
        e = (rep.get("energy") or {}).get(name) or {}
        lines.append(
            f"| {name}: peak resident memory, page cache, energy per image | {_mib(d.get('peak_resident_bytes'))} MiB, "
            f"{_mib(d.get('peak_page_cache_bytes'))} MiB, {_fmt(e.get('energy_per_image_j'), 3)} J (modelled) |"
        )
    flagged = fid.get("flagged") or []
    lines.append(f"| fidelity | {'; '.join(flagged) if flagged else 'no link or CPU cap off by more than 10%'} |")
    if rep.get("host_cpu_busy") is not None:
        lines.append(f"| host CPUs busy while driving | {rep['host_cpu_busy']:.0%} |")
    lines.append(f"| errors | {rep.get('errors', 0)} |")
    if rep.get("events") or rep.get("plans"):
        lines += _disruption_summary(rep)
    if rep.get("task") == "generate":
        lines += generation_section(rep)
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
    if rep.get("events") or rep.get("plans"):
        lines += _disruption_section(rep)
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
    lines += _levels_section(rep.get("levels"))
    lines += _energy_section(rep.get("energy_split"))
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
        "| device | peak resident MiB | peak page cache MiB | peak memory MiB (engine) | CPU mean of cap "
        "| CPU peak of cap | energy per image J | peak power W |",
        "|---|---|---|---|---|---|---|---|",
    ]
    energy = rep.get("energy") or {}
    for name, d in (rep.get("devices") or {}).items():
        e = energy.get(name) or {}
        lines.append(
            f"| {name} | {_mib(d.get('peak_resident_bytes'))} | {_mib(d.get('peak_page_cache_bytes'))} | "
            f"{_mib(d.get('peak_memory_bytes'))} | {_fmt(d.get('cpu_mean_of_cap'), 2)} | "
            f"{_fmt(d.get('cpu_peak_of_cap'), 2)} | {_fmt(e.get('energy_per_image_j'), 3)} | "
            f"{_fmt(e.get('peak_power_w'), 2)} |"
        )
    for name, g in (rep.get("gpu_energy") or {}).items():
        lines.append(
            f"| {name} GPU | | | | | | {_fmt(g.get('energy_per_image_j'), 3)} | {_fmt(g.get('peak_power_w'), 2)} "
            f"({g.get('method')}) |"
        )
    lines += _memory_section(rep.get("memory"))
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
    """report.json as given, and report.md rendered from it."""
    (run_dir / "report.json").write_text(json.dumps(rep, indent=2, default=str) + "\n")
    (run_dir / "report.md").write_text(render_markdown(rep))


def load_report(run_dir: Path) -> dict:
    """A run folder's report.json."""
    p = Path(run_dir) / "report.json"
    if not p.exists():
        raise UserError("no report.json: not a run folder", str(run_dir))
    return json.loads(p.read_text())


def write_comparison(run_dir: Path, rep: dict, rows: list[dict]) -> dict:
    """Write `rep` again with the side-by-side table (`rows`, figures.compare.comparison_rows) and plot;
    return the report as written (`rep` itself is left as it is)."""
    path = str(comparison_plot(run_dir, rows).relative_to(run_dir))
    compared = rep | {"comparison": rows, "plots": [p for p in rep.get("plots") or [] if p != path] + [path]}
    write_report(run_dir, compared)
    return compared
