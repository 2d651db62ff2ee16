"""Local runtime: one plain node process per device on loopback ports, no isolation.

For development and hosts without a Docker engine. Links are emulated by the node's own
sender (pacing and delay). Every child dies with the orchestrator: a parent-death signal,
process groups, and a finally that terminates them on error or Ctrl-C.
"""

from __future__ import annotations

import ctypes
import math
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, TYPE_CHECKING

from common import testbed_pb2 as pb
from orchestrator.config import Testbed
from orchestrator.driving.client import NodeClient
from orchestrator.runtimes.base import Deployment, LinkChange, LinkEmulation, NodeHandle, Runtime, held_rate
from orchestrator.runtimes.local_stats import LocalStatsSampler

if TYPE_CHECKING:
    from rich.console import Console

    from orchestrator.partition.plan import Plan

_PR_SET_PDEATHSIG = 1
DEFAULT_WORKSPACE = Path(".cache")
NO_CHECK_NOTE = (
    "fidelity: the local runtime has no caps to check (no CPU or memory isolation) and its links are "
    "paced by the nodes themselves: link rates are read from the hops' stamps instead"
)


def _die_with_parent() -> None:
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalRuntime(Runtime):
    name = "local"

    def __init__(self, testbed: Testbed, log_dir: Path, log_level: str = "info", workspace: Path = DEFAULT_WORKSPACE):
        self.testbed = testbed
        self.log_dir = Path(log_dir)
        self.log_level = log_level
        self._workspace = Path(workspace)
        self.procs: dict[str, subprocess.Popen] = {}
        self.ports: dict[str, int] = {}
        self._logs: dict[str, IO[str]] = {}
        self._links = {
            (a.name, b.name): (testbed.link(a.name, b.name).rate_bps, testbed.link(a.name, b.name).delay_s)
            for a in testbed.devices
            for b in testbed.devices
            if a.name != b.name
        }
        self.deployment: Deployment | None = None
        self._spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="local-spawn")

    def _env(self, device: str) -> dict[str, str]:
        env = dict(os.environ)
        env.setdefault("MALLOC_MMAP_THRESHOLD_", str(64 * 1024 * 1024))
        env.setdefault("MALLOC_TRIM_THRESHOLD_", str(256 * 1024 * 1024))
        env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[2]), env.get("PYTHONPATH", "")])
        gpu = self.testbed.device(device).gpu
        if gpu is not None:  # the node sees its GPU alone (as device 0), with the device's ORT memory cap
            env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"  # CUDA numbers GPUs as NVML does (the index is NVML's)
            env["CUDA_VISIBLE_DEVICES"] = str(gpu.index)
            if gpu.memory:
                env["ORT_CUDA_GPU_MEM_LIMIT"] = str(gpu.memory)
            env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] = str(max(1, math.floor(gpu.share * 100)))
        return env

    def _spawn(self, device: str) -> NodeHandle:
        """Start a device's node process on its port (a free one the first time)."""
        port = self.ports.setdefault(device, free_port())
        if device not in self._logs:
            self._logs[device] = open(self.log_dir / f"node_{device}.log", "w")  # noqa: SIM115 - closed in stop()
        cmd = [sys.executable, "-m", "node", "--device", device, "--port", str(port), "--host", "127.0.0.1"]
        if self.testbed.device(device).gpu is not None:
            cmd.append("--cuda")
        # Popen on the runtime's own thread: the node dies with the thread that started it
        # (PR_SET_PDEATHSIG), and a revive may come from a thread that ends before the run does
        proc = self._spawner.submit(
            subprocess.Popen,
            [*cmd, "--log-level", self.log_level],
            stdout=self._logs[device],
            stderr=subprocess.STDOUT,
            env=self._env(device),
            preexec_fn=_die_with_parent,
            start_new_session=True,
        ).result()
        self.procs[device] = proc
        addr = f"127.0.0.1:{port}"
        return NodeHandle(device, addr, addr, proc.pid)

    def _wait_healthy(self, handle: NodeHandle) -> None:
        proc = self.procs[handle.device]
        with NodeClient(handle.device, handle.control_address) as c:
            c.wait_healthy(alive=lambda: proc.poll() is None)

    def start(self) -> Deployment:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        try:
            nodes = {dev.name: self._spawn(dev.name) for dev in self.testbed.devices}
            for h in nodes.values():
                self._wait_healthy(h)
        except BaseException:
            self.stop()
            raise
        self.deployment = Deployment(
            "local",
            nodes,
            LinkEmulation.NODE_PACED,
            workspace=self._workspace,
            cpu_quota_period_s=None,  # plain processes: no CPU quota
            notes=["local runtime: no CPU or memory isolation; links paced by the nodes", NO_CHECK_NOTE],
        )
        return self.deployment

    def stop(self) -> None:
        if self.deployment is not None:
            self.deployment.close()
            self.deployment = None
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        self.procs.clear()
        for log in self._logs.values():
            log.close()
        self._logs.clear()
        self._spawner.shutdown(wait=False)

    def node_plan(self, plan: Plan, run_dir: Path) -> Plan:
        return plan  # the nodes read the orchestrator's own files

    def stats_sampler(self, out_dir: Path) -> LocalStatsSampler:
        return LocalStatsSampler(self.running, self.testbed, out_dir)

    def fidelity_check(self, console: Console | None = None) -> None:
        return None  # NO_CHECK_NOTE, among the deployment's notes, says why

    def set_link(self, src: str, dst: str, rate_bps: int | None = None, delay_s: float | None = None) -> LinkChange:
        """The sending node paces the rate and stamps the delay itself: its sender is changed in place.
        A rate of 0 (a trace's dead moment) crawls at HELD_RATE_BPS: 0 would mean "not paced" to the node."""
        if (src, dst) not in self._links:
            raise ValueError(f"no link {src} -> {dst} in this testbed")
        rate, delay = self._links[(src, dst)]
        rate = rate if rate_bps is None else held_rate(rate_bps)
        delay = delay if delay_s is None else delay_s
        held = self.running.client(src).set_link(pb.Peer(device=dst, rate_bps=rate, delay_s=delay))
        self._links[(src, dst)] = (held.rate_bps, held.delay_s)
        return LinkChange(src, dst, held.rate_bps or None, held.delay_s, time.time(), "the sending node's sender")

    def set_cpus(self, device: str, cpus: float) -> float:
        raise RuntimeError(
            f"the local runtime cannot change {device}'s CPU cap while it runs: its nodes are plain "
            "processes under no CPU quota (use the docker runtime)"
        )

    def kill(self, device: str) -> None:
        proc = self.procs[device]
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=5)

    def leave(self, device: str) -> None:
        """SIGTERM: the node process closes its links and exits."""
        proc = self.procs[device]
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def revive(self, device: str) -> NodeHandle:
        if self.procs[device].poll() is None:
            raise RuntimeError(f"{device}'s node is running: kill it first")
        handle = self._spawn(device)
        self._wait_healthy(handle)
        self.running.replace_node(handle)
        return handle
