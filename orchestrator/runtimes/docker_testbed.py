"""The Docker testbed as data: one spec, used both to start containers through the docker SDK
(orchestrator/runtimes/docker.py) and to render docker-compose.yml, so the two cannot differ.

A testbed is one bridge network with a fixed subnet and one container per device, named
`<testbed>-<device>`, at a fixed address (.10, .11, ... in device order), labelled as the
testbed's. Each node shapes its own egress at start from EDGE_TC_PEERS (see node/shaping.py).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from orchestrator.config import Testbed
from orchestrator.runtimes import DEFAULT_DEVICES, DEFAULT_NAME, DEFAULT_SUBNET

LABEL = "edge-testbed"  # "1" on everything a testbed creates
LABEL_TESTBED = "edge-testbed.testbed"
LABEL_DEVICE = "edge-testbed.device"
LABEL_CONFIG = "edge-testbed.config"  # hash of the devices and links: does a running one match?
LABEL_WORKSPACE = "edge-testbed.workspace"
LABEL_OWNER = "edge-testbed.owner"  # "run": a run started it for itself (and removes it), else absent
NODE_PORT = 50051
WORKSPACE_IN = "/workspace"  # where the host workspace (run folders) is mounted, read-only
COMPOSE_WORKSPACE = "./runs"  # docker-compose.yml mounts this (relative to the repo root)
PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def image_tag(pyproject: Path = PYPROJECT) -> str:
    """edge-testbed-node:<[project] version of pyproject.toml>, the tag scripts/build_image.sh gives
    the image. No version read is an error here: a guessed tag would only fail later, at `up`."""
    try:
        text = Path(pyproject).read_text()
    except OSError as e:
        raise RuntimeError(f"cannot read the node image's version from {pyproject}: {e.strerror}") from None
    project = re.search(r"(?ms)^\[project\][ \t]*$(.*?)(?=^\[|\Z)", text)
    version = re.search(r'(?m)^version\s*=\s*"([^"]+)"', project.group(1)) if project else None
    if version is None:
        raise RuntimeError(f"{pyproject} has no [project] version: the node image's tag is made from it")
    return f"edge-testbed-node:{version.group(1)}"


@dataclass
class ContainerSpec:
    device: str
    name: str
    ip: str
    nano_cpus: int
    memory: int
    cpuset: str | None
    env: dict[str, str]
    labels: dict[str, str]
    command: list[str]
    gpu_index: int | None = None


@dataclass
class TestbedSpec:
    name: str
    network: str
    subnet: str
    image: str
    workspace: str  # host folder mounted at WORKSPACE_IN
    config_hash: str
    owner: str | None = None  # "run": started by a run for itself
    containers: list[ContainerSpec] = field(default_factory=list)

    def by_device(self) -> dict[str, ContainerSpec]:
        return {c.device: c for c in self.containers}

    @property
    def labels(self) -> dict[str, str]:
        own = {LABEL_OWNER: self.owner} if self.owner else {}
        return {LABEL: "1", LABEL_TESTBED: self.name, LABEL_CONFIG: self.config_hash, **own}


def config_hash(testbed: Testbed) -> str:
    """Devices and links as the containers emulate them (names, caps, links): 12 hex digits."""
    body = {
        # `host:` (a swarm node) only where given: testbeds without it keep their hash
        "devices": [
            d.model_dump(exclude={"power", "type", "host"}) | ({"host": d.host} if d.host else {})
            for d in testbed.devices
        ],
        "links": {
            f"{a.name}>{b.name}": testbed.link(a.name, b.name).model_dump()
            for a in testbed.devices
            for b in testbed.devices
            if a.name != b.name
        },
    }
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:12]


def testbed_spec(
    testbed: Testbed,
    name: str = DEFAULT_NAME,
    subnet: str = DEFAULT_SUBNET,
    image: str | None = None,
    workspace: str | Path = "runs",
    owner: str | None = None,
) -> TestbedSpec:
    net = ipaddress.ip_network(subnet)
    if net.num_addresses < len(testbed.devices) + 16:
        raise ValueError(f"subnet {subnet} too small for {len(testbed.devices)} devices")
    ips = {d.name: str(net.network_address + 10 + i) for i, d in enumerate(testbed.devices)}
    h = config_hash(testbed)
    spec = TestbedSpec(
        name=name,
        network=f"{name}-net",
        subnet=str(net),
        image=image or image_tag(),
        workspace=str(workspace),
        config_hash=h,
        owner=owner,
    )
    for d in testbed.devices:
        peers = []
        for o in testbed.devices:
            if o.name == d.name:
                continue
            link = testbed.link(d.name, o.name)
            if link.rate_bps or link.delay_s:
                peers.append({"device": o.name, "ip": ips[o.name], "rate_bps": link.rate_bps, "delay_s": link.delay_s})
        env = {
            "EDGE_TC_PEERS": json.dumps(peers, separators=(",", ":")),
            "MALLOC_MMAP_THRESHOLD_": str(64 * 1024 * 1024),
            "MALLOC_TRIM_THRESHOLD_": str(256 * 1024 * 1024),
        }
        cmd = ["--device", d.name, "--port", str(NODE_PORT), "--host", "0.0.0.0"]
        gpu = None
        if d.gpu is not None:
            gpu = d.gpu.index
            cmd.append("--cuda")
            env["NVIDIA_VISIBLE_DEVICES"] = str(d.gpu.index)
            if d.gpu.memory:
                env["ORT_CUDA_GPU_MEM_LIMIT"] = str(d.gpu.memory)
            env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] = str(max(1, math.floor(d.gpu.share * 100)))
        labels = {**spec.labels, LABEL_DEVICE: d.name}
        spec.containers.append(
            ContainerSpec(
                device=d.name,
                name=f"{name}-{d.name}",
                ip=ips[d.name],
                nano_cpus=round(d.cpus * 1e9),
                memory=d.memory,
                cpuset=d.cpuset,
                env=env,
                labels=labels,
                command=cmd,
                gpu_index=gpu,
            )
        )
    return spec


def render_compose(spec: TestbedSpec, devices_path: str = DEFAULT_DEVICES) -> str:
    """docker-compose.yml for a spec: `docker compose up -d` gives what `orchestrator testbed up` does."""
    services = {}
    for c in spec.containers:
        svc: dict = {
            "image": spec.image,
            "container_name": c.name,
            "hostname": c.device,
            "command": c.command,
            "cpus": c.nano_cpus / 1e9,
            "mem_limit": c.memory,
            "memswap_limit": c.memory,
            "cap_add": ["NET_ADMIN"],
            "environment": dict(c.env),
            "labels": {**c.labels, LABEL_WORKSPACE: spec.workspace},
            "networks": {spec.network: {"ipv4_address": c.ip}},
            "volumes": [f"{spec.workspace}:{WORKSPACE_IN}:ro"],
        }
        if c.cpuset:
            svc["cpuset"] = c.cpuset
        if c.gpu_index is not None:
            svc["deploy"] = {
                "resources": {
                    "reservations": {
                        "devices": [{"driver": "nvidia", "device_ids": [str(c.gpu_index)], "capabilities": ["gpu"]}]
                    }
                }
            }
        services[c.device] = svc
    doc = {
        "version": "2.4",
        "services": services,
        "networks": {
            spec.network: {
                "name": spec.network,
                "driver": "bridge",
                "labels": spec.labels,
                "ipam": {"config": [{"subnet": spec.subnet}]},
            }
        },
    }
    head = (
        f"# The default testbed, rendered by `orchestrator testbed render` from {devices_path}:\n"
        "# do not edit (tests/test_docker_testbed.py fails when this drifts from the renderer).\n"
        "# `docker-compose up -d` (or `docker compose up -d`) here gives the same testbed as\n"
        "# `orchestrator testbed up` (make testbed-up); build the image first (make image).\n"
    )
    return head + yaml.safe_dump(doc, sort_keys=False, default_flow_style=False, width=120)
