"""Rate probes on links the plan does not use: a node puts one on its link when asked, through the
link's emulation, and the peer reports when it went on the link and when it arrived; the prober
turns that into the link's rate, so a faded link reads slow and a recovered one fast."""

from __future__ import annotations

import textwrap
import time

import pytest

from orchestrator.adapt.probe import LinkProber
from orchestrator.config import load_devices
from orchestrator.driving.client import NodeError
from orchestrator.runtimes.choice import make_runtime
from tests.runtime_helpers import load_two_stages

DEVICES = """
devices:
  - {name: a, cpus: 1, memory: 1GiB, bandwidth: 50mbit, delay: 5ms}
  - {name: b, cpus: 1, memory: 1GiB, bandwidth: 50mbit, delay: 5ms}
"""


@pytest.fixture()
def loaded(tmp_path, tiny_vit):
    (tmp_path / "devices.yaml").write_text(textwrap.dedent(DEVICES))
    tb = load_devices(tmp_path / "devices.yaml")
    with make_runtime("local", tb, tmp_path, workspace=tmp_path) as rt:
        rt.start()
        load_two_stages(rt, tiny_vit, tb, "a", tmp_path)
        yield rt, tb


def _probe_rate(prober: LinkProber, tb, pair: tuple[str, str], timeout_s: float = 10.0) -> int:
    asked = time.time()
    prober.ask([pair])
    deadline = asked + timeout_s
    while time.time() < deadline:
        got = prober.read(tb).probed.get(pair)
        if got is not None and got[1] < time.time() - asked:  # arrived after it was asked for
            return got[0]
        time.sleep(0.05)
    raise AssertionError(f"no probe arrived on {pair} within {timeout_s} s")


def test_probe_reads_the_link_rate_and_follows_a_change(loaded):
    rt, tb = loaded
    dep = rt.running
    prober = LinkProber(lambda: {d: dep.client(d) for d in dep.nodes}, nbytes=64 * 1024)
    fast = _probe_rate(prober, tb, ("a", "b"))
    assert 0.6 * 50e6 <= fast <= 1.3 * 50e6 or fast == 0, fast  # 0: crossed too fast to tell
    rt.set_link("a", "b", rate_bps=1_000_000)  # a fade: 64 KiB now take about half a second
    time.sleep(2.1)  # a link measured a moment ago is not probed again sooner
    slow = _probe_rate(prober, tb, ("a", "b"))
    assert 0.8e6 <= slow <= 1.2e6, slow


def test_probe_refused_on_a_link_the_node_does_not_have(loaded):
    rt, _ = loaded
    with pytest.raises(NodeError, match="no loaded link"):
        rt.running.client("a").probe("nowhere", 1024)
