"""Cost model for placing pipeline stages: per-block compute, cut transfers, links, memory.

A *block* is the stretch of the graph between two consecutive cut candidates ("bounds").
Compute comes from a `CostTable` (seconds per block per device): today estimated from FLOPs
and the device's CPU quota; a profiler can later fill the same table with measured times,
and nothing downstream changes. Transfers are `bytes * 8 / rate + delay` (rate 0: unshaped,
delay only) on a request's path; a link's step in a full pipeline is `bytes * 8 / rate` alone
(the delay overlaps between frames). Memory of a stage is its node's resident memory by
`partition.memory`; a stage that fits a device only without pre-packed weights runs lean there,
`LEAN_TIME_FACTOR` slower.

Everything the optimiser needs is turned into plain arrays (`Arrays`) so the solver can be
tested without ONNX graphs.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from orchestrator.config import Device, Link, Testbed
from orchestrator.partition.graph import ModelGraph, prefix, tensor_nbytes
from orchestrator.partition.memory import (
    LEAN_TIME_FACTOR,
    MEMORY_HEADROOM,
    MemoryMode,
    StageNeeds,
    activation_peaks,
    cache_readers,
    cache_token_bytes,
    conv_weights,
    resident_bytes,
    source_bytes,
    usable_bytes,
)
from orchestrator.partition.plan import Predicted

# A rough sustained rate for FLOP-based estimates, per host CPU of quota. Profiling replaces it.
ROUGH_FLOPS_PER_CPU = 30e9
# Share of a device's memory kept free when placing (runtime, allocator slack, ORT arenas).
# A cut candidate is dropped when a cut within this share of the total compute carries fewer bytes.
CANDIDATE_WINDOW = 0.01
# Equal live bytes closer than this share of compute (reshape chains, free ops): keep the first.
TIE_WINDOW = 0.001
MAX_CANDIDATES = 32


@dataclass
class CostTable:
    """Seconds per block per device; `bounds` are the seq positions delimiting the blocks.

    `block_s[device][b]` is the time of seq[bounds[b]:bounds[b+1]] on that device at batch 1.
    `origin` says where the figures come from ("flops" or "profile"), for notes and reports.
    """

    bounds: list[int]
    block_s: dict[str, list[float]]
    origin: str = "flops"
    # per device, per frame, while busy: the CPU time beside compute (taking an activation in and
    # sending one on) as wall time under its quota; a profile measures it at saturation
    overhead_s: dict[str, float] = field(default_factory=dict)
    # per device: a request's round trip from the driver through the device's node and back, less
    # compute, at one in flight (the source's share of every request's latency); a profile measures it
    roundtrip_s: dict[str, float] = field(default_factory=dict)
    # the CFS period of the CPU quotas the figures were measured under (Docker), None without quotas
    cfs_period_s: float | None = None

    @classmethod
    def from_flops(
        cls,
        graph: ModelGraph,
        devices: Sequence[Device],
        bounds: Sequence[int] | None = None,
        flops_per_cpu: float = ROUGH_FLOPS_PER_CPU,
    ) -> CostTable:
        """Estimate: the block's FLOPs over a rate proportional to the device's CPU quota."""
        b = list(bounds) if bounds is not None else list(range(graph.n + 1))
        pre = prefix(graph.cost)
        flops = [pre[b[i + 1]] - pre[b[i]] for i in range(len(b) - 1)]
        return cls(
            bounds=b,
            block_s={d.name: [f / (flops_per_cpu * d.cpus) for f in flops] for d in devices},
            origin="flops",
        )

    def regroup(self, bounds: Sequence[int], graph: ModelGraph | None = None) -> CostTable:
        """The same costs on other blocks: coarser ones exactly; with `graph`, a bound inside one of
        this table's blocks splits it (see `split`).

        Lets a profile taken at fine granularity serve any candidate set chosen later.
        """
        index = {p: i for i, p in enumerate(self.bounds)}
        missing = [p for p in bounds if p not in index]
        if missing:
            if graph is None:
                raise ValueError(f"bounds {missing} are not bounds of the cost table")
            return self.split(graph, missing).regroup(bounds)
        out: dict[str, list[float]] = {}
        for dev, costs in self.block_s.items():
            pre = prefix(costs)
            out[dev] = [pre[index[bounds[i + 1]]] - pre[index[bounds[i]]] for i in range(len(bounds) - 1)]
        return self._with(list(bounds), out)

    def split(self, graph: ModelGraph, positions: Sequence[int]) -> CostTable:
        """Finer blocks: a block cut at a new position shares its measured time between the parts
        by their estimated FLOPs (by node count where it has none), so a plan that cuts between
        profiled bounds (`memory`, `even`, `manual`) still gets a prediction from the profile."""
        bounds = sorted(set(self.bounds) | set(positions))
        pre = prefix(graph.cost)
        out: dict[str, list[float]] = {}
        for dev, costs in self.block_s.items():
            vals = []
            for lo, hi in zip(bounds, bounds[1:], strict=False):
                k = bisect.bisect_right(self.bounds, lo) - 1
                blo, bhi = self.bounds[k], self.bounds[k + 1]
                total = pre[bhi] - pre[blo]
                share = (pre[hi] - pre[lo]) / total if total > 0 else (hi - lo) / (bhi - blo)
                vals.append(costs[k] * share)
            out[dev] = vals
        return self._with(bounds, out)

    def _with(self, bounds: list[int], block_s: dict[str, list[float]]) -> CostTable:
        return CostTable(
            bounds=bounds,
            block_s=block_s,
            origin=self.origin,
            overhead_s=dict(self.overhead_s),
            roundtrip_s=dict(self.roundtrip_s),
            cfs_period_s=self.cfs_period_s,
        )


def reduce_candidates(
    graph: ModelGraph,
    window: float = CANDIDATE_WINDOW,
    max_candidates: int = MAX_CANDIDATES,
    cost: Sequence[float] | None = None,
) -> list[int]:
    """Cut positions worth considering: those whose live set no nearby cut beats.

    A position is dropped when another one within `window` of the total compute carries fewer
    bytes (or as many, a hair earlier): moving the cut there costs almost nothing in balance and saves
    transfer. The window doubles until at most `max_candidates` remain, so the exact optimiser
    stays fast. A position that would split a decoder's cache pair (`cache_splits`) is never one.
    Returns interior positions (1..n-1), increasing.
    """
    n = graph.n
    if n <= 1:
        return []
    pre = np.asarray(prefix(cost if cost is not None else graph.cost), dtype=float)
    live = np.asarray(graph.live_bytes, dtype=float)
    split = sorted(cache_splits(graph))
    if split:
        live = live.copy()
        live[split] = np.inf  # neither a candidate nor a reason to drop one nearby
    pos = np.array([p for p in range(1, n) if np.isfinite(live[p])], dtype=np.int64)
    if pos.size == 0:
        return []
    total = pre[-1] if pre[-1] > 0 else 1.0
    while True:
        eps = window * total
        tie = min(window, TIE_WINDOW) * total
        lo = np.searchsorted(pre, pre[pos] - eps, side="left")
        hi = np.searchsorted(pre, pre[pos] + eps, side="right")
        keep: list[int] = []
        for p, a, b in zip(pos.tolist(), lo.tolist(), hi.tolist(), strict=True):
            a, b = max(a, 1), min(b, n)
            if live[a:b].min() < live[p]:
                continue
            t = max(int(np.searchsorted(pre, pre[p] - tie, side="left")), 1)
            if t < p and live[t:p].min() <= live[p]:  # a tie right before: keep the earliest
                continue
            keep.append(p)
        if len(keep) <= max_candidates or window >= 1.0:
            return keep[:max_candidates] if len(keep) > max_candidates else keep
        window *= 2


def cache_splits(graph: ModelGraph) -> frozenset[int]:
    """Cut positions that would part a decoder's cache input from the node writing its output, or
    that output from a node reading it: each stage keeps its own layers' cache, so the nodes from
    the first reader of `past_key_values.N.x` to the last reader of `present.N.x` stay together."""
    if not graph.state:
        return frozenset()
    readers = cache_readers(graph)
    nodes = graph.model.graph.node
    later: dict[str, int] = {}
    outputs = {present: past for past, present in graph.state.items()}
    for p in range(graph.n):
        for x in nodes[graph.seq[p]].input:
            if x in outputs:
                later[x] = max(later.get(x, p), p)
    out: set[int] = set()
    for past, present in graph.state.items():
        ends = [*readers.get(past, []), *([graph.prod[present]] if graph.prod.get(present, -1) >= 0 else [])]
        ends += [later[present]] if present in later else []
        if ends:
            out.update(range(min(ends) + 1, max(ends) + 1))
    return frozenset(out)


def segment_needs(graph: ModelGraph, bounds: Sequence[int]) -> dict[tuple[int, int], StageNeeds]:
    """needs[i, j] (i < j): what the memory model reads off a stage holding blocks i..j-1.

    Built from per-block initializer and constant sets, so a weight or constant shared by several
    blocks is counted once per stage, exactly as the stage files hold it; equal to
    `memory.stage_needs` of the same stage."""
    nb = len(bounds) - 1
    inits = [graph.stage_initializers(bounds[i], bounds[i + 1]) for i in range(nb)]
    consts = [graph.stage_consts(bounds[i], bounds[i + 1]) for i in range(nb)]
    size = {name: tensor_nbytes(graph.initializers[name]) for names in inits for name in names}
    conv = conv_weights(graph)
    live = graph.live_bytes
    readers = cache_readers(graph)
    caches = [{x for x, ps in readers.items() if any(bounds[i] <= p < bounds[i + 1] for p in ps)} for i in range(nb)]
    token = {x: cache_token_bytes(graph, [x]) for x in readers}
    out: dict[tuple[int, int], StageNeeds] = {}
    for i in range(nb):
        lo = bounds[i]
        peaks, largest = activation_peaks(graph, lo)
        seen: set[str] = set()
        seen_consts: set[int] = set()
        seen_cache: set[str] = set()
        w = cw = cache = 0
        for j in range(i, nb):
            for name in inits[j]:
                if name not in seen:
                    seen.add(name)
                    w += size[name]
                    cw += size[name] if name in conv else 0
            for name in caches[j] - seen_cache:
                seen_cache.add(name)
                cache += token[name]
            seen_consts.update(consts[j])
            hi = bounds[j + 1]
            out[i, j + 1] = StageNeeds(
                weights=w,
                conv_weights=cw,
                nodes=(hi - lo) + len(seen_consts),
                activations=int(peaks[hi - lo - 1]) if hi > lo else 0,
                largest_activation=int(largest[hi - lo - 1]) if hi > lo else 0,
                frame_bytes=live[lo] + live[hi],
                cache_per_token=cache,
            )
    return out


def segment_memory(
    graph: ModelGraph,
    bounds: Sequence[int],
    batch: int = 1,
    mode: MemoryMode = "default",
    needs: dict[tuple[int, int], StageNeeds] | None = None,
    cache_tokens: int = 0,
) -> np.ndarray:
    """mem[i, j] (i < j): resident bytes of a node holding blocks i..j-1 in `mode` (see
    partition.memory), a decoder's cache at `cache_tokens` included; inf below the diagonal."""
    nb = len(bounds) - 1
    needs = needs if needs is not None else segment_needs(graph, bounds)
    mem = np.full((nb + 1, nb + 1), np.inf)
    for (i, j), nd in needs.items():
        mem[i, j] = resident_bytes(nd, mode, batch=batch, cache_tokens=cache_tokens)
    return mem


def link_matrices(testbed: Testbed, names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(rate_bps, delay_s) matrices over the named devices; rate 0 means unshaped."""
    d = len(names)
    rate = np.zeros((d, d))
    delay = np.zeros((d, d))
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            if i != j:
                lp = testbed.link(a, b)
                rate[i, j], delay[i, j] = lp.rate_bps, lp.delay_s
    return rate, delay


def transfer_s(nbytes: float, rate_bps: float, delay_s: float) -> float:
    """One transfer: serialisation at the link rate (none if unshaped) plus the one-way delay."""
    return serialise_s(nbytes, rate_bps) + delay_s


def serialise_s(nbytes: float, rate_bps: float) -> float:
    """How long one transfer holds its link: the serialisation alone. The delay overlaps between
    frames, as a real link's propagation delay does (netem, and the nodes' delay lines alike), so
    it lengthens a request's path but not a link's step in a full pipeline."""
    return nbytes * 8 / rate_bps if rate_bps else 0.0


@dataclass
class Arrays:
    """A placement problem as plain arrays (B blocks, D devices), the solver's input."""

    block_cost: np.ndarray  # (D, B) seconds
    cut_bytes: np.ndarray  # (B+1,) bytes crossing each bound; [0] the input, [B] the result
    link_rate: np.ndarray  # (D, D) bit/s, 0 = unshaped
    link_delay: np.ndarray  # (D, D) seconds
    mem: np.ndarray  # (B,) per block (summed per stage) or (B+1, B+1) per stage [i, j]
    dev_mem: np.ndarray  # (D,) usable bytes (headroom already taken off)
    source: int | None = None  # device index where inputs come from and results return
    # (D,) seconds per frame a busy device spends beside compute; the source pays it twice when it
    # holds a stage (it also takes the requests in and sends the results out), once to relay otherwise.
    # It slows the pipeline's steps, not a request's path: latency counts compute and transfers.
    overhead: np.ndarray | None = None
    # per stage [i, j] without pre-packed weights (partition.memory, lean); None: no lean choice
    mem_lean: np.ndarray | None = None
    lean_device: np.ndarray | None = None  # (D,) bool: devices whose memory_mode is lean
    lean_factor: float = LEAN_TIME_FACTOR  # a lean stage's compute time over its default one

    def mode(self, device: int, i: int, j: int) -> MemoryMode | None:
        """How blocks i..j-1 run on `device`: "default" where they fit so, else "lean" where they fit
        without pre-packed weights (always on a lean device); None where they do not fit."""
        room = self.dev_mem[device]
        lean_fits = self.mem_lean is not None and stage_mem(self.mem_lean, i, j) <= room
        if self.lean_device is not None and self.lean_device[device]:
            return "lean" if lean_fits else None
        if stage_mem(self.mem, i, j) <= room:
            return "default"
        return "lean" if lean_fits else None

    def busy_s(self, device: int) -> float:
        """Per-frame time a device holding a stage spends beside compute."""
        if self.overhead is None:
            return 0.0
        return float(self.overhead[device]) * (2 if device == self.source else 1)


@dataclass
class Evaluation:
    """Figures of one placement under the cost model."""

    stage_s: list[float]
    transfer_s: list[float]  # between consecutive stages
    input_s: float  # source -> stage 0 (0 without a source or on the same device)
    output_s: float  # last stage -> source
    fits: bool
    busy_s: list[float] = field(default_factory=list)  # per stage: compute and per-frame overhead
    relay_s: float = 0.0  # a source holding no stage still relays every frame
    modes: list[MemoryMode | None] = field(default_factory=list)  # per stage; None: does not fit
    link_s: list[float] = field(default_factory=list)  # every hop's hold on its link (serialise_s)

    @property
    def bottleneck_s(self) -> float:
        """The slowest step of the pipeline: a stage's, a link's (its serialisation: the delay
        overlaps), the source's relay; the source's trips count, they carry every frame."""
        return max([*(self.busy_s or self.stage_s), *self.link_s, self.relay_s])

    @property
    def latency_s(self) -> float:
        return sum(self.stage_s) + sum(self.transfer_s) + self.input_s + self.output_s


def stage_mem(mem: np.ndarray, i: int, j: int) -> float:
    """Memory of a stage holding blocks i..j-1, for either form of `Arrays.mem`."""
    return float(mem[i, j]) if mem.ndim == 2 else float(np.sum(mem[i:j]))


def evaluate(
    a: Arrays, cuts: Sequence[int], devices: Sequence[int], modes: Sequence[MemoryMode] | None = None
) -> Evaluation:
    """Cost of a placement given as block-bound indices (1..B-1) and device indices. Each stage runs
    in `modes` where given, else as `Arrays.mode` chooses; a lean stage computes `lean_factor` slower."""
    nb = a.block_cost.shape[1]
    b = [0, *cuts, nb]
    chosen = [a.mode(d, b[k], b[k + 1]) for k, d in enumerate(devices)]
    if modes is not None:
        mem = {"default": a.mem, "lean": a.mem_lean if a.mem_lean is not None else a.mem}
        chosen = [
            m if stage_mem(mem[m], b[k], b[k + 1]) <= a.dev_mem[d] else None
            for k, (d, m) in enumerate(zip(devices, modes, strict=True))
        ]
    stage = [
        float(a.block_cost[d, b[k] : b[k + 1]].sum()) * (a.lean_factor if m == "lean" else 1.0)
        for k, (d, m) in enumerate(zip(devices, chosen if modes is None else modes, strict=True))
    ]
    s = a.source
    hops = [(a.cut_bytes[c], devices[k], devices[k + 1]) for k, c in enumerate(cuts)]
    # the source's trips in and out: none (a device to itself) without a source or where it holds the stage
    trips = [(0.0, 0, 0), (0.0, 0, 0)]
    if s is not None and devices:
        trips = [(a.cut_bytes[0], s, devices[0]), (a.cut_bytes[nb], devices[-1], s)]
    trans = [transfer_s(n, a.link_rate[x, y], a.link_delay[x, y]) for n, x, y in hops]
    inp, out = (transfer_s(n, a.link_rate[x, y], a.link_delay[x, y]) if x != y else 0.0 for n, x, y in trips)
    link = [serialise_s(n, a.link_rate[x, y]) for n, x, y in [*hops, *trips] if x != y]
    fits = all(m is not None for m in chosen)
    busy = [st + a.busy_s(d) for st, d in zip(stage, devices, strict=True)]
    relay = float(a.overhead[s]) if a.overhead is not None and s is not None and s not in devices else 0.0
    return Evaluation(stage, trans, inp, out, fits, busy, relay, chosen, link)


def build_arrays(
    graph: ModelGraph,
    devices: Sequence[Device],
    links: Sequence[Link] = (),
    *,
    bounds: Sequence[int] | None = None,
    table: CostTable | None = None,
    source: str | None = None,
    headroom: float = MEMORY_HEADROOM,
    batch: int = 1,
    cache_tokens: int = 0,
) -> tuple[Arrays, list[int]]:
    """The arrays for `graph` on `devices`, over `bounds` (default: reduced candidates); a
    decoder's stages hold their cache at `cache_tokens` (context per sequence times sequences).

    Returns the arrays and the bounds used (seq positions, 0 and n included).
    """
    if bounds is None:
        bounds = [0, *reduce_candidates(graph), graph.n]
    bounds = list(bounds)
    if table is None:
        table = CostTable.from_flops(graph, devices, bounds)
    elif table.bounds != bounds:
        table = table.regroup(bounds, graph)
    names = [d.name for d in devices]
    testbed = Testbed(devices=list(devices), links=list(links))
    rate, delay = link_matrices(testbed, names)
    needs = segment_needs(graph, bounds)
    # the source's node also carries the driver's stream (its own frames when it runs stage 0, not
    # known here): less room for a stage there
    driver = [source_bytes(graph.live_bytes[0], batch) if d.name == source else 0.0 for d in devices]
    arrays = Arrays(
        block_cost=np.array([table.block_s[n] for n in names], dtype=float).reshape(len(names), len(bounds) - 1),
        cut_bytes=np.array([graph.live_bytes[p] for p in bounds], dtype=float),
        link_rate=rate,
        link_delay=delay,
        mem=segment_memory(graph, bounds, batch, needs=needs, cache_tokens=cache_tokens),
        dev_mem=np.array([usable_bytes(d.memory, headroom) - x for d, x in zip(devices, driver, strict=True)]),
        source=names.index(source) if source is not None and source in names else None,
        overhead=np.array([table.overhead_s.get(n, 0.0) for n in names], dtype=float) if table.overhead_s else None,
        mem_lean=segment_memory(graph, bounds, batch, mode="lean", needs=needs, cache_tokens=cache_tokens),
        lean_device=np.array([d.memory_mode == "lean" for d in devices], dtype=bool),
    )
    return arrays, bounds


def slowed(a: Arrays, factors: dict[int, float]) -> Arrays:
    """`a` with device i's block costs and per-frame overhead times factors[i]: a device at a lower
    CPU share (a DVFS level) runs the same work that much longer."""
    cost = a.block_cost.copy()
    over = None if a.overhead is None else a.overhead.copy()
    for d, f in factors.items():
        cost[d] *= f
        if over is not None:
            over[d] *= f
    return replace(a, block_cost=cost, overhead=over)


def burst_wall_s(busy_wall_s: float, cpus: float, period_s: float) -> float:
    """Wall time of work that takes `busy_wall_s` under a CPU quota when always busy (cpu time / cpus),
    started instead with the period's whole quota unspent: it runs at full speed for each period's
    quota and waits out the rest of the period between."""
    if cpus >= 1.0 or busy_wall_s <= 0:
        return busy_wall_s
    cpu = busy_wall_s * cpus
    quota = cpus * period_s
    full = math.ceil(cpu / quota) - 1
    return full * period_s + (cpu - full * quota)


def predict(
    graph: ModelGraph,
    cuts: Sequence[int],
    device_names: Sequence[str],
    testbed: Testbed,
    *,
    table: CostTable | None = None,
    source: str | None = None,
    modes: Sequence[MemoryMode] | None = None,
    levels: Sequence[float] | None = None,
    cache_tokens: int = 0,
) -> Predicted:
    """plan.json's `predicted` for a placement (seq-position cuts), from the cost model; stages run
    in `modes` (default: as the memory model chooses, see `Arrays.mode`, a decoder's cache at
    `cache_tokens` counted) and at the CPU shares of `levels` (default: each device's own cpus; a
    stage's time scales by cpus / level). Energy per inference: partition/energy.py adds it."""
    names = [d.name for d in testbed.devices]
    bounds = [0, *cuts, graph.n]
    a, _ = build_arrays(
        graph,
        testbed.devices,
        testbed.links,
        bounds=bounds,
        table=table,
        source=source,
        headroom=0.0,
        cache_tokens=cache_tokens,
    )
    idx = [names.index(n) for n in device_names]
    if levels is not None:
        a = slowed(a, {i: testbed.device(n).cpus / c for i, n, c in zip(idx, device_names, levels, strict=True) if c})
    ev = evaluate(a, list(range(1, len(bounds) - 1)), idx, modes)
    slowest = ev.bottleneck_s
    latency = ev.latency_s
    trip = table.roundtrip_s.get(source, 0.0) if table is not None and source is not None else 0.0
    latency += trip  # the driver's trip into the source's node and the result's trip out of it
    if table is not None and table.cfs_period_s:
        # a stage that is not the bottleneck waits for its frames, so it starts each one with a fresh
        # quota and runs at full speed until that is spent; the profile measured it always busy
        cpus = {d.name: d.cpus for d in testbed.devices} | dict(zip(device_names, levels or (), strict=False))
        latency += sum(
            burst_wall_s(c, cpus[d], table.cfs_period_s) - c
            for c, b, d in zip(ev.stage_s, ev.busy_s, device_names, strict=True)
            if b < slowest
        )
    return Predicted(
        stage_s=[round(x, 6) for x in ev.busy_s],
        transfer_s=[round(x, 6) for x in ev.transfer_s],
        throughput_fps=round(1.0 / slowest, 3) if slowest > 0 else None,
        latency_s=round(latency, 6),
        slowest_other_s=max([*ev.link_s, ev.relay_s]),
        transfers_total_s=sum(ev.transfer_s) + ev.input_s + ev.output_s,
        source_roundtrip_s=trip,
    )
