"""Per-device stats logs from the nodes themselves: every figure from the node's Stats reply.

Each node reads its own cgroup and network counters (node/cgroup_stats.py), so this works for
nodes on hosts whose Docker engine the orchestrator cannot reach (the Docker runtime may keep the
engine's stream: runtimes/docker_stats.py). It writes the same jsonl lines as the other samplers
(runtimes/stats.py). CPU in cores is the cgroup's CPU time over the node's own clock between two
samples; a node that finds no cgroup gives its own process's figures (CPU, RSS, frame bytes).
"""

from __future__ import annotations

import time
from pathlib import Path

from common import testbed_pb2 as pb
from orchestrator.driving.client import NodeError
from orchestrator.runtimes.base import Deployment
from orchestrator.runtimes.stats import PolledSampler, StatsLine

MAX_WORKERS = 32


class NodeStatsSampler(PolledSampler):
    """Asks every node for its Stats every `period_s`, all nodes at once. `caps` is the runtime's
    live {device: CPU cap}: a changed cap is followed from the next sample."""

    def __init__(self, dep: Deployment, caps: dict[str, float], out_dir: Path, period_s: float = 0.5):
        super().__init__(dep.nodes, out_dir, period_s, workers=min(MAX_WORKERS, max(1, len(dep.nodes))))
        self.dep, self.caps = dep, caps
        self._last: dict[str, tuple[int, float]] = {}  # per device: the node's clock (ns), CPU seconds

    def _cores(self, dev: str, at_ns: int, cpu_s: float) -> float | None:
        """CPU cores since the device's last sample; None on the first, or after the counter went
        back (a revived node: a new container, a new cgroup)."""
        last, self._last[dev] = self._last.get(dev), (at_ns, cpu_s)
        if last is None or at_ns <= last[0] or cpu_s < last[1]:
            return None
        return (cpu_s - last[1]) / ((at_ns - last[0]) / 1e9)

    def _sample(self, dev: str, timeout_s: float) -> StatsLine | None:
        try:
            st: pb.StatsReply = self.dep.client(dev).stats(timeout_s=timeout_s)
        except NodeError:
            return None  # crashed, or not answering this time: no line
        cg = st.cgroup
        cpu_s = cg.cpu_usage_s if cg.has_cgroup else st.cpu_seconds
        cores = self._cores(dev, cg.at_ns or time.time_ns(), cpu_s)
        cap = self.caps.get(dev) or None
        shared = dict(
            time=round(time.time(), 3),
            cpu_cores=None if cores is None else round(cores, 4),
            cpu_cap=cap,
            cpu_of_cap=None if cores is None or cap is None else round(cores / cap, 4),
            frames_in=st.frames_in,
            frames_out=st.frames_out,
        )
        if not cg.has_cgroup:
            return StatsLine(
                **shared,
                memory_bytes=st.rss_bytes,
                memory_peak_bytes=st.peak_rss_bytes or None,
                bytes_in=st.bytes_in,
                bytes_out=st.bytes_out,
            )
        return StatsLine(
            **shared,
            throttled_periods=cg.throttled_periods,
            periods=cg.periods,
            throttled_s=round(cg.throttled_s, 4),
            memory_bytes=cg.memory_bytes,
            memory_limit=cg.memory_limit or None,
            memory_peak_bytes=cg.memory_peak_bytes or st.peak_rss_bytes or None,
            memory_resident_bytes=cg.memory_anon_bytes,
            memory_page_cache_bytes=cg.memory_cache_bytes,
            bytes_in=cg.net_rx_bytes,
            bytes_out=cg.net_tx_bytes,
            packets_in=cg.net_rx_packets,
            packets_out=cg.net_tx_packets,
        )
