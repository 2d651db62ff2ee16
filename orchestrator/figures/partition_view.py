"""Where the plan cuts the model, in the model's own terms: for the report's partition plot."""

from __future__ import annotations

from pathlib import Path

from orchestrator.partition.graph import ModelGraph
from orchestrator.partition.plan import Plan


def partition_view(plan: Plan, graph: ModelGraph) -> dict:
    """What the partition plot needs: per-node cost, live bytes, and the chosen cuts."""
    cuts = []
    for s in plan.stages[:-1]:
        produced = [graph.prod[t] for t in s.outputs if graph.prod.get(t, -1) >= 0]
        cuts.append(max(produced) + 1 if produced else 0)
    return {
        "cost": list(graph.cost),
        "live_bytes": list(graph.live_bytes),
        "cuts": cuts,
        "devices": [s.device for s in plan.stages],
        "title": f"{Path(plan.model).name}: {len(plan.stages)} stages ({plan.algorithm})",
    }
