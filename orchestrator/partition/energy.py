"""Energy per inference of a placement, and the exact least-energy placement within a budget.

The model (shared/DESIGN.md, "Energy"), per inference, for stages on devices d at DVFS levels l:

- compute: a stage's busy time at its level (profiled at the device's `cpus`, scaled by
  cpus / level cpus: under a CFS quota a single-threaded stage's wall time is its CPU time over
  the share) times the power its level draws above idle, (max_w_l - idle_w);
- idle: every device taking part (the stages' and the source's) draws idle_w over the pipeline's
  period, its slowest step (one inference leaves the pipeline each period);
- radio: every hop's bits (the source's input, the cuts, the result home) at the sender's
  tx_nj_per_bit plus the receiver's rx_nj_per_bit.

The search (`solve`) is exact over the cut candidates it is given: a dynamic programme over
(bound, devices used, last device and level) whose labels are the Pareto front of (energy so far,
latency so far, slowest step so far). The final energy adds each used device's idle power times
the slowest step, which is known once the front is: no label that could still win is dropped.
Its cost grows with 2^D for D devices (a set of devices used), so it plans at most MAX_DEVICES.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from orchestrator.config import Device, Testbed
from orchestrator.partition.costmodel import Arrays, CostTable, build_arrays, serialise_s, transfer_s
from orchestrator.partition.graph import ModelGraph
from orchestrator.partition.plan import Predicted

MAX_DEVICES = 10
NJ = 1e-9


@dataclass(frozen=True)
class PowerArrays:
    """Each device's levels and power, as the solver reads them (D devices)."""

    scale: list[list[float]]  # [d][l]: a stage's time at level l over its time at the device's cpus
    dyn_w: list[list[float]]  # [d][l]: power at full use of level l above idle
    level_cpus: list[list[float]]  # [d][l]: the level's CPU share
    idle_w: list[float]
    tx_j_per_byte: list[float]
    rx_j_per_byte: list[float]

    @classmethod
    def of(cls, devices: list[Device]) -> PowerArrays:
        levels = [d.levels() for d in devices]
        return cls(
            scale=[[d.cpus / lv.cpus for lv in ls] for d, ls in zip(devices, levels, strict=True)],
            dyn_w=[[lv.max_w - d.power.idle_w for lv in ls] for d, ls in zip(devices, levels, strict=True)],
            level_cpus=[[lv.cpus for lv in ls] for ls in levels],
            idle_w=[d.power.idle_w for d in devices],
            tx_j_per_byte=[d.power.tx_nj_per_bit * 8 * NJ for d in devices],
            rx_j_per_byte=[d.power.rx_nj_per_bit * 8 * NJ for d in devices],
        )

    def pinned(self, which: str) -> PowerArrays:
        """Every device held at one level: "fastest" (its own cpus) or "slowest" (its lowest
        listed level): the fast-only and slow-only baselines."""
        if which not in ("fastest", "slowest"):
            raise ValueError(f"pinned: {which!r} is not fastest or slowest")
        k = 0 if which == "fastest" else -1
        return PowerArrays(
            scale=[[x[k]] for x in self.scale],
            dyn_w=[[x[k]] for x in self.dyn_w],
            level_cpus=[[x[k]] for x in self.level_cpus],
            idle_w=self.idle_w,
            tx_j_per_byte=self.tx_j_per_byte,
            rx_j_per_byte=self.rx_j_per_byte,
        )


class Energy(NamedTuple):
    """Joules per inference, split as DIME reports it."""

    compute_j: float  # the stages' power above idle over their busy time
    idle_j: float  # the devices taking part, idle over the period
    radio_j: float  # every hop's bits, sent and received

    @property
    def total_j(self) -> float:
        return self.compute_j + self.idle_j + self.radio_j


class Figures(NamedTuple):
    energy: Energy
    latency_s: float  # a request's path: compute and transfers (as costmodel.Evaluation)
    period_s: float  # the slowest step


def _radio(a: Arrays, p: PowerArrays, nbytes: float, src: int, dst: int) -> float:
    return nbytes * (p.tx_j_per_byte[src] + p.rx_j_per_byte[dst])


def _stage(a: Arrays, p: PowerArrays, d: int, lv: int, i: int, j: int) -> tuple[float, float] | None:
    """(compute seconds, busy seconds) of blocks i..j-1 on device d at level lv; None where they do
    not fit its memory (a lean stage, where only lean fits, computes `lean_factor` slower)."""
    mode = a.mode(d, i, j)
    if mode is None:
        return None
    comp = float(a.block_cost[d, i:j].sum()) * (a.lean_factor if mode == "lean" else 1.0) * p.scale[d][lv]
    return comp, comp + a.busy_s(d) * p.scale[d][lv]


def _relay(a: Arrays, used: set[int]) -> float:
    s = a.source
    return float(a.overhead[s]) if a.overhead is not None and s is not None and s not in used else 0.0


def _hops(a: Arrays, cuts: Sequence[int], devices: Sequence[int]) -> list[tuple[float, int, int]]:
    """Every hop of a placement as (bytes, sender, receiver): the cuts, and the source's input and
    the result home where the source holds no end of the pipeline."""
    nb = a.block_cost.shape[1]
    hops = [(float(a.cut_bytes[c]), devices[k], devices[k + 1]) for k, c in enumerate(cuts)]
    s = a.source
    if s is not None and devices[0] != s:
        hops.append((float(a.cut_bytes[0]), s, devices[0]))
    if s is not None and devices[-1] != s:
        hops.append((float(a.cut_bytes[nb]), devices[-1], s))
    return hops


def figures(a: Arrays, p: PowerArrays, cuts: list[int], devices: list[int], levels: list[int]) -> Figures | None:
    """Energy, latency and period of one placement (bound indices, device indices, level indices);
    None where a stage does not fit."""
    nb = a.block_cost.shape[1]
    b = [0, *cuts, nb]
    compute = radio = latency = 0.0
    steps: list[float] = []
    for k, (d, lv) in enumerate(zip(devices, levels, strict=True)):
        st = _stage(a, p, d, lv, b[k], b[k + 1])
        if st is None:
            return None
        compute += p.dyn_w[d][lv] * st[1]
        latency += st[0]
        steps.append(st[1])
    s = a.source
    for nbytes, x, y in _hops(a, cuts, devices):
        latency += transfer_s(nbytes, a.link_rate[x, y], a.link_delay[x, y])
        steps.append(serialise_s(nbytes, a.link_rate[x, y]))  # the delay overlaps between frames
        radio += _radio(a, p, nbytes, x, y)
    relay = _relay(a, set(devices))
    if relay:
        steps.append(relay)
        compute += p.dyn_w[s][0] * relay
    period = max(steps)
    taking_part = set(devices) | ({s} if s is not None else set())
    idle = sum(p.idle_w[d] for d in taking_part) * period
    return Figures(Energy(compute, idle, radio), latency, period)


def level_indices(testbed: Testbed, device_names: Sequence[str], levels: Sequence[float] | None) -> list[int]:
    """Each stage's level as an index into its device's `levels()` (0, the device's own cpus, where
    `levels` is None); a share the device does not list is a ValueError."""
    out = []
    for k, name in enumerate(device_names):
        if levels is None or levels[k] is None:
            out.append(0)
            continue
        shares = [lv.cpus for lv in testbed.device(name).levels()]
        hit = [i for i, c in enumerate(shares) if abs(c - levels[k]) <= 1e-9]
        if not hit:
            raise ValueError(
                f"{name} has no level at {levels[k]:g} CPUs (its levels: {', '.join(f'{c:g}' for c in shares)})"
            )
        out.append(hit[0])
    return out


class Solution(NamedTuple):
    """The least energy (inf where nothing meets the limits) and its placement."""

    energy_j: float
    cuts: list[int]
    devices: list[int]
    levels: list[int]


class _Label(NamedTuple):
    energy: float
    latency: float
    period: float
    back: tuple | None  # (previous label, bound, device, level) or None at the start


def _add(front: list[_Label], new: _Label) -> None:
    """Add `new` to a Pareto front of (energy, latency, period) unless a label dominates it."""
    for x in front:
        if x.energy <= new.energy and x.latency <= new.latency and x.period <= new.period:
            return
    front[:] = [
        x for x in front if not (new.energy <= x.energy and new.latency <= x.latency and new.period <= x.period)
    ]
    front.append(new)


def solve(
    a: Arrays,
    p: PowerArrays,
    latency_budget_s: float | None = None,
    period_cap_s: float | None = None,
    stages: int | None = None,
) -> Solution:
    """The least energy per inference with latency <= `latency_budget_s` and every step <=
    `period_cap_s` (1 / a throughput floor), over which devices take part, their order, the cuts
    and each device's level. Each device holds at most one stage.

    A budget the least energy without one already meets costs nothing more: that placement is
    searched first (fronts of energy and period alone, far smaller) and returned when it fits."""
    d_n = a.block_cost.shape[0]
    if d_n > MAX_DEVICES:
        raise ValueError(f"{d_n} devices: the exact energy search handles at most {MAX_DEVICES}")
    if latency_budget_s is not None:
        free = _search(a, p, None, period_cap_s, stages)
        if math.isinf(free.energy_j):
            return free
        f = figures(a, p, free.cuts, free.devices, free.levels)
        if f is not None and f.latency_s <= latency_budget_s:
            return free
        if any(len(x) > 1 for x in p.scale):  # levels to choose: a plan at the fastest ones bounds the search
            fast = _search(a, p.pinned("fastest"), latency_budget_s, period_cap_s, stages)
            if not math.isinf(fast.energy_j):
                best = _search(a, p, latency_budget_s, period_cap_s, stages, ceiling=fast.energy_j)
                return best if best.energy_j <= fast.energy_j else fast
    return _search(a, p, latency_budget_s, period_cap_s, stages)


def _search(
    a: Arrays,
    p: PowerArrays,
    latency_budget_s: float | None,
    period_cap_s: float | None,
    stages: int | None,
    ceiling: float = math.inf,
) -> Solution:
    """The dynamic programme behind `solve`. Labels whose latency so far plus the least the
    remaining blocks could take (each on its fastest device at its fastest level) passes the
    budget are dropped: no completion of them meets it. So are labels that already spend more than
    `ceiling` (a placement known to meet the limits), counting the idle power of their devices over
    their slowest step so far: every completion spends at least that."""
    d_n, b_n = a.block_cost.shape
    fastest = min(min(x) for x in p.scale)
    rest = np.concatenate([np.cumsum(a.block_cost.min(axis=0)[::-1])[::-1], [0.0]]) * min(1.0, fastest)
    lat_cap = math.inf if latency_budget_s is None else latency_budget_s
    step_cap = math.inf if period_cap_s is None else period_cap_s
    limit = ceiling * (1 + 1e-9) if math.isfinite(ceiling) else math.inf  # float noise never drops the bound's own path
    src_idle = p.idle_w[a.source] if a.source is not None else 0.0
    idle_of = [sum(p.idle_w[x] for x in range(d_n) if m >> x & 1 and x != a.source) + src_idle for m in range(1 << d_n)]
    track_latency = latency_budget_s is not None
    s = a.source
    # fronts[j][(mask, d, lv)]: labels of prefixes covering blocks 0..j-1, the last on d at lv
    fronts: list[dict[tuple[int, int, int], list[_Label]]] = [{} for _ in range(b_n + 1)]
    start = _Label(0.0, 0.0, 0.0, None)
    stage_cache: dict[tuple[int, int, int, int], tuple[float, float] | None] = {}

    def stage(d: int, lv: int, i: int, j: int) -> tuple[float, float] | None:
        key = (d, lv, i, j)
        if key not in stage_cache:
            stage_cache[key] = _stage(a, p, d, lv, i, j)
        return stage_cache[key]

    def extend(label: _Label, mask: int, prev: int | None, j: int) -> None:
        for d in range(d_n):
            if mask >> d & 1:
                continue
            if prev is None:
                if s is None or d == s:
                    t, held, radio = 0.0, 0.0, 0.0
                else:
                    t = transfer_s(a.cut_bytes[0], a.link_rate[s, d], a.link_delay[s, d])
                    held = serialise_s(a.cut_bytes[0], a.link_rate[s, d])
                    radio = _radio(a, p, a.cut_bytes[0], s, d)
            else:
                t = transfer_s(a.cut_bytes[j], a.link_rate[prev, d], a.link_delay[prev, d])
                held = serialise_s(a.cut_bytes[j], a.link_rate[prev, d])
                radio = _radio(a, p, a.cut_bytes[j], prev, d)
            if held > step_cap:
                continue
            for lv in range(len(p.scale[d])):
                for j2 in range(j + 1, b_n + 1):
                    st = stage(d, lv, j, j2)
                    if st is None:
                        continue
                    comp, busy = st
                    if busy > step_cap:
                        break  # a longer stage is slower still
                    lat = label.latency + t + comp
                    if lat > lat_cap:
                        break
                    if lat + rest[j2] > lat_cap:
                        continue
                    new = _Label(
                        label.energy + radio + p.dyn_w[d][lv] * busy,
                        lat if track_latency else 0.0,
                        max(label.period, held, busy),
                        (label, j, d, lv),
                    )
                    if new.energy + idle_of[mask | 1 << d] * new.period > limit:
                        continue
                    _add(fronts[j2].setdefault((mask | 1 << d, d, lv), []), new)

    extend(start, 0, None, 0)
    for j in range(1, b_n):
        for (mask, d, _lv), front in list(fronts[j].items()):
            if stages is not None and bin(mask).count("1") >= stages:
                continue
            for label in list(front):
                extend(label, mask, d, j)

    best, best_label = math.inf, None
    for (mask, d, _lv), front in fronts[b_n].items():
        used = {x for x in range(d_n) if mask >> x & 1}
        if stages is not None and len(used) != stages:
            continue
        away = s is not None and d != s
        home = transfer_s(a.cut_bytes[b_n], a.link_rate[d, s], a.link_delay[d, s]) if away else 0.0
        home_held = serialise_s(a.cut_bytes[b_n], a.link_rate[d, s]) if away else 0.0
        home_radio = _radio(a, p, a.cut_bytes[b_n], d, s) if away else 0.0
        relay = _relay(a, used)
        if home_held > step_cap or relay > step_cap:
            continue
        idle_w = sum(p.idle_w[x] for x in used | ({s} if s is not None else set()))
        for label in front:
            if track_latency and label.latency + home > lat_cap:
                continue
            period = max(label.period, home_held, relay)
            e = label.energy + home_radio + (p.dyn_w[s][0] * relay if relay else 0.0) + idle_w * period
            if e < best:
                best, best_label = e, label
    if best_label is None:
        return Solution(math.inf, [], [], [])
    cuts, devs, lvs = [], [], []
    lab = best_label
    while lab.back is not None:
        prev, j, d, lv = lab.back
        devs.append(d)
        lvs.append(lv)
        if j > 0:
            cuts.append(j)
        lab = prev
    return Solution(best, cuts[::-1], devs[::-1], lvs[::-1])


def brute_force(
    a: Arrays,
    p: PowerArrays,
    latency_budget_s: float | None = None,
    period_cap_s: float | None = None,
) -> tuple[float, list[int], list[int], list[int]]:
    """Every ordered choice of devices, every cut and every level, evaluated by `figures`: the check
    `solve` is held to (small instances only)."""
    import itertools

    d_n, b_n = a.block_cost.shape
    best: tuple[float, list[int], list[int], list[int]] = (math.inf, [], [], [])
    for k in range(1, min(d_n, b_n) + 1):
        for devs in itertools.permutations(range(d_n), k):
            for cuts in itertools.combinations(range(1, b_n), k - 1):
                for lvs in itertools.product(*(range(len(p.scale[d])) for d in devs)):
                    f = figures(a, p, list(cuts), list(devs), list(lvs))
                    if f is None:
                        continue
                    if latency_budget_s is not None and f.latency_s > latency_budget_s:
                        continue
                    if period_cap_s is not None and f.period_s > period_cap_s:
                        continue
                    if f.energy.total_j < best[0]:
                        best = (f.energy.total_j, list(cuts), list(devs), list(lvs))
    return best


def _placed(
    graph: ModelGraph,
    cuts: Sequence[int],
    device_names: Sequence[str],
    testbed: Testbed,
    table: CostTable | None,
    source: str | None,
    levels: Sequence[float] | None,
) -> tuple[Arrays, PowerArrays, list[int], list[int], list[int]]:
    """A placement given by seq-position cuts, device names and CPU shares, as `figures` takes it:
    arrays over its own bounds, the power model, bound, device and level indices."""
    names = [d.name for d in testbed.devices]
    bounds = [0, *cuts, graph.n]
    a, _ = build_arrays(graph, testbed.devices, testbed.links, bounds=bounds, table=table, source=source, headroom=0.0)
    return (
        a,
        PowerArrays.of(list(testbed.devices)),
        list(range(1, len(bounds) - 1)),
        [names.index(n) for n in device_names],
        level_indices(testbed, device_names, levels),
    )


def with_energy(
    pred: Predicted,
    graph: ModelGraph,
    cuts: Sequence[int],
    device_names: Sequence[str],
    testbed: Testbed,
    *,
    table: CostTable | None = None,
    source: str | None = None,
    levels: Sequence[float] | None = None,
) -> Predicted:
    """`pred` (costmodel.predict's) with the placement's modelled energy per inference."""
    f = figures(*_placed(graph, cuts, device_names, testbed, table, source, levels))
    if f is None:
        return pred
    e = f.energy
    return pred.model_copy(
        update={
            "energy_j": round(e.total_j, 6),
            "energy_compute_j": round(e.compute_j, 6),
            "energy_idle_j": round(e.idle_j, 6),
            "energy_radio_j": round(e.radio_j, 6),
        }
    )


def figures_by_device(
    a: Arrays, p: PowerArrays, cuts: list[int], devices: list[int], levels: list[int]
) -> dict[int, Energy] | None:
    """`figures`' energy per inference split by device (index): each stage's compute on its device
    (the source's relay on the source), each hop's bits sent on the sender and received on the
    receiver, every device taking part idle over the period. The devices' figures sum to
    `figures`' energy; None where a stage does not fit."""
    f = figures(a, p, cuts, devices, levels)
    if f is None:
        return None
    nb = a.block_cost.shape[1]
    b = [0, *cuts, nb]
    s = a.source
    taking_part = set(devices) | ({s} if s is not None else set())
    compute = dict.fromkeys(taking_part, 0.0)
    radio = dict.fromkeys(taking_part, 0.0)
    for k, (d, lv) in enumerate(zip(devices, levels, strict=True)):
        st = _stage(a, p, d, lv, b[k], b[k + 1])
        assert st is not None  # figures() placed it
        compute[d] += p.dyn_w[d][lv] * st[1]
    for nbytes, x, y in _hops(a, cuts, devices):
        radio[x] += nbytes * p.tx_j_per_byte[x]
        radio[y] += nbytes * p.rx_j_per_byte[y]
    relay = _relay(a, set(devices))
    if relay:
        compute[s] += p.dyn_w[s][0] * relay
    return {d: Energy(compute[d], p.idle_w[d] * f.period_s, radio[d]) for d in sorted(taking_part)}


def energy_by_device(
    graph: ModelGraph,
    cuts: Sequence[int],
    device_names: Sequence[str],
    testbed: Testbed,
    *,
    table: CostTable | None = None,
    source: str | None = None,
    levels: Sequence[float] | None = None,
) -> dict[str, Energy] | None:
    """The placement's modelled energy per inference by device name (as `with_energy` weighs it:
    the devices' figures sum to plan.json's energy_compute_j, energy_idle_j and energy_radio_j);
    None where a stage does not fit."""
    names = [d.name for d in testbed.devices]
    split = figures_by_device(*_placed(graph, cuts, device_names, testbed, table, source, levels))
    return None if split is None else {names[d]: e for d, e in split.items()}
