"""The links and devices as the answers show them now: what `adaptive` re-plans on, never the
scenario file. Pure functions over recent records, cheap enough to run every second.

Links. Frames on a link are served in order: the link takes frame k when it is sent (delay
aside) or when frame k-1 has finished, whichever is later, so its service time is
S_k = recv_k - max(send_k + delay, recv_{k-1}) (figures.metrics.hop_samples, with the
sender's serialisation and the receiver's decoding taken off), and its rate bits_k / S_k. A
saturated link shows its rate between arrivals, an idle one from send to arrival: both are
measured. The delay is the testbed's (it is not measured): a longer one reads as a slower rate,
which still predicts the transfer time of frames that size. A frame that arrived sooner than
that delay allows is not counted.

Window: the rate is the median over the last `window_s` weighted by time, each frame by the
part of its service time within the window: the rate the link served at for most of that time.
A count median would keep a rate after a drop until the slow frames outnumber the fast ones;
this one turns once they hold the link for half the window, and a lone outlier still cannot move
it. A link with no frame in the window keeps its last frames' figure, with its age.

Frames that take under MIN_MEASURABLE_S (a small result on a fast link) show per-frame
overheads, not the rate: what they give is a floor, and the link keeps its configured rate
when that is higher (0, unshaped, included).

Links not in use. Symmetric assumption: a link with no frame takes the estimate of its reverse
direction, as a share of that direction's configured rate when both directions have one (a
link configured asymmetric stays so), else its configured rate. A floor is not passed on.

Devices. A stage's step time (compute) over what the cost table predicts for its blocks on its
device: a factor, > 1 when the device is slower than the table says (thermal throttling).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from orchestrator.config import Link, Testbed
from orchestrator.driving.driver import Record
from orchestrator.figures.fidelity import MIN_MEASURABLE_S
from orchestrator.figures.metrics import hop_samples
from orchestrator.partition.costmodel import CostTable
from orchestrator.partition.graph import ModelGraph

WINDOW_S = 3.0

Pair = tuple[str, str]


class LinkEstimate(NamedTuple):
    rate_bps: int  # as LinkParams.rate_bps: 0 = unshaped (frames too short to tell it from one)
    n_frames: int  # frames the figure comes from
    age_s: float  # since the newest frame on the link arrived


@dataclass(frozen=True)
class Estimate:
    """Per link in use its rate, per device its speed factor (measured step / predicted step)."""

    links: dict[Pair, LinkEstimate] = field(default_factory=dict)
    speed: dict[str, float] = field(default_factory=dict)
    floored: frozenset[Pair] = frozenset()  # links whose frames were too short to show the rate


def _recent(samples: Sequence[tuple[int, int, float]], now_ns: int, window_ns: int) -> tuple[int, int] | None:
    """(index of the time-weighted median value, samples used) of (begin_ns, end_ns, value)
    samples: each weighs its time within [now - window, now]; none there, the samples within a
    window of the newest, each by its whole time."""
    if not samples:
        return None
    begin = np.fromiter((s[0] for s in samples), np.int64, len(samples))
    end = np.fromiter((s[1] for s in samples), np.int64, len(samples))
    values = np.fromiter((s[2] for s in samples), np.float64, len(samples))
    lo = now_ns - window_ns
    used = end > lo
    if used.any():
        weight = np.minimum(end, now_ns) - np.maximum(begin, lo)
    else:
        used = end > end.max() - window_ns
        weight = end - begin
    idx = np.flatnonzero(used)
    order = idx[np.argsort(values[idx], kind="stable")]
    cum = np.cumsum(np.maximum(weight[order], 1).astype(np.float64))
    return int(order[np.searchsorted(cum, cum[-1] / 2)]), len(idx)


def _delay(testbed: Testbed) -> Callable[[str, str], float]:
    names = {d.name for d in testbed.devices}
    return lambda a, b: testbed.link(a, b).delay_s if a in names and b in names else 0.0


def _newest(records: Iterable[Record]) -> int:
    return max((r.done_ns for r in records), default=0)


def _answered(records: Iterable[Record]) -> list[Record]:
    return [r for r in records if r.done_ns and not r.error and r.timings]


def link_rates(
    records: Sequence[Record],
    testbed: Testbed,
    *,
    offsets: dict[str, int] | None = None,
    now_ns: int | None = None,
    window_s: float = WINDOW_S,
) -> tuple[dict[Pair, LinkEstimate], frozenset[Pair]]:
    """Each link's rate from the hops of `records` (any plan's), and the links only floored."""
    answered = _answered(records)
    now = _newest(answered) if now_ns is None else now_ns
    stages = max((t.stage for r in answered for t in r.timings), default=0)
    per_link: dict[Pair, list[tuple[int, int, float]]] = defaultdict(list)
    for h in hop_samples(answered, stages, _delay(testbed), offsets):
        if h.busy_s > 0 and h.bytes > 0:
            per_link[(h.src, h.dst)].append((h.recv_ns - round(h.busy_s * 1e9), h.recv_ns, h.bytes * 8 / h.busy_s))
    names = {d.name for d in testbed.devices}
    links: dict[Pair, LinkEstimate] = {}
    floored: set[Pair] = set()
    for (a, b), frames in per_link.items():
        i, n = _recent(frames, now, round(window_s * 1e9))
        begin, end, rate = frames[i]
        age = max(0.0, (now - max(f[1] for f in frames)) / 1e9)
        if (end - begin) / 1e9 < MIN_MEASURABLE_S:
            floored.add((a, b))
            configured = testbed.link(a, b).rate_bps if a in names and b in names else 0
            rate = 0 if configured == 0 else max(rate, configured)
        links[(a, b)] = LinkEstimate(round(rate), n, age)
    return links, frozenset(floored)


def predicted_steps(
    table: CostTable, cuts: Sequence[int], devices: Sequence[str], graph: ModelGraph | None = None
) -> list[tuple[str, float]]:
    """Per stage, its device and the compute `table` predicts for it (stage k holds
    seq[bounds[k]:bounds[k+1]], bounds = [0, *cuts, n]). `graph` is needed when a cut is not one of
    the table's bounds; pass the table the run planned with, not one already scaled."""
    bounds = [0, *cuts, table.bounds[-1]]
    t = table if list(table.bounds) == bounds else table.regroup(bounds, graph)
    return [(d, t.block_s[d][k]) for k, d in enumerate(devices)]


def speed_factors(
    records: Sequence[Record],
    steps: Sequence[tuple[str, float]],
    *,
    offsets: dict[str, int] | None = None,
    now_ns: int | None = None,
    window_s: float = WINDOW_S,
) -> dict[str, float]:
    """Per device, its stages' measured compute over their predicted `steps` (predicted_steps).
    Records are those of the plan `steps` describes; a stage found on another device is skipped."""
    answered = _answered(records)
    now = _newest(answered) if now_ns is None else now_ns
    per_stage: dict[int, list[tuple[int, int, float]]] = defaultdict(list)
    for r in answered:
        for t in r.timings:
            if 0 <= t.stage < len(steps) and t.device == steps[t.stage][0] and t.end_ns > t.start_ns:
                off = offsets.get(t.device, 0) if offsets else 0
                per_stage[t.stage].append((t.start_ns - off, t.end_ns - off, (t.end_ns - t.start_ns) / 1e9))
    measured: dict[str, float] = defaultdict(float)
    predicted: dict[str, float] = defaultdict(float)
    for k, samples in per_stage.items():
        device, step_s = steps[k]
        if step_s > 0:
            i, _ = _recent(samples, now, round(window_s * 1e9))
            measured[device] += samples[i][2]
            predicted[device] += step_s
    return {d: measured[d] / predicted[d] for d in measured}


def estimate(
    records: Sequence[Record],
    testbed: Testbed,
    steps: Sequence[tuple[str, float]] = (),
    *,
    offsets: dict[str, int] | None = None,
    now_ns: int | None = None,
    window_s: float = WINDOW_S,
) -> Estimate:
    """Links and device speeds from recent answered records (stamps brought to the orchestrator's
    clock by `offsets`, as clocks.offsets_ns gives them). `testbed`: the configured one (delays,
    floors). now_ns: the window's end (a live caller: time.time_ns(); default the newest answer)."""
    links, floored = link_rates(records, testbed, offsets=offsets, now_ns=now_ns, window_s=window_s)
    speed = speed_factors(records, steps, offsets=offsets, now_ns=now_ns, window_s=window_s) if steps else {}
    return Estimate(links, speed, floored)


def link_rate(est: Estimate, testbed: Testbed, a: str, b: str) -> int:
    """The rate of a -> b under `est`: measured, else the reverse's (see the module docstring),
    else configured."""
    own = est.links.get((a, b))
    if own is not None:
        return own.rate_bps
    configured = testbed.link(a, b).rate_bps
    back = est.links.get((b, a))
    if back is None or (b, a) in est.floored:
        return configured
    back_configured = testbed.link(b, a).rate_bps
    if configured and back_configured:
        return max(1, round(configured * back.rate_bps / back_configured))
    return back.rate_bps


def apply_links(est: Estimate, testbed: Testbed) -> Testbed:
    """`testbed` (the configured one) with a `links` entry for every link the estimate changes;
    delays stay as configured."""
    names = [d.name for d in testbed.devices]
    changed = {}
    for a in names:
        for b in names:
            if a != b:
                lp = testbed.link(a, b)
                rate = link_rate(est, testbed, a, b)
                if rate != lp.rate_bps:
                    changed[(a, b)] = Link.model_construct(src=a, dst=b, bandwidth=rate, delay=lp.delay_s)
    if not changed:
        return testbed
    kept = [x for x in testbed.links if (x.src, x.dst) not in changed]
    return testbed.model_copy(update={"links": kept + list(changed.values())})
