"""Cut an ONNX model into stages: analyse the graph, place the stages, write the files and plan.json."""

from __future__ import annotations

import os
from pathlib import Path

from ..config import Testbed
from ..errors import UserError
from .algorithms import ALGORITHMS, Placement, Problem, check_memory, check_placement, get_algorithm
from .cut import WEIGHTS_FILE, write_stages
from .graph import ModelGraph, load_graph
from .plan import Plan, Predicted, StagePlan

__all__ = [
    "ALGORITHMS",
    "ModelGraph",
    "Placement",
    "Plan",
    "Problem",
    "WEIGHTS_FILE",
    "get_algorithm",
    "load_graph",
    "partition",
    "predict",
]

# A rough sustained rate for FLOP-based estimates, per host CPU of quota. Profiling replaces it.
ROUGH_FLOPS_PER_CPU = 30e9
OBJECTIVES = ("throughput", "latency")


def predict(
    graph: ModelGraph, placement: Placement, testbed: Testbed, flops_per_cpu: float = ROUGH_FLOPS_PER_CPU
) -> Predicted:
    """Estimates from FLOPs and link parameters, batch 1: good for comparing plans, not for reports."""
    b = [0, *placement.cuts, graph.n]
    stage_s = []
    for k, name in enumerate(placement.devices):
        dev = testbed.device(name)
        stage_s.append(sum(graph.cost[b[k] : b[k + 1]]) / (flops_per_cpu * dev.cpus))
    transfer_s = []
    for k, cut in enumerate(placement.cuts):
        link = testbed.link(placement.devices[k], placement.devices[k + 1])
        nbytes = graph.live_bytes[cut]
        transfer_s.append((nbytes * 8 / link.rate_bps if link.rate_bps else 0.0) + link.delay_s)
    slowest = max(stage_s + transfer_s)
    return Predicted(
        stage_s=[round(s, 6) for s in stage_s],
        transfer_s=[round(s, 6) for s in transfer_s],
        throughput_fps=round(1.0 / slowest, 3) if slowest > 0 else None,
        latency_s=round(sum(stage_s) + sum(transfer_s), 6),
    )


def partition(
    model_path: str | Path,
    testbed: Testbed,
    *,
    algorithm: str = "even",
    objective: str = "throughput",
    stages: int | None = None,
    out_dir: str | Path,
) -> Plan:
    """Plan and write DIR/plan.json, DIR/stage_k.onnx and DIR/weights.bin; return the plan (with notes)."""
    model_path = Path(model_path)
    src = testbed.source
    if objective not in OBJECTIVES:
        raise UserError(
            f"unknown objective {objective!r} (known: {', '.join(OBJECTIVES)})", None, "objective"
        )
    algo = get_algorithm(algorithm)
    if stages is not None and stages < 1:
        raise UserError(f"need at least one stage, got {stages}", None, "stages")
    if stages is not None and stages > len(testbed.devices):
        raise UserError(f"{stages} stages but only {len(testbed.devices)} devices", src, "stages")
    graph = load_graph(model_path)
    if stages is not None and stages > graph.n:
        raise UserError(
            f"{stages} stages but the model has only {graph.n} non-constant nodes to share",
            str(model_path),
            "stages",
        )
    problem = Problem(
        graph=graph,
        devices=list(testbed.devices),
        stages=stages,
        objective=objective,
        points=list(testbed.partition_points),
        block_cost=list(graph.cost),
        devices_file=src,
    )
    placement = algo(problem)
    check_placement(problem, placement)
    check_memory(problem, placement)

    out = Path(out_dir)
    files = write_stages(graph, placement.cuts, out)
    try:
        model_ref = os.path.relpath(model_path.resolve(), out.resolve())
        if model_ref.startswith(".."):
            model_ref = str(model_path.resolve())
    except ValueError:
        model_ref = str(model_path.resolve())
    plan = Plan(
        model=model_ref,
        model_sha256=graph.sha256,
        algorithm=algorithm,
        objective=objective,
        inputs=list(graph.inputs),
        outputs=list(graph.outputs),
        stages=[
            StagePlan(
                index=f.index,
                device=placement.devices[f.index],
                model=f.model,
                inputs=f.inputs,
                outputs=f.outputs,
            )
            for f in files
        ],
        predicted=predict(graph, placement, testbed),
        notes=graph.notes + placement.notes,
    )
    plan.save(out)
    return plan
