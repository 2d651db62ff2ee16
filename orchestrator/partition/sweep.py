"""Objective energy's trade-off: the least-energy placement at each of N latency budgets (or
throughput floors), four reference plans beside them, and the Pareto front of energy against latency.

A sweep is written `latency_budget=START:STOP:N` (delays with units: N budgets evenly spaced from
START to STOP, both included) or `throughput_floor=A:B:N` (inferences per second). Every point is
the exact least energy per inference within its limit (`energy.solve`, as `optimal` plans it), over
the same cut candidates, costs and memory limits. The reference plans are planned without limits:

- fast-only: the least energy with every device held at its fastest level (its own cpus);
- slow-only: the same with every device at its slowest level;
- throughput-optimal and latency-optimal: what `optimal` places for those objectives, every device
  at its own cpus.

Every figure (energy split as DIME reports it, latency as the budget counts it, throughput from the
slowest step) comes from `energy.figures` on one set of arrays, so the points compare with each
other. The front holds the placements no other one beats in both latency and energy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.config import Testbed
from orchestrator.errors import UserError
from orchestrator.partition.costmodel import Arrays, CostTable, build_arrays
from orchestrator.partition.energy import MAX_DEVICES, Energy, PowerArrays, figures, solve
from orchestrator.partition.graph import ModelGraph
from orchestrator.partition.problem import Limits
from orchestrator.units import parse_delay

FLAG = "--sweep"
KEYS = ("latency_budget", "throughput_floor")
MAX_POINTS = 50
BASELINES = ("fast-only", "slow-only", "throughput-optimal", "latency-optimal")
_FORM = "KEY=START:STOP:N, e.g. latency_budget=200ms:2s:10 or throughput_floor=0.5:2:4"


@dataclass(frozen=True)
class SweepSpec:
    """What a sweep varies: `key` (one of KEYS) over `values`, increasing (seconds for a latency
    budget, inferences per second for a throughput floor)."""

    key: str
    values: list[float]

    def limits(self, value: float, fixed: Limits | None = None) -> Limits:
        """The limits of the point at `value`, with the limit not swept taken from `fixed`."""
        fixed = fixed or Limits()
        if self.key == "latency_budget":
            return Limits(value, fixed.throughput_floor)
        return Limits(fixed.latency_budget_s, value)

    def label(self, value: float) -> str:
        return f"{value * 1e3:.4g} ms" if self.key == "latency_budget" else f"{value:.4g}/s"


def parse_sweep(text: str) -> SweepSpec:
    """`KEY=START:STOP:N` as a SweepSpec; anything else is a UserError naming --sweep."""

    def bad(msg: str) -> UserError:
        return UserError(msg, None, FLAG)

    key, eq, rest = text.partition("=")
    key = key.strip()
    parts = rest.split(":")
    if not eq or len(parts) != 3:
        raise bad(f"{text!r} is not a sweep: write {_FORM}")
    if key not in KEYS:
        raise bad(f"unknown key {key!r} (known: {', '.join(KEYS)})")
    start_s, stop_s, n_s = (p.strip() for p in parts)
    try:
        n = int(n_s)
    except ValueError:
        raise bad(f"{n_s!r}: the number of points must be a whole number (2 to {MAX_POINTS})") from None
    if not 2 <= n <= MAX_POINTS:
        raise bad(f"{n} points: a sweep has 2 to {MAX_POINTS}")
    ends = []
    for t in (start_s, stop_s):
        if key == "latency_budget":
            try:
                float(t)
            except ValueError:
                pass
            else:
                raise bad(f"{t!r} has no unit: a latency budget is a delay, e.g. 200ms or 2s")
            try:
                v = parse_delay(t)
            except ValueError as e:
                raise bad(f"latency_budget: {e}") from None
        else:
            try:
                v = float(t)
            except ValueError:
                raise bad(f"{t!r}: a throughput floor is a number of inferences per second, e.g. 2") from None
            if not math.isfinite(v):
                raise bad(f"{t!r}: a throughput floor must be a finite number")
        if not v > 0:
            raise bad(f"{t!r}: a {key.replace('_', ' ')} must be more than 0")
        ends.append(v)
    start, stop = ends
    if start >= stop:
        raise bad(f"START {start_s} is not below STOP {stop_s}: a sweep runs from the smaller to the larger")
    step = (stop - start) / (n - 1)
    return SweepSpec(key, [round(start + k * step, 12) for k in range(n - 1)] + [stop])


@dataclass(frozen=True)
class Point:
    """One placement and its modelled figures; `energy` None where nothing meets the point's limit."""

    name: str  # the sweep's limit ("300 ms", "2/s") or a reference plan's name
    limit: float | None  # the swept limit's value; None for a reference plan
    energy: Energy | None = None  # joules per inference
    latency_s: float | None = None  # a request's end to end, as the latency budget counts it
    period_s: float | None = None  # the slowest step: one inference leaves the pipeline each period
    devices: list[str] = field(default_factory=list)  # per stage, in pipeline order
    levels: list[float] = field(default_factory=list)  # per stage, the CPU share of its device's level
    cuts: list[int] = field(default_factory=list)  # seq positions, as plan.json's stages split the model

    @property
    def feasible(self) -> bool:
        return self.energy is not None

    def dominates(self, other: Point) -> bool:
        """No worse in latency and energy, and better in one."""
        assert self.energy is not None and other.energy is not None
        a, b = (self.latency_s, self.energy.total_j), (other.latency_s, other.energy.total_j)
        return a[0] <= b[0] and a[1] <= b[1] and a != b

    def to_json(self) -> dict:
        out: dict = {"name": self.name, "limit": self.limit, "feasible": self.feasible}
        if self.energy is not None:
            e = self.energy
            out |= {
                "energy_j": round(e.total_j, 6),
                "energy_compute_j": round(e.compute_j, 6),
                "energy_idle_j": round(e.idle_j, 6),
                "energy_radio_j": round(e.radio_j, 6),
                "latency_s": round(float(self.latency_s), 6),
                "throughput_fps": round(1.0 / self.period_s, 4) if self.period_s else None,
                "stages": [{"device": d, "level": c} for d, c in zip(self.devices, self.levels, strict=True)],
                "cuts": list(self.cuts),
            }
        return out


def pareto_front(points: Sequence[Point]) -> list[Point]:
    """The feasible points no other point dominates, one per (latency, energy), by latency: energy
    falls along it."""
    ok = [p for p in points if p.feasible]
    front: dict[tuple[float, float], Point] = {}
    for p in ok:
        if not any(q.dominates(p) for q in ok):
            front.setdefault((float(p.latency_s), p.energy.total_j), p)
    return [front[k] for k in sorted(front)]


def _point(
    name: str,
    limit: float | None,
    a: Arrays,
    power: PowerArrays,
    cuts: list[int],
    devs: list[int],
    levels: list[int],
    names: list[str],
    bounds: list[int],
) -> Point:
    f = figures(a, power, cuts, devs, levels)
    if f is None:  # cannot happen: every placement here was planned within memory on these arrays
        raise RuntimeError(f"sweep: the {name} placement does not fit its devices")
    return Point(
        name,
        limit,
        f.energy,
        float(f.latency_s),
        float(f.period_s),
        [names[d] for d in devs],
        [power.level_cpus[d][lv] for d, lv in zip(devs, levels, strict=True)],
        [bounds[c] for c in cuts],
    )


def least_energy_points(
    a: Arrays,
    power: PowerArrays,
    spec: SweepSpec,
    *,
    names: list[str],
    bounds: list[int],
    fixed: Limits | None = None,
    stages: int | None = None,
) -> list[Point]:
    """The least-energy placement at each of the spec's values (infeasible points carry no energy).

    From the loosest limit to the tightest: a placement that is the least within a looser limit and
    also meets a tighter one is the least there too (it wins over a larger set), so it is kept
    without searching again; the loosest is the search without the swept limit."""
    fixed = fixed or Limits()
    if spec.key == "latency_budget":
        loose = Limits(None, fixed.throughput_floor)
    else:
        loose = Limits(fixed.latency_budget_s, None)
    best = solve(a, power, loose.latency_budget_s, loose.period_cap_s, stages)
    out: dict[float, Point] = {}
    for v in sorted(spec.values, reverse=spec.key == "latency_budget"):  # loosest first
        lim = spec.limits(v, fixed)
        if math.isfinite(best.energy_j):
            f = figures(a, power, best.cuts, best.devices, best.levels)
            meets = f is not None and (
                (lim.latency_budget_s is None or f.latency_s <= lim.latency_budget_s)
                and (lim.period_cap_s is None or f.period_s <= lim.period_cap_s)
            )
            if not meets:
                best = solve(a, power, lim.latency_budget_s, lim.period_cap_s, stages)
        # once nothing meets a limit, nothing meets a tighter one
        if not math.isfinite(best.energy_j):
            out[v] = Point(spec.label(v), v)
            continue
        out[v] = _point(spec.label(v), v, a, power, best.cuts, best.devices, best.levels, names, bounds)
    return [out[v] for v in spec.values]


@dataclass
class Sweep:
    """A sweep's points (in the spec's order) and the four reference plans (BASELINES' order)."""

    spec: SweepSpec
    points: list[Point]
    baselines: list[Point]
    fixed: Limits = field(default_factory=Limits)

    def front(self) -> list[Point]:
        return pareto_front([*self.points, *self.baselines])

    def best_latency_s(self) -> float:
        return float(self._baseline("latency-optimal").latency_s)

    def best_throughput(self) -> float:
        return 1.0 / float(self._baseline("throughput-optimal").period_s)

    def _baseline(self, name: str) -> Point:
        return next(p for p in self.baselines if p.name == name)

    def unmet(self) -> str:
        """Why a point has no placement: what the fastest placements reach (or that the limit held
        fixed is out of reach alone)."""
        fx = self.fixed
        latency = f"the best latency that can be had is {self.best_latency_s() * 1e3:.1f} ms"
        throughput = f"the best throughput that can be had is {self.best_throughput():.3g}/s"
        if self.spec.key == "latency_budget":
            if fx.throughput_floor is None:
                return latency
            if self._baseline("throughput-optimal").period_s > fx.period_cap_s:
                return f"the throughput floor {fx.throughput_floor:g}/s alone is out of reach: {throughput}"
            return f"{latency} (without the throughput floor {fx.throughput_floor:g}/s)"
        if fx.latency_budget_s is None:
            return throughput
        if self.best_latency_s() > fx.latency_budget_s:
            return f"the latency budget {fx.latency_budget_s * 1e3:g} ms alone is out of reach: {latency}"
        return f"{throughput} (without the latency budget {fx.latency_budget_s * 1e3:g} ms)"

    def to_json(self, *, model: str, devices_file: str | None, source: str | None) -> dict:
        ok = [p for p in (*self.points, *self.baselines) if p.feasible]

        def entry(p: Point) -> dict:
            return p.to_json() | ({"on_front": not any(q.dominates(p) for q in ok)} if p.feasible else {})

        return {
            "model": model,
            "devices": devices_file,
            "source": source,
            "sweep": {
                "key": self.spec.key,
                "unit": "s" if self.spec.key == "latency_budget" else "1/s",
                "values": list(self.spec.values),
            },
            "fixed_limits": {
                "latency_budget_s": self.fixed.latency_budget_s,
                "throughput_floor": self.fixed.throughput_floor,
            },
            "points": [entry(p) | ({} if p.feasible else {"unmet": self.unmet()}) for p in self.points],
            "baselines": [entry(p) for p in self.baselines],
            "front": [
                {"name": p.name, "latency_s": round(float(p.latency_s), 6), "energy_j": round(p.energy.total_j, 6)}
                for p in self.front()
            ],
        }

    def table(self) -> list[str]:
        """The points, then the reference plans, as aligned text lines; `*` marks the front."""
        ok = [p for p in (*self.points, *self.baselines) if p.feasible]
        head = "latency budget" if self.spec.key == "latency_budget" else "throughput floor"
        cols = [head, "energy mJ", "compute", "idle", "radio", "latency ms", "inf/s", "front", "stages (device@CPUs)"]

        def cells(p: Point) -> list[str] | None:
            if not p.feasible:
                return None
            e = p.energy
            return [
                p.name,
                *(f"{x * 1e3:.1f}" for x in (e.total_j, e.compute_j, e.idle_j, e.radio_j)),
                f"{p.latency_s * 1e3:.1f}",
                f"{1 / p.period_s:.3g}" if p.period_s > 1e-3 else f"{1 / p.period_s:.0f}",
                "" if any(q.dominates(p) for q in ok) else "*",
                " > ".join(f"{d}@{c:g}" for d, c in zip(p.devices, p.levels, strict=True)),
            ]

        rows = [(p, cells(p)) for p in (*self.points, *self.baselines)]
        width = [max(len(r[k]) for r in [cols, *(c for _, c in rows if c)]) for k in range(len(cols))]
        width[0] = max(width[0], *(len(p.name) for p in self.points))

        def line(r: list[str]) -> str:
            out = [r[0].rjust(width[0])]
            out += [x.rjust(w) for x, w in zip(r[1:-2], width[1:-2], strict=True)]
            out += [r[-2].center(width[-2]), r[-1]]
            return "  ".join(out).rstrip()

        lines = [line(cols)]
        for k, (p, c) in enumerate(rows):
            if k == len(self.points):
                lines.append("reference plans, without limits:")
            lines.append(line(c) if c else f"{p.name.rjust(width[0])}  infeasible: {self.unmet()}")
        lines.append("* on the Pareto front of energy against latency (the points and the reference plans together)")
        return lines


def sweep(
    graph: ModelGraph,
    testbed: Testbed,
    spec: SweepSpec,
    *,
    source: str | None = None,
    stages: int | None = None,
    cost_table: CostTable | None = None,
    batch: int = 1,
    fixed: Limits | None = None,
    throughput_plan: tuple[list[int], list[str]],
    latency_plan: tuple[list[int], list[str]],
) -> Sweep:
    """The sweep's least-energy points and the reference plans on `graph` over `testbed`'s devices.
    `throughput_plan` and `latency_plan` are `optimal`'s placements (seq-position cuts, device names)
    for those objectives, every device at its own cpus (see `plan_sweep`)."""
    devices = list(testbed.devices)
    if len(devices) > MAX_DEVICES:
        raise UserError(
            f"objective energy plans at most {MAX_DEVICES} devices exactly, got {len(devices)}",
            testbed.source,
            "devices",
        )
    names = [d.name for d in devices]
    a, bounds = build_arrays(graph, devices, testbed.links, table=cost_table, source=source, batch=batch)
    power = PowerArrays.of(devices)
    fixed = fixed or Limits()
    points = least_energy_points(a, power, spec, names=names, bounds=bounds, fixed=fixed, stages=stages)
    baselines = []
    for name, which in (("fast-only", "fastest"), ("slow-only", "slowest")):
        sol = solve(a, power.pinned(which), None, None, stages)
        if not math.isfinite(sol.energy_j):
            baselines.append(Point(name, None))
            continue
        lv = [0 if which == "fastest" else len(power.scale[d]) - 1 for d in sol.devices]
        baselines.append(_point(name, None, a, power, sol.cuts, sol.devices, lv, names, bounds))
    for name, (cuts, devs) in (("throughput-optimal", throughput_plan), ("latency-optimal", latency_plan)):
        idx = [names.index(d) for d in devs]
        baselines.append(
            _point(name, None, a, power, [bounds.index(c) for c in cuts], idx, [0] * len(idx), names, bounds)
        )
    return Sweep(spec, points, baselines, fixed)


def plan_sweep(
    model_path: str | Path,
    testbed: Testbed,
    spec: SweepSpec,
    *,
    source: str | None = None,
    stages: int | None = None,
    cost_table: CostTable | None = None,
    batch: int = 1,
    fixed: Limits | None = None,
) -> tuple[ModelGraph, Sweep]:
    """`sweep` for a model file: the throughput- and latency-optimal plans come from `place` with
    algorithm `optimal`, which also checks the model, the devices and the cost table (one line where
    nothing fits)."""
    from orchestrator.partition import place

    how = {"algorithm": "optimal", "stages": stages, "source": source, "cost_table": cost_table, "batch": batch}
    graph, fast = place(model_path, testbed, objective="throughput", **how)
    _, quick = place(model_path, testbed, objective="latency", **how)
    return graph, sweep(
        graph,
        testbed,
        spec,
        source=source,
        stages=stages,
        cost_table=cost_table,
        batch=batch,
        fixed=fixed,
        throughput_plan=(fast.cuts, fast.devices),
        latency_plan=(quick.cuts, quick.devices),
    )
