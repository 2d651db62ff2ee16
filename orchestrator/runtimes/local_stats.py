"""Per-device stats logs for the local runtime, sampled from the node processes.

Docker runs read the engine's stats stream instead; both write the same jsonl lines.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import psutil

from orchestrator.config import Testbed
from orchestrator.driving.client import NodeError
from orchestrator.runtimes.base import Deployment


class LocalStatsSampler:
    """Samples CPU (cores used), RSS and the node's byte counters every `period_s`."""

    def __init__(self, dep: Deployment, testbed: Testbed, out_dir: Path, period_s: float = 0.5):
        self.dep, self.testbed, self.out_dir, self.period_s = dep, testbed, Path(out_dir), period_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stats", daemon=True)
        self.samples: dict[str, list[dict]] = {d: [] for d in dep.nodes}

    def __enter__(self) -> LocalStatsSampler:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        procs = {d: psutil.Process(h.pid) for d, h in self.dep.nodes.items() if h.pid}
        last: dict[str, tuple[float, float]] = {}
        files = {d: open(self.out_dir / f"{d}.jsonl", "a") for d in self.dep.nodes}  # noqa: SIM115
        try:
            while not self._stop.wait(self.period_s):
                for dev, proc in procs.items():
                    try:
                        cpu_t = sum(proc.cpu_times()[:2])
                        rss = proc.memory_info().rss
                        st = self.dep.client(dev).stats(timeout_s=1.0)
                    except (psutil.Error, NodeError):
                        continue
                    now = time.time()
                    cores = None
                    if dev in last:
                        t0, c0 = last[dev]
                        cores = (cpu_t - c0) / (now - t0) if now > t0 else None
                    last[dev] = (now, cpu_t)
                    spec = self.testbed.device(dev)
                    line = {
                        "time": round(now, 3),
                        "cpu_cores": None if cores is None else round(cores, 4),
                        "cpu_cap": spec.cpus,
                        "cpu_of_cap": None if cores is None else round(cores / spec.cpus, 4),
                        "throttled_periods": None,
                        "throttled_s": None,
                        "memory_bytes": rss,
                        "memory_limit": spec.memory,
                        "memory_peak_bytes": st.peak_rss_bytes,
                        "bytes_in": st.bytes_in,
                        "bytes_out": st.bytes_out,
                        "frames_in": st.frames_in,
                        "frames_out": st.frames_out,
                    }
                    self.samples[dev].append(line)
                    files[dev].write(json.dumps(line) + "\n")
                    files[dev].flush()
        finally:
            for f in files.values():
                f.close()


def device_summary(samples: dict[str, list[dict]]) -> dict[str, dict]:
    """Peak memory, mean and peak CPU of its cap, bytes moved, per device."""
    out = {}
    for dev, rows in samples.items():
        cpu = [r["cpu_of_cap"] for r in rows if r.get("cpu_of_cap") is not None]
        peaks = [r.get("memory_peak_bytes") or r.get("memory_bytes") or 0 for r in rows]
        out[dev] = {
            "peak_memory_bytes": max(peaks) if peaks else None,
            "cpu_mean_of_cap": round(sum(cpu) / len(cpu), 4) if cpu else None,
            "cpu_peak_of_cap": round(max(cpu), 4) if cpu else None,
            "bytes_out": rows[-1]["bytes_out"] if rows else None,
            "bytes_in": rows[-1]["bytes_in"] if rows else None,
            "samples": len(rows),
        }
    return out
