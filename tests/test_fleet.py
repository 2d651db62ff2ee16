"""A fleet of 32 devices on one host (devices/fleet32.yaml) on the real Docker engine: it comes up
with every node answering under its 0.05-CPU cap and 256 MiB, and goes away leaving nothing; a
node that exits while the testbed comes up fails `up` at once, naming it, and nothing is left.

Marked `docker`: skipped, with the reason, where no engine answers. The timings are printed (the
host is a small shared one: the bounds asserted are generous; bench/bench_fleet.py measures them
against their targets).
"""

from __future__ import annotations

import os
import time

import pytest

from orchestrator.config import load_devices
from orchestrator.driving.client import NodeClient
from orchestrator.runtimes.docker_testbed import LABEL, LABEL_TESTBED
from orchestrator.runtimes.docker_testbed import testbed_spec as make_spec
from tests.conftest import ROOT

pytestmark = pytest.mark.docker

NAME = f"fleet{os.getpid() % 100000}"
SUBNET = f"10.214.{100 + os.getpid() % 100}.0/24"


def _leftovers(client, name: str) -> tuple[list, list]:
    f = {"label": [f"{LABEL}=1", f"{LABEL_TESTBED}={name}"]}
    return client.containers.list(all=True, filters=f), client.networks.list(filters=f)


def test_fleet_of_32_comes_up_answers_and_goes(docker_client, node_image, tmp_path):
    from orchestrator.runtimes import docker as dk

    tb = load_devices(ROOT / "devices" / "fleet32.yaml")
    assert len(tb.devices) == 32 and {d.cpus for d in tb.devices} == {0.05}
    spec = make_spec(tb, NAME, SUBNET, node_image, tmp_path)
    client = dk.engine()
    try:
        t0 = time.perf_counter()
        nodes = dk.up(client, spec, wait_s=150.0)
        up_s = time.perf_counter() - t0
        assert set(nodes) == {d.name for d in tb.devices}
        for dev, h in nodes.items():  # each answers as itself, at the address planned for it
            with NodeClient(dev, h.control_address) as c:
                assert c.health(timeout_s=10.0).device == dev
            assert h.control_address.split(":")[0] == spec.by_device()[dev].ip
        rows = dk.status(client, NAME)
        assert len(rows) == 32
        assert all(r["status"] == "running" and r["cpus"] == 0.05 and r["memory"] == 256 * 2**20 for r in rows)
    finally:
        t1 = time.perf_counter()
        removed = dk.down(client, NAME)
        down_s = time.perf_counter() - t1
    print(f"32-device testbed: up {up_s:.1f} s, down {down_s:.1f} s (targets 30 s and 10 s)")
    assert removed == (32, 1)
    assert _leftovers(docker_client, NAME) == ([], [])
    assert up_s < 120 and down_s < 60


def test_a_node_that_exits_fails_up_at_once_and_nothing_is_left(docker_client, node_image, tmp_path):
    from orchestrator.runtimes import docker as dk

    tb = load_devices(ROOT / "devices" / "fleet32.yaml")
    spec = make_spec(tb.model_copy(update={"devices": tb.devices[:3]}), NAME + "x", SUBNET, node_image, tmp_path)
    spec.containers[1].env["EDGE_TC_PEERS"] = "not json"  # the node refuses to start without its links
    t0 = time.perf_counter()
    with pytest.raises(RuntimeError, match=rf"(?s){spec.containers[1].name} exited \(3\).*link shaping failed"):
        dk.up(dk.engine(), spec, wait_s=150.0)
    took = time.perf_counter() - t0
    print(f"up failed after {took:.1f} s")
    assert took < 60  # told when the container exited, not at the end of the wait
    assert _leftovers(docker_client, NAME + "x") == ([], [])
