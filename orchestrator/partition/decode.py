"""Planning for token-by-token generation: what a placement gives per output token, and the
placement that gives the most tokens per second with a job's sequences in flight.

The model. A decode step of one sequence crosses the whole pipeline: its time is the plan's
`latency_s` (a request's end-to-end time: every stage's compute and every hop). With `sequences`
interleaved, each stage works on one sequence's step after another, and a sequence's next step
cannot start before its last one came back (its token is the next step's input) nor before the
slowest stage has taken every other sequence's step (`1 / throughput_fps` each). So

    TPOT = max(latency, sequences x slowest step)
    tokens/s in total = sequences / TPOT, each sequence 1 / TPOT.

With one sequence TPOT is the latency; with many, the pipeline's slowest step bounds it. It leaves
out what a sequence waits for another's step at a busy stage or link, and a new sequence's prefill
holding a stage for several decode steps' time: both lengthen measured steps.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from orchestrator.partition.costmodel import Arrays, predict
from orchestrator.partition.optimal import Solution, least_latency_under, optimal, problem_arrays, serialise_all
from orchestrator.partition.plan import Predicted
from orchestrator.partition.problem import Placement, Problem


def decode_prediction(predicted: Predicted, sequences: int) -> tuple[float, float]:
    """(time per output token in seconds, tokens per second in total) of a placement's prediction
    with `sequences` in flight (see the module's docstring)."""
    if predicted.latency_s is None:
        raise ValueError("the prediction has no latency")
    if sequences < 1:
        raise ValueError("need at least one sequence")
    slowest = 1.0 / predicted.throughput_fps if predicted.throughput_fps else 0.0
    tpot = max(predicted.latency_s, sequences * slowest)
    return tpot, (sequences / tpot if tpot > 0 else float("inf"))


def step_values(a: Arrays) -> np.ndarray:
    """Every time a pipeline step can take on `a` (a stage's compute, default or lean, with its
    device's per-frame overhead; a hop; the source's relay), sorted, distinct: the only bottlenecks
    a placement can have."""
    d_n, b_n = a.block_cost.shape
    pre = np.concatenate([np.zeros((d_n, 1)), np.cumsum(a.block_cost, axis=1)], axis=1)
    i, j = np.triu_indices(b_n + 1, k=1)
    comp = pre[:, j] - pre[:, i]
    busy = np.array([a.busy_s(d) for d in range(d_n)])[:, None]
    vals = [(comp + busy).ravel(), (comp * a.lean_factor + busy).ravel()]
    for nbytes in a.cut_bytes:  # a hop's hold on its link: the delay overlaps (costmodel.serialise_s)
        vals.append(serialise_all(nbytes, a.link_rate).ravel())
    if a.overhead is not None and a.source is not None:
        vals.append(np.array([float(a.overhead[a.source])]))
    out = np.unique(np.concatenate(vals))
    return out[np.isfinite(out) & (out >= 0)]


def best_for_tokens(problem: Problem, sequences: int) -> Placement:
    """The placement with the most tokens per second in total with `sequences` in flight, that is
    the least max(latency, sequences x slowest step), under the memory limits (the cache included).

    Exact over the cut candidates: L(c), the least latency with no step over c, only falls as c
    grows while sequences x c rises, so the best is at the first step value c where
    L(c) <= sequences x c, or the one before it (found by bisection, a latency search each).
    Ties go to the lower latency; the figures compared are the predictions plan.json carries."""
    g = problem.graph
    fastest = optimal(replace(problem, objective="latency"))  # also refuses what optimal refuses, alike
    widest = optimal(replace(problem, objective="throughput"))
    a, bounds = problem_arrays(problem)
    caps = step_values(a)
    lo, hi = 0, len(caps)  # the first index where L(c) <= sequences x c, or len(caps)
    found: dict[int, Solution] = {}

    def at(k: int) -> Solution:
        if k not in found:
            found[k] = least_latency_under(a, float(caps[k]), problem.stages)
        return found[k]

    while lo < hi:
        mid = (lo + hi) // 2
        if at(mid).value <= sequences * caps[mid]:
            hi = mid
        else:
            lo = mid + 1
    names = [d.name for d in problem.devices]
    options = [(fastest.cuts, fastest.devices), (widest.cuts, widest.devices)]
    for k in (lo - 1, lo):
        if 0 <= k < len(caps) and np.isfinite(at(k).value):
            options.append(([bounds[c] for c in at(k).cuts], [names[d] for d in at(k).devices]))
    tb = problem.testbed()
    best: tuple[float, float, list[int], list[str], Predicted] | None = None
    for cuts, devices in options:
        pred = predict(
            g, cuts, devices, tb, table=problem.cost_table, source=problem.source, cache_tokens=problem.cache_tokens
        )
        tpot, _ = decode_prediction(pred, sequences)
        key = (tpot, pred.latency_s or 0.0, list(cuts), list(devices), pred)
        if best is None or key[:2] < best[:2]:
            best = key
    assert best is not None
    tpot, _, cuts, devices, pred = best
    per = {
        "latency": decode_prediction(fastest.predicted, sequences)[1] if fastest.predicted else None,
        "throughput": decode_prediction(widest.predicted, sequences)[1] if widest.predicted else None,
    }
    shown = ", ".join(f"{k}-optimal placement {v:.1f}" for k, v in per.items() if v is not None)
    notes = [
        f"optimal (throughput, {sequences} sequence{'s' if sequences > 1 else ''} in flight): {len(devices)} of "
        f"{len(names)} devices, the most tokens per second = sequences / max(latency, sequences x slowest step); "
        f"predicted {sequences / tpot:.1f} tokens/s, {tpot * 1e3:.1f} ms per output token ({shown} tokens/s)"
    ]
    return Placement(cuts, devices, notes, predicted=pred)


def mean_past_tokens(longest_prompt: int, max_new_tokens: int) -> int:
    """The decode step a generation job's figures are measured at: the mean context over its decode
    (the longest prompt, then half of the tokens it generates)."""
    return longest_prompt + max_new_tokens // 2


def held_cache_tokens(longest_prompt: int, max_new_tokens: int, sequences: int) -> int:
    """The most cache tokens a stage holds at once: every sequence in flight at its longest context."""
    return (longest_prompt + max_new_tokens) * sequences
