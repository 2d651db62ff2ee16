"""The swarm testbed as data and on the engine: one Docker Swarm service per device on one
attachable overlay network, started, found, waited for and removed with the docker SDK.

Each service runs the node image with the device's CPU and memory as `resources.limits`,
NET_ADMIN added (tc on its overlay interface; the image's entrypoint drops root and keeps only
that), `endpoint_mode: dnsrr` (Swarm's virtual IPs go through IPVS, which drops long-idle
streams), restart condition none (a crashed device stays crashed: a scenario means what it
says), and the node's port published in host mode on whichever host runs the task (an engine-chosen
port: that is how the orchestrator reaches a node on any host; nodes reach each other at their
overlay addresses). `host:` in devices.yaml pins a device's service: a `key=value` is a swarm node
label, anything else a node's hostname. Everything is labelled as docker testbeds are
(`edge-testbed=1`, `edge-testbed.testbed=<name>`), so `down` removes exactly its services and network.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import time
from dataclasses import dataclass, field

from orchestrator.config import Testbed
from orchestrator.errors import UserError
from orchestrator.runtimes.base import NodeHandle
from orchestrator.runtimes.docker_testbed import (
    LABEL,
    LABEL_CONFIG,
    LABEL_DEVICE,
    LABEL_OWNER,
    LABEL_TESTBED,
    NODE_PORT,
    config_hash,
    image_tag,
)
from orchestrator.runtimes.neighbours import ensure_room

log = logging.getLogger("orchestrator.swarm")

# on a task's container instead of `edge-testbed=1`: the docker runtime's commands leave it alone
LABEL_SWARM_TASK = "edge-testbed.swarm-task"
# what a run waits for, at most, from `service create` to every node answering
UP_WAIT_S = 120.0
# task states after which a task never runs (restart condition none: it is not replaced)
ENDED = {"complete", "failed", "shutdown", "rejected", "orphaned", "remove"}


@dataclass
class ServiceSpec:
    device: str
    name: str
    args: list[str]
    env: dict[str, str]
    nano_cpus: int
    memory: int
    constraints: list[str]
    labels: dict[str, str]


@dataclass
class SwarmSpec:
    name: str
    network: str
    image: str
    config_hash: str
    owner: str | None = None
    services: list[ServiceSpec] = field(default_factory=list)

    @property
    def labels(self) -> dict[str, str]:
        own = {LABEL_OWNER: self.owner} if self.owner else {}
        return {LABEL: "1", LABEL_TESTBED: self.name, LABEL_CONFIG: self.config_hash, **own}


def placement(host: str | None) -> list[str]:
    """The placement constraints of `host:`: `key=value` is a swarm node label, else a hostname."""
    if not host:
        return []
    if "=" in host:
        key, value = host.split("=", 1)
        return [f"node.labels.{key.strip()}=={value.strip()}"]
    return [f"node.hostname=={host}"]


def swarm_spec(testbed: Testbed, name: str, image: str | None = None, owner: str | None = None) -> SwarmSpec:
    spec = SwarmSpec(name, f"{name}-overlay", image or image_tag(), config_hash(testbed), owner)
    for d in testbed.devices:
        if d.gpu is not None:
            raise UserError(f"device {d.name}: the swarm runtime has no GPU placement (use the docker runtime)", "gpu")
        spec.services.append(
            ServiceSpec(
                device=d.name,
                name=f"{name}-{d.name}",
                args=["--device", d.name, "--port", str(NODE_PORT), "--host", "0.0.0.0"],
                env={"MALLOC_MMAP_THRESHOLD_": str(64 * 1024 * 1024), "MALLOC_TRIM_THRESHOLD_": str(256 * 1024 * 1024)},
                nano_cpus=round(d.cpus * 1e9),
                memory=d.memory,
                constraints=placement(d.host),
                labels={**spec.labels, LABEL_DEVICE: d.name},
            )
        )
    return spec


def is_manager(client) -> bool:
    """Whether the engine is a manager of a swarm (what creating services needs)."""
    sw = client.info().get("Swarm") or {}
    return sw.get("LocalNodeState") == "active" and bool(sw.get("ControlAvailable"))


def require_manager(client) -> None:
    if not is_manager(client):
        raise UserError(
            "the Docker engine is not a swarm manager: join or make a swarm first (`docker swarm init`, "
            "or `orchestrator testbed up --runtime swarm --init` for a single-node swarm)",
            "--runtime",
        )


def init_single_node(client) -> str:
    """Make this engine a single-node swarm, advertised on loopback; a line saying so."""
    client.swarm.init(advertise_addr="127.0.0.1", listen_addr="127.0.0.1:2377")
    return "made this engine a single-node swarm (advertised on 127.0.0.1); `docker swarm leave --force` undoes it"


def testbed_services(client, name: str | None = None) -> list:
    labels = [f"{LABEL}=1"] + ([f"{LABEL_TESTBED}={name}"] if name else [])
    return client.services.list(filters={"label": labels})


def testbed_networks(client, name: str | None = None) -> list:
    labels = [f"{LABEL}=1"] + ([f"{LABEL_TESTBED}={name}"] if name else [])
    return client.networks.list(filters={"label": labels, "driver": "overlay"})


def create(client, spec: SwarmSpec, service: ServiceSpec):
    import docker

    task = docker.types.TaskTemplate(
        container_spec=docker.types.ContainerSpec(
            spec.image,
            args=service.args,
            hostname=service.device,
            env=service.env,
            labels={LABEL_SWARM_TASK: "1", LABEL_TESTBED: spec.name, LABEL_DEVICE: service.device},
            cap_add=["NET_ADMIN"],
        ),
        resources=docker.types.Resources(cpu_limit=service.nano_cpus, mem_limit=service.memory),
        restart_policy=docker.types.RestartPolicy(condition="none"),
        placement=docker.types.Placement(constraints=service.constraints),
        networks=[docker.types.NetworkAttachmentConfig(spec.network)],
    )
    endpoint = docker.types.EndpointSpec(
        mode="dnsrr", ports=[{"Protocol": "tcp", "TargetPort": NODE_PORT, "PublishMode": "host"}]
    )
    sid = client.api.create_service(task, name=service.name, labels=service.labels, endpoint_spec=endpoint)
    return client.services.get(sid["ID"])


def up(client, spec: SwarmSpec, wait_s: float = UP_WAIT_S) -> dict[str, NodeHandle]:
    """Create the overlay network and the services, in parallel; wait until every node answers.
    On any failure what was created is removed again, and the error names the device."""
    require_manager(client)
    if testbed_services(client, spec.name) or testbed_networks(client, spec.name):
        raise RuntimeError(f"testbed {spec.name!r} already exists; `orchestrator testbed down --runtime swarm` first")
    try:
        client.images.get(spec.image)
    except Exception:
        raise UserError(f"image {spec.image} not found on this host: build it with `make image`") from None
    if said := ensure_room(len(spec.services)):  # this host's table; a worker host's is its own
        log.warning("%s", said)
    try:
        client.networks.create(spec.network, driver="overlay", attachable=True, labels=spec.labels)
        with cf.ThreadPoolExecutor(min(16, len(spec.services))) as ex:
            list(ex.map(lambda s: create(client, spec, s), spec.services))
        return wait_nodes(client, spec.name, wait_s)
    except BaseException:
        down(client, spec.name)
        raise


def running_task(service, skip: frozenset[str] = frozenset()) -> dict | None:
    """The service's task that runs now (None while none does); tasks in `skip` do not count."""
    tasks = service.tasks(filters={"desired-state": "running"})
    return next((t for t in tasks if t["Status"]["State"] == "running" and t["ID"] not in skip), None)


def ended_task(service, skip: frozenset[str] = frozenset()) -> dict | None:
    """The service's latest task, where it has ended (it will never run again)."""
    tasks = sorted((t for t in service.tasks() if t["ID"] not in skip), key=lambda t: t.get("UpdatedAt", ""))
    return tasks[-1] if tasks and tasks[-1]["Status"]["State"] in ENDED else None


def explain(service, task: dict) -> str:
    st = task["Status"]
    why = st.get("Err") or st.get("Message") or st["State"]
    try:
        tail = b"".join(service.logs(stdout=True, stderr=True, tail=8)).decode(errors="replace").strip()
    except Exception:
        tail = ""
    return f"service {service.name}: task {st['State']}: {why}" + (f": {tail}" if tail else "")


def node_addresses(client) -> dict[str, str]:
    """Each swarm node's id -> the address the orchestrator reaches it at (its advertised one)."""
    return {n.id: n.attrs.get("Status", {}).get("Addr", "") for n in client.nodes.list()}


def handle(client, service, task: dict, addrs: dict[str, str] | None = None) -> NodeHandle:
    """How the orchestrator reaches a task's node (its host's address, the published port) and how
    other nodes do (its overlay address)."""
    addrs = addrs if addrs is not None else node_addresses(client)
    host = addrs.get(task.get("NodeID", ""), "")
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    ports = (task["Status"].get("PortStatus") or {}).get("Ports") or []
    published = next((p["PublishedPort"] for p in ports if p.get("TargetPort") == NODE_PORT), None)
    overlay = next(
        (
            a["Addresses"][0].split("/")[0]
            for a in task.get("NetworksAttachments") or []
            if (a["Network"]["Spec"].get("Labels") or {}).get(LABEL) == "1"
        ),
        None,
    )
    dev = service.attrs["Spec"]["Labels"][LABEL_DEVICE]
    if published is None or overlay is None:
        raise RuntimeError(f"service {service.name}: its task has no published port or overlay address yet")
    return NodeHandle(dev, f"{host}:{published}", f"{overlay}:{NODE_PORT}")


def wait_task(
    client, service, deadline: float, addrs: dict[str, str] | None = None, skip: frozenset[str] = frozenset()
) -> NodeHandle:
    """The service's running task's handle, once it runs; a task that ended raises with its reason.
    `skip`: tasks that came before (a service updated for a new task)."""
    while True:
        service.reload()
        task = running_task(service, skip)
        if task is not None:
            return handle(client, service, task, addrs)
        ended = ended_task(service, skip)
        if ended is not None:
            raise RuntimeError(explain(service, ended))
        if time.monotonic() > deadline:
            tasks = service.tasks()
            state = tasks[-1]["Status"] if tasks else {"State": "not scheduled", "Message": "no task yet"}
            raise RuntimeError(
                f"service {service.name}: no running task after {UP_WAIT_S:.0f} s "
                f"({state['State']}: {state.get('Err') or state.get('Message', '')})"
            )
        time.sleep(0.1)


def wait_nodes(client, name: str, wait_s: float = UP_WAIT_S) -> dict[str, NodeHandle]:
    from orchestrator.driving.client import NodeClient

    deadline = time.monotonic() + wait_s
    services = testbed_services(client, name)
    addrs = node_addresses(client)

    def one(svc) -> NodeHandle:
        h = wait_task(client, svc, deadline, addrs)
        with NodeClient(h.device, h.control_address) as c:
            c.wait_healthy(timeout_s=max(1.0, deadline - time.monotonic()))
        return h

    with cf.ThreadPoolExecutor(max(1, min(16, len(services)))) as ex:
        return {h.device: h for h in ex.map(one, services)}


def down(client, name: str | None = None, wait_s: float = 30.0) -> tuple[int, int]:
    """Remove the testbed's services, then its network once their tasks have let go of it."""
    services = testbed_services(client, name)
    for s in services:
        try:
            s.remove()
        except Exception as e:
            if "not found" not in str(e).lower():
                raise
    nets = testbed_networks(client, name)
    deadline = time.monotonic() + wait_s
    for n in nets:
        while True:
            try:
                n.remove()
                break
            except Exception as e:  # endpoints of stopping tasks still attached
                if "not found" in str(e).lower():
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"network {n.name} still in use after {wait_s:.0f} s: {e}") from None
                time.sleep(0.2)
    while testbed_networks(client, name):  # a swarm network goes once its tasks have: wait for it
        if time.monotonic() > deadline:
            raise RuntimeError(f"testbed {name!r}: its network is still there after {wait_s:.0f} s")
        time.sleep(0.1)
    return len(services), len(nets)


def status(client, name: str | None = None) -> list[dict]:
    rows = []
    addrs = node_addresses(client)
    hostnames = {n.id: n.attrs.get("Description", {}).get("Hostname", "") for n in client.nodes.list()}
    for s in testbed_services(client, name):
        spec = s.attrs["Spec"]
        lim = spec["TaskTemplate"].get("Resources", {}).get("Limits", {})
        task = running_task(s) or ended_task(s)
        try:
            h = handle(client, s, task, addrs) if task and task["Status"]["State"] == "running" else None
        except RuntimeError:
            h = None
        rows.append(
            {
                "testbed": spec["Labels"].get(LABEL_TESTBED),
                "device": spec["Labels"].get(LABEL_DEVICE),
                "container": s.name,
                "status": task["Status"]["State"] if task else "pending",
                "ip": h.peer_address.rsplit(":", 1)[0] if h else "",
                "host": hostnames.get(task.get("NodeID", ""), "") if task else "",
                "address": h.control_address if h else "",
                "cpus": (lim.get("NanoCPUs") or 0) / 1e9,
                "memory": lim.get("MemoryBytes") or 0,
                "config": spec["Labels"].get(LABEL_CONFIG),
            }
        )
    return sorted(rows, key=lambda r: (r["testbed"] or "", r["device"] or ""))
