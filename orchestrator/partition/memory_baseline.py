"""Ianvs's automatic partitioning, kept as a baseline: split the weights by device memory.

Devices are taken in file order; device i gets a share of the model's weights proportional
to its memory, and a cut goes where the accumulated weight bytes reach the running share.
It ignores compute, links and activations, which is why `optimal` exists; comparing the two
on the same testbed shows what that costs.
"""

from __future__ import annotations

import numpy as np

from orchestrator.errors import UserError
from orchestrator.partition.graph import ModelGraph, tensor_nbytes
from orchestrator.partition.problem import Placement, Problem


def weight_per_node(graph: ModelGraph) -> list[int]:
    """Initializer bytes first read at each seq position (a shared weight counts once)."""
    seen: set[str] = set()
    out: list[int] = []
    for p in range(graph.n):
        w = 0
        for name in graph.stage_initializers(p, p + 1):
            if name not in seen:
                seen.add(name)
                w += tensor_nbytes(graph.initializers[name])
        out.append(w)
    return out


def memory_cuts(weights: list[int], memories: list[float]) -> list[int]:
    """Cut positions (1..n-1) where accumulated weights reach each device's cumulative share.

    Each stage keeps at least one node, so there are exactly len(memories) - 1 cuts when the
    model has enough nodes.
    """
    n, k = len(weights), len(memories)
    acc = np.cumsum(weights, dtype=float)
    total = acc[-1] if n and acc[-1] > 0 else 0.0
    shares = np.cumsum(memories)[:-1] / sum(memories)
    cuts: list[int] = []
    for j, share in enumerate(shares):
        lo = (cuts[-1] + 1) if cuts else 1
        hi = n - (k - 1 - j)  # leave a node for every later stage
        if total > 0:
            p = int(np.searchsorted(acc, share * total, side="left")) + 1  # the stage ends after that node
        else:
            p = round(share * n)
        cuts.append(min(max(p, lo), hi))
    return cuts


def memory_partition(problem: Problem) -> Placement:
    """One stage per device (or the first `stages` devices), weights split by memory share."""
    g = problem.graph
    k = problem.stages or len(problem.devices)
    if k > g.n:
        raise UserError(f"{k} stages but the model has only {g.n} non-constant nodes to share", str(g.path), "stages")
    devs = problem.devices[:k]
    cuts = memory_cuts(weight_per_node(g), [float(d.memory) for d in devs])
    return Placement(cuts, [d.name for d in devs], ["memory: cuts by each device's share of memory (Ianvs baseline)"])
