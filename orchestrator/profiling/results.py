"""What a profile holds: measured seconds per block per device, and the model facts beside them.

A *block* is the graph between two consecutive reduced cut candidates (`reduce_candidates`), the
unit the planner places. A `Profile` is assembled from one `DeviceProfile` per device (measured
now or read from the cache) and the model's `ModelFacts`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from orchestrator.partition.costmodel import CostTable, reduce_candidates
from orchestrator.partition.graph import ModelGraph


@dataclass
class DeviceProfile:
    """One device's measurements (or the cache entry they came from)."""

    device: str
    block_s: list[float]  # per block, seconds (see measure.chunk_block_times)
    samples_s: list[list[float]]  # per block, the measured (non warm-up) times
    chunks: list[tuple[int, int]]  # block ranges [i, j) loaded together
    threads: int
    peak_rss_bytes: int  # the node's peak RSS while profiling (0: not reported)
    seconds: float  # wall time spent on this device
    overhead_s: float = 0.0  # per frame while always busy, beside compute (see measure.saturation_overhead_s)
    roundtrip_s: float = 0.0  # per request at one in flight: driver to node and back, less compute
    quota_period_s: float | None = None  # the CFS period of the CPU quota it ran under (None: none)
    cached: bool = False

    def to_json(self) -> dict:
        return {
            "block_s": self.block_s,
            "samples_s": self.samples_s,
            "chunks": [list(c) for c in self.chunks],
            "threads": self.threads,
            "peak_rss_bytes": self.peak_rss_bytes,
            "seconds": self.seconds,
            "overhead_s": self.overhead_s,
            "roundtrip_s": self.roundtrip_s,
            "quota_period_s": self.quota_period_s,
        }

    @classmethod
    def from_json(cls, device: str, d: dict) -> DeviceProfile:
        return cls(
            device=device,
            block_s=[float(x) for x in d["block_s"]],
            samples_s=[[float(x) for x in s] for s in d.get("samples_s", [])],
            chunks=[(int(a), int(b)) for a, b in d.get("chunks", [])],
            threads=int(d.get("threads", 0)),
            peak_rss_bytes=int(d.get("peak_rss_bytes", 0)),
            seconds=float(d.get("seconds", 0.0)),
            overhead_s=float(d.get("overhead_s", 0.0)),
            roundtrip_s=float(d.get("roundtrip_s", 0.0)),
            quota_period_s=None if d["quota_period_s"] is None else float(d["quota_period_s"]),
            cached=True,
        )


@dataclass
class Profile:
    """A model's measured block costs on a testbed.

    `table.block_s[device][b]` is block b's compute time (seconds, at `batch`), `block_memory[b]`
    the bytes block b needs alone (weights + largest activation), `cut_bytes[k]` the bytes live at
    bound k (`cut_bytes[0]` the inputs, `cut_bytes[-1]` the outputs), `block_weights[b]` its weights.
    """

    table: CostTable
    block_memory: list[int]
    block_weights: list[int]
    cut_bytes: list[int]
    cached: bool
    seconds: float
    model_sha256: str
    runtime: str
    batch: int
    devices: dict[str, DeviceProfile] = field(default_factory=dict)
    block_names: list[str] = field(default_factory=list)  # first node of each block, for display
    notes: list[str] = field(default_factory=list)
    # a decoder's: the past length of the decode step measured (profiling.decode_point); None otherwise
    past_tokens: int | None = None

    @property
    def bounds(self) -> list[int]:
        return self.table.bounds

    def device_total_s(self, device: str) -> float:
        return float(sum(self.table.block_s[device]))


@dataclass
class ModelFacts:
    """What a profile needs of the model besides the measurements (memoised by the cache)."""

    sha256: str
    bounds: list[int]
    weights: list[int]  # per block
    activation: list[int]  # per block, largest activation at batch 1
    live: list[int]  # per bound, bytes at batch 1
    names: list[str]
    decoder: bool = False  # it has a KV cache: measured at a decode step (profiling.decode_point)


def block_bounds(graph: ModelGraph) -> list[int]:
    """The blocks' bounds: 0, the reduced cut candidates, n (what the optimiser places)."""
    return [0, *reduce_candidates(graph), graph.n]


def model_facts(graph: ModelGraph, bounds: list[int]) -> ModelFacts:
    """The facts of `graph`'s blocks between `bounds`: weights, largest activation, live bytes, names."""
    nb = len(bounds) - 1
    return ModelFacts(
        sha256=graph.sha256,
        bounds=bounds,
        weights=[graph.weights_bytes(bounds[i], bounds[i + 1]) for i in range(nb)],
        activation=[graph.max_activation(bounds[i], bounds[i + 1]) for i in range(nb)],
        live=[int(graph.live_bytes[p]) for p in bounds],
        names=[graph.node(bounds[i]).name or graph.node(bounds[i]).op_type for i in range(nb)],
        decoder=bool(graph.state),
    )


def quota_period_s(devs: dict[str, DeviceProfile]) -> float | None:
    """The CFS period of the CPU quotas the devices were measured under (None: none), one for all:
    the planner models every quota by it."""
    periods = {p.quota_period_s for p in devs.values()}
    if len(periods) > 1:
        raise ValueError(f"devices measured under different CPU quota periods: {periods}")
    return periods.pop() if periods else None


def assemble(
    facts: ModelFacts,
    devs: dict[str, DeviceProfile],
    runtime: str,
    batch: int,
    seconds: float,
    notes: list[str],
    past_tokens: int | None = None,
) -> Profile:
    """The profile of every device in `devs`: their block times as the planner's cost table, and the
    model's memory and live bytes scaled to `batch`; a decoder's measured at `past_tokens`."""
    return Profile(
        table=CostTable(
            bounds=list(facts.bounds),
            block_s={n: list(p.block_s) for n, p in devs.items()},
            origin="profiled",
            overhead_s={n: p.overhead_s for n, p in devs.items()},
            roundtrip_s={n: p.roundtrip_s for n, p in devs.items()},
            cfs_period_s=quota_period_s(devs),
        ),
        block_memory=[w + a * batch for w, a in zip(facts.weights, facts.activation, strict=True)],
        block_weights=list(facts.weights),
        cut_bytes=[b * batch for b in facts.live],
        cached=all(p.cached for p in devs.values()),
        seconds=seconds,
        model_sha256=facts.sha256,
        runtime=runtime,
        batch=batch,
        devices=devs,
        block_names=list(facts.names),
        notes=notes,
        past_tokens=past_tokens,
    )
