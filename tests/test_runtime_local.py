"""The local runtime's hooks on real node processes: a crash and a return, a link changed in place
while frames flow, and a clear refusal where it cannot change a CPU cap."""

from __future__ import annotations

import textwrap

import pytest

from orchestrator.config import load_devices
from orchestrator.driving.client import NodeError
from orchestrator.runtimes.base import LinkEmulation
from orchestrator.runtimes.choice import make_runtime
from tests.runtime_helpers import drive_some, held, load_two_stages, mean_hold_s

DEVICES = """
devices:
  - {name: a, cpus: 1, memory: 1GiB, bandwidth: 200mbit, delay: 2ms}
  - {name: b, cpus: 1, memory: 1GiB, bandwidth: 200mbit, delay: 2ms}
"""


@pytest.fixture()
def local(tmp_path):
    (tmp_path / "devices.yaml").write_text(textwrap.dedent(DEVICES))
    tb = load_devices(tmp_path / "devices.yaml")
    with make_runtime("local", tb, tmp_path, workspace=tmp_path) as rt:
        rt.start()
        yield rt, tb


def test_local_runtime_protocol_facts(local, tmp_path):
    rt, _ = local
    dep = rt.running
    assert dep.link_emulation is LinkEmulation.NODE_PACED and dep.link_emulation.node_holds_delay
    assert rt.workspace == tmp_path
    assert rt.fidelity_check() is None and any("fidelity" in n for n in dep.notes)
    with rt.stats_sampler(tmp_path / "stats") as sampler:
        sampler.take_sample()
        sampler.take_sample()
    assert all(len(rows) >= 2 for rows in sampler.samples.values())
    assert all((tmp_path / "stats" / f"{d}.jsonl").read_text() for d in ("a", "b"))
    with pytest.raises(RuntimeError, match="cannot change a's CPU cap while it runs"):
        rt.set_cpus("a", 0.5)


def test_kill_then_revive_a_local_node(local, tiny_vit, tmp_path):
    rt, tb = local
    old = rt.running.nodes["b"]
    rt.kill("b")
    with pytest.raises(NodeError, match="node b at"):
        rt.running.client("b").health(timeout_s=1.0)
    new = rt.revive("b")
    assert new.pid != old.pid and new.control_address == old.control_address  # same port: peers find it again
    assert rt.running.client("b").health().device == "b" and not rt.running.client("b").health().loaded
    load_two_stages(rt, tiny_vit, tb, "a", tmp_path / "plan")  # it comes back empty: load again, then it serves
    assert len(drive_some(rt, "a", 2)) == 2


def test_set_link_changes_the_senders_delay_in_place(local, tiny_vit, tmp_path):
    rt, tb = local
    plan = load_two_stages(rt, tiny_vit, tb, "a", tmp_path / "plan")
    src, dst = plan.stages[0].device, plan.stages[1].device
    if src == dst:
        pytest.skip("both stages on one device: no link between them")
    drive_some(rt, "a", 2)
    change = rt.set_link(src, dst, delay_s=0.030)
    assert change.delay_s == pytest.approx(0.030) and change.rate_bps == 200_000_000
    before = held(rt, dst, src)
    drive_some(rt, "a", 3)
    n, asked_s, held_s = mean_hold_s(before, held(rt, dst, src))
    assert n == 3
    assert asked_s >= 0.029 and held_s >= asked_s  # the new delay, held at least that long by the receiver
    with pytest.raises(ValueError, match="no link a -> nowhere"):
        rt.set_link("a", "nowhere", delay_s=0.01)
