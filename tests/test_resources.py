"""cgroup parsing against sample trees in a tmp dir (v1, v2, hybrid, container-style paths)."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.cpu_quota import ort_threads
from common.ort_session import SessionSettings, session_options
from node import resources as r


def _write(root: Path, rel: str, text: str) -> None:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)


def test_parsers():
    assert r.parse_cpu_max("max 100000\n") is None
    assert r.parse_cpu_max("50000 100000\n") == 0.5
    assert r.parse_cpu_max("150000 100000") == 1.5
    assert r.parse_cfs("-1\n", "100000\n") is None
    assert r.parse_cfs("25000\n", "100000\n") == 0.25
    assert r.parse_memory_limit("max\n") is None
    assert r.parse_memory_limit("9223372036854771712\n") is None
    assert r.parse_memory_limit("1073741824\n") == 1 << 30
    v1, v2 = r.parse_proc_cgroup("12:cpu,cpuacct:/docker/abc\n4:memory:/docker/abc\n0::/user.slice\n")
    assert v1 == {"cpu": "/docker/abc", "cpuacct": "/docker/abc", "memory": "/docker/abc"}
    assert v2 == "/user.slice"


def test_v1_hybrid_with_process_path(tmp_path):
    """This machine's layout: v1 controllers, a v2 tree under unified/, limits on ancestors."""
    _write(tmp_path, "proc_cgroup", "4:memory:/jobs/j1\n1:cpu:/jobs/j1\n0::/jobs/j1\n")
    _write(tmp_path, "cg/cpu/cpu.cfs_quota_us", "-1\n")
    _write(tmp_path, "cg/cpu/cpu.cfs_period_us", "100000\n")
    _write(tmp_path, "cg/cpu/jobs/cpu.cfs_quota_us", "150000\n")  # parent caps at 1.5
    _write(tmp_path, "cg/cpu/jobs/cpu.cfs_period_us", "100000\n")
    _write(tmp_path, "cg/cpu/jobs/j1/cpu.cfs_quota_us", "-1\n")
    _write(tmp_path, "cg/cpu/jobs/j1/cpu.cfs_period_us", "100000\n")
    _write(tmp_path, "cg/memory/memory.limit_in_bytes", "9223372036854771712\n")
    _write(tmp_path, "cg/memory/jobs/j1/memory.limit_in_bytes", "536870912\n")
    _write(tmp_path, "cg/unified/cgroup.controllers", "")
    (tmp_path / "cg/unified/jobs/j1").mkdir(parents=True)
    kw = {"root": tmp_path / "cg", "proc_cgroup": tmp_path / "proc_cgroup"}
    assert r.cpu_quota(**kw) == 1.5
    assert r.memory_limit(**kw) == 512 << 20


def test_v1_container_path_missing_uses_mount_root(tmp_path):
    """v1 without a cgroup namespace: /proc shows the host path, the mount is the container's."""
    _write(tmp_path, "proc_cgroup", "5:cpu,cpuacct:/docker/0123abcd\n3:memory:/docker/0123abcd\n")
    _write(tmp_path, "cg/cpu,cpuacct/cpu.cfs_quota_us", "50000\n")
    _write(tmp_path, "cg/cpu,cpuacct/cpu.cfs_period_us", "100000\n")
    _write(tmp_path, "cg/memory/memory.limit_in_bytes", "1073741824\n")
    kw = {"root": tmp_path / "cg", "proc_cgroup": tmp_path / "proc_cgroup"}
    assert r.cpu_quota(**kw) == 0.5
    assert r.memory_limit(**kw) == 1 << 30


def test_v2_unified(tmp_path):
    _write(tmp_path, "proc_cgroup", "0::/\n")  # cgroup namespace: own cgroup is the root
    _write(tmp_path, "cg/cgroup.controllers", "cpu memory\n")
    _write(tmp_path, "cg/cpu.max", "200000 100000\n")
    _write(tmp_path, "cg/memory.max", "max\n")
    kw = {"root": tmp_path / "cg", "proc_cgroup": tmp_path / "proc_cgroup"}
    assert r.cpu_quota(**kw) == 2.0
    assert r.memory_limit(**kw) is None


def test_v2_nested_tightest_wins(tmp_path):
    _write(tmp_path, "proc_cgroup", "0::/a/b\n")
    _write(tmp_path, "cg/cgroup.controllers", "cpu\n")
    _write(tmp_path, "cg/a/cpu.max", "30000 100000\n")
    _write(tmp_path, "cg/a/b/cpu.max", "max 100000\n")
    _write(tmp_path, "cg/a/b/memory.max", "268435456\n")
    kw = {"root": tmp_path / "cg", "proc_cgroup": tmp_path / "proc_cgroup"}
    assert r.cpu_quota(**kw) == pytest.approx(0.3)
    assert r.memory_limit(**kw) == 256 << 20


def test_no_cgroups(tmp_path):
    kw = {"root": tmp_path / "none", "proc_cgroup": tmp_path / "none"}
    assert r.cpu_quota(**kw) is None and r.memory_limit(**kw) is None


@pytest.mark.parametrize(
    ("quota", "cores", "threads"),
    [
        (None, 8, 8),
        (0.25, 8, 1),
        (0.5, 8, 1),
        (1.0, 8, 1),
        (1.5, 8, 1),
        (2.0, 8, 2),
        (3.99, 8, 3),
        (16.0, 4, 4),
        (3.0, None, 3),  # the orchestrator, which does not know a device's cores
        (1.9999999999, None, 2),  # a share of 2 that float arithmetic put a hair under
    ],
)
def test_ort_threads(quota, cores, threads):
    assert ort_threads(quota, cores) == threads


def test_status_memory(tmp_path):
    _write(tmp_path, "status", "Name:\tpython\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\n")
    assert r.peak_rss_bytes(tmp_path / "status") == 2048 * 1024
    assert r.rss_bytes(tmp_path / "status") == 1024 * 1024
    assert r.peak_rss_bytes() >= r.rss_bytes() > 0
    assert r.cpu_seconds() > 0


def test_cuda_options_carry_the_gpu_memory_cap():
    from node.stage import cuda_options

    assert cuda_options({}) == {"device_id": "0"}
    opts = cuda_options({"ORT_CUDA_GPU_MEM_LIMIT": "2147483648"})
    assert opts["gpu_mem_limit"] == "2147483648" and opts["arena_extend_strategy"] == "kSameAsRequested"


@pytest.mark.parametrize(
    ("threads", "quota", "cores", "expect"),
    [
        (0, None, 4, (4, True)),  # no quota: every core, spinning as ONNX Runtime likes
        (0, 0.5, 4, (1, False)),  # a quota: its threads, no spinning that would burn it
        (2, None, 4, (2, False)),  # fewer threads than cores: spinning would steal the others
        (4, None, 4, (4, True)),
    ],
)
def test_session_settings_follow_the_cpu_share(threads, quota, cores, expect):
    s = SessionSettings.for_share(threads, quota, cores)
    assert (s.threads, s.spinning) == expect
    so = session_options(s)
    assert so.intra_op_num_threads == expect[0]
    if expect[1]:
        with pytest.raises(RuntimeError):  # not set: ONNX Runtime's default, spinning
            so.get_session_config_entry("session.intra_op.allow_spinning")
    else:
        assert so.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_session_memory_mode():
    lean = session_options(SessionSettings(prepacking=False, cpu_arena=False))
    assert lean.get_session_config_entry("session.disable_prepacking") == "1" and not lean.enable_cpu_mem_arena
    assert session_options(SessionSettings()).enable_cpu_mem_arena
