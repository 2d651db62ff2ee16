"""Per-device stats logs for the local runtime, sampled from the node processes.

Docker runs read the engine's stats stream instead; both write the same jsonl lines
(runtimes/stats.py). Resident memory is the node's anonymous memory (RssAnon in
/proc/<pid>/status); a plain process has no page cache of its own (the host's is shared by all),
so `memory_page_cache_bytes` stays None (the report says so: figures/memory.py).
"""

from __future__ import annotations

import time
from pathlib import Path

import psutil

from orchestrator.config import Testbed
from orchestrator.driving.client import NodeError
from orchestrator.runtimes.base import Deployment
from orchestrator.runtimes.stats import PolledSampler, StatsLine


def rss_anon_bytes(pid: int) -> int | None:
    """A process's anonymous resident memory (RssAnon), None where /proc does not say."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


class LocalStatsSampler(PolledSampler):
    """Samples CPU (cores used), RSS and the node's byte counters every `period_s`."""

    def __init__(self, dep: Deployment, testbed: Testbed, out_dir: Path, period_s: float = 0.5):
        super().__init__(dep.nodes, out_dir, period_s)
        self.dep, self.testbed = dep, testbed
        self._procs: dict[str, psutil.Process] = {}
        self._last: dict[str, tuple[float, float]] = {}

    def _process(self, dev: str) -> psutil.Process | None:
        """The device's node process; a new one after the runtime revived it."""
        pid = self.dep.nodes[dev].pid
        if pid is None:
            return None
        if dev not in self._procs or self._procs[dev].pid != pid:
            self._procs[dev] = psutil.Process(pid)
            self._last.pop(dev, None)
        return self._procs[dev]

    def _sample(self, dev: str, timeout_s: float) -> StatsLine | None:
        try:
            proc = self._process(dev)
            if proc is None:
                return None
            cpu_t = sum(proc.cpu_times()[:2])
            rss = proc.memory_info().rss
            anon = rss_anon_bytes(proc.pid)
            st = self.dep.client(dev).stats(timeout_s=timeout_s)
        except (psutil.Error, NodeError):
            return None
        now = time.time()
        cores = None
        if dev in self._last:
            t0, c0 = self._last[dev]
            cores = (cpu_t - c0) / (now - t0) if now > t0 else None
        self._last[dev] = (now, cpu_t)
        spec = self.testbed.device(dev)
        return StatsLine(
            time=round(now, 3),
            cpu_cores=None if cores is None else round(cores, 4),
            cpu_cap=spec.cpus,
            cpu_of_cap=None if cores is None else round(cores / spec.cpus, 4),
            memory_bytes=rss,
            memory_limit=spec.memory,
            memory_peak_bytes=st.peak_rss_bytes,
            memory_resident_bytes=anon,
            bytes_in=st.bytes_in,
            bytes_out=st.bytes_out,
            frames_in=st.frames_in,
            frames_out=st.frames_out,
        )
