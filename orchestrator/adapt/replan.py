"""Plans made while a run goes on: placed on the devices left and the conditions given, from the
cost table the run planned with (a profile cached before the run: nothing is measured again),
and cut into small graph files beside the run (the weights are stored once)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from orchestrator.config import Testbed
from orchestrator.partition import Limits, ModelGraph, Placement, partition, place, predict
from orchestrator.partition.costmodel import CostTable
from orchestrator.partition.plan import Plan


@dataclass(frozen=True)
class Placed:
    """A placement weighed but not yet written."""

    graph: ModelGraph
    placement: Placement
    fps: float | None
    seconds: float  # how long placing took

    @property
    def key(self) -> tuple[tuple[int, ...], tuple[str, ...]]:
        return tuple(self.placement.cuts), tuple(self.placement.devices)


def scaled(table: CostTable | None, factors: dict[str, float]) -> CostTable | None:
    """The table with each device's block times multiplied by its factor (a slower device: > 1)."""
    if table is None or not factors:
        return table
    block_s = {d: [s * factors.get(d, 1.0) for s in row] for d, row in table.block_s.items()}
    return replace(table, block_s=block_s)


@dataclass
class Replanner:
    model: Path
    algorithm: str
    objective: str
    stages: int | None
    source: str
    run_dir: Path
    batch: int = 1  # the job's: memory is checked at it
    limits: Limits = field(default_factory=Limits)  # objective energy's
    cache_tokens: int = 0  # a generation job's: its caches count in memory
    sequences: int | None = None  # a generation job's sequences in flight

    def place(self, testbed: Testbed, table: CostTable | None) -> Placed:
        """The best placement on `testbed` (its devices are those left) with `table`'s costs."""
        t0 = time.perf_counter()
        stages = None if self.stages is None else min(self.stages, len(testbed.devices))
        graph, placement = place(
            self.model,
            testbed,
            algorithm=self.algorithm,
            objective=self.objective,
            stages=stages,
            source=self.source,
            cost_table=_only(table, testbed),
            batch=self.batch,
            limits=self.limits,
            cache_tokens=self.cache_tokens,
            sequences=self.sequences,
        )
        seconds = time.perf_counter() - t0
        return Placed(graph, placement, self.fps(graph, placement.cuts, placement.devices, testbed, table), seconds)

    def fps(
        self, graph: ModelGraph, cuts: list[int], devices: list[str], testbed: Testbed, table: CostTable | None
    ) -> float | None:
        """Predicted throughput of a placement under these conditions (None if a device is gone)."""
        names = {d.name for d in testbed.devices}
        if any(d not in names for d in devices):
            return None
        pred = predict(graph, cuts, devices, testbed, table=_only(table, testbed), source=self.source)
        return pred.throughput_fps

    def write(self, placed: Placed, testbed: Testbed, table: CostTable | None, index: int) -> Plan:
        """Cut the placement into run_dir/plans/<index>/ (small graph files, weights linked)."""
        out = self.run_dir / "plans" / str(index)
        out.mkdir(parents=True, exist_ok=True)
        return partition(
            self.model,
            testbed,
            algorithm=self.algorithm,
            objective=self.objective,
            source=self.source,
            out_dir=out,
            cost_table=_only(table, testbed),
            placed=(placed.graph, placed.placement),
        )


def _only(table: CostTable | None, testbed: Testbed) -> CostTable | None:
    """The table restricted to the devices of `testbed` (those left)."""
    if table is None:
        return None
    names = {d.name for d in testbed.devices}
    return replace(table, block_s={d: v for d, v in table.block_s.items() if d in names})
