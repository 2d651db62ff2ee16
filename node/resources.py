"""What the node is allowed to use: CPU quota (cgroup v1 and v2), affinity, memory limit, and RSS.

ONNX Runtime sizes its thread pool from the host's cores and ignores cgroup quotas and affinity;
oversubscribing a quota makes stages several times slower, so the node reads the
limits itself. Hosts may mount cgroup v1 controllers with a v2 tree beside them: both are read
and the tightest limit along the process's own cgroup path (up to the mount root) wins."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from common.cpu_quota import CFS_PERIOD_US, available_cores

# Memory limits at or above this are "unlimited" (v1 reports PAGE_COUNTER_MAX * page size).
_UNLIMITED_MEMORY = 1 << 60


@dataclass(frozen=True)
class Limits:
    """The node's resource envelope. cpu_quota/memory_limit are None when unlimited."""

    cpu_quota: float | None
    cores: int
    memory_limit: int | None


def parse_proc_cgroup(text: str) -> tuple[dict[str, str], str | None]:
    """/proc/self/cgroup -> ({v1 controller: path}, v2 path or None)."""
    v1: dict[str, str] = {}
    v2: str | None = None
    for line in text.splitlines():
        parts = line.strip().split(":", 2)
        if len(parts) != 3:
            continue
        hier, controllers, path = parts
        if hier == "0" and controllers == "":
            v2 = path
            continue
        for c in controllers.split(","):
            if c:
                v1[c] = path
    return v1, v2


def parse_cpu_max(text: str) -> float | None:
    """cgroup v2 cpu.max ("max 100000" or "50000 100000") -> CPUs or None."""
    parts = text.split()
    if not parts or parts[0] == "max":
        return None
    period = int(parts[1]) if len(parts) > 1 else CFS_PERIOD_US
    quota = int(parts[0])
    if quota <= 0 or period <= 0:
        return None
    return quota / period


def parse_cfs(quota_text: str, period_text: str) -> float | None:
    """cgroup v1 cpu.cfs_quota_us / cpu.cfs_period_us -> CPUs or None (-1 is unlimited)."""
    quota = int(quota_text.strip())
    period = int(period_text.strip())
    if quota <= 0 or period <= 0:
        return None
    return quota / period


def parse_memory_limit(text: str) -> int | None:
    """v1 memory.limit_in_bytes or v2 memory.max -> bytes or None."""
    t = text.strip()
    if not t or t == "max":
        return None
    value = int(t)
    return None if value >= _UNLIMITED_MEMORY else value


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _candidate_dirs(mount: Path, cgroup_path: str | None) -> list[Path]:
    """The process's cgroup directory and its ancestors up to the mount root, those that exist.

    Inside a container the path in /proc/self/cgroup may be the host's (no cgroup namespace on
    v1) and not exist under the mount; then the mount root itself is the container's cgroup."""
    dirs: list[Path] = []
    p = Path((cgroup_path or "/").lstrip("/"))
    while True:
        if (mount / p).is_dir():
            dirs.append(mount / p)
        if p == Path("."):
            break
        p = p.parent
    return dirs


def _v1_mount(root: Path, controller: str) -> Path | None:
    for name in (controller, f"{controller},cpuacct", f"cpuacct,{controller}", f"{controller},memsw"):
        if (root / name).is_dir():
            return root / name
    return None


def _v2_mount(root: Path) -> Path | None:
    if (root / "cgroup.controllers").exists():
        return root  # unified hierarchy mounted at the root
    if (root / "unified" / "cgroup.controllers").exists():
        return root / "unified"  # hybrid layout: v2 tree beside the v1 controllers
    return None


def _min(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return min(present) if present else None


def _tightest(
    root: str | Path,
    proc_cgroup: str | Path,
    controller: str,
    read_v1: Callable[[Path], float | None],
    read_v2: Callable[[Path], float | None],
) -> float | None:
    """The tightest limit along this process's cgroup path, read from v1 and v2 trees alike (a host
    may mount v1 controllers with a v2 tree beside them)."""
    root = Path(root)
    v1, v2 = parse_proc_cgroup(_read(Path(proc_cgroup)) or "")
    found: list[float | None] = []
    mount = _v1_mount(root, controller)
    if mount is not None:
        found += [read_v1(d) for d in _candidate_dirs(mount, v1.get(controller))]
    mount2 = _v2_mount(root)
    if mount2 is not None:
        found += [read_v2(d) for d in _candidate_dirs(mount2, v2)]
    return _min(found)


def _parsed(path: Path, parse: Callable[[str], float | None]) -> float | None:
    text = _read(path)
    return None if text is None else parse(text)


def cpu_quota(root: str | Path = "/sys/fs/cgroup", proc_cgroup: str | Path = "/proc/self/cgroup") -> float | None:
    """CPUs the process may use per period (tightest of v1 and v2 along its path), None if none."""

    def v1(d: Path) -> float | None:
        q, p = _read(d / "cpu.cfs_quota_us"), _read(d / "cpu.cfs_period_us")
        return parse_cfs(q, p) if q is not None and p is not None else None

    return _tightest(root, proc_cgroup, "cpu", v1, lambda d: _parsed(d / "cpu.max", parse_cpu_max))


def memory_limit(root: str | Path = "/sys/fs/cgroup", proc_cgroup: str | Path = "/proc/self/cgroup") -> int | None:
    """Hard memory limit in bytes (tightest of v1 and v2 along the path), None if none."""
    m = _tightest(
        root,
        proc_cgroup,
        "memory",
        lambda d: _parsed(d / "memory.limit_in_bytes", parse_memory_limit),
        lambda d: _parsed(d / "memory.max", parse_memory_limit),
    )
    return None if m is None else int(m)


def limits(root: str | Path = "/sys/fs/cgroup", proc_cgroup: str | Path = "/proc/self/cgroup") -> Limits:
    cores = available_cores()
    q = cpu_quota(root, proc_cgroup)
    return Limits(cpu_quota=q, cores=cores, memory_limit=memory_limit(root, proc_cgroup))


def _status_kb(field: str, status_path: str | Path) -> int:
    text = _read(Path(status_path)) or ""
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def rss_bytes(status_path: str | Path = "/proc/self/status") -> int:
    """Current resident set size (VmRSS)."""
    return _status_kb("VmRSS", status_path)


def peak_rss_bytes(status_path: str | Path = "/proc/self/status") -> int:
    """High-water mark of the resident set (VmHWM): the stage's real peak, arena included."""
    return _status_kb("VmHWM", status_path)


def cpu_seconds() -> float:
    """User + system CPU time of this process, all threads."""
    t = os.times()
    return t.user + t.system
