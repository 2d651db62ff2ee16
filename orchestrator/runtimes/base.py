"""What every runtime gives the orchestrator: one protocol, so the code above never asks which
runtime it holds. A runtime starts nodes (a Deployment: how to reach them, how their links are
emulated), says how a plan's files look from its nodes, samples their stats, checks its own
emulation, and changes the world while it runs: a link's rate or delay, a device's CPU cap, a
device crashing and coming back."""

from __future__ import annotations

import abc
import enum
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.driving.client import NodeClient
from orchestrator.scenario.timeline import HELD_RATE_BPS  # re-exported: what a runtime applies for a zero

if TYPE_CHECKING:
    from rich.console import Console

    from orchestrator.partition.plan import Plan
    from orchestrator.runtimes.stats import StatsSampler

__all__ = ["HELD_RATE_BPS", "Deployment", "LinkChange", "LinkEmulation", "NodeHandle", "Runtime", "held_rate"]


def held_rate(rate_bps: int) -> int:
    """The rate a runtime applies for `rate_bps`: a zero (a trace's dead moment) crawls at
    HELD_RATE_BPS instead. tc and the nodes' pacing cannot hold a zero rate, and a link that crawls
    queues what it has rather than dropping it, so TCP and the streams on it resume with the rate."""
    return int(rate_bps) if rate_bps > 0 else HELD_RATE_BPS


class LinkEmulation(enum.Enum):
    """Who emulates a link's rate and who its delay."""

    NODE_PACED = "node_paced"  # the sending node paces the rate, the receiving node holds the delay
    TC_NETEM = "tc_netem"  # an htb class on the sender's egress for the rate, netem under it for the delay
    TC_NODE_DELAY = "tc_node_delay"  # an htb class for the rate; no netem, so the receiving node holds the delay

    @property
    def tc_shaped(self) -> bool:
        return self is not LinkEmulation.NODE_PACED

    @property
    def node_holds_delay(self) -> bool:
        return self is not LinkEmulation.TC_NETEM

    def describe(self) -> str:
        return {
            LinkEmulation.NODE_PACED: "links: each node paces its outgoing bytes and holds frames for the delay",
            LinkEmulation.TC_NETEM: "links: tc htb class per peer on each sender's egress; delay by netem",
            LinkEmulation.TC_NODE_DELAY: "links: tc htb class per peer on each sender's egress; "
            "delay by the nodes themselves (this kernel has no netem)",
        }[self]


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
    link_emulation: LinkEmulation
    workspace: Path  # where the orchestrator writes files its nodes must read (profiling's blocks)
    # the CFS period of the CPU quotas the nodes run under; None where they run under none
    cpu_quota_period_s: float | None
    notes: list[str] = field(default_factory=list)

    _clients: dict[str, NodeClient] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def client(self, device: str) -> NodeClient:
        """The control client of a device's node, opened once and kept until close()."""
        with self._lock:
            if device not in self._clients:
                self._clients[device] = NodeClient(device, self.nodes[device].control_address)
            return self._clients[device]

    def replace_node(self, handle: NodeHandle) -> None:
        """A device's node came back (revive): reach it at its new handle from now on."""
        with self._lock:
            old = self._clients.pop(handle.device, None)
            self.nodes[handle.device] = handle
        if old is not None:
            old.close()

    def close(self) -> None:
        for c in self._clients.values():
            c.close()
        self._clients.clear()

    def node_path(self, local_path: Path) -> str:
        """A file of the run folder as the node sees it."""
        return str(Path(local_path).resolve())

    def stage_path(self, device: str, local_path: Path) -> str:
        """A stage file as `device`'s node reads it: here the folder the nodes share with the
        orchestrator; a runtime whose nodes share none (another host) sends the file first."""
        return self.node_path(local_path)


@dataclass(frozen=True)
class LinkChange:
    """A link change as applied, read back from where it is emulated."""

    src: str
    dst: str
    rate_bps: int | None  # now in force (None: unshaped)
    delay_s: float
    applied_unix_s: float
    how: str  # what changed it, e.g. "tc class change" or "the node's sender"


class Runtime(abc.ABC):
    """Starts one node per device of a testbed and stops them; a context manager."""

    name: str
    deployment: Deployment | None = None

    @abc.abstractmethod
    def start(self) -> Deployment: ...

    @abc.abstractmethod
    def stop(self) -> None: ...

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> Deployment:
        if self.deployment is None:
            raise RuntimeError(f"the {self.name} runtime is not started")
        return self.deployment

    @property
    def workspace(self) -> Path:
        """Where profiling writes its block files: a folder the nodes can read."""
        return self.running.workspace

    @abc.abstractmethod
    def node_plan(self, plan: Plan, run_dir: Path) -> Plan:
        """The plan as the nodes see it (its files where they can read them)."""

    @abc.abstractmethod
    def stats_sampler(self, out_dir: Path) -> StatsSampler:
        """Per-device stats while the nodes run, written as <out_dir>/<device>.jsonl."""

    @abc.abstractmethod
    def fidelity_check(self, console: Console | None = None) -> dict[str, Any] | None:
        """Configured against achieved for every link and CPU cap, measured on the running nodes;
        None where the runtime has nothing to check (its notes say why)."""

    @abc.abstractmethod
    def set_link(self, src: str, dst: str, rate_bps: int | None = None, delay_s: float | None = None) -> LinkChange:
        """Change the link src -> dst in place while the nodes run (None keeps that figure)."""

    @abc.abstractmethod
    def set_cpus(self, device: str, cpus: float) -> float:
        """Change a device's CPU cap while it runs; returns the cap read back."""

    @abc.abstractmethod
    def kill(self, device: str) -> None:
        """Crash a device's node: gone at once, with no goodbye to its peers."""

    @abc.abstractmethod
    def leave(self, device: str) -> None:
        """A device departs (announced: the run has re-planned away from it): its node is stopped
        the orderly way, and can come back with revive()."""

    def gone_reason(self, device: str) -> str | None:
        """Why a device's node is gone, where the runtime can tell (a phrase that follows "device X":
        "ran out of memory (limit Y, peak Z)"); None where it cannot, or the node is not gone."""
        return None

    @abc.abstractmethod
    def revive(self, device: str) -> NodeHandle:
        """Start a killed device's node again, empty, and wait until it answers; the deployment
        reaches it at the returned handle from then on."""
