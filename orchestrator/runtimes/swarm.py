"""Swarm runtime: one Docker Swarm service per device on an attachable overlay network, across the
swarm's hosts (swarm_services.py says how each service is made).

The orchestrator talks to the swarm's manager engine only. So everything a node needs comes to it
over its own gRPC port, wherever it runs: its links are shaped by a Load carrying its peers'
overlay addresses (the node runs tc on its overlay interface, MTU 1450), its stage files are sent
to it (node_files.py: a worker host has no copy of the run folder), its stats come from the node
itself (its own cgroup: node_stats.py), and the fidelity check measures through the nodes.

The world changes as on the docker runtime: links in place through the sending node (SetLink);
a crash kills the task's container and a CPU change is a live update of it, both through the
engine of the host that runs the task (this one: a task on a host whose engine the orchestrator
cannot reach can only leave and join); a departure scales the service to zero (SIGTERM, the node
closes its links); a return starts a new task (a new, empty node; maybe a new overlay address).
"""

from __future__ import annotations

import concurrent.futures as cf
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from docker.types import ServiceMode

from common import testbed_pb2 as pb
from common.cpu_quota import CFS_PERIOD_S
from orchestrator.config import Testbed
from orchestrator.driving.client import NodeClient
from orchestrator.errors import UserError
from orchestrator.runtimes import swarm_services as sw
from orchestrator.runtimes.base import Deployment, LinkChange, LinkEmulation, NodeHandle, Runtime
from orchestrator.runtimes.docker_engine import engine
from orchestrator.runtimes.docker_hold import TestbedHold, is_held, own_testbed_name
from orchestrator.runtimes.docker_testbed import DEFAULT_NAME, LABEL_CONFIG, LABEL_OWNER, LABEL_TESTBED
from orchestrator.runtimes.link_changes import NodeLinks
from orchestrator.runtimes.node_files import NodeFiles
from orchestrator.runtimes.node_stats import NodeStatsSampler

if TYPE_CHECKING:
    from rich.console import Console

    from orchestrator.partition.plan import Plan


@dataclass
class SwarmDeployment(Deployment):
    """Nodes that share no folder with the orchestrator: a stage file is sent to its node first."""

    files: NodeFiles = field(default_factory=NodeFiles, repr=False)

    def stage_path(self, device: str, local_path: Path) -> str:
        return self.files.path_for(device, self.client(device), Path(local_path))

    def replace_node(self, handle: NodeHandle) -> None:
        super().replace_node(handle)
        self.files.forget(handle.device)  # a new task: an empty node


def shaping_load(device: str, handles: dict[str, NodeHandle], testbed: Testbed) -> pb.LoadRequest:
    """A Load with no stages that gives a node its links to every other node (tc on its overlay
    interface, matched on the peers' overlay addresses): what a docker node does at start."""
    peers = []
    for other, h in handles.items():
        if other == device:
            continue
        link = testbed.link(device, other)
        ip = h.peer_address.rsplit(":", 1)[0]
        peers.append(
            pb.Peer(device=other, address=h.peer_address, ip=ip, tc_rate_bps=link.rate_bps, tc_delay_s=link.delay_s)
        )
    return pb.LoadRequest(device=device, num_stages=1, source_device=device, first_device=device, peers=peers)


def shape_links(handles: dict[str, NodeHandle], testbed: Testbed) -> list[pb.LoadReply]:
    """Every node's links shaped (shaping_load), the nodes side by side; their replies."""

    def one(d: str) -> pb.LoadReply:
        with NodeClient(d, handles[d].control_address) as c:
            return c.load(shaping_load(d, handles, testbed), timeout_s=60.0)

    with cf.ThreadPoolExecutor(max(1, min(16, len(handles)))) as ex:
        return list(ex.map(one, handles))


def reap_orphans(client) -> list[str]:
    """Remove the swarm testbeds runs started for themselves whose run is gone; their names."""
    names = {
        s.attrs["Spec"]["Labels"].get(LABEL_TESTBED)
        for s in client.services.list(filters={"label": f"{LABEL_OWNER}=run"})
    }
    gone = sorted(n for n in names if n and not is_held(n))
    for n in gone:
        sw.down(client, n)
    return gone


class SwarmRuntime(Runtime):
    """Uses the running swarm testbed of that name whose devices match, held for the run; where none
    runs, starts one of its own and removes it afterwards. Never makes or leaves a swarm."""

    name = "swarm"

    def __init__(
        self,
        testbed: Testbed,
        log_dir: Path,
        workspace: Path,
        testbed_name: str | None = None,
        image: str | None = None,
        client=None,
        wait: bool = False,
        console: Console | None = None,
    ):
        self.testbed = testbed
        self.log_dir = Path(log_dir)
        self.workspace_dir = Path(workspace).resolve()
        self.client = client or engine()
        if self.client is None:
            raise RuntimeError("no Docker engine answers")
        sw.require_manager(self.client)
        self.requested_name = testbed_name
        self.wait = wait
        self.console = console
        self.spec = sw.swarm_spec(testbed, testbed_name or DEFAULT_NAME, image)
        self.hold: TestbedHold | None = None
        self.owned = False
        self.start_s: float | None = None
        self.caps = {d.name: d.cpus for d in testbed.devices}  # live: set_cpus updates it, the stats follow
        self._links = NodeLinks(testbed)
        self.deployment: SwarmDeployment | None = None
        self._node_id = (self.client.info().get("Swarm") or {}).get("NodeID", "")

    def _say(self, text: str) -> None:
        if self.console is not None:
            self.console.print(text)

    def _use_running(self) -> str:
        self.hold = TestbedHold(self.spec.name, purpose="a run").acquire(
            wait=self.wait, on_wait=lambda who: self._say(f"testbed {self.spec.name!r} is in use by {who}: waiting")
        )
        services = sw.testbed_services(self.client, self.spec.name)
        if {s.attrs["Spec"]["Labels"].get(LABEL_CONFIG) for s in services} != {self.spec.config_hash}:
            raise UserError(
                f"swarm testbed {self.spec.name!r} is up with other devices; "
                "`orchestrator testbed down --runtime swarm` first, or run with the devices it has"
            )
        return f"swarm runtime: used the running testbed {self.spec.name!r}, held for the run"

    def _start_own(self) -> str:
        if self.requested_name is None:
            self.spec = sw.swarm_spec(self.testbed, own_testbed_name(DEFAULT_NAME), self.spec.image, owner="run")
        self.hold = TestbedHold(self.spec.name, purpose="a run, its own testbed").acquire(wait=self.wait)
        self.owned = True
        t0 = time.perf_counter()
        sw.up(self.client, self.spec)
        self.start_s = time.perf_counter() - t0
        return (
            f"swarm runtime: started testbed {self.spec.name!r} ({len(self.spec.services)} services on the overlay "
            f"{self.spec.network}) in {self.start_s:.1f} s for this run, and removed it after"
        )

    def start(self) -> Deployment:
        reap_orphans(self.client)
        running = sw.testbed_services(self.client, self.spec.name)
        note = self._use_running() if running else self._start_own()
        nodes = sw.wait_nodes(self.client, self.spec.name, 60.0)
        self.deployment = SwarmDeployment(
            "swarm",
            nodes,
            LinkEmulation.TC_NODE_DELAY,
            workspace=self.workspace_dir,
            cpu_quota_period_s=CFS_PERIOD_S,  # resources.limits: quotas over the kernel's default period
            notes=[note, "stage files: sent to each node over its gRPC Put call (no shared folder)"],
        )
        replies = shape_links(nodes, self.testbed)
        emulation = LinkEmulation.TC_NETEM if any(r.netem for r in replies) else LinkEmulation.TC_NODE_DELAY
        self.deployment.link_emulation = emulation
        self.deployment.notes.append(emulation.describe() + " (on each task's overlay interface)")
        hosts = sorted({h.control_address.rsplit(":", 1)[0] for h in nodes.values()})
        self.deployment.notes.append(f"swarm runtime: nodes reached at {', '.join(hosts)} (ports published per task)")
        return self.deployment

    def _service(self, device: str):
        svc = next(
            (s for s in sw.testbed_services(self.client, self.spec.name) if s.name == f"{self.spec.name}-{device}"),
            None,
        )
        if svc is None:
            raise ValueError(f"swarm testbed {self.spec.name!r} has no service for {device!r}")
        return svc

    def _local_container(self, device: str, what: str):
        """The container of a device's running task, through this engine; a task on another host
        (whose engine the orchestrator does not reach) raises saying so."""
        svc = self._service(device)
        task = sw.running_task(svc)
        if task is None:
            raise RuntimeError(f"device {device}: no running task to {what}")
        if task.get("NodeID") != self._node_id:
            raise RuntimeError(
                f"device {device}: cannot {what} its task: it runs on another swarm host, whose engine "
                "this orchestrator does not reach (leave and join work on any host)"
            )
        return self.client.containers.get(task["Status"]["ContainerStatus"]["ContainerID"])

    def save_logs(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for s in sw.testbed_services(self.client, self.spec.name):
            dev = s.attrs["Spec"]["Labels"].get("edge-testbed.device", s.name)
            try:
                text = b"".join(s.logs(stdout=True, stderr=True)).decode(errors="replace")
            except Exception as e:
                text = f"(logs unavailable: {e})\n"
            (self.log_dir / f"node_{dev}.log").write_text(text)

    def stop(self) -> None:
        try:
            if self.deployment is not None:
                self.deployment.close()
                self.deployment = None
                self.save_logs()
            if self.owned:
                sw.down(self.client, self.spec.name)
                self.owned = False
        finally:
            if self.hold is not None:
                self.hold.release()
                self.hold = None

    def node_plan(self, plan: Plan, run_dir: Path) -> Plan:
        return plan  # its files go to each node when loaded (SwarmDeployment.stage_path)

    def stats_sampler(self, out_dir: Path) -> NodeStatsSampler:
        return NodeStatsSampler(self.running, self.caps, out_dir)

    def addresses(self) -> dict[str, str]:
        """Each device's overlay address: what its peers' tc matches and the link probes reach."""
        return {d: h.peer_address.rsplit(":", 1)[0] for d, h in self.running.nodes.items()}

    def fidelity_check(self, console: Console | None = None) -> dict:
        from orchestrator.runtimes.docker_fidelity import check_nodes

        dep = self.running
        if console is not None:
            console.print("checking fidelity (links and CPU caps between the swarm's tasks)...")
        fid = check_nodes(dep, self.addresses(), self.testbed, dep.link_emulation)
        if console is not None:
            console.print(
                f"fidelity checked in {fid['seconds']:.1f} s: "
                + (f"{len(fid['flagged'])} off by more than 10%" if fid["flagged"] else "all within 10%")
            )
        return fid

    def set_link(self, src: str, dst: str, rate_bps: int | None = None, delay_s: float | None = None) -> LinkChange:
        return self._links.change(self.running, src, dst, self.addresses()[dst], rate_bps, delay_s)

    def set_cpus(self, device: str, cpus: float) -> float:
        """A live update of the task's container CPU quota (a service update would replace the task:
        a new, empty node), then the node re-reads its quota and resizes its threads (Requota)."""
        if cpus <= 0:
            raise ValueError(f"{device}: cpus must be > 0, got {cpus}")
        cont = self._local_container(device, "change the CPU cap of")
        api = self.client.api
        api._result(api._post_json(api._url("/containers/{0}/update", cont.id), data={"NanoCpus": round(cpus * 1e9)}))
        reply = self.running.client(device).requota()
        quota = reply.cpu_quota or None
        if not reply.ok or quota is None or abs(quota - cpus) > cpus * 0.01:
            raise RuntimeError(f"device {device}: the node reads a CPU cap of {quota} after the update, asked {cpus:g}")
        self.caps[device] = cpus
        return quota

    def _wait_gone(self, device: str, timeout_s: float = 30.0) -> None:
        svc = self._service(device)
        deadline = time.monotonic() + timeout_s
        while sw.running_task(svc) is not None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"device {device}: its task still runs after {timeout_s:.0f} s")
            time.sleep(0.05)
            svc.reload()

    def kill(self, device: str) -> None:
        """SIGKILL to the task's container; restart condition none: the task stays failed."""
        self._local_container(device, "crash").kill()
        self._wait_gone(device)

    def leave(self, device: str) -> None:
        """The service scaled to zero: the task is stopped with SIGTERM, the node closes its links."""
        self._service(device).scale(0)
        self._wait_gone(device)

    def gone_reason(self, device: str) -> str | None:
        try:
            svc = self._service(device)
        except ValueError:
            return None
        task = sw.ended_task(svc)
        if task is None:
            return None
        cid = (task["Status"].get("ContainerStatus") or {}).get("ContainerID")
        try:
            oom = bool(cid) and self.client.containers.get(cid).attrs["State"].get("OOMKilled")
        except Exception:
            oom = False
        limit = self.testbed.device(device).memory
        return f"ran out of memory (limit {limit / 2**20:.1f} MiB)" if oom else None

    def revive(self, device: str) -> NodeHandle:
        """A new task for the device's service (one replica again, forced): an empty node, its links
        shaped as configured; the deployment reaches it at its new addresses from then on."""
        dep = self.running
        svc = self._service(device)
        before = frozenset(t["ID"] for t in svc.tasks())
        svc.update(mode=ServiceMode("replicated", 1), force_update=True)
        deadline = time.monotonic() + 60.0
        handle = sw.wait_task(self.client, svc, deadline, skip=before)
        with NodeClient(device, handle.control_address) as c:
            c.wait_healthy(timeout_s=max(1.0, deadline - time.monotonic()))
        dep.replace_node(handle)
        self._links.reset(device)
        with NodeClient(device, handle.control_address) as c:  # its links, as at start
            c.load(shaping_load(device, dep.nodes, self.testbed), timeout_s=60.0)
        return handle
