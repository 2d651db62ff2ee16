"""Partition algorithms by name: the built-in ones, and `module:function` for a user's own.

Each takes a `Problem` and returns a `Placement` (problem.py); whatever it returns is checked here
(well-formed cuts, every stage within its device's memory) before anything is written or run.
"""

from __future__ import annotations

import importlib
import re

from orchestrator.errors import UserError
from orchestrator.partition.costmodel import cache_splits, reduce_candidates
from orchestrator.partition.decode import best_for_tokens
from orchestrator.partition.graph import ModelGraph, prefix
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
    a transformer block boundary is never more than half a block away. A cut never parts a
    decoder's cache pair (`costmodel.cache_splits`).
    """
    g = problem.graph
    pre = prefix(problem.block_cost)
    total = pre[-1] or 1.0
    share = total / k
    split = cache_splits(g)
    cuts: list[int] = []
    for j in range(1, k):
        target = j * share
        lo_p = (cuts[-1] + 1) if cuts else 1
        hi_p = g.n - (k - j)  # leave at least one node for each later stage
        allowed = [p for p in range(lo_p, hi_p + 1) if p not in split] or list(range(lo_p, hi_p + 1))
        cands = [p for p in allowed if abs(pre[p] - target) <= window * share]
        if not cands:
            cands = [min(allowed, key=lambda p: abs(pre[p] - target))]
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


# a block's layer number in its nodes' names: `/model/layers.3/...` (Llama, ViT as exported here),
# `/transformer/h.3/...` (GPT-2), `/encoder/layer.3/...`, `/blocks.3/...`
_LAYER = re.compile(r"(?:^|/)(?:layers|layer|h|blocks|block)\.(\d+)(?:/|$)")


def layer_ends(graph: ModelGraph) -> list[int]:
    """Where each of a model's numbered layers ends: the cut position right after its last node (a
    decoder's `/model/layers.{i}/Add_1`, the residual Add that gives the layer's output). [] where
    the nodes' names number no layers, the layers do not follow one another, or an end would part a
    cache pair."""
    last: dict[int, int] = {}
    first: dict[int, int] = {}
    for p in range(graph.n):
        m = _LAYER.search(graph.node(p).name)
        if m:
            i = int(m.group(1))
            last[i] = p
            first.setdefault(i, p)
    layers = sorted(last)
    if len(layers) < 2 or layers != list(range(layers[0], layers[0] + len(layers))):
        return []
    if any(first[b] <= last[a] for a, b in zip(layers, layers[1:], strict=False)):
        return []
    ends = [last[i] + 1 for i in layers]
    split = cache_splits(graph)
    return [] if any(p in split for p in ends) else ends


def exo_shares(memories: list[float], units: int) -> list[tuple[int, int]]:
    """exo's ring memory weighted split: device k takes the units (layers) [start, end) of its
    running share of the total memory, rounded down as exo does (`int(share * units)`; the last
    device takes the rest). A share that rounds to no unit gives (s, s)."""
    total = sum(memories)
    out: list[tuple[int, int]] = []
    start = 0.0
    for k, m in enumerate(memories):
        end = round(start + m / total, 5)
        lo = int(start * units)
        hi = units if k == len(memories) - 1 else int(end * units)
        out.append((lo, max(lo, hi)))
        start = end
    return out


def exo(problem: Problem) -> Placement:
    """exo's "ring memory weighted" partitioning, as a baseline: devices in order of memory (the
    largest first, ties by name), each taking a share of the model's layers in proportion to its
    memory; a device whose share rounds to no layer is left out. Layers are the model's numbered
    layers (cut at their ends: a decoder's layer outputs) where its nodes' names number them, else
    the blocks between the cut candidates (each the size of its compute). Compute, links and the
    cache are not weighed (the memory check still applies)."""
    g = problem.graph
    k = problem.stages or len(problem.devices)
    if k > g.n:
        raise UserError(f"{k} stages but the model has only {g.n} non-constant nodes to share", str(g.path), "stages")
    devs = sorted(problem.devices, key=lambda d: (-d.memory, d.name))[:k]
    ends = layer_ends(g)
    if ends:
        bounds, unit = [0, *ends[:-1], g.n], "layers"
        spans = exo_shares([float(d.memory) for d in devs], len(bounds) - 1)
    else:
        bounds, unit = [0, *reduce_candidates(g, cost=problem.block_cost), g.n], "blocks"
        spans = _cost_spans(problem.block_cost, bounds, [float(d.memory) for d in devs])
    cuts: list[int] = []
    names: list[str] = []
    said: list[str] = []
    left: list[str] = []
    for d, (lo, hi) in zip(devs, spans, strict=True):
        if hi <= lo:
            left.append(d.name)
            continue
        if names:
            cuts.append(bounds[lo])
        names.append(d.name)
        said.append(f"{d.name} {format_bytes(d.memory)}: {unit} {lo}-{hi - 1}")
    note = f"exo-style: {unit} in proportion to memory ({', '.join(said)})"
    if left:
        note += f"; left out: {', '.join(left)} (its share rounds to no {unit[:-1]})"
    return Placement(cuts, names, [note])


def _cost_spans(cost: list[float], bounds: list[int], memories: list[float]) -> list[tuple[int, int]]:
    """exo's split over blocks of unequal compute: each block goes to the device whose running share
    of the memory holds the middle of the block's compute."""
    pre = prefix(cost)
    total = pre[-1] or 1.0
    mids = [(pre[a] + pre[b]) / 2 / total for a, b in zip(bounds, bounds[1:], strict=False)]
    edges = [sum(memories[: k + 1]) / sum(memories) for k in range(len(memories))]
    owner = [next((k for k, e in enumerate(edges) if m < e), len(edges) - 1) for m in mids]
    spans: list[tuple[int, int]] = []
    for k in range(len(memories)):
        mine = [b for b, o in enumerate(owner) if o == k]
        lo = mine[0] if mine else (spans[-1][1] if spans else 0)
        spans.append((lo, mine[-1] + 1 if mine else lo))
    return spans


def _optimal(problem: Problem) -> Placement:
    """The exact planner; for a generation job's `throughput`, the most tokens per second with its
    sequences in flight (decode.best_for_tokens)."""
    if problem.sequences is not None and problem.objective == "throughput":
        return best_for_tokens(problem, problem.sequences)
    return optimal(problem)


# optimal: exact best devices, order and cuts (optimal.py); memory: Ianvs's baseline (memory_baseline.py);
# exo: exo's memory-weighted layers
ALGORITHMS: dict[str, Algorithm] = {
    "manual": manual,
    "even": even,
    "optimal": _optimal,
    "memory": memory_partition,
    "exo": exo,
}


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


def _parts(m: StageMemory, problem: Problem) -> str:
    parts = [
        f"the node {format_bytes(m.node + m.graph)}",
        f"weights as ONNX Runtime holds them {format_bytes(m.weights)}",
        f"activations {format_bytes(m.activations)}",
        f"frames {format_bytes(m.frames)}",
    ]
    if m.source:
        parts.append(f"the driver's stream {format_bytes(m.source)}")
    if m.cache:
        parts.append(f"KV cache {format_bytes(m.cache)} for {_held(problem)}")
    return ", ".join(parts)


def _held(problem: Problem) -> str:
    """The cache tokens a stage holds, in words: "4 sequences of 1040 tokens"."""
    s = problem.sequences or 1
    if problem.sequences is None or problem.cache_tokens % s:
        return f"{problem.cache_tokens} tokens"
    per = problem.cache_tokens // s
    return f"{s} sequence{'s' if s > 1 else ''} of {per} tokens"


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
        held = problem.cache_tokens
        default = breakdown(needs, "default", batch=problem.batch, input_bytes=inputs, cache_tokens=held)
        lean = breakdown(needs, "lean", batch=problem.batch, input_bytes=inputs, cache_tokens=held)
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
                f"stage {k} needs about {format_bytes(chosen.total)} resident ({_parts(chosen, problem)}"
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
    split = [p for p in c if p in cache_splits(g)]
    if split:
        raise UserError(
            f"cut position {split[0]} parts a cache input from the node that writes or reads its output: "
            "a stage keeps its own layers' KV cache whole",
            None,
            "algorithm",
        )
