"""What a partition algorithm decides on (`Problem`) and what it answers (`Placement`).

Every algorithm is a callable `(Problem) -> Placement`; cut positions are those of `ModelGraph`
(see graph.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from orchestrator.config import Device, Link, Objective, PartitionPoint, Testbed
from orchestrator.partition.costmodel import CostTable
from orchestrator.partition.graph import ModelGraph
from orchestrator.partition.memory import MemoryMode
from orchestrator.partition.plan import Predicted


@dataclass(frozen=True)
class Limits:
    """What objective `energy` minimises within: a request's end-to-end seconds, and inferences
    per second (the pipeline's slowest step at most 1 / floor). None: no such limit."""

    latency_budget_s: float | None = None
    throughput_floor: float | None = None

    @property
    def period_cap_s(self) -> float | None:
        return None if self.throughput_floor is None else 1.0 / self.throughput_floor


@dataclass
class Problem:
    """What an algorithm decides on."""

    graph: ModelGraph
    devices: list[Device]
    stages: int | None  # None: the algorithm's choice (usually one stage per device)
    objective: Objective
    points: list[PartitionPoint]  # the devices file's manual partition points, may be empty
    block_cost: list[float]  # estimated cost per seq position (FLOPs, or seconds once profiled)
    devices_file: str | None = None  # for messages
    links: list[Link] = field(default_factory=list)  # the testbed's directed link overrides
    source: str | None = None  # device where inputs come from and results return, if known
    cost_table: CostTable | None = None  # measured seconds per block per device (a profile), if any
    batch: int = 1  # requests' batch size: activations and frames, and so memory, scale with it
    limits: Limits = field(default_factory=Limits)  # objective energy's latency budget and throughput floor
    # a generation job's decoder cache, held by each stage for its own layers: the tokens held at once
    # (the longest context per sequence times `sequences`), and the sequences in flight at once
    # (None: not a generation job)
    cache_tokens: int = 0
    sequences: int | None = None

    def testbed(self) -> Testbed:
        """The devices and links as a Testbed, for link parameters."""
        return Testbed(devices=list(self.devices), links=list(self.links), source=self.devices_file)


@dataclass
class Placement:
    """Cut positions (increasing, 1..n-1), one device name per stage, and remarks for the user."""

    cuts: list[int]
    devices: list[str]
    notes: list[str] = field(default_factory=list)
    predicted: Predicted | None = None  # the algorithm's own estimate, when it made one
    # per stage, set by the memory check: how its session opens and its node's predicted resident bytes
    modes: list[MemoryMode] | None = None
    memory_bytes: list[int] | None = None
    levels: list[float] | None = None  # per stage, the CPU share of its device's DVFS level (objective energy)


Algorithm = Callable[[Problem], Placement]
