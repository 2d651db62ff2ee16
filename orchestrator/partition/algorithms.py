"""Partition algorithms by name: the built-in ones, and `module:function` for a user's own.

Each takes a `Problem` and returns a `Placement` (problem.py); whatever it returns is checked here
(well-formed cuts, every stage within its device's memory) before anything is written or run.
"""

from __future__ import annotations

import importlib

from orchestrator.errors import UserError
from orchestrator.partition.graph import prefix
from orchestrator.partition.memory import (
    LEAN_TIME_FACTOR,
    MemoryMode,
    StageMemory,
    breakdown,
    format_bytes,
    stage_needs,
    usable_bytes,
)
from orchestrator.partition.memory_baseline import memory_partition
from orchestrator.partition.optimal import optimal
from orchestrator.partition.problem import Algorithm, Placement, Problem
from orchestrator.partition.user import wrap_user_algorithm


def manual(problem: Problem) -> Placement:
    """Ianvs-style partition points: stage i ends where all its output_names have been produced.

    A cut carries its whole live set; names the user did not list (a shape tensor computed
    from the input, say) are added and reported in the notes.
    """
    g, pts, src = problem.graph, problem.points, problem.devices_file
    if not pts:
        raise UserError("the manual algorithm needs partition_points in the devices file", src, "partition_points")
    known = set(g.prod) | set(g.initializers) | set(g.const_producer)
    for i, pt in enumerate(pts):
        for fld, names in (("output_names", pt.output_names), ("input_names", pt.input_names)):
            for x in names:
                if x not in known:
                    raise UserError(f"{x!r} is not a tensor of the model", src, f"partition_points[{i}].{fld}")
    names = [d.name for d in problem.devices]
    if len(pts) > len(names) and any(p.device_name is None for p in pts):
        raise UserError(f"{len(pts)} partition points but {len(names)} devices", src, "partition_points")
    devices = [pt.device_name or names[i] for i, pt in enumerate(pts)]
    cuts: list[int] = []
    notes: list[str] = []
    for i, pt in enumerate(pts[:-1]):
        made = [g.prod[x] for x in pt.output_names if x in g.prod and g.prod[x] >= 0]
        if not made:
            raise UserError(
                "no output name is computed by the model's non-constant nodes, so it cannot end a stage",
                src,
                f"partition_points[{i}].output_names",
            )
        p = max(made) + 1
        if cuts and p <= cuts[-1]:
            raise UserError(
                f"stage {i} would end at or before stage {i - 1} (outputs out of order)",
                src,
                f"partition_points[{i}].output_names",
            )
        if p >= g.n:
            raise UserError(
                f"stage {i} would hold the whole model, leaving nothing for later stages",
                src,
                f"partition_points[{i}].output_names",
            )
        cuts.append(p)
        live = g.live_at(p)
        extra = [x for x in live if x not in pt.output_names]
        if extra:
            notes.append(f"stage {i}: cut also carries {', '.join(extra)} (added to the live set)")
        idle = [x for x in pt.output_names if x not in live]
        if idle:
            notes.append(f"stage {i}: {', '.join(idle)} is not needed after the cut (not sent)")
    last = pts[-1].output_names
    missing = [o for o in g.outputs if o not in last]
    if last and missing:
        notes.append(f"stage {len(pts) - 1}: also produces the model outputs {', '.join(missing)}")
    return Placement(cuts, devices, notes)


def _balanced_cuts(problem: Problem, k: int, window: float = 0.3) -> list[int]:
    """k-1 cuts near the equal-cost points, each at the smallest live set within the window.

    The window (a share of one stage's cost either side) trades balance for transfer size:
    a transformer block boundary is never more than half a block away.
    """
    g = problem.graph
    pre = prefix(problem.block_cost)
    total = pre[-1] or 1.0
    share = total / k
    cuts: list[int] = []
    for j in range(1, k):
        target = j * share
        lo_p = (cuts[-1] + 1) if cuts else 1
        hi_p = g.n - (k - j)  # leave at least one node for each later stage
        cands = [p for p in range(lo_p, hi_p + 1) if abs(pre[p] - target) <= window * share]
        if not cands:
            cands = [min(range(lo_p, hi_p + 1), key=lambda p: abs(pre[p] - target))]
        best = min(cands, key=lambda p: (g.live_bytes[p], abs(pre[p] - target), p))
        cuts.append(best)
    return cuts


def even(problem: Problem) -> Placement:
    """K stages of about equal estimated compute, cut where the live set is smallest nearby."""
    k = problem.stages or len(problem.devices)
    if k > problem.graph.n:
        raise UserError(
            f"{k} stages but the model has only {problem.graph.n} non-constant nodes to share",
            str(problem.graph.path),
            "stages",
        )
    cuts = _balanced_cuts(problem, k)
    devices = [d.name for d in problem.devices[:k]]
    return Placement(cuts, devices)


# optimal: exact best devices, order and cuts (optimal.py); memory: Ianvs's baseline (memory_baseline.py)
ALGORITHMS: dict[str, Algorithm] = {"manual": manual, "even": even, "optimal": optimal, "memory": memory_partition}


def get_algorithm(name: str) -> Algorithm:
    """A registered algorithm, or `module:function`; UserError naming the known ones otherwise.

    A user's function may take a `Problem` and return a `Placement`, or follow Ianvs's
    `partition(initial_model) -> (models_dir, map_info)`; either way its answer is checked
    before anything runs (see user.py).
    """
    if name in ALGORITHMS:
        return ALGORITHMS[name]
    if ":" in name:
        mod, _, fn = name.partition(":")
        try:
            obj = getattr(importlib.import_module(mod), fn)
        except (ImportError, AttributeError) as e:
            raise UserError(f"cannot load algorithm {name!r}: {e}", None, "algorithm") from None
        except Exception as e:  # the user's module failed while importing
            raise UserError(f"cannot load algorithm {name!r}: {type(e).__name__}: {e}", None, "algorithm") from None
        if not callable(obj):
            raise UserError(f"{name!r} is not callable", None, "algorithm")
        return wrap_user_algorithm(name, obj)
    known = ", ".join(sorted(ALGORITHMS))
    raise UserError(f"unknown algorithm {name!r} (known: {known}, or module:function)", None, "algorithm")


def _parts(m: StageMemory) -> str:
    parts = [
        f"the node {format_bytes(m.node + m.graph)}",
        f"weights as ONNX Runtime holds them {format_bytes(m.weights)}",
        f"activations {format_bytes(m.activations)}",
        f"frames {format_bytes(m.frames)}",
    ]
    if m.source:
        parts.append(f"the driver's stream {format_bytes(m.source)}")
    return ", ".join(parts)


def check_memory(problem: Problem, placement: Placement) -> None:
    """Choose how each stage opens its session and refuse a stage whose node cannot fit its device.

    A stage runs as ONNX Runtime does by default where its node fits the device's usable memory
    (the planner's headroom kept free), else `lean` (no pre-packed weights: less resident memory,
    `LEAN_TIME_FACTOR` slower) where that fits; a device with `memory_mode: lean` runs lean always.
    Beyond the device's memory (the headroom spent) it is refused.
    Sets `placement.modes` and `placement.memory_bytes` (the prediction plan.json carries) first,
    so a caller that lets a refused stage through still has them."""
    g = problem.graph
    b = [0, *placement.cuts, g.n]
    by_name = {d.name: (i, d) for i, d in enumerate(problem.devices)}
    modes: list[MemoryMode] = []
    memory: list[int] = []
    refusal: UserError | None = None
    for k, dev_name in enumerate(placement.devices):
        if dev_name not in by_name:
            raise UserError(f"stage {k}: unknown device {dev_name!r}", problem.devices_file, "devices")
        i, dev = by_name[dev_name]
        needs = stage_needs(g, b[k], b[k + 1])
        # a source that runs stage 0 takes the driver's frames as that stage's own; otherwise they come besides
        inputs = g.live_bytes[0] if dev_name == problem.source and k > 0 else None
        default = breakdown(needs, "default", batch=problem.batch, input_bytes=inputs)
        lean = breakdown(needs, "lean", batch=problem.batch, input_bytes=inputs)
        usable = usable_bytes(dev.memory)
        if dev.memory_mode == "lean":
            chosen = lean
        elif default.total <= usable or lean.total >= default.total or lean.total > dev.memory:
            chosen = default  # lean only where it saves memory and fits
        else:
            chosen = lean
        modes.append(chosen.mode)
        memory.append(int(chosen.total))
        if chosen.mode == "lean" and dev.memory_mode != "lean" and chosen.total <= dev.memory:
            placement.notes.append(
                f"stage {k} does not fit {dev_name} ({format_bytes(usable)} usable) with pre-packed weights: it "
                f"runs lean, {format_bytes(lean.total)} resident instead of {format_bytes(default.total)}, its "
                f"{format_bytes(lean.mapped_weights)} of weights read from the mapped file (page cache), "
                f"compute about {LEAN_TIME_FACTOR:g}x slower"
            )
        if chosen.total > dev.memory and refusal is None:
            refusal = UserError(
                f"stage {k} needs about {format_bytes(chosen.total)} resident ({_parts(chosen)}"
                + (
                    f"; {format_bytes(lean.total)} without pre-packed weights"
                    if chosen.mode == "default" and lean.total < default.total
                    else f"; {format_bytes(default.total)} with pre-packed weights"
                    if chosen.mode == "lean"
                    else ""
                )
                + f") but device {dev_name!r} has {format_bytes(dev.memory)}",
                problem.devices_file,
                f"devices[{i}].memory",
            )
    placement.modes, placement.memory_bytes = modes, memory
    if refusal is not None:
        raise refusal


def check_placement(problem: Problem, placement: Placement) -> None:
    """A placement from any algorithm (a user's included) must be well formed."""
    g = problem.graph
    c = placement.cuts
    if any(not isinstance(p, int) for p in c) or any(p < 1 or p >= g.n for p in c) or c != sorted(set(c)):
        raise UserError(f"cut positions must be increasing integers in 1..{g.n - 1}, got {c}", None, "algorithm")
    if len(placement.devices) != len(c) + 1:
        raise UserError(f"{len(c) + 1} stages but {len(placement.devices)} devices in the placement", None, "algorithm")
