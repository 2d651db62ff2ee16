"""Per-device stats as every runtime's sampler records them, and their per-device summary.

Each sampler writes `<out>/<device>.jsonl`, one line per sample with the same keys: time, CPU in
cores and as a share of the device's cap, throttling (where there is a cgroup), memory use, limit
and peak, resident and page cache apart, bytes in and out.

Memory is told apart because the engine's "use" mixes two things: the node's anonymous memory
(what its cgroup cannot reclaim, what the memory limit kills for, what the planner predicts) and
the page cache of the files it read (the model's weights among them: reclaimable, and shared).
"""

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
    high-water mark; `memory_resident_bytes` its anonymous resident memory, `memory_page_cache_bytes`
    its cgroup's page cache); bytes, packets and frames cumulative. None where the runtime does not
    measure a figure (no cgroup throttling or page cache for a local process, no frame counts from
    the engine)."""

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
    memory_resident_bytes: int | None = None
    memory_page_cache_bytes: int | None = None
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

    def peaks(self) -> dict[str, MemoryPeaks]:
        """Each device's memory peaks over the samples so far (`memory_peaks`)."""


@dataclass(frozen=True)
class MemoryPeaks:
    """A device's memory over a run: the highest samples of its node's resident (anonymous) memory
    and of its page cache (None where not measured), the engine's own peak, and the limit."""

    resident: int | None
    page_cache: int | None
    peak: int | None  # the engine's high-water mark (page cache included) or the node's VmHWM
    limit: int | None


def memory_peaks(samples: dict[str, list[StatsLine]]) -> dict[str, MemoryPeaks]:
    """Per device, its memory peaks over the samples taken (what a sampler's `peaks()` returns)."""

    def top(values: list[int | None]) -> int | None:
        seen = [v for v in values if v is not None]
        return max(seen) if seen else None

    return {
        dev: MemoryPeaks(
            resident=top([r.memory_resident_bytes for r in rows]),
            page_cache=top([r.memory_page_cache_bytes for r in rows]),
            peak=top([r.memory_peak_bytes or r.memory_bytes for r in rows]),
            limit=top([r.memory_limit for r in rows]),
        )
        for dev, rows in samples.items()
    }


def device_summary(samples: dict[str, list[StatsLine]]) -> dict[str, dict]:
    """Peak memory (resident and page cache apart), mean and peak CPU of its cap, bytes moved, per device."""
    out = {}
    peaks = memory_peaks(samples)
    for dev, rows in samples.items():
        cpu = [r.cpu_of_cap for r in rows if r.cpu_of_cap is not None]
        out[dev] = {
            "peak_memory_bytes": peaks[dev].peak if rows else None,
            "peak_resident_bytes": peaks[dev].resident,
            "peak_page_cache_bytes": peaks[dev].page_cache,
            "cpu_mean_of_cap": round(sum(cpu) / len(cpu), 4) if cpu else None,
            "cpu_peak_of_cap": round(max(cpu), 4) if cpu else None,
            "bytes_out": rows[-1].bytes_out if rows else None,
            "bytes_in": rows[-1].bytes_in if rows else None,
            "samples": len(rows),
        }
    return out
