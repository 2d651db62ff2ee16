"""Docker runtime: one container per device on one bridge network, driven with the docker SDK.

Each container is capped by cgroups (CPU quota from `cpus`, memory from `memory` with swap
off, optional cpuset, a GPU device request), gets NET_ADMIN and nothing else beyond Docker's
defaults, and runs the node as user "node" (the image's entrypoint drops root, keeping only
NET_ADMIN for tc). Each node shapes its own egress at start (EDGE_TC_PEERS); at Load it is given
the same links again and keeps them (node/shaping.py). Everything is labelled `edge-testbed=1`
and `edge-testbed.testbed=<name>`, so `down` and clean-up remove exactly the testbed's objects.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.config import Testbed
from orchestrator.driving.client import NodeClient
from orchestrator.errors import UserError
from orchestrator.runtimes.base import Deployment, NodeHandle
from orchestrator.runtimes.docker_testbed import (
    DEFAULT_NAME,
    DEFAULT_SUBNET,
    LABEL,
    LABEL_CONFIG,
    LABEL_DEVICE,
    LABEL_TESTBED,
    LABEL_WORKSPACE,
    NODE_PORT,
    WORKSPACE_IN,
    TestbedSpec,
    image_tag,
    testbed_spec,
)


def engine(timeout_s: float = 5.0):
    """A docker client whose engine answers, or None."""
    try:
        import docker

        client = docker.from_env(timeout=max(30, int(timeout_s)))
        client.ping()
        return client
    except Exception:
        return None


def image_present(client, image: str | None = None) -> bool:
    try:
        client.images.get(image or image_tag())
        return True
    except Exception:
        return False


def stage_plan_into(plan, workspace: Path, run_dir: Path):
    """The plan as the containers can read it: itself when under the workspace, else its files
    hard-linked (copied across file systems) into <workspace>/.plans/<run folder name>/."""
    from orchestrator.partition.plan import Plan

    ws = Path(workspace).resolve()
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


def mps_daemon_running() -> bool:
    pipe = os.environ.get("CUDA_MPS_PIPE_DIRECTORY", "/tmp/nvidia-mps")
    return Path(pipe, "control").exists()


@dataclass
class DockerDeployment(Deployment):
    workspace: Path = Path(".")
    ips: dict[str, str] = field(default_factory=dict)
    testbed_name: str = DEFAULT_NAME

    def node_path(self, local_path: Path) -> str:
        p = Path(local_path).resolve()
        try:
            rel = p.relative_to(self.workspace)
        except ValueError:
            raise RuntimeError(
                f"{p} is outside the testbed's workspace {self.workspace}, which is all the containers see"
            ) from None
        return f"{WORKSPACE_IN}/{rel.as_posix()}"


def testbed_containers(client, name: str | None = None, all_: bool = True) -> list:
    labels = [f"{LABEL}=1"] + ([f"{LABEL_TESTBED}={name}"] if name else [])
    return client.containers.list(all=all_, filters={"label": labels})


def testbed_networks(client, name: str | None = None) -> list:
    labels = [f"{LABEL}=1"] + ([f"{LABEL_TESTBED}={name}"] if name else [])
    return client.networks.list(filters={"label": labels})


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
                ports={f"{NODE_PORT}/tcp": ("127.0.0.1", None)},
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


def _published(cont) -> str:
    ports = (cont.attrs.get("NetworkSettings") or {}).get("Ports") or {}
    for b in ports.get(f"{NODE_PORT}/tcp") or []:
        if b.get("HostPort"):
            return f"127.0.0.1:{b['HostPort']}"
    raise RuntimeError(f"container {cont.name} publishes no port for {NODE_PORT}")


def handles(client, name: str) -> dict[str, NodeHandle]:
    out = {}
    for cont in testbed_containers(client, name, all_=False):
        dev = cont.labels[LABEL_DEVICE]
        nets = cont.attrs["NetworkSettings"]["Networks"]
        ip = next(iter(nets.values()))["IPAddress"]
        out[dev] = NodeHandle(dev, _published(cont), f"{ip}:{NODE_PORT}", cont.attrs["State"].get("Pid"))
    return out


def _explain_exit(cont) -> str:
    cont.reload()
    tail = cont.logs(tail=8).decode(errors="replace").strip()
    return f"container {cont.name} exited ({cont.attrs['State'].get('ExitCode')}): {tail}"


def wait_nodes(client, name: str, wait_s: float = 60.0) -> dict[str, NodeHandle]:
    conts = {c.labels[LABEL_DEVICE]: c for c in testbed_containers(client, name)}
    deadline = time.monotonic() + wait_s
    for c in conts.values():
        while True:
            c.reload()
            if c.status == "running" and c.attrs["NetworkSettings"]["Ports"].get(f"{NODE_PORT}/tcp"):
                break
            if c.status in ("exited", "dead"):
                raise RuntimeError(_explain_exit(c))
            if time.monotonic() > deadline:
                raise RuntimeError(f"container {c.name} not running after {wait_s:.0f} s")
            time.sleep(0.05)
    hs = handles(client, name)

    def alive(c) -> bool:
        c.reload()
        if c.status in ("exited", "dead"):
            raise RuntimeError(_explain_exit(c))
        return True

    def healthy(d: str) -> None:
        with NodeClient(d, hs[d].control_address) as c:
            c.wait_healthy(timeout_s=max(1.0, deadline - time.monotonic()), alive=lambda: alive(conts[d]))

    with cf.ThreadPoolExecutor(len(hs)) as ex:
        list(ex.map(healthy, hs))
    return hs


def down(client, name: str | None = None) -> tuple[int, int]:
    """Remove the testbed's containers and network (all testbeds' when name is None)."""
    conts = testbed_containers(client, name)

    def rm(c) -> None:
        try:
            c.remove(force=True)
        except Exception as e:  # already gone
            if "No such container" not in str(e) and "already in progress" not in str(e):
                raise

    if conts:
        with cf.ThreadPoolExecutor(len(conts)) as ex:
            list(ex.map(rm, conts))
    nets = testbed_networks(client, name)
    for n in nets:
        n.remove()
    return len(conts), len(nets)


def status(client, name: str | None = None) -> list[dict]:
    rows = []
    for c in testbed_containers(client, name):
        hc = c.attrs["HostConfig"]
        nets = c.attrs["NetworkSettings"]["Networks"]
        rows.append(
            {
                "testbed": c.labels.get(LABEL_TESTBED),
                "device": c.labels.get(LABEL_DEVICE),
                "container": c.name,
                "status": c.status,
                "ip": next(iter(nets.values()))["IPAddress"] if nets else "",
                "cpus": (hc.get("NanoCpus") or 0) / 1e9,
                "memory": hc.get("Memory") or 0,
                "config": c.labels.get(LABEL_CONFIG),
            }
        )
    return sorted(rows, key=lambda r: (r["testbed"] or "", r["device"] or ""))


class DockerRuntime:
    """Uses a running testbed whose devices match, or starts one and stops it afterwards."""

    name = "docker"

    def __init__(
        self,
        testbed: Testbed,
        log_dir: Path,
        workspace: Path,
        testbed_name: str = DEFAULT_NAME,
        subnet: str = DEFAULT_SUBNET,
        image: str | None = None,
        client=None,
    ):
        self.testbed = testbed
        self.log_dir = Path(log_dir)
        self.client = client or engine()
        if self.client is None:
            raise RuntimeError("no Docker engine answers")
        self.spec = testbed_spec(testbed, testbed_name, subnet, image, Path(workspace).resolve())
        self.owned = False
        self.started_at = 0
        self.start_s: float | None = None
        self.containers: dict[str, object] = {}
        self.deployment: DockerDeployment | None = None

    def start(self) -> Deployment:
        self.started_at = int(time.time())
        notes = []
        running = testbed_containers(self.client, self.spec.name)
        if running:
            cfgs = {c.labels.get(LABEL_CONFIG) for c in running}
            if cfgs != {self.spec.config_hash} or any(c.status != "running" for c in running):
                raise UserError(
                    f"testbed {self.spec.name!r} is up with other devices (or not all running); "
                    "`orchestrator testbed down` first, or run with the devices it has"
                )
            ws = Path(running[0].labels.get(LABEL_WORKSPACE, self.spec.workspace))
            self.spec.workspace = str(ws)
            nodes = wait_nodes(self.client, self.spec.name, 30.0)
            notes.append(f"docker runtime: used the running testbed {self.spec.name!r} (workspace {ws})")
        else:
            t0 = time.perf_counter()
            nodes = up(self.client, self.spec)
            self.owned = True
            self.start_s = time.perf_counter() - t0
            notes.append(
                f"docker runtime: started testbed {self.spec.name!r} in {self.start_s:.1f} s "
                "and stopped it after the run"
            )
        self.containers = {c.labels[LABEL_DEVICE]: c for c in testbed_containers(self.client, self.spec.name)}
        if any(d.gpu is not None for d in self.testbed.devices) and not mps_daemon_running():
            notes.append("no CUDA MPS daemon runs: GPU shares are not enforced (memory limits are)")
        by_dev = self.spec.by_device()
        self.deployment = DockerDeployment(
            "docker",
            nodes,
            node_paces_rate=False,
            node_adds_delay=False,
            notes=notes,
            tc_shaped=True,
            workspace=Path(self.spec.workspace).resolve(),
            ips={d: by_dev[d].ip for d in nodes},
            testbed_name=self.spec.name,
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
        if self.deployment is not None:
            self.deployment.close()
            self.deployment = None
        if not self.containers and not self.owned:
            return
        self.save_logs()
        if self.owned:
            down(self.client, self.spec.name)
            self.owned = False
        self.containers = {}

    def __enter__(self) -> DockerRuntime:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
