"""Cut an ONNX model into stages: analyse the graph, place the stages, write the files and plan.json."""

from __future__ import annotations

import os
from pathlib import Path

from orchestrator.config import OBJECTIVES, Testbed
from orchestrator.errors import UserError
from orchestrator.partition.algorithms import ALGORITHMS, check_memory, check_placement, get_algorithm
from orchestrator.partition.costmodel import CostTable, predict
from orchestrator.partition.energy import with_energy
from orchestrator.partition.graph import ModelGraph, load_graph
from orchestrator.partition.plan import Plan, StagePlan
from orchestrator.partition.problem import Limits, Placement, Problem
from orchestrator.partition.stage_files import write_stages
from orchestrator.partition.weights_store import WEIGHTS_FILE, WeightsStore

__all__ = [
    "ALGORITHMS",
    "Limits",
    "ModelGraph",
    "Placement",
    "Plan",
    "Problem",
    "WEIGHTS_FILE",
    "WeightsStore",
    "get_algorithm",
    "load_graph",
    "partition",
    "place",
    "predict",
]


def place(
    model_path: str | Path,
    testbed: Testbed,
    *,
    algorithm: str = "even",
    objective: str = "throughput",
    stages: int | None = None,
    source: str | None = None,
    cost_table: CostTable | None = None,
    store: WeightsStore | None = None,
    memory_check: str = "refuse",
    batch: int = 1,
    limits: Limits | None = None,
    cache_tokens: int = 0,
    sequences: int | None = None,
) -> tuple[ModelGraph, Placement]:
    """Validate and place, writing nothing: where the cuts go and which device runs each stage
    (a run that re-plans weighs placements this way before it cuts one). A stage that cannot fit its
    device is refused, or with memory_check "warn" said in the plan's notes and run all the same.
    `batch`: the requests' batch size, which the stages' memory grows with. `limits`: objective
    energy's latency budget and throughput floor. A generation job's `cache_tokens` (the tokens its
    stages' caches hold at once: context x sequences) count in memory; `sequences` (in flight) is
    what objective throughput weighs tokens per second with (partition.decode)."""
    model_path = Path(model_path)
    src = testbed.source
    if objective not in OBJECTIVES:
        raise UserError(f"unknown objective {objective!r} (known: {', '.join(OBJECTIVES)})", None, "objective")
    algo = get_algorithm(algorithm)
    if stages is not None and stages < 1:
        raise UserError(f"need at least one stage, got {stages}", None, "stages")
    if stages is not None and stages > len(testbed.devices):
        raise UserError(f"{stages} stages but only {len(testbed.devices)} devices", src, "stages")
    store = store or WeightsStore()
    graph = store.graph(model_path)
    if stages is not None and stages > graph.n:
        raise UserError(
            f"{stages} stages but the model has only {graph.n} non-constant nodes to share",
            str(model_path),
            "stages",
        )
    if cost_table is not None:
        if not cost_table.bounds or cost_table.bounds[0] != 0 or cost_table.bounds[-1] != graph.n:
            raise UserError(
                "the cost table was made for another model (its blocks do not cover this one)",
                str(model_path),
                "cost_table",
            )
        lacking = [d.name for d in testbed.devices if d.name not in cost_table.block_s]
        if lacking:
            raise UserError(f"the cost table has no figures for {', '.join(lacking)}", src, "cost_table")
    problem = Problem(
        graph=graph,
        devices=list(testbed.devices),
        stages=stages,
        objective=objective,
        points=list(testbed.partition_points),
        block_cost=list(graph.cost),
        devices_file=src,
        links=list(testbed.links),
        source=source,
        cost_table=cost_table,
        batch=batch,
        limits=limits or Limits(),
        cache_tokens=cache_tokens,
        sequences=sequences,
    )
    placement = algo(problem)
    if objective == "energy" and placement.levels is None:
        placement.notes.append(
            f"objective energy: {algorithm} places without weighing energy; every device runs at its own cpus "
            "(`optimal` chooses levels)"
        )
    check_placement(problem, placement)
    try:
        check_memory(problem, placement)
    except UserError as e:
        if memory_check != "warn":
            raise
        placement.notes.append(f"memory_check is warn: {e.message}; it runs all the same, and may run out of memory")
    return graph, placement


def partition(
    model_path: str | Path,
    testbed: Testbed,
    *,
    algorithm: str = "even",
    objective: str = "throughput",
    stages: int | None = None,
    source: str | None = None,
    out_dir: str | Path,
    cost_table: CostTable | None = None,
    store: WeightsStore | None = None,
    placed: tuple[ModelGraph, Placement] | None = None,
    batch: int = 1,
    limits: Limits | None = None,
    cache_tokens: int = 0,
    sequences: int | None = None,
) -> Plan:
    """Plan and write DIR/plan.json, DIR/stage_k.onnx and DIR/weights.bin; return the plan (with notes).

    `cost_table` (seconds per block per device, e.g. a profile's table) replaces the FLOP estimate.
    weights.bin is a hard link into `store` (default: WeightsStore()), which keeps each model's
    weights once: a model stored before is cut without reading its weights. `placed` (from
    `place`) writes that placement instead of placing again.
    """
    graph, placement = placed or place(
        model_path,
        testbed,
        algorithm=algorithm,
        objective=objective,
        stages=stages,
        source=source,
        cost_table=cost_table,
        store=store,
        batch=batch,
        limits=limits,
        cache_tokens=cache_tokens,
        sequences=sequences,
    )
    model_path = Path(model_path)
    store = store or WeightsStore()
    out = Path(out_dir)
    files = write_stages(graph, placement.cuts, out, store)
    try:
        model_ref = os.path.relpath(model_path.resolve(), out.resolve())
        if model_ref.startswith(".."):
            model_ref = str(model_path.resolve())
    except ValueError:
        model_ref = str(model_path.resolve())
    how = {"table": cost_table, "source": source, "levels": placement.levels}
    predicted = (
        placement.predicted
        if placement.predicted and "lean" not in (placement.modes or ())
        else predict(
            graph, placement.cuts, placement.devices, testbed, modes=placement.modes, cache_tokens=cache_tokens, **how
        )
    )
    if predicted is not None and predicted.energy_j is None:
        predicted = with_energy(predicted, graph, placement.cuts, placement.devices, testbed, **how)
    plan = Plan(
        model=model_ref,
        model_sha256=graph.sha256,
        algorithm=algorithm,
        objective=objective,
        inputs=[x for x in graph.inputs if x not in graph.state],
        outputs=[x for x in graph.outputs if x not in graph.state_names],
        state=dict(graph.state),
        stages=[
            StagePlan(
                index=f.index,
                device=placement.devices[f.index],
                model=f.model,
                inputs=f.inputs,
                outputs=f.outputs,
                memory_bytes=placement.memory_bytes[f.index] if placement.memory_bytes else None,
                memory_mode=placement.modes[f.index] if placement.modes else "default",
                level=placement.levels[f.index] if placement.levels else None,
            )
            for f in files
        ],
        predicted=predicted,
        notes=graph.notes + placement.notes,
    )
    plan.save(out)
    return plan
