"""Least privilege, inspected on the real thing: each container adds NET_ADMIN and nothing else, is
not privileged, publishes no port on the host's interfaces and mounts the workspace read-only; its
node runs as a user that is not root, holding NET_ADMIN alone; local nodes listen on loopback only."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import psutil

from orchestrator import config
from orchestrator.config import Device
from orchestrator.runtimes.docker import DockerRuntime
from orchestrator.runtimes.local import LocalRuntime

CAP_NET_ADMIN = 12
NAME = "privtest"
SUBNET = "10.214.63.0/24"


def _testbed() -> config.Testbed:
    return config.Testbed(
        devices=[
            Device(name="phone", cpus=0.3, memory="512MiB", bandwidth="50mbit", delay="5ms"),
            Device(name="watch", cpus=0.2, memory="512MiB", bandwidth="20mbit", delay="10ms"),
        ],
        source="devices.yaml",
    )


def _status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}


def test_containers_add_net_admin_alone_publish_nothing_and_run_the_node_unprivileged(
    tmp_path, docker_client, node_image
):
    with DockerRuntime(
        _testbed(), tmp_path / "logs", tmp_path / "ws", testbed_name=NAME, subnet=SUBNET, image=node_image
    ) as rt:
        dep = rt.start()
        for device, cont in rt.containers.items():
            cont.reload()
            host = cont.attrs["HostConfig"]
            assert host["CapAdd"] == ["NET_ADMIN"], (device, host["CapAdd"])
            assert not host.get("Privileged") and not host.get("Devices"), device
            assert not host.get("PortBindings"), (device, host.get("PortBindings"))
            published = [b for bs in (cont.attrs["NetworkSettings"].get("Ports") or {}).values() for b in bs or []]
            assert published == [], (device, published)
            assert cont.attrs["Mounts"] and all(not m["RW"] for m in cont.attrs["Mounts"]), cont.attrs["Mounts"]
            node = psutil.Process(dep.nodes[device].pid)
            assert "node" in " ".join(node.cmdline()), node.cmdline()
            st = _status(node.pid)
            assert all(int(u) != 0 for u in st["Uid"].split()), (device, st["Uid"])
            assert int(st["CapEff"], 16) == 1 << CAP_NET_ADMIN, (device, st["CapEff"])
            assert dep.nodes[device].control_address == dep.nodes[device].peer_address  # reached on the bridge
        assert dep.client("phone").health().device == "phone"


def test_local_nodes_listen_on_loopback_only(tmp_path):
    with LocalRuntime(_testbed(), tmp_path / "logs", workspace=tmp_path / "ws") as rt:
        dep = rt.start()
        for device, handle in dep.nodes.items():
            socks = psutil.Process(handle.pid).net_connections(kind="inet")
            listening = [c.laddr for c in socks if c.status == psutil.CONN_LISTEN]
            assert listening, f"{device}: no listening socket"
            assert all(_loopback(a.ip) for a in listening), (device, listening)


def _loopback(ip: str) -> bool:
    """127.0.0.1, ::1, or 127.0.0.1 as IPv6 writes it (::ffff:127.0.0.1) on a dual-stack socket."""
    addr = ipaddress.ip_address(ip)
    mapped = getattr(addr, "ipv4_mapped", None)
    return addr.is_loopback or (mapped is not None and mapped.is_loopback)
