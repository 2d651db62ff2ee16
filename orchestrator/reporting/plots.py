"""The run's plots, written as PNG files into `plots/` of the run folder.

Each function takes plain data (lists and dicts from the report, the request records, the
stats samples) so that `orchestrator report` can redraw them from a run folder.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

from orchestrator.driving.driver import Record
from orchestrator.figures.disruption import stage_part, time_origin
from orchestrator.figures.latency import per_second
from orchestrator.figures.metrics import HOP_PARTS, STAGE_PARTS, pipeline_order, timeline_rows
from orchestrator.generation.records import SequenceRun
from orchestrator.runtimes.stats import StatsLine

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

_COLORS = plt.get_cmap("tab10").colors


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def latency_cdf(latency_ms: list[float], path: Path, title: str = "") -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.2))
    x = np.sort(np.asarray(latency_ms))
    y = np.arange(1, len(x) + 1) / max(1, len(x))
    ax.step(x, y, where="post", color=_COLORS[0])
    for q, style in ((50, ":"), (99, "--")):
        v = float(np.percentile(x, q)) if len(x) else 0.0
        ax.axvline(v, color="grey", linestyle=style, linewidth=1)
        ax.annotate(
            f"p{q} {v:.1f} ms",
            (v, 0.05 if q == 50 else 0.15),
            rotation=90,
            fontsize=8,
            xytext=(3, 0),
            textcoords="offset points",
        )
    ax.set_xlabel("end-to-end latency (ms)")
    ax.set_ylabel("fraction of requests")
    ax.set_ylim(0, 1.02)
    ax.set_title(title or "Latency CDF (warm-up excluded)")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def throughput_over_time(series: list[dict], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.2))
    _per_second_axes(ax, series)
    ax.set_xlabel("time since the first measured completion (s)")
    ax.set_title("Throughput and latency over time")
    return _save(fig, path)


def _per_second_axes(ax, series: list[dict], shift_s: float = 0.0):
    """Per-second throughput bars on `ax` and p50/p99 latency lines on a twin axis (returned), each
    second drawn at `shift_s` + its number."""
    t = [s["second"] + shift_s for s in series]
    ax.bar(t, [s["throughput_fps"] for s in series], color=_COLORS[0], alpha=0.6, label="throughput")
    ax.set_ylabel("completed images per second")
    ax2 = ax.twinx()
    for key, color, label in (("p50_ms", _COLORS[1], "p50 latency"), ("p99_ms", _COLORS[3], "p99 latency")):
        ax2.plot(
            t,
            [s[key] if s[key] is not None else np.nan for s in series],
            marker="o",
            markersize=3,
            color=color,
            label=label,
        )
    ax2.set_ylabel("latency (ms)")
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="upper right", fontsize=8)
    return ax2


def breakdown(stages: list[dict], hops: list[dict], path: Path) -> Path:
    """Median time a request spends in each part of the pipeline, in pipeline order: a stage's
    queue wait and compute; a hop's link wait, serialisation, transfer and deserialisation."""
    labels, parts = [], []
    for kind, fig in pipeline_order(stages, hops):
        if kind == "stage":
            labels.append(f"stage {fig['index']}\n{fig['device']}")
            keys = STAGE_PARTS
        else:
            labels.append(f"{fig['from']} ->\n{fig['to']}")
            keys = HOP_PARTS
        parts.append({name: (fig.get(key) or {}).get("p50") or 0.0 for name, key in keys})
    kinds = [name for name, _ in STAGE_PARTS + HOP_PARTS]
    colors = {
        "queue": _COLORS[7],
        "compute": _COLORS[0],
        "link wait": _COLORS[1],
        "serialisation": _COLORS[4],
        "transfer": _COLORS[2],
        "deserialisation": _COLORS[6],
    }
    fig, ax = plt.subplots(figsize=(7.5, 0.5 * len(labels) + 1.5))
    y = np.arange(len(labels))
    left = np.zeros(len(labels))
    for k in kinds:
        vals = np.array([p.get(k, 0.0) for p in parts])
        if vals.any():
            ax.barh(y, vals, left=left, color=colors[k], label=k)
            left += vals
    ax.set_yticks(y, labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("median time per request (ms)")
    ax.set_title("Where the time goes: stages and hops")
    if ax.get_legend_handles_labels()[0]:  # nothing timed (a report with no stamps): no legend
        ax.legend(fontsize=8, loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def tokens_over_time(path: Path, sequences: list[SequenceRun]) -> Path:
    """Tokens per second over time: each token counted in the 1-s window its step's answer came
    back in, from the first send of the sequences shown; all sequences together, and each one faint
    (its own rate). Warm-up sequences are left out; the last window may be partly covered."""
    seqs = [s for s in sequences if not s.warmup]
    sent = [r.sent_ns for s in seqs for r in s.steps if r.done_ns and not r.error]
    arrivals = {s.index: [r.done_ns for r in s.steps if r.done_ns and not r.error] for s in seqs}
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    if sent:
        t0 = min(sent)
        end_s = (max(t for a in arrivals.values() for t in a) - t0) / 1e9
        edges = np.arange(int(end_s) + 2, dtype=np.float64)
        total = np.zeros(len(edges) - 1)
        first = True
        for a in arrivals.values():
            counts = np.histogram((np.asarray(a, dtype=np.float64) - t0) / 1e9, bins=edges)[0]
            total += counts
            ax.stairs(counts, edges, color="grey", alpha=0.3, linewidth=0.8, label="one sequence" if first else None)
            first = False
        ax.stairs(total, edges, color=_COLORS[0], linewidth=2, label="all sequences")
        ax.set_xlim(0, edges[-1])
        ax.legend(fontsize=8, loc="upper right")
    else:
        ax.text(0.5, 0.5, "no token came back", transform=ax.transAxes, ha="center", va="center")
    ax.set_ylim(bottom=0)
    ax.set_xlabel("time since the first step was sent (s)")
    ax.set_ylabel("tokens per second (1-s windows)")
    ax.set_title("Tokens per second over time (warm-up excluded)")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _mean(fig: dict, key: str) -> float:
    return float((fig.get(key) or {}).get("mean") or 0.0)


def token_breakdown(path: Path, figures: dict) -> Path:
    """Where one step's time goes, prefill and decode apart (figures.generation's `prefill` and
    `decode`), each on its own scale: along the pipeline, each stage's queue wait (pale) and compute,
    each hop (link wait, serialisation, transfer and deserialisation together, hatched); means in ms
    per step, so the parts add up to the step's mean."""
    from matplotlib.patches import Patch

    phases = [(name, figures[name]) for name in ("prefill", "decode") if figures.get(name)]
    fig, axes = plt.subplots(max(1, len(phases)), 1, figsize=(9, 1.5 * max(1, len(phases)) + 2.2), squeeze=False)
    colors: dict[str, tuple] = {}
    handles: dict[str, Patch] = {}

    def color(label: str, hop: bool) -> tuple:
        if label not in colors:
            colors[label] = _COLORS[len(colors) % len(_COLORS)]
            handles[label] = Patch(facecolor=colors[label], hatch="//" if hop else None, edgecolor="white", label=label)
        return colors[label]

    queued = False
    for ax, (name, ph) in zip(axes[:, 0], phases, strict=False):
        left = 0.0
        for kind, f in pipeline_order(ph.get("stages") or [], ph.get("hops") or [], figures.get("source")):
            if kind == "stage":
                label = f"stage {f['index']} on {f['device']}"
                q, c = _mean(f, "queue_ms"), _mean(f, "compute_ms")
                if q > 0:
                    ax.barh(0, q, left=left, color=color(label, False), alpha=0.35, height=0.5)
                    left += q
                    queued = True
                if c > 0:
                    ax.barh(0, c, left=left, color=color(label, False), height=0.5)
                    left += c
            else:
                label = f"{f['from']} -> {f['to']}"
                v = sum(_mean(f, key) for _, key in HOP_PARTS)
                if v > 0:
                    ax.barh(0, v, left=left, color=color(label, True), hatch="//", edgecolor="white", height=0.5)
                    left += v
        step = (ph.get("step_ms") or {}).get("mean")
        said = f" {left:.2f} ms" + (f" (step round trip {step:.2f} ms)" if step is not None else "")
        ax.text(left, 0, said, va="center", fontsize=8)
        ax.set_xlim(0, max(left, 1e-3) * 1.45)
        ax.set_yticks([0], [f"{name}\n({ph.get('steps', 0)} steps)"])
        ax.set_ylim(-0.6, 0.6)
        ax.set_xlabel(f"mean time per {name} step (ms)")
        ax.grid(axis="x", alpha=0.3)
    if not phases:
        axes[0, 0].text(0.5, 0.5, "no step measured", transform=axes[0, 0].transAxes, ha="center", va="center")
    legend = list(handles.values())
    if queued:
        legend.append(Patch(facecolor="grey", alpha=0.35, label="queue wait (pale)"))
    if legend:
        fig.legend(handles=legend, fontsize=8, loc="lower center", ncol=min(4, len(legend)), frameon=False)
    fig.suptitle("Where a token's time goes: prefill and decode steps, stages and hops")
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = (len(legend) + 3) // 4
    fig.tight_layout(rect=(0, 0.06 * rows, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def device_usage(samples: dict[str, list[StatsLine]], path: Path) -> Path:
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(7.5, 6), sharex=True)
    t0 = min((r.time for rows in samples.values() for r in rows), default=0.0)
    for i, (dev, rows) in enumerate(samples.items()):
        c = _COLORS[i % len(_COLORS)]
        t = [r.time - t0 for r in rows]
        ax1.plot(t, [r.cpu_of_cap * 100 if r.cpu_of_cap is not None else np.nan for r in rows], color=c, label=dev)
        ax2.plot(t, [(r.memory_bytes or 0) / 2**20 for r in rows], color=c, label=dev)
        limit = rows[-1].memory_limit if rows else None
        if limit:
            ax2.axhline(limit / 2**20, color=c, linestyle="--", linewidth=0.8)
    ax1.axhline(100, color="grey", linestyle=":", linewidth=1)
    ax1.set_ylabel("CPU (% of the device's cap)")
    ax1.set_title("CPU and memory per device (dashed: memory limit)")
    ax1.legend(fontsize=8, ncol=4)
    ax1.grid(alpha=0.3)
    ax2.set_ylabel("memory (MiB)")
    ax2.set_xlabel("time (s)")
    ax2.set_yscale("log")
    ax2.grid(alpha=0.3)
    return _save(fig, path)


def partition_map(
    cost: list[float], live_bytes: list[int], cuts: list[int], devices: list[str], path: Path, title: str = ""
) -> Path:
    """Estimated compute of each node in order, coloured by the stage that runs it, with the
    bytes that would cross a cut at each position (the cuts chosen are the vertical lines)."""
    fig, ax = plt.subplots(figsize=(9, 4.2))
    n = len(cost)
    bounds = [0, *cuts, n]
    for k in range(len(bounds) - 1):
        lo, hi = bounds[k], bounds[k + 1]
        ax.bar(
            np.arange(lo, hi),
            np.asarray(cost[lo:hi]) / 1e6,
            width=1.0,
            color=_COLORS[k % len(_COLORS)],
            label=f"stage {k}: {devices[k]}",
        )
    for c in cuts:
        ax.axvline(c - 0.5, color="black", linewidth=1)
    ax.set_yscale("symlog", linthresh=1.0)
    ax.set_xlabel("node position (topological order, constant nodes folded away)")
    ax.set_ylabel("estimated MFLOPs per node")
    ax2 = ax.twinx()
    ax2.plot(
        np.arange(len(live_bytes)) - 0.5,
        np.asarray(live_bytes) / 2**20,
        color="grey",
        linewidth=0.8,
        alpha=0.8,
        label="live set at a cut",
    )
    ax2.set_ylabel("bytes crossing a cut here (MiB, batch 1)")
    ax2.set_yscale("log")
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title(title or "Partition over the model's nodes")
    return _save(fig, path)


def timeline(rows: list[dict], path: Path, first: int = 8) -> Path:
    """Gantt chart of the first requests: compute on each stage's device, hops between.

    `rows`: per request, {"id", "sent_ns", "done_ns", "stages": [(stage, device, start_ns, end_ns)],
    "hops": [(src, dst, send_ns, recv_ns)]} (figures.metrics.timeline_rows). Optional
    longer tuples are drawn too: a stage's recv_ns as a fifth item (its queue wait, a pale bar
    before compute), a hop's serialize_ns and deserialize_ns as fifth and sixth (durations:
    short ticks at the sender after send_ns and at the receiver before recv_ns).
    """
    rows = rows[:first]
    devices: list[str] = []
    for r in rows:
        for st in r["stages"]:
            if st[1] not in devices:
                devices.append(st[1])
    t0 = min((r["sent_ns"] for r in rows), default=0)
    ms = lambda t: (t - t0) / 1e6  # noqa: E731
    fig, ax = plt.subplots(figsize=(9, 0.6 * len(devices) + 2))
    queued = serdes = False
    for r in rows:
        c = _COLORS[r["id"] % len(_COLORS)]
        for st in r["stages"]:
            _, dev, s, e = st[:4]
            y = devices.index(dev)
            if len(st) > 4 and st[4] and st[4] < s:
                ax.barh(y, (s - st[4]) / 1e6, left=ms(st[4]), color=c, alpha=0.2, height=0.5)
                queued = True
            ax.barh(y, (e - s) / 1e6, left=ms(s), color=c, height=0.5, edgecolor="black", linewidth=0.3)
            ax.text(ms(s), y, str(r["id"]), fontsize=6, va="center")
        for hop in r["hops"]:
            src, dst, s, e = hop[:4]
            if src in devices and dst in devices:
                ys, yd = devices.index(src), devices.index(dst)
                ax.annotate(
                    "",
                    xy=(ms(e), yd),
                    xytext=(ms(s), ys),
                    arrowprops={"arrowstyle": "->", "color": c, "alpha": 0.6, "linewidth": 0.8},
                )
                if len(hop) > 5:
                    for dur, at, y in ((hop[4], s, ys), (hop[5], e - hop[5], yd)):
                        if dur:
                            ax.barh(y + 0.3, dur / 1e6, left=ms(at), color="black", height=0.1)
                            serdes = True
    ax.set_yticks(range(len(devices)), devices)
    ax.invert_yaxis()
    ax.set_xlabel("time since the first request was sent (ms)")
    extra = (", pale: queue wait" if queued else "") + (", ticks: (de)serialisation" if serdes else "")
    ax.set_title(f"Timeline of the first {len(rows)} requests (bars: compute, arrows: transfers{extra})", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def comparison(
    names: list[str],
    throughput: list[float | None],
    p50: list[float | None],
    p99: list[float | None],
    path: Path,
    predicted: list[float | None] | None = None,
) -> Path:
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 4))
    x = np.arange(len(names))
    ax1.bar(x, [v or 0 for v in throughput], color=_COLORS[0], label="measured")
    if predicted and any(predicted):
        ax1.scatter(
            x, [v if v else np.nan for v in predicted], color="black", marker="_", s=400, zorder=3, label="predicted"
        )
        ax1.legend(fontsize=8)
    ax1.set_xticks(x, names, rotation=20, fontsize=8)
    ax1.set_ylabel("throughput (images/s)")
    ax1.set_title("Throughput")
    w = 0.38
    ax2.bar(x - w / 2, [v or 0 for v in p50], w, label="p50", color=_COLORS[1])
    ax2.bar(x + w / 2, [v or 0 for v in p99], w, label="p99", color=_COLORS[3])
    ax2.set_xticks(x, names, rotation=20, fontsize=8)
    ax2.set_ylabel("latency (ms)")
    ax2.set_title("Latency")
    ax2.legend(fontsize=8)
    for a in (ax1, ax2):
        a.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def comparison_plot(run_dir: Path, rows: list[dict]) -> Path:
    """Side-by-side bars of the compared configurations (figures.compare.comparison_rows)."""
    return comparison(
        [r["name"] for r in rows],
        [r["throughput_fps"] for r in rows],
        [r["latency_p50_ms"] for r in rows],
        [r["latency_p99_ms"] for r in rows],
        run_dir / "plots" / "comparison.png",
        predicted=[r.get("predicted_fps") for r in rows],
    )


_EVENT_LABELS_MAX = 12  # with more events than this, link changes (a trace's steps) go unlabelled


def _mark_events(ax, events: list[dict], t0: float, labels: bool = True) -> None:
    """A vertical line at each event (dotted grey for a link change), named along its top, and a
    green triangle on the time axis where throughput recovered after it."""
    many = len(events) > _EVENT_LABELS_MAX
    recovered = False
    for e in events:
        x = e["at_unix_s"] - t0
        link = e["kind"] == "link"
        ax.axvline(x, color="grey" if link else "black", linestyle=":" if link else "-", linewidth=0.7 if link else 1)
        if labels and not (many and link):
            ax.annotate(
                f"{e['kind']} {e.get('link') or e.get('device') or ''}".strip(),
                (x, 1.0),
                xycoords=("data", "axes fraction"),
                xytext=(-2, -3),
                textcoords="offset points",
                rotation=90,
                fontsize=7,
                ha="right",
                va="top",
            )
        if e.get("recovered_unix_s") is not None:
            ax.plot(
                [e["recovered_unix_s"] - t0],
                [0.0],
                marker="^",
                color=_COLORS[2],
                transform=ax.get_xaxis_transform(),
                clip_on=False,
                label=None if recovered else "recovered",
            )
            recovered = True


def _plan_spans(plans: list[dict], end: float) -> list[tuple[dict, float, float]]:
    return [(p, p["from_unix_s"], p["to_unix_s"] if p.get("to_unix_s") is not None else end) for p in plans]


def disruption_timeline(
    series: list[dict], shift_s: float, events: list[dict], plans: list[dict], t0: float, end: float, path: Path
) -> Path:
    """Throughput and p50/p99 latency per second (figures.latency.per_second, its seconds drawn
    `shift_s` after `t0`) through a scenario: events as vertical lines, each plan in force shaded."""
    fig, ax = plt.subplots(figsize=(10, 4.8))
    top = _per_second_axes(ax, series, shift_s)  # drawn over ax: the plans' names go on it
    for k, (p, lo, hi) in enumerate(_plan_spans(plans, end)):
        ax.axvspan(lo - t0, hi - t0, color=_COLORS[7] if k % 2 else _COLORS[9], alpha=0.12, linewidth=0)
        top.annotate(
            f"plan {p['index']}: {p.get('reason', '')}",
            (max(lo, t0 + shift_s - 0.5) - t0, 0.04),
            xycoords=("data", "axes fraction"),
            xytext=(3, 0),
            textcoords="offset points",
            fontsize=7,
            zorder=5,
            bbox={"boxstyle": "round,pad=0.2", "facecolor": "white", "alpha": 0.8, "linewidth": 0},
        )
    _mark_events(ax, events, t0)
    ax.set_xlim(min(0.0, shift_s - 0.5), end - t0 + 0.5)
    ax.set_xlabel("time since the first measured request (s)")
    ax.set_title(
        "Throughput and latency through the scenario (lines: events, shading: plans, triangles: recovered)",
        fontsize=10,
    )
    return _save(fig, path)


def _part_position(plans: list[dict]) -> dict[tuple[int, int], float]:
    """Where each plan stage's part sits in the model, 0 (input) to 1 (output), so one part of the
    model has one colour whatever device holds it: the middle of its blocks, or of its share."""
    last = max((s["blocks"][1] for p in plans for s in p["stages"] if s.get("blocks") is not None), default=0)
    out = {}
    for p in plans:
        done = 0.0
        for s in p["stages"]:
            if s.get("blocks") is not None:
                out[(p["index"], s["index"])] = (s["blocks"][0] + s["blocks"][1] + 1) / 2 / (last + 1)
            else:
                share = s.get("share") or 0.0
                out[(p["index"], s["index"])] = done + share / 2
                done += share
    return out


def placement(plans: list[dict], events: list[dict], t0: float, end: float, path: Path) -> Path:
    """Which device held which part of the model over time: a band per device, a bar per stage it
    held while each plan was in force, coloured by where that part sits in the model."""
    devices: list[str] = []
    for p in plans:
        devices += [s["device"] for s in p["stages"] if s["device"] not in devices]
    cmap, pos = plt.get_cmap("viridis"), _part_position(plans)
    fig, ax = plt.subplots(figsize=(10, 0.55 * len(devices) + 2))
    for p, lo, hi in _plan_spans(plans, end):
        for dev in devices:
            held = [s for s in p["stages"] if s["device"] == dev]
            for j, s in enumerate(held):
                h = 0.7 / len(held)
                y = devices.index(dev) - 0.35 + h * (j + 0.5)
                ax.barh(y, hi - lo, left=lo - t0, height=h, color=cmap(pos[(p["index"], s["index"])]), alpha=0.85)
                ax.text(lo - t0, y, f" {s['index']}: {stage_part(s)}", fontsize=7, va="center", clip_on=True)
        ax.axvline(lo - t0, color="black", linewidth=0.6)
    _mark_events(ax, events, t0)
    ax.set_yticks(range(len(devices)), devices)
    ax.invert_yaxis()
    ax.set_xlim(min((p["from_unix_s"] - t0 for p in plans), default=0.0), end - t0 + 0.5)
    fig.colorbar(plt.cm.ScalarMappable(cmap=cmap), ax=ax, label="part of the model (input to output)", pad=0.01)
    ax.set_xlabel("time since the first measured request (s)")
    ax.set_title("Placement over time: the stages each device held, plan by plan", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def disruption_plots(
    out: Path, rep: dict, records: list[Record], measured_ids: set[int], series: list[dict]
) -> list[Path]:
    """disruption.png and placement.png from the report's `events` and `plans` (figures.disruption)
    and the measured requests' per-second figures (`series`, figures.latency.per_second of them)."""
    done = [r.done_ns / 1e9 for r in records if r.id in measured_ids and r.done_ns]
    events, plans = rep["events"], rep.get("plans") or []
    starts = [e["at_unix_s"] for e in events] + [p["from_unix_s"] for p in plans]
    t0 = time_origin(rep)
    end = max(done + starts)
    shift = (min(done) - t0 + 0.5) if done else 0.0
    made = [disruption_timeline(series, shift, events, plans, t0, end, out / "disruption.png")]
    if plans:
        made.append(placement(plans, events, t0, end, out / "placement.png"))
    return made


def write_plots(
    run_dir: Path,
    rep: dict,
    records: list[Record],
    measured_ids: set[int],
    stats: dict[str, list[StatsLine]],
    offsets: dict[str, int] | None = None,
) -> list[str]:
    """Draw every plot of the run into run_dir/plots; return their paths relative to run_dir, for the
    report's `plots` (the report itself is left as it is)."""
    out = run_dir / "plots"
    n = len(rep["stages"])
    measured = [r for r in records if r.id in measured_ids and r.done_ns]  # a lost request has no done time
    made = [latency_cdf([r.latency_ms for r in measured], out / "latency_cdf.png")]
    series = per_second([r.done_ns / 1e9 for r in measured], [r.latency_ms for r in measured], rep["batch"])
    made.append(throughput_over_time(series, out / "throughput.png"))
    made.append(breakdown(rep["stages"], rep["hops"], out / "breakdown.png"))
    if any(stats.values()):
        made.append(device_usage(stats, out / "devices.png"))
    made.append(timeline(timeline_rows(records, n, offsets), out / "timeline.png"))
    view = rep.get("partition_view")
    if view:
        made.append(
            partition_map(
                view["cost"],
                view["live_bytes"],
                view["cuts"],
                view["devices"],
                out / "partition.png",
                view.get("title", ""),
            )
        )
    if rep.get("events"):
        made += disruption_plots(out, rep, records, measured_ids, series)
    if rep.get("comparison"):
        made.append(comparison_plot(run_dir, rep["comparison"]))
    return [str(p.relative_to(run_dir)) for p in made]


# the reference plans of a sweep (partition/sweep.py BASELINES): marker, colour, legend text
_REFERENCE_PLANS = {
    "fast-only": ("^", _COLORS[3], "fast-only: every device at its fastest level"),
    "slow-only": ("v", _COLORS[2], "slow-only: every device at its slowest level"),
    "throughput-optimal": ("s", _COLORS[1], "throughput-optimal (devices at their own cpus)"),
    "latency-optimal": ("D", _COLORS[4], "latency-optimal (devices at their own cpus)"),
}


def pareto(data: dict, path: Path) -> Path:
    """Energy per inference against end-to-end latency, from pareto.json (`orchestrator partition
    --sweep`): the front as a line, every sweep point (labelled with the limits that chose it), the
    reference plans with their own markers (nested where they coincide), and under the title the
    limits nothing meets."""
    from matplotlib.lines import Line2D

    fig, ax = plt.subplots(figsize=(8.5, 5.8))
    latency_key = data["sweep"]["key"] == "latency_budget"
    front = data["front"]
    ax.plot(
        [p["latency_s"] * 1e3 for p in front],
        [p["energy_j"] * 1e3 for p in front],
        "-o",
        color="black",
        markersize=3,
        linewidth=1.2,
        zorder=2,
    )
    feasible = [p for p in data["points"] if p["feasible"]]
    groups: dict[tuple[float, float], list[float]] = {}
    for p in feasible:
        groups.setdefault((p["latency_s"] * 1e3, p["energy_j"] * 1e3), []).append(p["limit"])
    what = "latency budget" if latency_key else "throughput floor"
    ax.scatter(
        [x for x, _ in groups],
        [y for _, y in groups],
        s=110,
        facecolors="none",
        edgecolors=_COLORS[0],
        linewidths=1.5,
        zorder=5,  # hollow, over a reference plan that is the same placement
    )
    for (x, y), limits in groups.items():
        lo, hi = min(limits), max(limits)
        if latency_key:
            text = f"≤ {lo * 1e3:.4g} ms" if lo == hi else f"≤ {lo * 1e3:.4g}-{hi * 1e3:.4g} ms"
        else:
            text = f"≥ {hi:.4g}/s" if lo == hi else f"≥ {lo:.4g}-{hi:.4g}/s"
        ax.annotate(text, (x, y), xytext=(6, 6), textcoords="offset points", fontsize=8, color=_COLORS[0])
    at: dict[tuple[float, float], list[dict]] = {}
    for b in data["baselines"]:
        if b["feasible"] and b["name"] in _REFERENCE_PLANS:
            at.setdefault((b["latency_s"] * 1e3, b["energy_j"] * 1e3), []).append(b)
    for (x, y), same in at.items():
        for k, b in enumerate(same):  # plans at one point nest, the first largest, so each shows
            marker, color, _ = _REFERENCE_PLANS[b["name"]]
            ax.scatter(
                [x],
                [y],
                marker=marker,
                s=60 * 2.2 ** (len(same) - 1 - k),
                color=color,
                edgecolors="black",
                linewidths=0.6,
                zorder=4 + k / 10,
            )
    ax.set_xlabel("end-to-end latency (ms)")
    ax.set_ylabel("energy per inference (mJ)")
    ax.margins(x=0.1, y=0.1)
    ax.grid(alpha=0.3)
    # below the axes, where it hides no point
    shown = {b["name"] for b in data["baselines"] if b["feasible"]}
    handles = [
        Line2D([], [], color="black", marker="o", markersize=3, linewidth=1.2, label="Pareto front"),
        Line2D(
            [],
            [],
            linestyle="none",
            marker="o",
            markersize=9,
            markerfacecolor="none",
            markeredgecolor=_COLORS[0],
            markeredgewidth=1.5,
            label=f"least energy within a {what}",
        ),
        *(
            Line2D(
                [],
                [],
                linestyle="none",
                marker=marker,
                markersize=8,
                color=color,
                markeredgecolor="black",
                markeredgewidth=0.6,
                label=label,
            )
            for name, (marker, color, label) in _REFERENCE_PLANS.items()
            if name in shown
        ),
    ]
    ax.legend(handles=handles, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2, frameon=False)
    model = Path(data["model"]).name
    devices = Path(data["devices"]).name if data.get("devices") else "the devices"
    source = f", source {data['source']}" if data.get("source") else ""
    title = f"Energy against latency: {model} on {devices}{source}"
    unmet = [p for p in data["points"] if not p["feasible"]]
    if unmet:  # said under the title, where no point can be hidden
        vals = sorted(p["limit"] * (1e3 if latency_key else 1.0) for p in unmet)
        unit = " ms" if latency_key else "/s"
        shown = f"{what} {vals[0]:.4g}{unit}" if len(vals) == 1 else f"{what}s {vals[0]:.4g}-{vals[-1]:.4g}{unit}"
        fig.suptitle(title)
        ax.set_title(f"no placement within {shown}: {unmet[0].get('unmet', '')}", fontsize=8, color="dimgrey")
    else:
        ax.set_title(title)
    return _save(fig, path)
