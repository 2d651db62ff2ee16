"""The node's own cgroup figures (CPU use and throttling, memory) and network counters.

The node reads them itself so that per-device stats reach the orchestrator over the Stats call
from any host, including hosts whose Docker engine it cannot reach. The orchestrator asks every
half second, so this reads a handful of small files and starts nothing. The cgroup directories
are found as node/resources.py finds them for the limits: the process's own directory per v1
controller and in the v2 tree, or the mount root inside a container that sees the host's paths.
v1 files are read where present (a hybrid host keeps its controllers there), v2 files otherwise.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path

from common import testbed_pb2 as pb
from node import resources
from node.resources import _candidate_dirs, _read, _v1_mount, _v2_mount, parse_proc_cgroup

_NET_KEYS = ("rx_bytes", "tx_bytes", "rx_packets", "tx_packets")


def _own_dir(mount: Path | None, cgroup_path: str | None) -> Path | None:
    """The process's cgroup directory under a mount: the deepest part of its path that exists."""
    dirs = _candidate_dirs(mount, cgroup_path) if mount is not None else []
    return dirs[0] if dirs else None


@functools.lru_cache(maxsize=8)
def _dirs(root: Path, proc_cgroup: Path) -> tuple[Path | None, Path | None, Path | None, Path | None]:
    """The process's v1 cpuacct, cpu and memory directories and its v2 one (found once: a process
    stays in its cgroup)."""
    v1, v2 = parse_proc_cgroup(_read(proc_cgroup) or "")
    return (
        _own_dir(_v1_mount(root, "cpuacct") or _v1_mount(root, "cpu"), v1.get("cpuacct")),
        _own_dir(_v1_mount(root, "cpu"), v1.get("cpu")),
        _own_dir(_v1_mount(root, "memory"), v1.get("memory")),
        _own_dir(_v2_mount(root), v2),
    )


def _int(folder: Path | None, name: str) -> int | None:
    text = _read(folder / name) if folder is not None else None
    try:
        return int(text.split()[0]) if text else None
    except ValueError:
        return None


def _keyed(folder: Path | None, name: str) -> dict[str, int]:
    """A flat keyed file (cpu.stat, memory.stat) as {key: value}."""
    text = _read(folder / name) if folder is not None else None
    out: dict[str, int] = {}
    for line in (text or "").splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            out[parts[0]] = int(parts[1])
    return out


def _first(d: dict[str, int], *keys: str) -> int | None:
    return next((d[k] for k in keys if k in d), None)


def network(net: str | Path = "/sys/class/net") -> tuple[int, int, int, int]:
    """Bytes and packets received and sent over every interface but lo (this network namespace's)."""
    sums = [0, 0, 0, 0]
    try:
        ifaces = [p for p in Path(net).iterdir() if p.name != "lo"]
    except OSError:
        return (0, 0, 0, 0)
    for iface in ifaces:
        for i, key in enumerate(_NET_KEYS):
            sums[i] += _int(iface / "statistics", key) or 0
    return (sums[0], sums[1], sums[2], sums[3])


def read(
    root: str | Path = "/sys/fs/cgroup",
    proc_cgroup: str | Path = "/proc/self/cgroup",
    net: str | Path = "/sys/class/net",
) -> pb.CgroupStats:
    """The cgroup's cumulative CPU time and throttling, its memory now and at peak, and the network
    counters; has_cgroup is False (and the cgroup figures zero) where no cgroup file could be read."""
    at_ns = time.time_ns()
    root = Path(root)
    cpuacct, cpu, mem, v2 = _dirs(root, Path(proc_cgroup))

    cpu_stat, usage_ns = _keyed(cpu, "cpu.stat"), _int(cpuacct, "cpuacct.usage")
    if not cpu_stat or usage_ns is None:  # v2 (or a v1 tree without these controllers)
        v2_cpu = _keyed(v2, "cpu.stat")
        cpu_stat = cpu_stat or v2_cpu
        if usage_ns is None and "usage_usec" in v2_cpu:
            usage_ns = v2_cpu["usage_usec"] * 1000
    throttled_ns = cpu_stat.get("throttled_time")
    if throttled_ns is None and "throttled_usec" in cpu_stat:
        throttled_ns = cpu_stat["throttled_usec"] * 1000

    used = _int(mem, "memory.usage_in_bytes")
    if used is not None:
        peak = _int(mem, "memory.max_usage_in_bytes")
        mstat = _keyed(mem, "memory.stat")
        anon, cache = _first(mstat, "total_rss", "rss"), _first(mstat, "total_cache", "cache")
    else:
        used, peak = _int(v2, "memory.current"), _int(v2, "memory.peak")
        mstat = _keyed(v2, "memory.stat")
        anon, cache = mstat.get("anon"), mstat.get("file")

    rx, tx, rx_p, tx_p = network(net)
    has = usage_ns is not None or used is not None
    return pb.CgroupStats(
        has_cgroup=has,
        cpu_usage_s=(usage_ns or 0) / 1e9,
        periods=cpu_stat.get("nr_periods", 0),
        throttled_periods=cpu_stat.get("nr_throttled", 0),
        throttled_s=(throttled_ns or 0) / 1e9,
        cpu_quota=(resources.cpu_quota(root, proc_cgroup) or 0.0) if has else 0.0,
        memory_bytes=used or 0,
        memory_limit=(resources.memory_limit(root, proc_cgroup) or 0) if has else 0,
        memory_peak_bytes=peak or 0,
        memory_anon_bytes=anon or 0,
        memory_cache_bytes=cache or 0,
        net_rx_bytes=rx,
        net_tx_bytes=tx,
        net_rx_packets=rx_p,
        net_tx_packets=tx_p,
        at_ns=at_ns,
    )
