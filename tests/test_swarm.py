"""The swarm runtime on a real Docker Swarm: this engine made a single-node swarm for the tests
where it is in none (and left again afterwards; a swarm the tests did not make is never left).

What is checked: `testbed up --runtime swarm` refuses outside a swarm and `--init` makes one; the
services carry the device's limits, NET_ADMIN, dnsrr, restart condition none and the testbed's
labels, and the node runs as a non-root user; a run over the swarm completes with exact agreement,
its links within 10%, stats from the nodes' own cgroups, stage files sent over gRPC, nothing left;
a scenario (throttle, crash, join, leave) plays as on the docker runtime.

Marked `docker`: skipped, with the reason, where no engine answers."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from orchestrator.run import execute
from orchestrator.runtimes import swarm_services as sw
from tests import swarm_helpers
from tests.conftest import ROOT
from tests.runtime_helpers import write_tiny_job
from tests.scenario_run_helpers import only, scenario_job

pytestmark = pytest.mark.docker

NAME = f"sw{os.getpid() % 100000}"
TWO = [
    {"name": "laptop", "cpus": 0.5, "memory": "512MiB", "bandwidth": "50mbit", "delay": "5ms"},
    {"name": "phone", "cpus": 0.3, "memory": "384MiB", "bandwidth": "20mbit", "delay": "10ms"},
]


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def swarm_state(client) -> str:
    return (client.info().get("Swarm") or {}).get("LocalNodeState", "")


@pytest.fixture(scope="module")
def swarm(docker_client, node_image):
    """A swarm this engine manages for the module's tests: its own where it was in none."""
    with swarm_helpers.swarm(docker_client) as info:
        yield info


@pytest.fixture()
def cleanup(docker_client):
    """This test's swarm testbeds are removed afterwards, whatever happened."""
    yield
    if sw.is_manager(docker_client):
        for name in {s.attrs["Spec"]["Labels"].get("edge-testbed.testbed") for s in sw.testbed_services(docker_client)}:
            if name and name.startswith((NAME, "edge-")):
                sw.down(docker_client, name)


def test_up_outside_a_swarm_refuses_and_init_makes_one(docker_client, node_image, tmp_path):
    if swarm_state(docker_client) != "inactive":
        pytest.skip("the engine is in a swarm already: refusing outside one and --init cannot be tried here")
    write_tiny_job(tmp_path, TWO)
    devices = str(tmp_path / "devices.yaml")
    r = cli("testbed", "up", "--runtime", "swarm", "--devices", devices, "--name", NAME)
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "not a swarm manager" in lines[0], r.stderr
    assert swarm_state(docker_client) == "inactive"  # nothing made on its own
    try:
        r = cli("testbed", "up", "--runtime", "swarm", "--init", "--devices", devices, "--name", NAME)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "made this engine a single-node swarm" in r.stdout
        assert sw.is_manager(docker_client)
        services = {s.name: s.attrs["Spec"] for s in sw.testbed_services(docker_client, NAME)}
        assert set(services) == {f"{NAME}-laptop", f"{NAME}-phone"}
        spec = services[f"{NAME}-phone"]
        task = spec["TaskTemplate"]
        assert task["Resources"]["Limits"] == {"NanoCPUs": 300_000_000, "MemoryBytes": 384 * 2**20}
        assert task["ContainerSpec"]["CapabilityAdd"] == ["NET_ADMIN"]
        assert spec["EndpointSpec"]["Mode"] == "dnsrr"
        assert task["RestartPolicy"]["Condition"] == "none"
        assert spec["Labels"]["edge-testbed.testbed"] == NAME and spec["Labels"]["edge-testbed.device"] == "phone"
        # the node itself runs as the image's user "node", not root, keeping NET_ADMIN only
        svc = next(s for s in sw.testbed_services(docker_client, NAME) if s.name == f"{NAME}-phone")
        cid = sw.running_task(svc)["Status"]["ContainerStatus"]["ContainerID"]
        status = docker_client.containers.get(cid).exec_run(["cat", "/proc/1/status"]).output.decode()
        uid = next(line.split()[1] for line in status.splitlines() if line.startswith("Uid:"))
        assert uid == "10001"
        r = cli("testbed", "status", "--runtime", "swarm", "--name", NAME)
        assert r.returncode == 0 and "running" in r.stdout, r.stdout + r.stderr
        out = tmp_path / "fidelity.json"
        r = cli("testbed", "check", "--runtime", "swarm", "--devices", devices, "--name", NAME, "--out", str(out))
        assert r.returncode == 0, r.stdout + r.stderr  # every link and cap within 10%, between the tasks
        fid = json.loads(out.read_text())
        assert len(fid["links"]) == 2 and len(fid["cpus"]) == 2 and fid["flagged"] == []
        r = cli("testbed", "down", "--runtime", "swarm", "--name", NAME)
        assert r.returncode == 0 and "removed 2 services and 1 networks" in r.stdout, r.stdout + r.stderr
        assert not sw.testbed_services(docker_client, NAME) and not sw.testbed_networks(docker_client, NAME)
    finally:
        if sw.is_manager(docker_client):
            sw.down(docker_client, NAME)
            docker_client.swarm.leave(force=True)  # the test made it
    assert swarm_state(docker_client) == "inactive"


def test_run_over_the_swarm(swarm, docker_client, tmp_path, cleanup):
    job = write_tiny_job(tmp_path, TWO, requests=12, fidelity_check=True)
    run_dir, rep = execute(str(job), runtime="swarm", out=str(tmp_path / "run"))
    assert rep["runtime"] == "swarm" and rep["errors"] == 0
    acc = rep["agreement"]
    assert acc["top1"] == 1.0 and acc["max_abs_diff"] == 0.0, acc
    fid = rep["fidelity"]
    assert fid["flagged"] == [], fid["flagged"]
    assert {(x["from"], x["to"]) for x in fid["links"]} == {("laptop", "phone"), ("phone", "laptop")}
    assert any("sent to each node" in n for n in rep["notes"]), rep["notes"]
    for dev in ("laptop", "phone"):  # the nodes' own cgroup figures
        rows = [json.loads(x) for x in (run_dir / "stats" / f"{dev}.jsonl").read_text().splitlines()]
        assert rows and any(r["cpu_cores"] for r in rows)
        last = rows[-1]
        assert last["periods"] and last["memory_limit"] == (512 if dev == "laptop" else 384) * 2**20
        assert last["bytes_out"] > 0 and last["memory_page_cache_bytes"] is not None
    assert not sw.testbed_services(docker_client) or all(
        not s.attrs["Spec"]["Labels"].get(sw.LABEL_OWNER) for s in sw.testbed_services(docker_client)
    )
    assert not [n for n in sw.testbed_networks(docker_client) if n.name.startswith("edge-")]


def test_scenario_over_the_swarm(swarm, docker_client, tmp_path, scenario_vit, cleanup):
    """Throttled (a live update of the task's container), crashed (its container killed: the task
    stays failed), back (a new task), as the docker runtime plays them."""
    events = [
        {"at": "2s", "device": "phone", "cpus": 0.2},
        {"at": "4s", "device": "tablet", "action": "crash"},
        {"at": "7s", "device": "tablet", "action": "join"},
    ]
    job = scenario_job(tmp_path, scenario_vit, "failover", events, duration_s=11)
    run_dir, rep = execute(str(job), runtime="swarm", out=str(tmp_path / "run"), testbed_name=NAME)
    assert rep["runtime"] == "swarm" and rep["complete"] is True and rep["errors"] == 0 and rep["lost"] == []
    cpus = only(rep["events"], "cpus", device="phone")
    assert cpus["errors"] == [] and cpus["late_ms_max"] <= 500.0
    crash = only(rep["events"], "crash", device="tablet")
    assert 0 < crash["detected_unix_s"] - crash["applied_unix_s"] <= 1.0
    assert [p["reason"] for p in rep["plans"]] == ["initial", "lost tablet", "join tablet"]
    caps = [json.loads(x) for x in (run_dir / "stats" / "phone.jsonl").read_text().splitlines()]
    assert {s["cpu_cap"] for s in caps if s["time"] > cpus["applied_unix_s"] + 0.5} == {0.2}


def test_leave_and_come_back(swarm, docker_client, tmp_path, cleanup):
    """A departure scales the service to zero; a return is a new task the deployment reaches."""
    from orchestrator.config import load_devices
    from orchestrator.runtimes.swarm import SwarmRuntime

    write_tiny_job(tmp_path, TWO)
    tb = load_devices(str(tmp_path / "devices.yaml"))
    with SwarmRuntime(tb, tmp_path / "logs", tmp_path, testbed_name=f"{NAME}x", client=docker_client) as rt:
        dep = rt.start()  # a testbed of its own (none of that name runs): removed on the way out
        before = dep.nodes["phone"]
        rt.leave("phone")
        assert sw.running_task(rt._service("phone")) is None
        back = rt.revive("phone")
        assert back.control_address != before.control_address or back.peer_address != before.peer_address
        assert dep.client("phone").health().device == "phone"
        assert rt.set_cpus("phone", 0.2) == pytest.approx(0.2)
        rt.kill("laptop")
        assert sw.running_task(rt._service("laptop")) is None
    assert not sw.testbed_services(docker_client, f"{NAME}x")
