"""`testbed check --scenario`: do the links follow a scenario's changes as a run applies them?

For each link the scenario changes, one link at a time: a TCP stream from the sender's node keeps
the link saturated (node/probes.py `stream`, run by the node's Measure call), the receiver's node
samples the bytes its interface received every 10 ms (`meter`: the link's delivery, not TCP's
in-order goodput, which stalls behind a retransmission on a crawling link), and the link's changes
are replayed on schedule through the runtime's `set_link`, exactly as a run applies them (the sending
node's SetLink: an htb class changed in place). Changes due at time 0 or before are applied before
the stream starts.

Reported per link:
- per second, the rate configured (the integral of the step function the changes make over that
  second, a zero as the crawl the runtime applies) against the rate achieved on the wire; a second
  is within tolerance when off by at most 10% or one full frame (a window holds whole frames);
- around each change, the worst 100-ms window (sliding by 10 ms, from the one that ends at the
  change to the one that starts there) against the highest rate in force over it, or up to 50 ms
  before it (the lateness allowed), less one frame: a change must never let a burst through (an
  unshaped moment would show here);
- how late each change took effect (returned from set_link, read back) after it was due.
"""

from __future__ import annotations

import concurrent.futures as cf
import math
import statistics
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from orchestrator.runtimes.base import LinkEmulation, held_rate
from orchestrator.runtimes.docker_fidelity import TOLERANCE
from orchestrator.scenario.timeline import Change, link_changes, timeline

if TYPE_CHECKING:
    from orchestrator.runtimes.docker import DockerRuntime
    from orchestrator.scenario.model import Scenario

METER_PORT = 50102
BIN_S = 0.010  # the meter's bins
WINDOW_S = 1.0  # the per-second comparison
BURST_WINDOW_S = 0.100  # the windows checked around each change
FRAME_BITS = 1514 * 8  # one full frame on the wire: the smallest amount a window can hold
LEAD_S = 2.5  # the stream starts this long before the first window, to be saturating by then
TAIL_S = 3.0  # measured after the last change
LATENESS_TARGET_MS = 50.0
LATE_ALLOWANCE_S = LATENESS_TARGET_MS / 1e3  # the old rate may still hold this long after a change
WITHIN_TARGET = 0.90


@dataclass(frozen=True)
class Step:
    """From `at_s` on, the link runs at `rate_bps` (what the runtime applies: a zero crawls)."""

    at_s: float
    rate_bps: int


def schedule(changes: list[Change], start_bps: int) -> list[Step]:
    """The link's rate as a step function of time from `start_bps`; changes at or before 0 hold
    from 0, a change that leaves the rate unchanged (a delay only) adds no step."""
    steps = [Step(0.0, start_bps)]
    for c in changes:
        if c.rate_bps is None:
            continue
        rate = held_rate(c.rate_bps)
        at = max(0.0, c.at_s)
        if at == steps[-1].at_s:
            steps[-1] = Step(at, rate)
        elif rate != steps[-1].rate_bps:
            steps.append(Step(at, rate))
    return steps


def allowed_bits(steps: list[Step], t0_s: float, t1_s: float) -> float:
    """Bits the step function lets through over [t0_s, t1_s)."""
    total = 0.0
    for i, s in enumerate(steps):
        end = steps[i + 1].at_s if i + 1 < len(steps) else math.inf
        lo, hi = max(t0_s, s.at_s), min(t1_s, end)
        if hi > lo:
            total += s.rate_bps * (hi - lo)
    return total


def rate_before(steps: list[Step], t_s: float) -> int:
    """The rate just before `t_s`."""
    prev = steps[0].rate_bps
    for s in steps:
        if s.at_s >= t_s:
            break
        prev = s.rate_bps
    return prev


def highest(steps: list[Step], t_s: float, span_s: float) -> float:
    """The most bits `span_s` from `t_s` may hold: at the highest rate in force over it, or up to
    LATE_ALLOWANCE_S before it (a change may take effect that late)."""
    lo = t_s - LATE_ALLOWANCE_S
    rates = [
        s.rate_bps
        for i, s in enumerate(steps)
        if s.at_s < t_s + span_s and (i + 1 == len(steps) or steps[i + 1].at_s > lo)
    ]
    return max(rates) * span_s


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    xs = sorted(values)
    return xs[min(len(xs) - 1, max(0, math.ceil(q * len(xs)) - 1))]


def analyse(steps: list[Step], bins: list[int], seconds: float, late_s: list[float], shift_s: float = 0.0) -> dict:
    """Configured against achieved from the meter's 10-ms bins of bytes on the wire (bin 0 starts at
    time 0 of the schedule; `shift_s`: when the bytes reach the receiver after the sender's qdisc
    let them go, the path's delay). Pure: the figures of one link's check."""
    wire = [b * 8 for b in bins]  # whole frames, as htb counts them
    per_window = round(WINDOW_S / BIN_S)
    windows = []
    for k in range(int(seconds // WINDOW_S)):
        cfg = allowed_bits(steps, k * WINDOW_S - shift_s, (k + 1) * WINDOW_S - shift_s) / WINDOW_S
        ach = sum(wire[k * per_window : (k + 1) * per_window]) / WINDOW_S
        ok = abs(ach - cfg) <= max(TOLERANCE * cfg, FRAME_BITS / WINDOW_S)
        err = ach / cfg - 1 if cfg else None
        windows.append(
            {"t_s": k * WINDOW_S, "configured_bps": round(cfg), "achieved_bps": round(ach), "error": err, "ok": ok}
        )
    per_burst = round(BURST_WINDOW_S / BIN_S)
    around = []
    for s in steps[1:]:
        if s.at_s + BURST_WINDOW_S > seconds:
            continue
        old, new = rate_before(steps, s.at_s), s.rate_bps
        first = max(0, round((s.at_s + shift_s - BURST_WINDOW_S) / BIN_S))
        starts = range(first, min(len(wire) - per_burst, first + per_burst) + 1)
        if not starts:
            continue
        worst = max(
            (sum(wire[b : b + per_burst]) - FRAME_BITS) / (highest(steps, b * BIN_S - shift_s, per_burst * BIN_S)) - 1
            for b in starts
        )
        around.append({"at_s": s.at_s, "old_bps": old, "new_bps": new, "worst_overshoot": round(worst, 4)})
    late_ms = [x * 1e3 for x in late_s]
    return {
        "windows": windows,
        "within_share": sum(w["ok"] for w in windows) / len(windows) if windows else None,
        "changes": around,
        "worst_overshoot": max((a["worst_overshoot"] for a in around), default=None),
        "lateness_ms": {
            "n": len(late_ms),
            "p50": statistics.median(late_ms) if late_ms else None,
            "p99": _percentile(late_ms, 0.99),
            "max": max(late_ms, default=None),
        },
    }


def replay_link(rt: DockerRuntime, src: str, dst: str, changes: list[Change], seconds: float) -> dict:
    """Saturate src -> dst, replay its changes on schedule through set_link, meter the receiver;
    the link is set back to its configured rate and delay afterwards."""
    nodes, ips = rt.running, {d: c.ip for d, c in rt.spec.by_device().items()}
    cfg = rt.testbed.link(src, dst)
    due = [c for c in changes if c.at_s < seconds]
    early = [c for c in due if c.at_s <= 0]
    timed = [c for c in due if c.at_s > 0]
    try:
        for c in early:
            rt.set_link(src, dst, rate_bps=c.rate_bps, delay_s=c.delay_s)
        t0 = time.time() + LEAD_S
        t0_ns, until_ns = int(t0 * 1e9), int((t0 + seconds) * 1e9)
        with cf.ThreadPoolExecutor(2) as ex:
            limit = LEAD_S + seconds + 60
            meter = ex.submit(nodes.client(dst).measure, "meter", [METER_PORT, t0_ns, until_ns], False, limit)
            time.sleep(0.3)  # the meter listens before the stream connects (it retries, but briefly)
            stream = ex.submit(nodes.client(src).measure, "stream", [ips[dst], METER_PORT, until_ns], False, limit)
            applied = []
            for c in timed:
                when = t0 + c.at_s
                while (left := when - time.time()) > 0:
                    time.sleep(min(left, 0.05) if left > 0.002 else 0)
                change = rt.set_link(src, dst, rate_bps=c.rate_bps, delay_s=c.delay_s)
                applied.append((c, when, change.applied_unix_s))
            got, sent = meter.result(), stream.result()
    finally:
        rt.set_link(src, dst, rate_bps=cfg.rate_bps, delay_s=cfg.delay_s)
    steps = schedule(due, cfg.rate_bps)
    netem = rt.running.link_emulation is LinkEmulation.TC_NETEM
    shift = (early[-1].delay_s if early and early[-1].delay_s is not None else cfg.delay_s) if netem else 0.0
    out = analyse(steps, got["bins"], seconds, [a - w for _, w, a in applied], shift)
    return {
        "from": src,
        "to": dst,
        "seconds": seconds,
        "configured_bps": cfg.rate_bps,
        "steps": len(steps),
        "applied": [
            {"at_s": c.at_s, "rate_bps": c.rate_bps, "delay_s": c.delay_s, "late_ms": round((a - w) * 1e3, 2)}
            for c, w, a in applied
        ],
        "sent_bytes": sent["sent"],
        **out,
    }


def flagged_lines(links: list[dict]) -> list[str]:
    """One line per link whose rate, bursts or lateness miss their targets."""
    out = []
    for x in links:
        name = f"link {x['from']}->{x['to']}"
        if x["within_share"] is not None and x["within_share"] < WITHIN_TARGET:
            out.append(f"{name}: {x['within_share']:.0%} of 1-s windows within 10% (target {WITHIN_TARGET:.0%})")
        if x["worst_overshoot"] is not None and x["worst_overshoot"] > TOLERANCE:
            out.append(f"{name}: a 100-ms window {x['worst_overshoot']:+.0%} over the rate around a change")
        p99 = x["lateness_ms"]["p99"]
        if p99 is not None and p99 > LATENESS_TARGET_MS:
            out.append(f"{name}: changes applied {p99:.0f} ms late at p99 (target {LATENESS_TARGET_MS:.0f} ms)")
    return out


def check_scenario(rt: DockerRuntime, scenario: Scenario, seconds: float | None = None, on_link=None) -> dict:
    """Replay every link the scenario changes (one at a time) on a started DockerRuntime, for
    the scenario's length (or `seconds`); CPU and device events are not checked here."""
    t_start = time.perf_counter()
    end = seconds if seconds is not None else scenario.period_s() if scenario.loop else None
    changes = link_changes(timeline(scenario, rt.testbed, until_s=end))
    by_link: dict[tuple[str, str], list[Change]] = {}
    for c in changes:
        by_link.setdefault((str(c.src), str(c.dst)), []).append(c)
    links = []
    for (src, dst), cs in by_link.items():
        span = seconds if seconds is not None else math.ceil(max(c.at_s for c in cs) + TAIL_S)
        links.append(replay_link(rt, src, dst, cs, float(span)))
        if on_link is not None:
            on_link(links[-1])
    return {
        "scenario": scenario.file,
        "links": links,
        "skipped_events": sum(1 for e in scenario.events if e.link is None),
        "flagged": flagged_lines(links),
        "tolerance": TOLERANCE,
        "seconds": round(time.perf_counter() - t_start, 2),
    }
