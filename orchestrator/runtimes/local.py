"""Local runtime: one plain node process per device on loopback ports, no isolation.

For development and hosts without a Docker engine. Links are emulated by the node's own
sender (pacing and delay). Every child dies with the orchestrator: a parent-death signal,
process groups, and a finally that terminates them on error or Ctrl-C.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from orchestrator.config import Testbed
from orchestrator.driving.client import NodeClient
from orchestrator.runtimes.base import Deployment, NodeHandle

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalRuntime:
    name = "local"

    def __init__(self, testbed: Testbed, log_dir: Path, log_level: str = "info"):
        self.testbed = testbed
        self.log_dir = Path(log_dir)
        self.log_level = log_level
        self.procs: dict[str, subprocess.Popen] = {}
        self._logs: list = []
        self.deployment: Deployment | None = None

    def start(self) -> Deployment:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        nodes: dict[str, NodeHandle] = {}
        env = dict(os.environ)
        env.setdefault("MALLOC_MMAP_THRESHOLD_", str(64 * 1024 * 1024))
        env.setdefault("MALLOC_TRIM_THRESHOLD_", str(256 * 1024 * 1024))
        env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[2]), env.get("PYTHONPATH", "")])
        try:
            for dev in self.testbed.devices:
                port = free_port()
                log = open(self.log_dir / f"node_{dev.name}.log", "w")  # noqa: SIM115 - closed in stop()
                self._logs.append(log)
                cmd = [
                    sys.executable,
                    "-m",
                    "node",
                    "--device",
                    dev.name,
                    "--port",
                    str(port),
                    "--host",
                    "127.0.0.1",
                    "--log-level",
                    self.log_level,
                ]
                proc = subprocess.Popen(
                    cmd,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    preexec_fn=_die_with_parent,
                    start_new_session=True,
                )
                self.procs[dev.name] = proc
                addr = f"127.0.0.1:{port}"
                nodes[dev.name] = NodeHandle(dev.name, addr, addr, proc.pid)
            for name, h in nodes.items():
                proc = self.procs[name]
                with NodeClient(name, h.control_address) as c:
                    c.wait_healthy(alive=lambda p=proc: p.poll() is None)
        except BaseException:
            self.stop()
            raise
        self.deployment = Deployment(
            "local",
            nodes,
            node_paces_rate=True,
            node_adds_delay=True,
            notes=["local runtime: no CPU or memory isolation; links paced by the nodes"],
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
        for log in self._logs:
            log.close()
        self._logs.clear()

    def __enter__(self) -> LocalRuntime:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
