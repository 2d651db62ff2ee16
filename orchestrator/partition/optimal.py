"""Exact placement: which devices take part, in what order, and where to cut.

Dynamic programming over the chain of cut candidates. Devices that are interchangeable (the same
costs, memory and overhead, and links that look the same from every other device) form one type
with a count, as PipeEdge plans over device types. A state is (bound j, how many devices of each
type are used so far, type of the stage ending at j); its value is the best objective of a prefix
pipeline covering blocks 0..j-1. Distinct devices are types of count 1, where the counts are the
familiar set of devices used. The objective combines stage and transfer times with `max`
(throughput: minimise the bottleneck) or `+` (latency: minimise the end-to-end sum); both are
monotone, so the DP is exact for the candidate set it is given. Each device holds at most one
stage; memory limits are checked per stage.

Cost: O(B^2 * S * T^2) for T types and S = prod(count + 1) states, done as numpy operations over
(state, type) per bound pair: 8 distinct devices (S = 256) and ~25 candidates take milliseconds,
and 32 devices of a few types (S = 2 * 32 for one type beside the source) as little. S grows as
the product of the counts plus one: 2^T for T distinct devices, which is why at most
MAX_STATES of them are planned. For `throughput`, a second pass picks, among the placements with
the optimal bottleneck, the one with the lowest latency.
"""

from __future__ import annotations

from dataclasses import replace
from typing import NamedTuple

import numpy as np

from common.cpu_quota import ort_threads
from orchestrator.config import TIME_OBJECTIVES
from orchestrator.errors import UserError
from orchestrator.partition.costmodel import Arrays, build_arrays, evaluate, predict
from orchestrator.partition.graph import ModelGraph
from orchestrator.partition.memory import format_bytes
from orchestrator.partition.problem import Placement, Problem

MAX_STATES = 4096  # states (counts used per type) that keep planning well under a second


class Solution(NamedTuple):
    """The optimum (inf when nothing fits), its cuts (bound indices 1..B-1) and device indices."""

    value: float
    cuts: list[int]
    devices: list[int]


def serialise_all(nbytes: float, rate: np.ndarray) -> np.ndarray:
    """How long a transfer holds its link (costmodel.serialise_s), for every pair of devices."""
    with np.errstate(divide="ignore"):
        return np.where(rate > 0, nbytes * 8.0 / np.where(rate > 0, rate, 1.0), 0.0)


def _transfer(nbytes: float, rate: np.ndarray, delay: np.ndarray) -> np.ndarray:
    return serialise_all(nbytes, rate) + delay


def _per_stage(mem: np.ndarray) -> np.ndarray:
    """Memory per stage [i, j] from either form of `Arrays.mem`."""
    if mem.ndim == 2:
        return mem
    mp = np.concatenate([[0.0], np.cumsum(mem)])
    return mp[None, :] - mp[:, None]


def _dp(a: Arrays, combine: np.ufunc, stages: int | None, cap: float | None, counts: list[int]) -> Solution:
    """One DP pass over types (`a` has one row per type, `counts` devices of each; a type's links
    to itself are those between two of its devices); `cap` (if given) forbids any step slower.
    The solution's `devices` are type indices.

    With `max` a stage counts as compute plus its device's per-frame overhead (how long the step
    takes while the pipeline is full); with `+` as compute alone (a request's path), while the cap
    still applies to the busy step."""
    d_n, b_n = a.block_cost.shape
    strides = [int(x) for x in np.cumprod([1] + [c + 1 for c in counts[:-1]])]
    m_n = int(np.prod([c + 1 for c in counts]))
    inf = np.inf
    src = d_n  # a virtual "device" for the empty prefix: the source, or nowhere
    busy = np.array([a.busy_s(d) for d in range(d_n)])
    relay = float(a.overhead[a.source]) if a.overhead is not None and a.source is not None else 0.0

    # stage time comp[d, i, j] for blocks i..j-1 on device d; inf where it does not fit
    pre = np.concatenate([np.zeros((d_n, 1)), np.cumsum(a.block_cost, axis=1)], axis=1)
    comp = pre[:, None, :] - pre[:, :, None]
    mem = _per_stage(a.mem)
    room = a.dev_mem[:, None, None]
    fits = mem[None] <= room
    if a.mem_lean is not None:  # where only lean fits (always, on a lean device), compute is slower
        lean_fits = _per_stage(a.mem_lean)[None] <= room
        lean_dev = (a.lean_device if a.lean_device is not None else np.zeros(d_n, dtype=bool))[:, None, None]
        lean = lean_dev | (~fits & lean_fits)
        fits = np.where(lean_dev, lean_fits, fits | lean_fits)
        comp = np.where(lean, comp * a.lean_factor, comp)
    if combine is np.maximum:
        comp = comp + busy[:, None, None]
    idx = np.arange(b_n + 1)
    bad = (idx[None, :] <= idx[:, None])[None] | ~fits
    comp = np.where(bad, inf, comp)
    if cap is not None:
        comp = np.where(comp + (0.0 if combine is np.maximum else busy[:, None, None]) > cap, inf, comp)

    # trans[j][d, d2]: moving bound j's live set from d to d2; row `src` only at j = 0. With `max`
    # a hop counts as its hold on the link (the delay overlaps between frames), with `+` as its
    # path, serialisation and delay; the cap applies to the hold.
    def hop(nbytes: float, rate: np.ndarray, delay: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        held = serialise_all(nbytes, rate)
        return (held if combine is np.maximum else held + delay), held

    trans = np.full((b_n + 1, d_n + 1, d_n), inf)
    holds = np.zeros((b_n + 1, d_n + 1, d_n))
    for j in range(1, b_n):
        t, h = hop(a.cut_bytes[j], a.link_rate, a.link_delay)
        t[np.diag_indices(d_n)] = np.where(np.array(counts) > 1, np.diag(t), inf)  # two of one type
        trans[j, :d_n], holds[j, :d_n] = t, h
    home = home_hold = np.zeros(d_n)
    if a.source is None:
        trans[0, src] = 0.0
    else:
        s = a.source
        here = np.arange(d_n) == s
        t, h = hop(a.cut_bytes[0], a.link_rate[s], a.link_delay[s])
        trans[0, src], holds[0, src] = np.where(here, 0.0, t), np.where(here, 0.0, h)
        t, h = hop(a.cut_bytes[b_n], a.link_rate[:, s], a.link_delay[:, s])
        home, home_hold = np.where(here, 0.0, t), np.where(here, 0.0, h)
    if cap is not None:
        trans = np.where(holds > cap, inf, trans)
        home = np.where(home_hold > cap, inf, home)

    masks = np.arange(m_n)
    used = [(masks // strides[d]) % (counts[d] + 1) for d in range(d_n)]  # devices of type d in a state
    without = [masks[used[d] < counts[d]] for d in range(d_n)]
    f = np.full((b_n + 1, m_n, d_n + 1), inf)
    f[0, 0, src] = 0.0
    for j in range(b_n):
        fj = f[j]
        if not np.isfinite(fj).any():
            continue
        # best way to hand bound j over to each next device d2: (mask, d2)
        g = combine(fj[:, :, None], trans[j][None]).min(axis=1)
        # then run blocks j..j2-1 on d2, for every j2 > j: (j2, mask, d2)
        h = combine(g[None], comp[:, j, j + 1 :].T[:, None, :])
        for d in range(d_n):
            w = without[d]
            tgt = f[j + 1 :, w + strides[d], d]
            f[j + 1 :, w + strides[d], d] = np.minimum(tgt, h[:, w, d])

    end = combine(f[b_n, :, :d_n], home[None])
    if a.source is not None and relay > 0:  # a source holding no stage relays every frame
        off = used[a.source] == 0
        if combine is np.maximum:
            end[off] = np.maximum(end[off], relay)
        elif cap is not None and relay > cap:
            end[off] = inf
    if stages is not None:
        pop = sum(used)
        end = np.where((pop == stages)[:, None], end, inf)
    best = float(end.min())
    if not np.isfinite(best):
        return Solution(inf, [], [])

    # walk back: recompute each step exactly as the forward pass did and match the values
    m, d = (int(x) for x in np.unravel_index(int(np.argmin(end)), end.shape))
    j2 = b_n
    cuts: list[int] = []
    devs = [d]
    while True:
        target = f[j2, m, d]
        pm = m - strides[d]
        found = None
        for j in range(j2 - 1, -1, -1):
            cands = [src] if (j == 0 and pm == 0) else [x for x in range(d_n) if used[x][pm] > 0]
            for dp in cands:
                v = combine(combine(f[j, pm, dp], trans[j, dp, d]), comp[d, j, j2])
                if np.isfinite(v) and (v == target or np.isclose(v, target, rtol=1e-12, atol=0.0)):
                    found = (j, dp)
                    break
            if found:
                break
        if found is None:  # cannot happen: the forward pass produced target from one of these
            raise RuntimeError("optimal: backtracking lost the path")
        j, dp = found
        if dp == src:
            break
        cuts.append(j)
        devs.append(dp)
        m, d, j2 = pm, dp, j
    return Solution(best, cuts[::-1], devs[::-1])


def solve(
    block_cost: np.ndarray,
    cut_bytes: np.ndarray,
    link_rate: np.ndarray,
    link_delay: np.ndarray,
    block_mem: np.ndarray,
    dev_mem: np.ndarray,
    objective: str,
    stages: int | None = None,
    source: int | None = None,
    overhead: np.ndarray | None = None,
) -> Solution:
    """Best placement over plain arrays (see `costmodel.Arrays` for shapes and units).

    `value` is the bottleneck seconds (throughput) or the end-to-end seconds (latency); both
    count the source's trips when `source` is given. Infeasible: (inf, [], []).
    """
    a = Arrays(
        block_cost=np.asarray(block_cost, dtype=float),
        cut_bytes=np.asarray(cut_bytes, dtype=float),
        link_rate=np.asarray(link_rate, dtype=float),
        link_delay=np.asarray(link_delay, dtype=float),
        mem=np.asarray(block_mem, dtype=float),
        dev_mem=np.asarray(dev_mem, dtype=float),
        source=source,
        overhead=None if overhead is None else np.asarray(overhead, dtype=float),
    )
    return solve_arrays(a, objective, stages)


def _interchangeable(a: Arrays, i: int, k: int) -> bool:
    """Would swapping devices i and k leave the problem as it is?"""
    if i == a.source or k == a.source:
        return False
    rows = [a.block_cost, a.dev_mem] + [x for x in (a.overhead, a.lean_device) if x is not None]
    if any(not np.array_equal(x[i], x[k]) for x in rows):
        return False
    p = np.arange(len(a.dev_mem))
    p[[i, k]] = [k, i]
    return all(np.array_equal(m, m[p][:, p]) for m in (a.link_rate, a.link_delay))


def device_types(a: Arrays) -> list[list[int]]:
    """Devices grouped into types of interchangeable ones (the source always alone), in order."""
    types: list[list[int]] = []
    for d in range(len(a.dev_mem)):
        t = next((t for t in types if all(_interchangeable(a, i, d) for i in t)), None)
        if t is None:
            types.append([d])
        else:
            t.append(d)
    return types


def _by_type(a: Arrays, types: list[list[int]]) -> Arrays:
    """The problem with one device per type; a type's own link is the one between two of its devices."""
    reps = [t[0] for t in types]
    pair = [(t[0], t[1] if len(t) > 1 else t[0]) for t in types]
    rate, delay = a.link_rate[np.ix_(reps, reps)].copy(), a.link_delay[np.ix_(reps, reps)].copy()
    for k, (i, j) in enumerate(pair):
        rate[k, k], delay[k, k] = a.link_rate[i, j], a.link_delay[i, j]
    return replace(
        a,
        block_cost=a.block_cost[reps],
        link_rate=rate,
        link_delay=delay,
        dev_mem=a.dev_mem[reps],
        source=None if a.source is None else next(k for k, t in enumerate(types) if a.source in t),
        overhead=None if a.overhead is None else a.overhead[reps],
        lean_device=None if a.lean_device is None else a.lean_device[reps],
    )


def solve_arrays(a: Arrays, objective: str, stages: int | None = None) -> Solution:
    """`solve` on an `Arrays`: planned over device types, returned as device indices."""
    if objective not in TIME_OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}")
    d_n, b_n = a.block_cost.shape
    types = device_types(a)
    counts = [len(t) for t in types]
    if (n := state_count(counts)) > MAX_STATES:
        raise ValueError(f"{n} states ({len(types)} device types): the exact search handles at most {MAX_STATES}")
    if stages is not None and (stages < 1 or stages > min(d_n, b_n)):
        return Solution(np.inf, [], [])
    t = _by_type(a, types)
    if objective == "latency":
        sol = _dp(t, np.add, stages, None, counts)
    else:
        sol = first = _dp(t, np.maximum, stages, None, counts)
        if np.isfinite(first.value):  # among the placements with this bottleneck, the lowest latency
            second = _dp(t, np.add, stages, first.value * (1 + 1e-12), counts)
            # float noise may push the cap under the optimum: keep the first pass then
            sol = Solution(first.value, second.cuts, second.devices) if second.devices else first
    free = [list(d) for d in types]
    return Solution(sol.value, sol.cuts, [free[k].pop(0) for k in sol.devices])


def state_count(counts: list[int]) -> int:
    """DP states for types with these counts: the product of (count + 1)."""
    return int(np.prod([c + 1 for c in counts]))


def _no_fit(problem: Problem, a: Arrays, bounds: list[int]) -> UserError:
    """Name the block that is hardest to place and the device with the most memory."""
    g = problem.graph
    nb = len(bounds) - 1
    least = np.minimum(a.mem, a.mem_lean) if a.mem_lean is not None else a.mem  # lean where it saves memory
    block_mem = [float(least[i, i + 1]) for i in range(nb)]
    big = int(np.argmax(block_mem))
    dev = max(problem.devices, key=lambda d: d.memory)
    usable = float(a.dev_mem[problem.devices.index(dev)])
    where = f"block {big}, nodes {bounds[big]}..{bounds[big + 1] - 1} from {g.node(bounds[big]).name or 'unnamed'}"
    if block_mem[big] > usable:
        msg = (
            f"no placement fits: the largest block needs {format_bytes(block_mem[big])} ({where}) but the "
            f"largest device, {dev.name}, has {format_bytes(dev.memory)} ({format_bytes(usable)} usable)"
        )
    else:
        total = float(least[0, nb])
        room = float(a.dev_mem.sum())
        msg = (
            f"no placement fits: the model needs about {format_bytes(total)} and every block fits some "
            f"device, but no split over the devices ({format_bytes(room)} usable in all"
            + (f", {problem.stages} stages" if problem.stages else "")
            + ") keeps each stage within its device's memory"
        )
    return UserError(msg, problem.devices_file, "devices")


def least_latency_under(a: Arrays, cap: float, stages: int | None) -> Solution:
    """The lowest-latency placement whose every step takes at most `cap` (device indices)."""
    types = device_types(a)
    sol = _dp(_by_type(a, types), np.add, stages, cap * (1 + 1e-12), [len(t) for t in types])
    free = [list(t) for t in types]
    return Solution(sol.value, sol.cuts, [free[k].pop(0) for k in sol.devices])


def problem_arrays(problem: Problem) -> tuple[Arrays, list[int]]:
    """The cost arrays (and block bounds) of a problem: its costs, links, source, batch and caches."""
    return build_arrays(
        problem.graph,
        problem.devices,
        problem.links,
        table=problem.cost_table,
        source=problem.source,
        batch=problem.batch,
        cache_tokens=problem.cache_tokens,
    )


def optimal(problem: Problem) -> Placement:
    """Exact best placement for the problem's objective over the reduced cut candidates."""
    g: ModelGraph = problem.graph
    names = [d.name for d in problem.devices]
    a, bounds = problem_arrays(problem)
    types = device_types(a)
    if state_count([len(t) for t in types]) > MAX_STATES:
        raise UserError(
            f"optimal plans {len(names)} devices of {len(types)} distinct types, too many to search exactly "
            f"(at most {MAX_STATES} combinations of how many of each type take part; 12 distinct devices are): "
            "make devices alike, or use --stages or another algorithm",
            problem.devices_file,
            "devices",
        )
    if problem.stages is not None and problem.stages > len(bounds) - 1:
        raise UserError(
            f"{problem.stages} stages but only {len(bounds) - 1} blocks between cut candidates",
            problem.devices_file,
            "stages",
        )
    if problem.objective == "energy":
        return _least_energy(problem, a, bounds)
    sol = solve_arrays(a, problem.objective, problem.stages)
    if not np.isfinite(sol.value):
        raise _no_fit(problem, a, bounds)
    cuts = [bounds[c] for c in sol.cuts]
    devices = [names[d] for d in sol.devices]
    ev = evaluate(a, sol.cuts, sol.devices)
    notes = [
        f"optimal ({problem.objective}): {len(sol.devices)} of {len(names)} devices, "
        f"{len(bounds) - 2} cut candidates; predicted bottleneck {ev.bottleneck_s * 1e3:.1f} ms, "
        f"latency {ev.latency_s * 1e3:.1f} ms"
    ]
    testbed = problem.testbed()
    pred = predict(
        g, cuts, devices, testbed, table=problem.cost_table, source=problem.source, cache_tokens=problem.cache_tokens
    )
    return Placement(cuts, devices, notes, predicted=pred)


def _least_energy(problem: Problem, a: Arrays, bounds: list[int]) -> Placement:
    """objective energy: the exact least energy per inference within the problem's limits, with a
    level per device (partition/energy.py). Limits no placement meets end in one line giving the
    best latency (or throughput) that can be had."""
    from orchestrator.partition import energy

    names = [d.name for d in problem.devices]
    if len(names) > energy.MAX_DEVICES:
        raise UserError(
            f"objective energy plans at most {energy.MAX_DEVICES} devices exactly, got {len(names)}: "
            "use fewer devices, or objective throughput or latency",
            problem.devices_file,
            "devices",
        )
    lim = problem.limits
    power = energy.PowerArrays.of(list(problem.devices))
    sol = energy.solve(a, power, lim.latency_budget_s, lim.period_cap_s, problem.stages)
    if not np.isfinite(sol.energy_j):
        if not np.isfinite(energy.solve(a, power, None, None, problem.stages).energy_j):
            raise _no_fit(problem, a, bounds)
        raise _out_of_reach(problem, a, power)
    cuts = [bounds[c] for c in sol.cuts]
    devices = [names[d] for d in sol.devices]
    levels = [power.level_cpus[d][lv] for d, lv in zip(sol.devices, sol.levels, strict=True)]
    f = energy.figures(a, power, sol.cuts, sol.devices, sol.levels)
    assert f is not None
    shown = ", ".join(f"{n} at {c:g} CPUs" for n, c in zip(devices, levels, strict=True))
    notes = [
        f"optimal (energy{_limits_text(lim)}): {len(devices)} of {len(names)} devices ({shown}); predicted "
        f"{f.energy.total_j * 1e3:.1f} mJ per inference (compute {f.energy.compute_j * 1e3:.1f}, idle "
        f"{f.energy.idle_j * 1e3:.1f}, radio {f.energy.radio_j * 1e3:.1f}), latency {f.latency_s * 1e3:.1f} ms, "
        f"period {f.period_s * 1e3:.1f} ms"
    ]
    crossed = [
        f"{n} at {c:g}"
        for n, c in zip(devices, levels, strict=True)
        if ort_threads(c) != ort_threads(problem.testbed().device(n).cpus)
    ]
    if crossed:  # the profile is scaled by cpus / level: exact under a CFS quota for the same thread count
        notes.append(
            f"{', '.join(crossed)} CPUs runs fewer ORT threads than the device's own cpus: its stage time is "
            "scaled from the profile at the device's cpus, which assumes the threads scale perfectly"
        )
    tb = problem.testbed()
    how = {"table": problem.cost_table, "source": problem.source, "levels": levels}
    pred = energy.with_energy(
        predict(problem.graph, cuts, devices, tb, cache_tokens=problem.cache_tokens, **how),
        problem.graph,
        cuts,
        devices,
        tb,
        **how,
    )
    return Placement(cuts, devices, notes, predicted=pred, levels=levels)


def _limits_text(lim) -> str:
    parts = []
    if lim.latency_budget_s is not None:
        parts.append(f"latency budget {lim.latency_budget_s * 1e3:g} ms")
    if lim.throughput_floor is not None:
        parts.append(f"throughput floor {lim.throughput_floor:g}/s")
    return f" within {' and '.join(parts)}" if parts else ""


def _out_of_reach(problem: Problem, a: Arrays, power) -> UserError:
    """Limits no placement meets: what the fastest placements reach (every device at its own cpus,
    its fastest level)."""
    lim = problem.limits
    said = []
    if lim.latency_budget_s is not None:
        best = solve_arrays(a, "latency", problem.stages).value
        said.append(
            f"the best latency that can be had is {best * 1e3:.1f} ms (budget {lim.latency_budget_s * 1e3:g} ms)"
        )
    if lim.throughput_floor is not None:
        best = solve_arrays(a, "throughput", problem.stages).value
        said.append(f"the best throughput that can be had is {1 / best:.3g}/s (floor {lim.throughput_floor:g}/s)")
    field = "latency_budget" if lim.latency_budget_s is not None else "throughput_floor"
    return UserError(
        "no placement meets the limits: "
        + "; ".join(said)
        + (" (each alone; together they may not be met)" if len(said) > 1 else ""),
        None,
        field,
    )
