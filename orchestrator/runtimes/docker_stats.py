"""Per-container stats logs from the Docker engine's stats stream (about one sample a second).

One thread per container reads `GET /containers/<id>/stats?stream=1` and writes
`<out>/<device>.jsonl` with the same keys as the local runtime's sampler (runtimes/stats.py):
time, CPU in cores and as a share of the device's cap, throttled periods and time (cumulative),
memory use, limit and peak, resident (anonymous) memory and page cache apart (the container's
cgroup memory.stat: v1 total_rss and total_cache, v2 anon and file), network bytes and packets in
and out.

`python -m orchestrator.runtimes.docker_stats --testbed NAME --out logs/stats` is the background
collector `orchestrator testbed up` starts; it ends when the testbed's containers are gone.
"""

from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path

from orchestrator.runtimes.docker_testbed import LABEL_DEVICE
from orchestrator.runtimes.stats import MemoryPeaks, StatsLine, memory_peaks


def _first(stats: dict, *keys: str) -> int | None:
    """The first of `keys` the cgroup's memory.stat has (v1 names first, then v2's)."""
    return next((int(stats[k]) for k in keys if stats.get(k) is not None), None)


def sample_line(s: dict, cap: float) -> StatsLine | None:
    """One jsonl line from one engine stats sample (cgroup v1 or v2), None when not a sample."""
    cpu, pre = s.get("cpu_stats") or {}, s.get("precpu_stats") or {}
    if not cpu:
        return None
    mem = s.get("memory_stats") or {}
    d_tot = (cpu.get("cpu_usage") or {}).get("total_usage", 0) - (pre.get("cpu_usage") or {}).get("total_usage", 0)
    d_sys = cpu.get("system_cpu_usage", 0) - (pre.get("system_cpu_usage") or 0)
    online = cpu.get("online_cpus") or len((cpu.get("cpu_usage") or {}).get("percpu_usage") or []) or 1
    cores = d_tot / d_sys * online if pre.get("system_cpu_usage") and d_sys > 0 else None
    thr = cpu.get("throttling_data") or {}
    nets = s.get("networks") or {}
    stats = mem.get("stats") or {}
    usage = mem.get("usage")
    if usage is not None:  # as `docker stats` shows it: page cache that can be dropped is not use
        usage -= stats.get("total_inactive_file", stats.get("inactive_file", 0))
    return StatsLine(
        time=round(time.time(), 3),
        cpu_cores=None if cores is None else round(cores, 4),
        cpu_cap=cap,
        cpu_of_cap=None if cores is None or not cap else round(cores / cap, 4),
        throttled_periods=thr.get("throttled_periods"),
        periods=thr.get("periods"),
        throttled_s=None if thr.get("throttled_time") is None else round(thr["throttled_time"] / 1e9, 4),
        memory_bytes=usage,
        memory_limit=mem.get("limit"),
        memory_peak_bytes=mem.get("max_usage") or stats.get("peak") or None,
        memory_resident_bytes=_first(stats, "total_rss", "rss", "anon"),
        memory_page_cache_bytes=_first(stats, "total_cache", "cache", "file"),
        bytes_in=sum(n.get("rx_bytes", 0) for n in nets.values()),
        bytes_out=sum(n.get("tx_bytes", 0) for n in nets.values()),
        packets_in=sum(n.get("rx_packets", 0) for n in nets.values()),
        packets_out=sum(n.get("tx_packets", 0) for n in nets.values()),
    )


class DockerStatsCollector:
    """Streams stats for {device: container}; writes jsonl files when out_dir is given."""

    def __init__(self, client, containers: dict, caps: dict[str, float], out_dir: Path | None = None):
        self.client, self.containers, self.caps = client, containers, caps
        self.out_dir = Path(out_dir) if out_dir else None
        self.samples: dict[str, list[StatsLine]] = {d: [] for d in containers}
        self.latest: dict[str, StatsLine] = {}
        self._stop = threading.Event()
        self._responses: dict[str, object] = {}
        self._threads = [
            threading.Thread(target=self._run, args=(d,), name=f"stats-{d}", daemon=True) for d in containers
        ]

    def __enter__(self) -> DockerStatsCollector:
        if self.out_dir:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for r in list(self._responses.values()):
            try:
                r.close()
            except Exception:
                pass
        for t in self._threads:
            t.join(timeout=3)

    def take_sample(self, timeout_s: float = 5.0) -> None:
        """Block until every container has one more sample than now (the engine sends one a
        second), or `timeout_s` has passed."""
        want = {d: len(v) + 1 for d, v in self.samples.items()}
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and any(len(self.samples[d]) < n for d, n in want.items()):
            time.sleep(0.05)

    def peaks(self) -> dict[str, MemoryPeaks]:
        """Each container's memory peaks over the samples so far: resident and page cache apart."""
        return memory_peaks(self.samples)

    def alive(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    def _run(self, dev: str) -> None:
        cont = self.containers[dev]
        api = self.client.api
        f = open(self.out_dir / f"{dev}.jsonl", "a") if self.out_dir else None  # noqa: SIM115
        try:
            resp = api._get(api._url("/containers/{0}/stats", cont.id), params={"stream": True}, stream=True)
            self._responses[dev] = resp
            for s in api._stream_helper(resp, decode=True):
                if self._stop.is_set():
                    break
                line = sample_line(s, self.caps.get(dev, 0.0))
                if line is None:
                    continue
                self.samples[dev].append(line)
                self.latest[dev] = line
                if f:
                    f.write(line.to_json() + "\n")
                    f.flush()
        except Exception:
            pass  # the container went away, or stop() closed the stream
        finally:
            if f:
                f.close()


def main(argv: list[str] | None = None) -> int:
    from orchestrator.runtimes.docker_engine import engine, testbed_containers

    ap = argparse.ArgumentParser(prog="python -m orchestrator.runtimes.docker_stats")
    ap.add_argument("--testbed", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    client = engine()
    if client is None:
        return 1
    conts = {c.labels[LABEL_DEVICE]: c for c in testbed_containers(client, a.testbed, all_=False)}
    caps = {d: (c.attrs["HostConfig"].get("NanoCpus") or 0) / 1e9 for d, c in conts.items()}
    with DockerStatsCollector(client, conts, caps, Path(a.out)) as col:
        while col.alive():
            time.sleep(1.0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
