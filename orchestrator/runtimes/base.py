"""What every runtime gives the orchestrator: running nodes and how to reach them."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.driving.client import NodeClient


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

    _clients: dict[str, NodeClient] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def client(self, device: str) -> NodeClient:
        """The control client of a device's node, opened once and kept until close()."""
        with self._lock:
            if device not in self._clients:
                self._clients[device] = NodeClient(device, self.nodes[device].control_address)
            return self._clients[device]

    def close(self) -> None:
        for c in self._clients.values():
            c.close()
        self._clients.clear()

    def node_path(self, local_path: Path) -> str:
        """A file of the run folder as the node sees it."""
        return str(Path(local_path).resolve())
