"""CPU shares as cgroups enforce them: the quota period, and the ONNX Runtime threads a share can feed.

ONNX Runtime sizes its thread pool from the host's cores and ignores a quota; more threads than the
quota make a stage several times slower (0.5 CPU: 4 threads 592 ms, 1 thread 202 ms). The node and
the orchestrator both pick threads by `ort_threads`, so a plan's figures and the run agree.
"""

from __future__ import annotations

import math
import os

CFS_PERIOD_US = 100_000  # the kernel's default quota period, the one Docker's CPU caps (NanoCpus) use
CFS_PERIOD_S = CFS_PERIOD_US / 1e6


def silence_limit_s(cpus: float | None) -> float:
    """How long a node may stay silent before it counts as lost: 0.5 s, longer under a quota below
    0.2 CPU, where a busy node answers a Health call only when its cgroup's next period lets it (at
    0.05 CPU its round trips reach 0.4-0.6 s at p99 and 1 s at most: 2 s there)."""
    return max(0.5, 0.1 / cpus) if cpus else 0.5


def available_cores() -> int:
    """Cores this process may run on (affinity), not the host's count."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def ort_threads(cpus: float | None, cores: int | None = None) -> int:
    """Intra-op threads for a CPU share: floor(cpus), at least 1, at most `cores` where they are known
    (the node knows its own; the orchestrator does not know a device's); no share: every core.

    floor, not round: a thread more than the share gets throttled mid-operator, which costs far more
    than the idle fraction."""
    if cpus is None:
        return max(1, cores or 1)
    threads = max(1, math.floor(cpus + 1e-9))
    return threads if cores is None else min(max(1, cores), threads)
