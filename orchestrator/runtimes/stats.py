"""Per-device stats as every runtime's sampler records them, and their per-device summary.

Each sampler writes `<out>/<device>.jsonl`, one line per sample with the same keys: time, CPU in
cores and as a share of the device's cap, throttling (where there is a cgroup), memory use, limit
and peak, bytes in and out."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class StatsLine:
    """One sample of one device: a line of stats/<device>.jsonl, whichever runtime wrote it.

    The keys are the run folder's contract. CPU is in cores and as a share of the device's cap;
    throttling and periods are cumulative; memory in bytes (`memory_peak_bytes` the node's
    high-water mark); bytes, packets and frames cumulative. None where the runtime does not measure
    a figure (no cgroup throttling for a local process, no frame counts from the engine)."""

    time: float
    cpu_cores: float | None = None
    cpu_cap: float | None = None
    cpu_of_cap: float | None = None
    throttled_periods: int | None = None
    periods: int | None = None
    throttled_s: float | None = None
    memory_bytes: int | None = None
    memory_limit: int | None = None
    memory_peak_bytes: int | None = None
    bytes_in: int | None = None
    bytes_out: int | None = None
    packets_in: int | None = None
    packets_out: int | None = None
    frames_in: int | None = None
    frames_out: int | None = None

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, line: str) -> StatsLine:
        """A line as written (keys a runtime did not write read as None)."""
        d = json.loads(line)
        return cls(**{f.name: d.get(f.name) for f in dataclasses.fields(cls)})


class StatsSampler(Protocol):
    """A context manager that samples every device's node while it is entered."""

    samples: dict[str, list[StatsLine]]  # per device, the lines written so far

    def __enter__(self) -> StatsSampler: ...

    def __exit__(self, *exc: object) -> None: ...

    def take_sample(self, timeout_s: float = 5.0) -> None:
        """Return once every device has one more sample, taken now: the driver asks for one before
        the load starts and one after it ends, so CPU and bytes cover the whole drive."""


def device_summary(samples: dict[str, list[StatsLine]]) -> dict[str, dict]:
    """Peak memory, mean and peak CPU of its cap, bytes moved, per device."""
    out = {}
    for dev, rows in samples.items():
        cpu = [r.cpu_of_cap for r in rows if r.cpu_of_cap is not None]
        peaks = [r.memory_peak_bytes or r.memory_bytes or 0 for r in rows]
        out[dev] = {
            "peak_memory_bytes": max(peaks) if peaks else None,
            "cpu_mean_of_cap": round(sum(cpu) / len(cpu), 4) if cpu else None,
            "cpu_peak_of_cap": round(max(cpu), 4) if cpu else None,
            "bytes_out": rows[-1].bytes_out if rows else None,
            "bytes_in": rows[-1].bytes_in if rows else None,
            "samples": len(rows),
        }
    return out
