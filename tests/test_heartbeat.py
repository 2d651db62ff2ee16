"""The orchestrator's heartbeat on real nodes: a crashed node is lost once, within a second or
two, while requests flow; a node that is only busy never is. Local runtime (a killed process)
and Docker (docker kill, nodes under 0.2-0.6 CPU quotas running ViT stages)."""

from __future__ import annotations

import os
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from common.cpu_quota import silence_limit_s
from orchestrator import config
from orchestrator.config import load_devices
from orchestrator.driving.deploy import deploy
from orchestrator.driving.driver import Feed, Record, drive
from orchestrator.driving.heartbeat import Heartbeat, Lost
from orchestrator.partition import partition
from orchestrator.partition.plan import Plan
from orchestrator.runtimes.base import Runtime
from orchestrator.runtimes.choice import make_runtime

DETECT_WORST_S = 2.0

LOCAL_DEVICES = """
devices:
  - {name: a, cpus: 1, memory: 1GiB, bandwidth: 200mbit, delay: 2ms}
  - {name: b, cpus: 1, memory: 1GiB, bandwidth: 200mbit, delay: 2ms}
  - {name: c, cpus: 1, memory: 1GiB, bandwidth: 200mbit, delay: 2ms}
"""


def load_three_stages(rt: Runtime, model: Path, testbed: config.Testbed, source: str, out_dir: Path) -> Plan:
    plan = partition(model, testbed, algorithm="even", stages=3, source=source, out_dir=out_dir)
    deploy(rt.node_plan(plan, out_dir), testbed, rt.running, source)
    return plan


class Flow:
    """Requests driven through the loaded pipeline on a thread, closed loop, until stopped."""

    def __init__(self, rt: Runtime, source: str, concurrency: int = 4, timeout_s: float = 5.0):
        self.stop = threading.Event()
        self.records: list[Record] = []
        rng = np.random.default_rng(0)
        x = rng.standard_normal((1, 3, 32, 32)).astype(np.float32)

        def feeds():
            k = 0
            while not self.stop.is_set():
                yield Feed({"pixel_values": x}, k)
                k += 1

        def run() -> None:
            self.records = drive(
                rt.running.client(source), feeds(), duration_s=600, concurrency=concurrency, timeout_s=timeout_s
            )

        self.thread = threading.Thread(target=run, name="flow", daemon=True)
        self.thread.start()

    def end(self) -> list[Record]:
        self.stop.set()
        self.thread.join(timeout=30)
        assert not self.thread.is_alive()
        return self.records


def heartbeat_of(rt: Runtime, reports: list[Lost]) -> Heartbeat:
    dep = rt.running
    return Heartbeat(lambda: {d: dep.client(d) for d in dep.nodes}, reports.append)


def wait_for(cond, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


@pytest.fixture()
def local(tmp_path):
    (tmp_path / "devices.yaml").write_text(textwrap.dedent(LOCAL_DEVICES))
    tb = load_devices(tmp_path / "devices.yaml")
    with make_runtime("local", tb, tmp_path, workspace=tmp_path) as rt:
        rt.start()
        yield rt, tb


def test_heartbeat_rejects_an_interval_not_below_the_silence():
    with pytest.raises(ValueError, match="interval_s < dead_after_s"):
        Heartbeat(dict, print, interval_s=0.5, dead_after_s=0.5)


def test_a_killed_local_node_is_lost_once_and_comes_back(local, tiny_vit, tmp_path):
    rt, tb = local
    plan = load_three_stages(rt, tiny_vit, tb, "a", tmp_path / "plan")
    victim = next(s.device for s in plan.stages[1:] if s.device != "a")  # not the source: its stream ends
    reports: list[Lost] = []
    with heartbeat_of(rt, reports) as hb:
        assert hb.watching == {"a", "b", "c"}
        flow = Flow(rt, "a")
        time.sleep(1.5)
        killed = time.time()
        rt.kill(victim)
        assert wait_for(lambda: reports, DETECT_WORST_S + 0.5)
        time.sleep(1.0)  # lost once: no second report
        records = flow.end()
        assert [r.device for r in reports] == [victim], reports
        lost = reports[0]
        print(f"local kill of {victim}: lost after {lost.detected_unix_s - killed:.3f} s ({lost.why})")
        assert 0 < lost.detected_unix_s - killed < DETECT_WORST_S, lost
        assert lost.last_seen_unix_s <= killed + 0.05 and lost.silent_s >= hb.dead_after_s
        assert hb.lost == {victim: lost} and set(hb.lost) == {victim}
        assert any(not r.error for r in records)  # requests flowed before the kill
        # the upstream node let go of what it held for the victim at once, saying who was lost
        after = [r for r in records if r.sent_ns > killed * 1e9 + 0.1e9 and r.error]
        names = (f"peer {victim} at", f"link to {victim} at")
        assert after and all(any(n in r.error for n in names) for r in after), {r.error for r in records}
        assert all(r.done_ns - r.sent_ns < 1.5e9 for r in after)

        rt.revive(victim)
        hb.watch(victim)
        time.sleep(1.5)
        assert hb.lost == {} and len(reports) == 1
        assert hb.last_seen(victim) is not None and hb.last_seen(victim) > time.time() - 0.5

        other = next(d for d in ("a", "b", "c") if d != victim and d != "a")
        hb.forget(other)
        rt.kill(other)
        time.sleep(1.5)
        assert len(reports) == 1 and other not in hb.watching


def test_busy_local_nodes_are_never_lost(local, tiny_vit, tmp_path):
    """Three node processes computing flat out on a 2-core host, the driver with them."""
    rt, tb = local
    load_three_stages(rt, tiny_vit, tb, "a", tmp_path / "plan")
    reports: list[Lost] = []
    with heartbeat_of(rt, reports) as hb:
        flow = Flow(rt, "a", concurrency=8)
        time.sleep(8.0)
        records = flow.end()
        assert reports == [] and hb.lost == {}
    assert len(records) > 50 and all(not r.error for r in records), {r.error for r in records}


# -- Docker -----------------------------------------------------------------------------------

DOCKER_DEVICES = """
devices:
  - {name: big, cpus: 0.6, memory: 768MiB, bandwidth: 200mbit, delay: 2ms}
  - {name: mid, cpus: 0.4, memory: 512MiB, bandwidth: 50mbit, delay: 5ms}
  - {name: small, cpus: 0.2, memory: 512MiB, bandwidth: 20mbit, delay: 10ms}
"""


@pytest.fixture(scope="module")
def docker_rt(docker_client, node_image, tmp_path_factory):
    from orchestrator.runtimes.docker import DockerRuntime

    d = tmp_path_factory.mktemp("hb")
    (d / "devices.yaml").write_text(textwrap.dedent(DOCKER_DEVICES))
    tb = load_devices(d / "devices.yaml")
    name = f"hb{os.getpid() % 100000}"
    subnet = f"10.214.{100 + os.getpid() % 100}.0/24"
    ws = d / "ws"
    rt = DockerRuntime(tb, d / "logs", ws, testbed_name=name, subnet=subnet, image=node_image, client=docker_client)
    with rt:
        rt.start()
        yield rt, tb, ws


@pytest.mark.docker
def test_docker_nodes_under_small_quotas_are_never_lost_then_a_kill_is(docker_rt, tiny_vit):
    rt, tb, ws = docker_rt
    plan = load_three_stages(rt, tiny_vit, tb, "big", ws / "plan")
    reports: list[Lost] = []
    with heartbeat_of(rt, reports) as hb:
        flow = Flow(rt, "big", concurrency=6, timeout_s=5.0)
        time.sleep(10.0)  # every stage's device runs flat out under its quota
        assert reports == [], reports
        victim = next(s.device for s in plan.stages[1:] if s.device != "big")
        killed = time.time()
        rt.containers[victim].kill()  # the engine's kill, not the runtime's: as a crash comes
        assert wait_for(lambda: reports, DETECT_WORST_S + 0.5)
        records = flow.end()
        assert [r.device for r in reports] == [victim], reports
        print(f"docker kill of {victim}: lost after {reports[0].detected_unix_s - killed:.3f} s ({reports[0].why})")
        assert reports[0].detected_unix_s - killed < DETECT_WORST_S, reports[0]
        assert hb.lost.keys() == {victim}
    assert sum(not r.error for r in records if r.sent_ns < killed * 1e9) > 20
    rt.revive(victim)


def test_a_small_quota_gets_a_longer_silence(local):
    """A node under a small CPU quota answers late when busy: it is given a longer silence
    (silence_limit_s) before it counts as lost. Here one node stopped for 1 s (SIGSTOP): lost
    under the default 0.5 s, not under the 2 s a 0.05-CPU device gets; lost all the same once it
    stays silent past its own limit."""
    import os
    import signal

    assert silence_limit_s(1.0) == 0.5 and silence_limit_s(0.2) == 0.5 and silence_limit_s(0.05) == 2.0
    rt, _ = local
    dep = rt.running
    reports: list[Lost] = []
    limits = {"a": 0.5, "b": 0.5, "c": silence_limit_s(0.05)}
    clients = lambda: {d: dep.client(d) for d in dep.nodes}  # noqa: E731
    with Heartbeat(clients, reports.append, dead_after=limits.__getitem__):
        time.sleep(0.5)
        for dev in ("b", "c"):
            os.kill(dep.nodes[dev].pid, signal.SIGSTOP)
        time.sleep(1.0)
        for dev in ("b", "c"):
            os.kill(dep.nodes[dev].pid, signal.SIGCONT)
        time.sleep(0.5)
        assert [r.device for r in reports] == ["b"], reports
        os.kill(dep.nodes["c"].pid, signal.SIGSTOP)
        try:
            assert wait_for(lambda: len(reports) == 2, 3.0)
        finally:
            os.kill(dep.nodes["c"].pid, signal.SIGCONT)
        assert reports[1].device == "c" and reports[1].silent_s >= 2.0
