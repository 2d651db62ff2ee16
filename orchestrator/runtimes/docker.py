"""Docker runtime: one container per device on one bridge network, driven with the docker SDK.

Each container is capped by cgroups (CPU quota from `cpus`, memory from `memory` with swap
off, optional cpuset, a GPU device request), gets NET_ADMIN and nothing else beyond Docker's
defaults, and runs the node as user "node" (the image's entrypoint drops root, keeping only
NET_ADMIN for tc). Each node shapes its own egress at start (EDGE_TC_PEERS); at Load it is given
the same links again and keeps them (node/shaping.py). Everything is labelled `edge-testbed=1`
and `edge-testbed.testbed=<name>`, so `down` and clean-up remove exactly the testbed's objects.

While it runs, the world can change: a link's rate and delay in place, through the sending node's
SetLink call (`tc class change` in its container, read back with `tc class show`; the delay by
netem or by the node's own hold), a CPU cap (a live update of the container's NanoCpus, then the
node re-reads its cgroup and resizes its ORT threads: Requota), a container killed and started again.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from common.cpu_quota import CFS_PERIOD_S
from orchestrator.config import Testbed
from orchestrator.driving.client import NodeClient
from orchestrator.errors import UserError
from orchestrator.partition.memory import format_bytes
from orchestrator.runtimes.base import Deployment, LinkChange, LinkEmulation, NodeHandle, Runtime
from orchestrator.runtimes.docker_engine import engine, testbed_containers
from orchestrator.runtimes.docker_fidelity import check_nodes
from orchestrator.runtimes.docker_hold import TestbedHold, free_subnet, is_held, own_testbed_name
from orchestrator.runtimes.docker_host_tc import HostShaper
from orchestrator.runtimes.docker_stats import DockerStatsCollector
from orchestrator.runtimes.docker_testbed import (
    DEFAULT_NAME,
    DEFAULT_SUBNET,
    LABEL,
    LABEL_CONFIG,
    LABEL_DEVICE,
    LABEL_OWNER,
    LABEL_TESTBED,
    LABEL_WORKSPACE,
    NODE_PORT,
    WORKSPACE_IN,
    TestbedSpec,
    image_tag,
    testbed_spec,
)
from orchestrator.runtimes.link_changes import NodeLinks
from orchestrator.runtimes.neighbours import ensure_room

if TYPE_CHECKING:
    from rich.console import Console

    from orchestrator.partition.plan import Plan

log = logging.getLogger("orchestrator.docker")


def image_present(client, image: str | None = None) -> bool:
    try:
        client.images.get(image or image_tag())
        return True
    except Exception:
        return False


def mps_daemon_running() -> bool:
    pipe = os.environ.get("CUDA_MPS_PIPE_DIRECTORY", "/tmp/nvidia-mps")
    return Path(pipe, "control").exists()


@dataclass
class DockerDeployment(Deployment):
    """The testbed's nodes: they see the host's workspace folder, read-only, at WORKSPACE_IN."""

    def node_path(self, local_path: Path) -> str:
        p = Path(local_path).resolve()
        try:
            rel = p.relative_to(self.workspace)
        except ValueError:
            raise RuntimeError(
                f"{p} is outside the testbed's workspace {self.workspace}, which is all the containers see"
            ) from None
        return f"{WORKSPACE_IN}/{rel.as_posix()}"


def testbed_networks(client, name: str | None = None) -> list:
    """The testbed's bridge network (a swarm testbed's overlay is the swarm runtime's)."""
    labels = [f"{LABEL}=1"] + ([f"{LABEL_TESTBED}={name}"] if name else [])
    return client.networks.list(filters={"label": labels, "driver": "bridge"})


def up(client, spec: TestbedSpec, wait_s: float = 60.0) -> dict[str, NodeHandle]:
    """Create the network and start the containers, in parallel; wait until every node answers.

    On any failure what was created is removed again and the error names the device."""
    import docker

    if testbed_containers(client, spec.name) or testbed_networks(client, spec.name):
        raise RuntimeError(f"testbed {spec.name!r} already exists; `orchestrator testbed down` first")
    try:
        client.images.get(spec.image)
    except docker.errors.ImageNotFound:
        raise UserError(f"image {spec.image} not found: build it with `make image`") from None
    if said := ensure_room(len(spec.containers)):
        log.warning("%s", said)
    Path(spec.workspace).mkdir(parents=True, exist_ok=True)
    try:
        ipam = docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(subnet=spec.subnet)])
        client.networks.create(spec.network, driver="bridge", ipam=ipam, labels=spec.labels, check_duplicate=True)

        def start(c) -> None:
            kw = {}
            if c.cpuset:
                kw["cpuset_cpus"] = c.cpuset
            if c.gpu_index is not None:
                kw["device_requests"] = [
                    docker.types.DeviceRequest(device_ids=[str(c.gpu_index)], capabilities=[["gpu"]])
                ]
            cont = client.containers.create(
                spec.image,
                command=c.command,
                name=c.name,
                hostname=c.device,
                detach=True,
                nano_cpus=c.nano_cpus,
                mem_limit=c.memory,
                memswap_limit=c.memory,
                cap_add=["NET_ADMIN"],
                environment=c.env,
                labels={**c.labels, LABEL_WORKSPACE: spec.workspace},
                volumes={spec.workspace: {"bind": WORKSPACE_IN, "mode": "ro"}},
                network=spec.network,
                networking_config={spec.network: client.api.create_endpoint_config(ipv4_address=c.ip)},
                **kw,
            )
            cont.start()

        with cf.ThreadPoolExecutor(len(spec.containers)) as ex:
            list(ex.map(start, spec.containers))
        return wait_nodes(client, spec.name, wait_s)
    except BaseException:
        down(client, spec.name)
        raise


def container_ip(cont) -> str:
    """A container's address on its testbed's network ("" where it is on none)."""
    nets = cont.attrs["NetworkSettings"]["Networks"]
    return next(iter(nets.values()))["IPAddress"] if nets else ""


def container_cpus(cont) -> float:
    """A container's CPU cap as the engine holds it (0: uncapped)."""
    return (cont.attrs["HostConfig"].get("NanoCpus") or 0) / 1e9


def handles(client, name: str) -> dict[str, NodeHandle]:
    out = {}
    for cont in testbed_containers(client, name, all_=False):
        dev, pid = cont.labels[LABEL_DEVICE], cont.attrs["State"].get("Pid")
        addr = f"{container_ip(cont)}:{NODE_PORT}"  # the host reaches the bridge: nothing is published
        out[dev] = NodeHandle(dev, addr, addr, pid)
    return out


def _explain_exit(cont) -> str:
    cont.reload()
    tail = cont.logs(tail=8).decode(errors="replace").strip()
    return f"container {cont.name} exited ({cont.attrs['State'].get('ExitCode')}): {tail}"


def _serving(cont) -> bool:
    """Running, with an address on the testbed's network (as of the container's last reload)."""
    return cont.status == "running" and bool(container_ip(cont))


def _alive(cont) -> bool:
    """True while a container has not exited; raises with its last log lines once it has."""
    cont.reload()
    if cont.status in ("exited", "dead"):
        raise RuntimeError(_explain_exit(cont))
    return True


WAIT_POLL_S = 0.25  # how often wait_nodes lists the testbed's containers


def _listing(client, name: str) -> dict[str, tuple[str, str, str]]:
    """device -> (container id, status, address) of testbed `name`, from one listing: no inspect
    per container (the SDK's `containers.list` inspects each one it lists)."""
    out = {}
    for c in client.api.containers(all=True, filters={"label": [f"{LABEL}=1", f"{LABEL_TESTBED}={name}"]}):
        nets = (c.get("NetworkSettings") or {}).get("Networks") or {}
        ip = next(iter(nets.values())).get("IPAddress", "") if nets else ""
        out[(c.get("Labels") or {}).get(LABEL_DEVICE, c["Id"])] = (c["Id"], c.get("State", ""), ip)
    return out


def wait_nodes(client, name: str, wait_s: float = 60.0) -> dict[str, NodeHandle]:
    """Wait until every node of the testbed answers Health; raises, with its last log lines, as soon
    as a container exits. One listing of the testbed per poll watches the containers, and the nodes
    are asked in parallel: an inspect per container per poll (32 devices, every 0.1 s) kept the
    engine busier than the nodes it was waiting for."""
    deadline = time.monotonic() + wait_s
    stop = threading.Event()
    asked: dict[str, cf.Future] = {}

    def healthy(device: str, address: str) -> None:
        with NodeClient(device, address) as c:
            c.wait_healthy(timeout_s=max(1.0, deadline - time.monotonic()), alive=lambda: not stop.is_set())

    ex = cf.ThreadPoolExecutor(32, thread_name_prefix="wait-nodes")
    try:
        while True:
            rows = _listing(client, name)
            for d, (cid, state, ip) in rows.items():
                if state in ("exited", "dead"):
                    raise RuntimeError(_explain_exit(client.containers.get(cid)))
                if d not in asked and state == "running" and ip:
                    asked[d] = ex.submit(healthy, d, f"{ip}:{NODE_PORT}")
            for f in asked.values():
                if f.done():
                    f.result()  # a node that never answered raises here
            if rows and len(asked) == len(rows) and all(f.done() for f in asked.values()):
                break
            if time.monotonic() > deadline:
                late = sorted(d for d in rows if d not in asked or not asked[d].done())
                raise RuntimeError(f"testbed {name!r}: {', '.join(late) or 'no container'} not up after {wait_s:.0f} s")
            time.sleep(WAIT_POLL_S)
    finally:
        stop.set()
        ex.shutdown(wait=True, cancel_futures=True)
    return handles(client, name)


def down(client, name: str | None = None) -> tuple[int, int]:
    """Remove the testbed's containers and network (all testbeds' when name is None), the
    containers in parallel, found by one listing (no inspect per container)."""
    labels = [f"{LABEL}=1"] + ([f"{LABEL_TESTBED}={name}"] if name else [])
    ids = [c["Id"] for c in client.api.containers(all=True, filters={"label": labels})]

    def rm(cid: str) -> None:
        try:
            client.api.remove_container(cid, force=True)
        except Exception as e:  # already gone
            if "No such container" not in str(e) and "already in progress" not in str(e):
                raise

    if ids:
        with cf.ThreadPoolExecutor(min(32, len(ids))) as ex:
            list(ex.map(rm, ids))
    nets = testbed_networks(client, name)
    for n in nets:
        _remove_network(n)
    return len(ids), len(nets)


def _remove_network(net, wait_s: float = 5.0) -> None:
    """Remove a network once the engine has let go of its removed containers' endpoints (it may
    take a moment after a burst of removals). An endpoint the engine keeps after its container is
    gone (an engine fault: moby#42119) outlasts any wait, and is named as such."""
    import docker

    deadline = time.monotonic() + wait_s
    while True:
        try:
            net.remove()
            return
        except docker.errors.NotFound:
            return
        except docker.errors.APIError as e:
            if "active endpoints" not in str(e):
                raise
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"network {net.name} still has endpoints {wait_s:.0f} s after its containers were removed: "
                    "the engine kept an endpoint of a removed container (only an engine restart drops it)"
                ) from None
            time.sleep(0.2)


def reap_orphans(client) -> list[str]:
    """Remove the testbeds runs started for themselves whose run is gone (killed outright: nothing
    could remove them); a testbed a person started is never touched. Their names."""
    runs = {"label": f"{LABEL_OWNER}=run"}
    names = {c.labels.get(LABEL_TESTBED) for c in client.containers.list(all=True, filters=runs)}
    names |= {
        (n.attrs.get("Labels") or {}).get(LABEL_TESTBED)
        for n in testbed_networks(client)
        if n.attrs.get("Labels", {}).get(LABEL_OWNER) == "run"
    }
    gone = sorted(n for n in names if n and not is_held(n))
    for n in gone:
        down(client, n)
    return gone


def status(client, name: str | None = None) -> list[dict]:
    rows = []
    for c in testbed_containers(client, name):
        rows.append(
            {
                "testbed": c.labels.get(LABEL_TESTBED),
                "device": c.labels.get(LABEL_DEVICE),
                "container": c.name,
                "status": c.status,
                "ip": container_ip(c),
                "cpus": container_cpus(c),
                "memory": c.attrs["HostConfig"].get("Memory") or 0,
                "config": c.labels.get(LABEL_CONFIG),
            }
        )
    return sorted(rows, key=lambda r: (r["testbed"] or "", r["device"] or ""))


def link_emulation_of(node: NodeClient) -> LinkEmulation:
    """How a testbed's nodes emulate link delay: netem where the kernel attaches it, else the
    nodes hold frames themselves (probed beside one node, by its Measure call: all share the
    host's kernel)."""
    return LinkEmulation.TC_NETEM if node.measure("netem")["netem"] else LinkEmulation.TC_NODE_DELAY


def _wait_status(cont, done, what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        cont.reload()
        if done(cont):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"container {cont.name} not {what} after {timeout_s:.0f} s (status {cont.status})")
        time.sleep(0.05)


class DockerRuntime(Runtime):
    """Uses the running testbed of that name whose devices match, held for the run; where none runs,
    starts one of its own (a name and a subnet of its own unless given) and removes it afterwards."""

    name = "docker"

    def __init__(
        self,
        testbed: Testbed,
        log_dir: Path,
        workspace: Path,
        testbed_name: str | None = None,
        subnet: str | None = None,
        image: str | None = None,
        client=None,
        wait: bool = False,
        console: Console | None = None,
    ):
        self.testbed = testbed
        self.log_dir = Path(log_dir)
        self.client = client or engine()
        if self.client is None:
            raise RuntimeError("no Docker engine answers")
        self.requested_name = testbed_name
        self.requested_subnet = subnet
        self.wait = wait
        self.console = console
        self.spec = testbed_spec(
            testbed, testbed_name or DEFAULT_NAME, subnet or DEFAULT_SUBNET, image, Path(workspace).resolve()
        )
        self.hold: TestbedHold | None = None
        self.owned = False
        self.started_at = 0
        self.start_s: float | None = None
        self.containers: dict[str, object] = {}
        self.caps = {d.name: d.cpus for d in testbed.devices}  # live: set_cpus updates it, the stats follow
        self._host_tc = HostShaper() if HostShaper.available() else None
        self._links = NodeLinks(testbed)
        self.deployment: DockerDeployment | None = None
        self._sampler: DockerStatsCollector | None = None

    def _say(self, text: str) -> None:
        if self.console is not None:
            self.console.print(text)

    def _use_running(self, running: list) -> str:
        """Hold the running testbed and check it is the one asked for; a note saying so."""
        self.hold = TestbedHold(self.spec.name, purpose="a run").acquire(
            wait=self.wait, on_wait=lambda who: self._say(f"testbed {self.spec.name!r} is in use by {who}: waiting")
        )
        running = testbed_containers(self.client, self.spec.name)  # as it is once held
        cfgs = {c.labels.get(LABEL_CONFIG) for c in running}
        if not running or cfgs != {self.spec.config_hash} or any(c.status != "running" for c in running):
            raise UserError(
                f"testbed {self.spec.name!r} is up with other devices (or not all running); "
                "`orchestrator testbed down` first, or run with the devices it has"
            )
        ws = Path(running[0].labels.get(LABEL_WORKSPACE, self.spec.workspace))
        nets = testbed_networks(self.client, self.spec.name)
        pools = (nets[0].attrs.get("IPAM") or {}).get("Config") or [] if nets else []
        subnet = pools[0].get("Subnet") if pools else self.spec.subnet
        # the addresses are the running testbed's: its subnet, whatever this run was given
        self.spec = testbed_spec(self.testbed, self.spec.name, subnet, self.spec.image, ws, owner=self.spec.owner)
        return f"docker runtime: used the running testbed {self.spec.name!r} (workspace {ws}), held for the run"

    def _start_own(self) -> tuple[dict[str, NodeHandle], str]:
        """Start a testbed for this run alone, held by it; another run taking the same subnet at the
        same moment makes the engine refuse the network: the next free one is tried."""
        import docker

        own = self.requested_name is None
        tried: set[str] = set()
        for _ in range(8):
            if own:
                name = own_testbed_name(DEFAULT_NAME)
                subnet = self.requested_subnet or free_subnet(self.client, skip=tried)
                self.spec = testbed_spec(self.testbed, name, subnet, self.spec.image, self.spec.workspace, owner="run")
            self.hold = TestbedHold(self.spec.name, purpose="a run, its own testbed").acquire(wait=self.wait)
            self.owned = True
            t0 = time.perf_counter()
            try:
                nodes = up(self.client, self.spec)
            except docker.errors.APIError as e:
                if not own or self.requested_subnet or "overlap" not in str(e).lower():
                    raise
                tried.add(self.spec.subnet)
                self.hold.release()
                continue
            self.start_s = time.perf_counter() - t0
            return nodes, (
                f"docker runtime: started testbed {self.spec.name!r} ({self.spec.subnet}) in {self.start_s:.1f} s "
                "for this run, and removed it after"
            )
        raise RuntimeError(f"no free subnet for a testbed of this run's own after trying {', '.join(sorted(tried))}")

    def start(self) -> Deployment:
        self.started_at = int(time.time())
        reap_orphans(self.client)
        running = testbed_containers(self.client, self.spec.name)
        if running:
            note = self._use_running(running)
            nodes = wait_nodes(self.client, self.spec.name, 30.0)
        else:
            nodes, note = self._start_own()
        notes = [note]
        self.containers = {c.labels[LABEL_DEVICE]: c for c in testbed_containers(self.client, self.spec.name)}
        wrong = [d for d, c in self.spec.by_device().items() if container_ip(self.containers[d]) != c.ip]
        if wrong:  # links are shaped and probed by these addresses: a mismatch would reach other containers
            raise RuntimeError(f"testbed {self.spec.name!r}: {', '.join(wrong)} not at the addresses planned")
        if any(d.gpu is not None for d in self.testbed.devices) and not mps_daemon_running():
            notes.append("no CUDA MPS daemon runs: GPU shares are not enforced (memory limits are)")
        first = next(iter(nodes.values()))
        with NodeClient(first.device, first.control_address) as node:
            emulation = link_emulation_of(node)
        notes.append(emulation.describe())
        if self._host_tc is None:
            notes.append(
                "link rates changed while running go through the sending nodes (the host cannot enter "
                "their network namespaces: not root): a busy node may apply them a CFS period late"
            )
        self.deployment = DockerDeployment(
            "docker",
            nodes,
            emulation,
            workspace=Path(self.spec.workspace).resolve(),
            cpu_quota_period_s=CFS_PERIOD_S,  # NanoCpus caps: quotas over the kernel's default period
            notes=notes,
        )
        return self.deployment

    def save_logs(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for dev, c in self.containers.items():
            try:
                text = c.logs(since=self.started_at - 1 if not self.owned else None).decode(errors="replace")
            except Exception as e:
                text = f"(logs unavailable: {e})\n"
            (self.log_dir / f"node_{dev}.log").write_text(text)

    def stop(self) -> None:
        """Close the clients, keep the nodes' logs, remove a testbed of the run's own, drop the hold."""
        try:
            if self.deployment is not None:
                self.deployment.close()
                self.deployment = None
            if self._host_tc is not None:
                self._host_tc.close()
            if self.containers:
                self.save_logs()
            if self.owned:
                down(self.client, self.spec.name)
                self.owned = False
            self.containers = {}
        finally:
            if self.hold is not None:
                self.hold.release()
                self.hold = None

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        """Stop; a run that failed because a node ran out of memory fails saying so."""
        causes = {}
        if isinstance(exc, Exception):
            causes = {d: why for d in self.containers if (why := self.gone_reason(d, settle_s=0.5))}
        self.stop()
        if causes:
            raise RuntimeError("; ".join(f"device {d} {why}" for d, why in causes.items())) from exc

    def node_plan(self, plan: Plan, run_dir: Path) -> Plan:
        """The plan as the containers can read it: itself when under the workspace, else its files
        hard-linked (copied across file systems) into <workspace>/.plans/<run folder name>/."""
        from orchestrator.partition.plan import Plan

        ws = self.workspace
        try:
            Path(plan.dir).resolve().relative_to(ws)
            return plan
        except ValueError:
            pass
        dst = ws / ".plans" / Path(run_dir).name
        dst.mkdir(parents=True, exist_ok=True)
        for f in Path(plan.dir).iterdir():
            if f.is_file() and not (dst / f.name).exists():
                try:
                    os.link(f, dst / f.name)
                except OSError:
                    shutil.copyfile(f, dst / f.name)
        return Plan.load(dst / "plan.json")

    def stats_sampler(self, out_dir: Path) -> DockerStatsCollector:
        self._sampler = DockerStatsCollector(self.client, self.containers, self.caps, out_dir)
        return self._sampler

    def gone_reason(self, device: str, settle_s: float = 2.0) -> str | None:
        """The engine's word on a container that stopped: killed by its cgroup for want of memory,
        with its limit and the highest memory use sampled (the container may take `settle_s` to stop)."""
        cont = self.containers.get(device)
        if cont is None:
            return None
        deadline = time.monotonic() + settle_s
        try:
            cont.reload()
            while cont.status == "running" and time.monotonic() < deadline:
                time.sleep(0.05)
                cont.reload()
        except Exception:  # removed meanwhile: nothing to tell
            return None
        if not cont.attrs["State"].get("OOMKilled"):
            return None
        limit = cont.attrs["HostConfig"].get("Memory") or 0
        rows = (self._sampler.samples.get(device) or []) if self._sampler is not None else []
        peaks = [r.memory_peak_bytes or r.memory_bytes or 0 for r in rows]
        sampled = f", {format_bytes(max(peaks))} at the last sample" if any(peaks) else ""
        return f"ran out of memory (limit {format_bytes(limit)}, peak {format_bytes(limit)} at the kill{sampled})"

    def fidelity_check(self, console: Console | None = None) -> dict:
        dep = self.running
        if console is not None:
            console.print("checking fidelity (links and CPU caps between the containers)...")
        ips = {d: c.ip for d, c in self.spec.by_device().items()}
        fid = check_nodes(dep, ips, self.testbed)
        if console is not None:
            console.print(
                f"fidelity checked in {fid['seconds']:.1f} s: "
                + (f"{len(fid['flagged'])} off by more than 10%" if fid["flagged"] else "all within 10%")
            )
        return fid

    def _container(self, device: str):
        if device not in self.containers:
            raise ValueError(f"testbed {self.spec.name!r} has no container for {device!r} (is the runtime started?)")
        return self.containers[device]

    def set_link(self, src: str, dst: str, rate_bps: int | None = None, delay_s: float | None = None) -> LinkChange:
        """In place (NodeLinks.change); a rate alone from the host, in the sender's network namespace
        (docker_host_tc: no wait for the node's CPU quota; a `docker exec` would cost ~100 ms)."""
        dst_ip = self.spec.by_device()[dst].ip if dst in self.spec.by_device() else ""
        host = None
        if self._host_tc is not None:

            def host(rate: int, delay: float | None) -> int:
                return self._host_tc.change_rate(self._container(src), dst_ip, rate, delay)

        return self._links.change(self.running, src, dst, dst_ip, rate_bps, delay_s, host)

    def set_cpus(self, device: str, cpus: float) -> float:
        """A live update of the container's NanoCpus (Docker's update of a CPU quota set that way),
        read back from the container's HostConfig; then the node re-reads its quota from its cgroup
        and resizes its stages' ORT threads to it (Requota). Returns the quota the node reads."""
        if cpus <= 0:
            raise ValueError(f"{device}: cpus must be > 0, got {cpus}")
        cont = self._container(device)
        api = self.client.api
        api._result(api._post_json(api._url("/containers/{0}/update", cont.id), data={"NanoCpus": round(cpus * 1e9)}))
        cont.reload()
        host = (cont.attrs["HostConfig"].get("NanoCpus") or 0) / 1e9
        reply = self.running.client(device).requota()
        if not reply.ok:
            raise RuntimeError(f"{cont.name}: the node could not follow its new CPU cap: {reply.error}")
        quota = reply.cpu_quota or None
        if quota is None or abs(quota - cpus) > cpus * 0.01 or abs(host - cpus) > 1e-9:
            raise RuntimeError(f"{cont.name}: CPU cap reads {host:g} (engine) and {quota} (cgroup), asked {cpus:g}")
        self.caps[device] = cpus
        return quota

    def kill(self, device: str) -> None:
        """`docker kill`: the node gets SIGKILL, its container stops; its address stays reserved."""
        cont = self._container(device)
        cont.kill()
        _wait_status(cont, lambda c: c.status != "running", "stopped")

    def leave(self, device: str) -> None:
        """`docker stop`: SIGTERM, the node closes its links and exits; the address stays reserved."""
        cont = self._container(device)
        cont.stop(timeout=5)
        _wait_status(cont, lambda c: c.status != "running", "stopped")

    def revive(self, device: str) -> NodeHandle:
        """Start the killed container again: same address, caps and start-up shaping (the links as
        configured), no stages loaded."""
        dep = self.running
        cont = self._container(device)
        cont.reload()
        if cont.status == "running":
            raise RuntimeError(f"{cont.name} is running: kill it first")
        cont.start()
        if self._host_tc is not None:  # a new process, a new namespace, the start-up shaping again
            self._host_tc.forget(cont)
        _wait_status(cont, _serving, "running")
        handle = handles(self.client, self.spec.name)[device]
        with NodeClient(device, handle.control_address) as c:
            c.wait_healthy(timeout_s=30.0, alive=lambda: _alive(cont))
        dep.replace_node(handle)
        self._links.reset(device)
        return handle
