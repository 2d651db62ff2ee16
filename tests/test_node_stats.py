"""Stats the nodes report themselves: their cgroup read on sample trees (v1, v2, none), the sampler
on real node processes (a node that stops answering is skipped), and on the real engine, the
node's figures against the engine's stats stream for the same containers, side by side.

The engine test is marked `docker`: skipped, with the reason, where no engine answers. Its
testbed has its own name and subnet and is removed by label even when the test fails; its
traffic stays between its own two containers."""

from __future__ import annotations

import json
import os
import textwrap
import threading
import time
from pathlib import Path

import pytest

from node import cgroup_stats
from orchestrator.config import load_devices
from orchestrator.runtimes.node_stats import NodeStatsSampler
from orchestrator.runtimes.stats import StatsLine

MiB = 1 << 20


def _write(root: Path, rel: str, text: str) -> None:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)


def _net(root: Path) -> Path:
    """Two interfaces and loopback: lo's counters must not be counted."""
    counts = {"eth0": (1000, 2000, 10, 20), "eth1": (5, 7, 1, 2), "lo": (9e9, 9e9, 9, 9)}
    for iface, values in counts.items():
        for key, v in zip(("rx_bytes", "tx_bytes", "rx_packets", "tx_packets"), values, strict=True):
            _write(root, f"net/{iface}/statistics/{key}", f"{int(v)}\n")
    return root / "net"


def test_v1_container_reads_its_mount_root(tmp_path):
    """cgroup v1 without a namespace (this host's containers): /proc names the host's path, the
    mounts are the container's own cgroup; cpu and cpuacct mounted apart, hierarchical stats."""
    _write(tmp_path, "proc", "4:memory:/docker/ab12\n2:cpuacct:/docker/ab12\n1:cpu:/docker/ab12\n0::/docker/ab12\n")
    _write(tmp_path, "cg/cpuacct/cpuacct.usage", "2500000000\n")
    _write(tmp_path, "cg/cpu/cpu.stat", "nr_periods 120\nnr_throttled 45\nthrottled_time 3250000000\n")
    _write(tmp_path, "cg/cpu/cpu.cfs_quota_us", "50000\n")
    _write(tmp_path, "cg/cpu/cpu.cfs_period_us", "100000\n")
    _write(tmp_path, "cg/memory/memory.usage_in_bytes", f"{300 * MiB}\n")
    _write(tmp_path, "cg/memory/memory.max_usage_in_bytes", f"{400 * MiB}\n")
    _write(tmp_path, "cg/memory/memory.limit_in_bytes", f"{512 * MiB}\n")
    _write(tmp_path, "cg/memory/memory.stat", f"cache 1\nrss 2\ntotal_cache {100 * MiB}\ntotal_rss {150 * MiB}\n")
    t0 = time.time_ns()
    s = cgroup_stats.read(tmp_path / "cg", tmp_path / "proc", _net(tmp_path))
    assert s.has_cgroup and s.cpu_usage_s == 2.5
    assert (s.periods, s.throttled_periods, s.throttled_s, s.cpu_quota) == (120, 45, 3.25, 0.5)
    assert (s.memory_bytes, s.memory_peak_bytes, s.memory_limit) == (300 * MiB, 400 * MiB, 512 * MiB)
    assert (s.memory_anon_bytes, s.memory_cache_bytes) == (150 * MiB, 100 * MiB)  # total_*, not the cgroup's own
    assert (s.net_rx_bytes, s.net_tx_bytes, s.net_rx_packets, s.net_tx_packets) == (1005, 2007, 11, 22)
    assert t0 <= s.at_ns <= time.time_ns()


def test_v1_own_path_and_a_combined_cpu_mount(tmp_path):
    """A process in its own v1 cgroup under cpu,cpuacct: that directory, not the mount root."""
    _write(tmp_path, "proc", "5:cpu,cpuacct:/jobs/j1\n3:memory:/jobs/j1\n")
    _write(tmp_path, "cg/cpu,cpuacct/cpuacct.usage", "99000000000\n")  # the root's: the whole host
    _write(tmp_path, "cg/cpu,cpuacct/jobs/j1/cpuacct.usage", "1000000000\n")
    _write(tmp_path, "cg/cpu,cpuacct/jobs/j1/cpu.stat", "nr_periods 0\nnr_throttled 0\nthrottled_time 0\n")
    _write(tmp_path, "cg/memory/jobs/j1/memory.usage_in_bytes", "4096\n")
    _write(tmp_path, "cg/memory/jobs/j1/memory.stat", "rss 1024\ncache 2048\n")  # no hierarchy totals
    s = cgroup_stats.read(tmp_path / "cg", tmp_path / "proc", tmp_path / "no-net")
    assert s.has_cgroup and s.cpu_usage_s == 1.0
    assert (s.memory_bytes, s.memory_peak_bytes, s.memory_anon_bytes, s.memory_cache_bytes) == (4096, 0, 1024, 2048)
    assert (s.cpu_quota, s.memory_limit, s.net_rx_bytes) == (0.0, 0, 0)


def test_v2_unified_tree(tmp_path):
    _write(tmp_path, "proc", "0::/system.slice/node.scope\n")
    _write(tmp_path, "cg/cgroup.controllers", "cpu memory\n")
    d = "cg/system.slice/node.scope"
    _write(tmp_path, f"{d}/cpu.stat", "usage_usec 7250000\nuser_usec 7000000\nsystem_usec 250000\n"
           "nr_periods 300\nnr_throttled 120\nthrottled_usec 4500000\n")  # fmt: skip
    _write(tmp_path, f"{d}/cpu.max", "25000 100000\n")
    _write(tmp_path, f"{d}/memory.current", f"{200 * MiB}\n")
    _write(tmp_path, f"{d}/memory.max", f"{256 * MiB}\n")
    _write(tmp_path, f"{d}/memory.stat", f"anon {120 * MiB}\nfile {60 * MiB}\nkernel 1\n")
    s = cgroup_stats.read(tmp_path / "cg", tmp_path / "proc", _net(tmp_path))
    assert s.has_cgroup and s.cpu_usage_s == 7.25
    assert (s.periods, s.throttled_periods, s.throttled_s, s.cpu_quota) == (300, 120, 4.5, 0.25)
    assert (s.memory_bytes, s.memory_limit, s.memory_peak_bytes) == (200 * MiB, 256 * MiB, 0)  # no memory.peak
    assert (s.memory_anon_bytes, s.memory_cache_bytes) == (120 * MiB, 60 * MiB)
    _write(tmp_path, f"{d}/memory.peak", f"{230 * MiB}\n")
    assert cgroup_stats.read(tmp_path / "cg", tmp_path / "proc", _net(tmp_path)).memory_peak_bytes == 230 * MiB


def test_no_cgroup_gives_zeros_and_still_the_network(tmp_path):
    _write(tmp_path, "proc", "0::/\n")
    (tmp_path / "cg").mkdir()
    s = cgroup_stats.read(tmp_path / "cg", tmp_path / "proc", _net(tmp_path))
    assert not s.has_cgroup
    assert (s.cpu_usage_s, s.periods, s.memory_bytes, s.memory_limit, s.cpu_quota) == (0.0, 0, 0, 0, 0.0)
    assert s.net_rx_bytes == 1005 and s.at_ns > 0


def test_sampler_on_real_nodes_skips_one_that_does_not_answer(tmp_path):
    """Local node processes: lines from their Stats replies, the same keys as every sampler's; a
    killed node gives no line while it is down, and lines again once revived."""
    from orchestrator.runtimes.choice import make_runtime

    (tmp_path / "devices.yaml").write_text(
        "devices:\n  - {name: a, cpus: 1, memory: 1GiB}\n  - {name: b, cpus: 2, memory: 1GiB}\n"
    )
    tb = load_devices(tmp_path / "devices.yaml")
    caps = {"a": 1.0, "b": 2.0}
    with make_runtime("local", tb, tmp_path, workspace=tmp_path) as rt:
        rt.start()
        with NodeStatsSampler(rt.running, caps, tmp_path / "stats", period_s=60) as sampler:
            sampler.take_sample()
            time.sleep(0.2)
            caps["b"] = 0.5  # the runtime changed b's cap: the next line follows
            sampler.take_sample()
            rt.kill("b")
            sampler.take_sample(timeout_s=1.0)
            assert [len(sampler.samples[d]) for d in "ab"] == [3, 2]
            rt.revive("b")
            sampler.take_sample()
    a, b = sampler.samples["a"], sampler.samples["b"]
    assert len(a) == 4 and len(b) == 3
    assert a[0].cpu_cores is None and a[1].cpu_cores is not None and a[1].cpu_cores >= 0
    assert [r.cpu_cap for r in b] == [2.0, 0.5, 0.5]
    assert all(r.memory_bytes and r.bytes_in is not None and r.frames_in == 0 for r in a + b)
    written = [StatsLine.from_json(x) for x in (tmp_path / "stats" / "b.jsonl").read_text().splitlines()]
    assert written == b


# -- on the real engine -----------------------------------------------------------------------------

NAME = f"pn{os.getpid() % 100000}"
SUBNET = f"10.215.{100 + os.getpid() % 100}.0/24"
DEVICES = """
devices:
  - {name: busy, cpus: 0.5, memory: 512MiB, bandwidth: 400mbit, delay: 1ms}
  - {name: peer, cpus: 1, memory: 512MiB, bandwidth: 400mbit, delay: 1ms}
"""
PROBE = ["python", "-m", "node.probes"]
USER = "10001"  # the image's user "node"
SENT = 20_000_000
BUSY_S = 5.0
CPU_TOLERANCE = 0.10  # mean cores over the busy window, node against engine
COUNT_SLACK = 64 * 1024  # bytes the Stats calls themselves move between the two readings


def _mean(rows: list[StatsLine], t0: float, t1: float) -> float:
    vals = [r.cpu_cores for r in rows if t0 <= r.time <= t1 and r.cpu_cores is not None]
    assert vals, (t0, t1, rows)
    return sum(vals) / len(vals)


def _nearest(rows: list[StatsLine], t: float) -> StatsLine:
    return min(rows, key=lambda r: abs(r.time - t))


@pytest.mark.docker
def test_node_figures_agree_with_the_engines(docker_client, node_image, tmp_path):
    from orchestrator.runtimes import docker as dk
    from orchestrator.runtimes.docker import DockerRuntime
    from orchestrator.runtimes.docker_stats import DockerStatsCollector

    (tmp_path / "devices.yaml").write_text(textwrap.dedent(DEVICES))
    tb = load_devices(tmp_path / "devices.yaml")
    rt = DockerRuntime(
        tb, tmp_path / "logs", tmp_path / "ws", testbed_name=NAME, subnet=SUBNET, image=node_image, client=docker_client
    )
    try:
        with rt:
            rt.start()
            busy, peer = rt.containers["busy"], rt.containers["peer"]
            ip = rt.spec.by_device()["busy"].ip
            with (
                DockerStatsCollector(docker_client, rt.containers, rt.caps, tmp_path / "engine") as eng,
                NodeStatsSampler(rt.running, rt.caps, tmp_path / "node") as node,
            ):
                time.sleep(2.5)  # the engine's first sample has no CPU figure
                sink = threading.Thread(target=busy.exec_run, args=([*PROBE, "sink", "2", "30", "50123"],),
                                        kwargs={"user": USER})  # fmt: skip
                sink.start()
                sent = peer.exec_run([*PROBE, "send", ip, str(SENT), "2", "50123"], user=USER)
                assert sent.exit_code == 0, sent.output[-500:]
                sink.join(timeout=30)
                before = node.samples["busy"][-1]
                t0 = time.time()
                ran = busy.exec_run([*PROBE, "busy", "2", str(BUSY_S)], user=USER)  # two spinners, half a CPU
                t1 = time.time()
                assert ran.exit_code == 0, ran.output[-500:]
                during = node.samples["busy"][-1]
                time.sleep(2.5)  # quiet: the cumulative counters settle for comparing
            n, e = node.samples["busy"], eng.samples["busy"]
            node_cpu, eng_cpu = _mean(n, t0 + 1.0, t1), _mean(e, t0 + 1.5, t1)
            last_e = e[-1]
            last_n = _nearest(n, last_e.time)
            figures = {
                "cpu_cores": (round(node_cpu, 4), round(eng_cpu, 4)),
                **{
                    k: (getattr(last_n, k), getattr(last_e, k))
                    for k in (
                        "throttled_periods",
                        "periods",
                        "throttled_s",
                        "memory_bytes",
                        "memory_limit",
                        "memory_peak_bytes",
                        "memory_resident_bytes",
                        "memory_page_cache_bytes",
                        "bytes_in",
                        "bytes_out",
                        "packets_in",
                        "packets_out",
                    )
                },
                "throttled_during_busy": during.throttled_periods - before.throttled_periods,
                "periods_during_busy": during.periods - before.periods,
            }
            print("node vs engine (busy):", json.dumps(figures))
    finally:
        dk.down(docker_client, NAME)

    assert abs(node_cpu / eng_cpu - 1) <= CPU_TOLERANCE, figures
    assert abs(node_cpu - 0.5) <= 0.5 * CPU_TOLERANCE, figures  # two spinners hold the half-CPU cap
    assert figures["periods_during_busy"] >= 0.8 * BUSY_S / 0.1, figures  # 100 ms CFS periods
    assert figures["throttled_during_busy"] >= 0.8 * figures["periods_during_busy"], figures
    assert abs(last_n.throttled_periods - last_e.throttled_periods) <= 5, figures
    assert abs(last_n.throttled_s - last_e.throttled_s) <= 0.05, figures
    assert last_n.memory_limit == last_e.memory_limit == 512 * MiB
    for k in ("memory_resident_bytes", "memory_page_cache_bytes", "memory_peak_bytes"):
        a, b = getattr(last_n, k), getattr(last_e, k)
        assert abs(a - b) <= max(4 * MiB, 0.05 * b), (k, figures)
    assert last_n.memory_bytes >= last_e.memory_bytes  # the engine leaves out inactive page cache
    assert last_n.bytes_in >= SENT and last_e.bytes_in >= SENT
    for k in ("bytes_in", "bytes_out"):
        assert abs(getattr(last_n, k) - getattr(last_e, k)) <= COUNT_SLACK + 0.001 * getattr(last_e, k), (k, figures)
    assert (tmp_path / "node" / "busy.jsonl").read_text().count("\n") == len(n)
