"""A two-host Docker Swarm on one machine, for tests: the engine as manager, and a second Docker
engine in a container of the worker image (scripts/build_worker_image.sh) joined as a worker.
Placement on two hosts, the overlay between them and stats from a host whose engine the
orchestrator never talks to are then real, without a second machine.

Both context managers undo exactly what they did, also when a step fails half-way: a swarm they
did not make is used and never left; the worker leaves, its swarm node is removed and its
container (with its engine's volume) is deleted."""

from __future__ import annotations

import ipaddress
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field

import docker
from docker.models.containers import Container
from docker.utils.socket import frames_iter

from orchestrator.runtimes.docker_testbed import image_tag

WORKER_LABEL = "edge-testbed.worker"  # on the worker container: what to clean up after a crash
HOST_LABEL = "edge-testbed.host"  # swarm node label that pins a service to a host
SWARM_PORT = 2377


class SwarmUnavailable(RuntimeError):
    """The engine cannot hold the swarm these tests need; the text says why (tests skip with it)."""


class WorkerUnavailable(RuntimeError):
    """The worker engine cannot start or join here; the text says why (tests skip with it)."""


@dataclass(frozen=True)
class SwarmInfo:
    """What a worker needs to join, and whether the swarm was made here (and is left on exit)."""

    manager_addr: str  # the address the manager advertises: workers dial it (port 2377)
    worker_token: str
    manager_node_id: str
    made: bool


@dataclass
class Worker:
    """A second engine joined to the swarm. `address` is its container's address on the engine's
    bridge: ports its tasks publish in `mode: host` answer there, reachable from this host."""

    container: Container
    address: str
    node_id: str
    hostname: str
    how: str = "privileged"  # or the fallback it runs under (see _start)
    timings_s: dict[str, float] = field(default_factory=dict)  # start, load, join: seconds each

    def docker(self, *args: str, timeout_s: float = 60.0) -> str:
        """Run the worker engine's own `docker` CLI; its output; WorkerUnavailable on failure."""
        return _exec(self.container, ["docker", *args], timeout_s)


def worker_image_tag() -> str:
    """edge-testbed-worker:<version>, the tag scripts/build_worker_image.sh gives the image."""
    return image_tag().replace("edge-testbed-node:", "edge-testbed-worker:", 1)


def bridge_gateway(client: docker.DockerClient) -> str:
    """The engine's address on its default bridge (docker0): what a container on that bridge
    reaches the host at. The gateway where the engine reports one, else its subnet's first host
    (the address Docker gives the bridge)."""
    for cfg in client.networks.get("bridge").attrs.get("IPAM", {}).get("Config") or []:
        if cfg.get("Gateway"):
            return str(cfg["Gateway"]).split("/")[0]
        if cfg.get("Subnet") and ":" not in cfg["Subnet"]:
            return str(next(ipaddress.ip_network(cfg["Subnet"]).hosts()))
    raise SwarmUnavailable("the engine's bridge network has no IPv4 subnet: no address a worker could reach")


@contextmanager
def swarm(client: docker.DockerClient) -> Iterator[SwarmInfo]:
    """The engine's swarm: the one it is in (used as found, never left), or a new one advertising
    the bridge gateway so that containers can join it, left with --force on exit."""
    state = client.info().get("Swarm", {})
    if state.get("LocalNodeState") == "active":
        if not state.get("ControlAvailable"):
            raise SwarmUnavailable("the engine is in a swarm but not a manager: it cannot add a worker")
        client.swarm.reload()
        yield SwarmInfo(state["NodeAddr"], client.swarm.attrs["JoinTokens"]["Worker"], state["NodeID"], made=False)
        return
    if state.get("LocalNodeState") not in ("inactive", None):
        raise SwarmUnavailable(f"the engine's swarm is {state.get('LocalNodeState')!r}: neither in one nor out")
    had_gwbridge = bool(client.networks.list(names=["docker_gwbridge"]))
    addr = bridge_gateway(client)
    client.swarm.init(advertise_addr=addr, listen_addr=f"0.0.0.0:{SWARM_PORT}")
    try:
        client.swarm.reload()
        node_id = client.info()["Swarm"]["NodeID"]
        yield SwarmInfo(addr, client.swarm.attrs["JoinTokens"]["Worker"], node_id, made=True)
    finally:
        client.swarm.leave(force=True)
        if not had_gwbridge:  # made by swarm init; `swarm leave` keeps it
            for net in client.networks.list(names=["docker_gwbridge"]):
                with suppress(docker.errors.APIError):
                    net.remove()


# Every capability Docker 20.10 knows but CAP_SYS_RESOURCE, for engines whose own bounding set
# lacks it: --privileged asks runc for all of them and fails ("unable to apply caps").
_CAPS_BUT_SYS_RESOURCE = [
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID", "SETPCAP",
    "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW", "IPC_LOCK", "IPC_OWNER",
    "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT", "SYS_ADMIN", "SYS_BOOT", "SYS_NICE",
    "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD", "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP", "MAC_OVERRIDE",
    "MAC_ADMIN", "SYSLOG", "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ",
]  # fmt: skip
_NEAR_PRIVILEGED = {
    "cap_add": _CAPS_BUT_SYS_RESOURCE,
    "security_opt": ["seccomp=unconfined", "apparmor=unconfined"],
    "device_cgroup_rules": ["c *:* rmw", "b *:* rmw"],
}


def _output(sock) -> str:
    """stdout and stderr of an exec without a tty, as they came, to the end of the stream."""
    return b"".join(data for _, data in frames_iter(sock, tty=False)).decode(errors="replace")


def _exec(container: Container, cmd: list[str], timeout_s: float) -> str:
    """Run `cmd` in the container; its output, or WorkerUnavailable with the output on failure."""
    api = container.client.api
    exec_id = api.exec_create(container.id, cmd)["Id"]
    sock = api.exec_start(exec_id, socket=True)
    try:
        sock._sock.settimeout(timeout_s)
        out = _output(sock)
    except TimeoutError:
        raise WorkerUnavailable(f"`{' '.join(cmd)}` in the worker took over {timeout_s:.0f} s") from None
    finally:
        sock.close()
    code = api.exec_inspect(exec_id)["ExitCode"]
    if code != 0:
        raise WorkerUnavailable(f"`{' '.join(cmd)}` in the worker exited {code}: {out.strip()[-2000:]}")
    return out


def _load_image(client: docker.DockerClient, container: Container, tag: str, timeout_s: float) -> None:
    """`docker save` on the host engine streamed into `docker load` on the worker's, no file between."""
    api = client.api
    exec_id = api.exec_create(container.id, ["docker", "load"], stdin=True)["Id"]
    sock = api.exec_start(exec_id, socket=True)
    raw: socket.socket = sock._sock
    raw.settimeout(timeout_s)
    try:
        for chunk in client.images.get(tag).save(chunk_size=1 << 20, named=tag):
            raw.sendall(chunk)
        raw.shutdown(socket.SHUT_WR)  # EOF on the loader's stdin
        out = _output(sock)
    finally:
        sock.close()
    code = api.exec_inspect(exec_id)["ExitCode"]
    if code != 0:
        raise WorkerUnavailable(f"loading {tag} into the worker failed ({code}): {out.strip()[-2000:]}")


def _start(client: docker.DockerClient, image: str, name: str, hostname: str) -> tuple[Container, str]:
    """Create and start the worker container, privileged where the engine can do it; the container
    and how it runs. A container that fails to start is removed before raising."""
    tried = []
    for how, extra in (("privileged", {"privileged": True}), ("all capabilities but SYS_RESOURCE", _NEAR_PRIVILEGED)):
        # The inner engine's cgroups nest under the worker's own (a private cgroup namespace).
        host_config = client.api.create_host_config(cgroupns="private", **extra)
        if not extra.get("privileged"):  # the CLI's --security-opt systempaths=unconfined
            host_config.update(MaskedPaths=[], ReadonlyPaths=[])
        created = client.api.create_container(
            image, name=name, hostname=hostname, labels={WORKER_LABEL: hostname}, host_config=host_config
        )
        container = client.containers.get(created["Id"])
        try:
            container.start()
            return container, how
        except docker.errors.APIError as e:
            tried.append(f"{how}: {e.explanation or e}")
            container.remove(force=True, v=True)
            if "apply caps" not in str(e):
                break
    raise WorkerUnavailable("the worker container does not start: " + "; ".join(tried))


def _wait(what: str, ready, timeout_s: float, alive=lambda: True) -> None:
    """Poll `ready` until true; WorkerUnavailable once the worker dies or `timeout_s` passes."""
    deadline = time.monotonic() + timeout_s
    while not ready():
        if not alive():
            raise WorkerUnavailable(f"the worker stopped while waiting for {what}")
        if time.monotonic() > deadline:
            raise WorkerUnavailable(f"{what} not within {timeout_s:.0f} s")
        time.sleep(0.25)


def _engine_up(container: Container) -> bool:
    """Whether the worker's dockerd answers its own CLI yet."""
    try:
        _exec(container, ["docker", "version", "--format", "{{.Server.Version}}"], 10)
        return True
    except WorkerUnavailable:
        return False


def _running(container: Container) -> bool:
    container.reload()
    return container.status == "running"


@contextmanager
def worker(
    client: docker.DockerClient,
    swarm_info: SwarmInfo,
    image_tags: list[str],
    *,
    host_label: str = "worker2",
    image: str | None = None,
    timeout_s: float = 120.0,
) -> Iterator[Worker]:
    """A worker engine in a container: started, loaded with `image_tags` from the host engine,
    joined to the swarm, its swarm node labelled `edge-testbed.host=<host_label>` and Ready.
    WorkerUnavailable says why where it cannot be had; nothing is left behind either way."""
    if ipaddress.ip_address(swarm_info.manager_addr).is_loopback:
        raise WorkerUnavailable(
            f"the swarm's manager advertises {swarm_info.manager_addr}, which a worker in a container "
            "cannot reach; a swarm advertising the bridge gateway (tests/swarm_helpers.swarm) can"
        )
    image = image or worker_image_tag()
    try:
        client.images.get(image)
    except docker.errors.ImageNotFound:
        raise WorkerUnavailable(f"no image {image}: build it with scripts/build_worker_image.sh") from None
    hostname = f"edge-testbed-{host_label}-{uuid.uuid4().hex[:6]}"
    container: Container | None = None
    node_id = ""
    timings: dict[str, float] = {}
    try:
        t0 = time.monotonic()
        container, how = _start(client, image, hostname, hostname)
        _wait("the worker's dockerd", lambda: _engine_up(container), timeout_s, lambda: _running(container))
        timings["start"] = time.monotonic() - t0
        container.reload()
        bridge = container.attrs["NetworkSettings"]["Networks"].get("bridge", {})
        address = bridge.get("IPAddress", "")
        if bridge.get("Gateway") and bridge["Gateway"] != swarm_info.manager_addr and swarm_info.made:
            raise WorkerUnavailable(f"the worker's gateway is {bridge['Gateway']}, not {swarm_info.manager_addr}")

        t0 = time.monotonic()
        for tag in image_tags:
            _load_image(client, container, tag, timeout_s)
        timings["load"] = time.monotonic() - t0

        t0 = time.monotonic()
        join = ["docker", "swarm", "join", "--token", swarm_info.worker_token, "--advertise-addr", "eth0"]
        _exec(container, [*join, f"{swarm_info.manager_addr}:{SWARM_PORT}"], 60)
        node_id = _exec(container, ["docker", "info", "--format", "{{.Swarm.NodeID}}"], 30).strip()
        node = client.nodes.get(node_id)
        spec = dict(node.attrs["Spec"])
        spec["Labels"] = {**spec.get("Labels", {}), HOST_LABEL: host_label}
        node.update(spec)

        def ready() -> bool:
            return client.nodes.get(node_id).attrs["Status"]["State"] == "ready"

        _wait("the worker's swarm node to be Ready", ready, timeout_s, lambda: _running(container))
        timings["join"] = time.monotonic() - t0
        yield Worker(container, address, node_id, hostname, how, timings)
    finally:
        # Best effort first (the worker leaving, its node removed), so that the container, which
        # holds everything else, always goes; a failure to remove it is raised.
        if container is not None:
            with suppress(Exception):
                if _running(container):
                    _exec(container, ["docker", "swarm", "leave", "--force"], 30)
        with suppress(Exception):  # by ID, or by hostname where the join went through unread
            for node in client.nodes.list():
                if node.id == node_id or node.attrs.get("Description", {}).get("Hostname") == hostname:
                    node.remove(force=True)
        if container is not None:
            with suppress(docker.errors.NotFound):
                container.remove(force=True, v=True)
