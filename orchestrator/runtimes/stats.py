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
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
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


class PolledSampler:
    """What the samplers that poll the nodes share: a thread that samples every device every
    `period_s` (and `take_sample` one more now), one sample at a time, each line appended to
    `<out_dir>/<device>.jsonl`. A subclass says how one device is sampled (`_sample`); with
    `workers` > 1 the devices are sampled in parallel, so a large fleet fits in one period."""

    def __init__(self, devices: Iterable[str], out_dir: Path, period_s: float = 0.5, workers: int = 1):
        self.out_dir, self.period_s = Path(out_dir), period_s
        self.samples: dict[str, list[StatsLine]] = {d: [] for d in devices}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stats", daemon=True)
        self._lock = threading.Lock()  # one sample at a time: the thread's or take_sample's
        self._workers = workers
        self._pool: ThreadPoolExecutor | None = None
        self._files: dict = {}

    def __enter__(self) -> PolledSampler:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._files = {d: open(self.out_dir / f"{d}.jsonl", "a") for d in self.samples}  # noqa: SIM115
        if self._workers > 1:
            self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="stats")
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        with self._lock:
            for f in self._files.values():
                f.close()
            self._files.clear()
            if self._pool is not None:
                self._pool.shutdown()
                self._pool = None

    def take_sample(self, timeout_s: float = 5.0) -> None:
        """Sample every node now (each node's call gives up after `timeout_s`)."""
        self._sample_all(timeout_s)

    def peaks(self) -> dict[str, MemoryPeaks]:
        return memory_peaks(self.samples)

    def _sample(self, dev: str, timeout_s: float) -> StatsLine | None:
        """One line for `dev`, None where its node could not be sampled this time."""
        raise NotImplementedError

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            self._sample_all(1.0)

    def _sample_all(self, timeout_s: float) -> None:
        with self._lock:
            devs = list(self.samples)
            mapped = self._pool.map if self._pool is not None else map
            for dev, line in zip(devs, mapped(lambda d: self._sample(d, timeout_s), devs), strict=True):
                if line is None:
                    continue
                self.samples[dev].append(line)
                if dev in self._files:
                    self._files[dev].write(line.to_json() + "\n")
                    self._files[dev].flush()


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
