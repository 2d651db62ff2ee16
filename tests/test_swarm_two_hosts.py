"""Two swarm hosts on one machine: the engine as manager and a second engine in a container as
worker (tests/swarm_helpers.py). Two node services, one pinned to each host, on an attachable
overlay network: the tasks land on both hosts, the nodes reach each other over the overlay (VXLAN
between the two engines), and this process reaches the worker's node, whose engine it never
talks to, at the port the task publishes in host mode on the worker's address."""

from __future__ import annotations

import json
import subprocess
import time
import uuid

import docker
import pytest
from docker.types import EndpointSpec, RestartPolicy

from orchestrator.driving.client import NodeClient
from tests.conftest import ROOT
from tests.swarm_helpers import HOST_LABEL, SwarmUnavailable, WorkerUnavailable, swarm, worker

PORT = 50051
LABEL = "edge-testbed.test"  # on what the test makes, so that a leftover says where it came from


@pytest.fixture(scope="module")
def two_hosts(docker_client, node_image):
    """(swarm info, worker): the worker image built (cache hits when nothing changed), the swarm
    and the worker up; skipped, with the reason, where either cannot be had here."""
    r = subprocess.run(
        [str(ROOT / "scripts" / "build_worker_image.sh")], cwd=ROOT, capture_output=True, text=True, timeout=1800
    )
    if r.returncode != 0:
        pytest.skip(f"the worker image cannot be built here: {r.stderr.strip()[-1500:]}")
    try:
        with swarm(docker_client) as info, worker(docker_client, info, [node_image]) as w:
            print(
                f"worker {w.hostname} ({w.how}) at {w.address}: "
                + ", ".join(f"{k} {v:.1f} s" for k, v in w.timings_s.items())
            )
            yield info, w
    except (SwarmUnavailable, WorkerUnavailable) as e:
        pytest.skip(f"no two-host swarm here: {e}")


def _wait_running(service, timeout_s: float = 90.0) -> dict:
    """The service's one task once it runs; fails with the task's error if it stops first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for task in service.tasks():
            state = task["Status"]["State"]
            if state == "running":
                return task
            if state in ("failed", "rejected", "shutdown", "complete", "orphaned"):
                pytest.fail(f"{service.name}: task {state}: {task['Status'].get('Err', '')}")
        time.sleep(0.5)
    pytest.fail(f"{service.name}: no running task within {timeout_s:.0f} s")


@pytest.fixture()
def services(docker_client, node_image, two_hosts):
    """Node "a" pinned to the manager, node "b" to the worker (publishing its port in host mode),
    on a fresh attachable overlay; everything removed afterwards."""
    run = uuid.uuid4().hex[:6]
    labels = {LABEL: run}
    net = docker_client.networks.create(f"edge-2h-{run}", driver="overlay", attachable=True, labels=labels)
    made = []
    try:
        for device, constraint, ports in (
            ("a", "node.role==manager", []),
            # No published port: the worker's engine picks a free one, read back from the task.
            (
                "b",
                f"node.labels.{HOST_LABEL}==worker2",
                [{"TargetPort": PORT, "Protocol": "tcp", "PublishMode": "host"}],
            ),
        ):
            made.append(
                docker_client.services.create(
                    node_image,
                    name=f"edge-2h-{run}-{device}",
                    args=["--device", device, "--port", str(PORT), "--host", "0.0.0.0"],
                    networks=[net.name],
                    endpoint_spec=EndpointSpec(mode="dnsrr", ports=ports),
                    cap_add=["NET_ADMIN"],
                    constraints=[constraint],
                    restart_policy=RestartPolicy(condition="none"),
                    labels=labels,
                )
            )
        yield {device: (svc, _wait_running(svc)) for device, svc in zip("ab", made, strict=True)}
    finally:
        for svc in made:
            svc.remove()
        # The network goes once the tasks' endpoints are gone: retried for a while.
        deadline = time.monotonic() + 30
        while True:
            try:
                net.remove()
                break
            except docker.errors.NotFound:
                break
            except docker.errors.APIError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)


HEALTH = (
    "import grpc, sys; from common import testbed_pb2 as pb, testbed_pb2_grpc as g; "
    "print(g.NodeStub(grpc.insecure_channel(sys.argv[1])).Health(pb.Empty(), timeout=10).device)"
)


def test_two_hosts_placement_overlay_and_reach(docker_client, two_hosts, services):
    info, w = two_hosts
    (svc_a, task_a), (svc_b, task_b) = services["a"], services["b"]

    # (a) Placement: one task on each host.
    assert task_a["NodeID"] == info.manager_node_id
    assert task_b["NodeID"] == w.node_id

    # (b) Over the overlay, both ways: node a (manager) calls node b (worker) by its service name,
    # and back; then 8 MB cross it intact (overlay MTU 1450 inside a 1400-byte bridge).
    (container_a,) = docker_client.containers.list(filters={"label": f"com.docker.swarm.service.name={svc_a.name}"})
    r = container_a.exec_run(["python", "-c", HEALTH, f"{svc_b.name}:{PORT}"])
    assert r.exit_code == 0 and r.output.decode().strip() == "b", r.output.decode()
    container_b = w.docker("ps", "-q", "--filter", f"label=com.docker.swarm.service.name={svc_b.name}").strip()
    assert w.docker("exec", container_b, "python", "-c", HEALTH, f"{svc_a.name}:{PORT}").strip() == "a"

    w.docker("exec", "-d", container_b, "python", "-m", "node.probes", "sink", "2", "60", "6000")
    r = container_a.exec_run(["python", "-m", "node.probes", "send", svc_b.name, str(8_000_000), "3", "6000"])
    assert r.exit_code == 0, r.output.decode()
    assert json.loads(r.output.decode().strip().splitlines()[-1])["bytes"] == 8_000_000

    # (c) This process reaches node b, on a host whose engine it never uses, at the port its task
    # publishes on that host (the swarm's task record says which): Health and Stats, with the
    # node's own cgroup and network figures.
    task_b = next(t for t in svc_b.tasks() if t["ID"] == task_b["ID"])
    (published,) = [p["PublishedPort"] for p in task_b["Status"]["PortStatus"]["Ports"] if p["TargetPort"] == PORT]
    with NodeClient("b", f"{w.address}:{published}") as client:
        client.wait_healthy(timeout_s=30)
        assert client.health().device == "b"
        stats = client.stats()
    assert stats.device == "b" and stats.rss_bytes > 0
    assert stats.cgroup.has_cgroup, stats
    assert stats.cgroup.cpu_usage_s > 0 and stats.cgroup.memory_bytes > 0
    assert stats.cgroup.net_rx_bytes > 8_000_000  # the transfer above arrived on its interfaces


def test_a_run_across_the_two_hosts(docker_client, two_hosts, tmp_path):
    """The swarm runtime itself over both hosts: `host:` pins the laptop to the manager (by
    hostname) and the phone to the worker (by node label); the phone's stage file is sent to it,
    its stats come from its own node, the links are checked between the hosts, nothing is left."""
    from orchestrator.run import execute
    from orchestrator.runtimes import swarm_services as sw
    from tests.runtime_helpers import write_tiny_job

    info, w = two_hosts
    manager = docker_client.nodes.get(info.manager_node_id).attrs["Description"]["Hostname"]
    devices = [
        {"name": "laptop", "cpus": 0.5, "memory": "512MiB", "bandwidth": "50mbit", "delay": "5ms", "host": manager},
        {"name": "phone", "cpus": 0.3, "memory": "384MiB", "bandwidth": "20mbit", "delay": "10ms"}
        | {"host": f"{HOST_LABEL}=worker2"},
    ]
    job = write_tiny_job(tmp_path, devices, requests=12, fidelity_check=True)
    run_dir, rep = execute(str(job), runtime="swarm", out=str(tmp_path / "run"))
    assert rep["errors"] == 0 and rep["agreement"]["top1"] == 1.0 and rep["agreement"]["max_abs_diff"] == 0.0
    reached = next(n for n in rep["notes"] if "nodes reached at" in n)
    assert w.address in reached, reached  # the phone's node, at the worker's address
    assert rep["fidelity"]["flagged"] == [], rep["fidelity"]["flagged"]
    rows = [json.loads(x) for x in (run_dir / "stats" / "phone.jsonl").read_text().splitlines()]
    assert rows and rows[-1]["periods"] and rows[-1]["bytes_in"] > 0 and rows[-1]["memory_limit"] == 384 * 2**20
    assert not [s for s in sw.testbed_services(docker_client) if s.name.startswith("edge-")]
