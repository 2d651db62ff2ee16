"""Choosing a runtime and making it: the one place that knows which engines there are."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator.config import Testbed
from orchestrator.errors import UserError
from orchestrator.runtimes import RUNTIMES

if TYPE_CHECKING:  # the engines load only when one is made: `orchestrator partition` needs none
    from rich.console import Console

    from orchestrator.runtimes.base import Runtime


def select_runtime(name: str) -> tuple[str, list[str]]:
    """docker or swarm where asked, or (auto) where an engine answers and has the node image; else local."""
    if name != "auto" and name not in RUNTIMES:
        raise UserError(f"unknown runtime {name!r} (one of auto, {', '.join(RUNTIMES)})", "--runtime")
    if name == "local":
        return "local", []
    from orchestrator.runtimes.docker import engine, image_present

    client = engine()
    if name in ("docker", "swarm"):
        if client is None:
            raise UserError(f"the {name} runtime needs a Docker engine, and none answers", "--runtime")
        return name, []
    if client is None:
        return "local", ["runtime 'auto' chose the local runtime: no Docker engine answers"]
    if not image_present(client):
        return "local", ["runtime 'auto' chose the local runtime: the node image is not built (make image)"]
    return "docker", ["runtime 'auto' chose the docker runtime: an engine answers"]


def testbed_command(name: str) -> Callable[[argparse.Namespace], int]:
    """`orchestrator testbed ACTION` for the runtime `name` (docker or swarm), loaded only now."""
    if name == "swarm":
        from orchestrator.runtimes import swarm_commands

        return swarm_commands.testbed
    from orchestrator.runtimes import docker_commands

    return docker_commands.testbed


def make_runtime(
    name: str,
    testbed: Testbed,
    run_dir: Path,
    *,
    testbed_name: str | None = None,
    subnet: str | None = None,
    workspace: Path | None = None,
    log_dir: Path | None = None,
    wait: bool = False,
    console: Console | None = None,
) -> Runtime:
    """The runtime `name` for a testbed, its node logs under `log_dir` (default <run_dir>/logs).
    `workspace` is where the orchestrator writes files its nodes read: by default the run folder
    for docker (a running testbed's own workspace wins), `.cache` for local nodes, which read any file.
    `wait`: a testbed another run holds is waited for rather than refused (docker)."""
    logs = log_dir or run_dir / "logs"
    if name == "docker":
        from orchestrator.runtimes.docker import DockerRuntime

        kw = {k: v for k, v in (("testbed_name", testbed_name), ("subnet", subnet)) if v}
        return DockerRuntime(testbed, logs, workspace=workspace or run_dir, wait=wait, console=console, **kw)
    if name == "swarm":
        from orchestrator.runtimes.swarm import SwarmRuntime

        return SwarmRuntime(testbed, logs, workspace or run_dir, testbed_name=testbed_name, wait=wait, console=console)
    if name == "local":
        from orchestrator.runtimes.local import DEFAULT_WORKSPACE, LocalRuntime

        return LocalRuntime(testbed, logs, workspace=workspace or DEFAULT_WORKSPACE)
    raise ValueError(f"no runtime {name!r}: one of {', '.join(RUNTIMES)}")
