"""What every runtime gives the orchestrator: running nodes and how to reach them."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from common import testbed_pb2 as pb
from common import testbed_pb2_grpc as pbg
from common.grpc_options import CHANNEL_OPTIONS


@dataclass
class NodeHandle:
    device: str
    control_address: str  # where the orchestrator reaches the node
    peer_address: str  # where other nodes reach it
    pid: int | None = None


@dataclass
class Deployment:
    """Nodes a runtime started (or found), and how links are emulated on them."""

    runtime: str
    nodes: dict[str, NodeHandle]
    node_paces_rate: bool  # True: the node's sender paces bytes (local); False: tc does (docker)
    node_adds_delay: bool  # True: the node holds frames for the link delay (no netem)
    notes: list[str] = field(default_factory=list)
    tc_shaped: bool = False  # True: each node shapes its egress with tc (Peer.ip, tc_rate_bps, tc_delay_s)

    def node_path(self, local_path: Path) -> str:
        """A file of the run folder as the node sees it."""
        return str(Path(local_path).resolve())


def wait_healthy(address: str, device: str, timeout_s: float = 30.0, alive=None) -> None:
    """Poll Health until the node answers; `alive()` returning False means it died."""
    deadline = time.monotonic() + timeout_s
    last = ""
    with grpc.insecure_channel(address, options=CHANNEL_OPTIONS) as ch:
        stub = pbg.NodeStub(ch)
        while time.monotonic() < deadline:
            if alive is not None and not alive():
                raise RuntimeError(f"node {device} exited before it became healthy")
            try:
                stub.Health(pb.Empty(), timeout=1.0)
                return
            except grpc.RpcError as e:
                last = e.code().name
            time.sleep(0.1)
    raise RuntimeError(f"node {device} at {address} not healthy after {timeout_s:.0f} s ({last})")
