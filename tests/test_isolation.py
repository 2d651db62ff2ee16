"""Runs in parallel never touch each other: a run that starts a testbed gives it a name and a subnet
of its own and removes only that; a running testbed a run uses is held by it (a second run refuses
in one line, or waits with --wait); a testbed whose run was killed outright is removed by the next."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.config import load_devices
from orchestrator.runtimes import docker as dk
from orchestrator.runtimes import docker_hold, docker_testbed
from orchestrator.runtimes.docker_hold import is_held
from tests.runtime_helpers import write_tiny_job

ROOT = Path(__file__).resolve().parents[1]
NAME = "isotest"
SUBNET = "10.214.61.0/24"


def _files(tmp_path: Path, requests: int = 20) -> tuple[Path, Path]:
    devices = [
        {"name": "laptop", "cpus": 0.5, "memory": "1GiB", "bandwidth": "200mbit", "delay": "2ms"},
        {"name": "tablet", "cpus": 0.4, "memory": "1GiB", "bandwidth": "100mbit", "delay": "5ms"},
    ]
    return write_tiny_job(tmp_path, devices, name="iso", requests=requests), tmp_path / "devices.yaml"


def _run(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "orchestrator", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def _own_testbeds(client) -> set[str]:
    return {
        c.labels.get(dk.LABEL_TESTBED)
        for c in client.containers.list(all=True, filters={"label": "edge-testbed.owner=run"})
    }


def test_two_runs_at_once_each_start_their_own_testbed(tmp_path, docker_client, node_image):
    before = _own_testbeds(docker_client)
    job, _ = _files(tmp_path, requests=30)
    first = _run("run", "--job", str(job), "--runtime", "docker", "--out", str(tmp_path / "a"))
    time.sleep(1.0)
    second = _run("run", "--job", str(job), "--runtime", "docker", "--out", str(tmp_path / "b"))
    outs = [p.communicate(timeout=600) for p in (first, second)]
    for p, (_, err) in zip((first, second), outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    reps = [json.loads((tmp_path / d / "report.json").read_text()) for d in ("a", "b")]
    started = []
    for rep in reps:
        assert rep["errors"] == 0 and rep["complete"] is True
        assert rep["agreement"]["top1"] == 1.0 and rep["agreement"]["max_abs_diff"] == 0.0
        started += [n for n in rep["notes"] if n.startswith("docker runtime: started testbed")]
    assert len(started) == 2 and started[0] != started[1], started
    subnets = {n.split("(")[1].split(")")[0] for n in started}
    assert len(subnets) == 2, started
    assert _own_testbeds(docker_client) == before, "a run left its testbed behind"


@pytest.fixture()
def shared_testbed(tmp_path, docker_client, node_image):
    """A testbed up under a name, as `orchestrator testbed up --name` leaves it."""
    _, devices = _files(tmp_path)
    dk.down(docker_client, NAME)
    spec = docker_testbed.testbed_spec(load_devices(devices), NAME, SUBNET, node_image, tmp_path / "ws")
    dk.up(docker_client, spec)
    yield spec
    dk.down(docker_client, NAME)


def test_a_held_testbed_is_refused_in_one_line_or_waited_for(tmp_path, docker_client, shared_testbed):
    job, _ = _files(tmp_path)
    hold = docker_hold.TestbedHold(NAME, purpose="the test").acquire()
    try:
        p = _run("run", "--job", str(job), "--runtime", "docker", "--testbed", NAME, "--out", str(tmp_path / "r"))
        out, err = p.communicate(timeout=120)
        assert p.returncode == 2, err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and f"testbed {NAME!r} is in use by pid" in lines[0] and "--wait" in lines[0], err

        down = _run("testbed", "down", "--name", NAME)
        _, err = down.communicate(timeout=60)
        assert down.returncode == 2 and "in use by" in err, err
        assert dk.testbed_containers(docker_client, NAME), "down removed a held testbed"

        waiting = _run(
            "run", "--job", str(job), "--runtime", "docker", "--testbed", NAME, "--wait", "--out", str(tmp_path / "w")
        )
        time.sleep(4.0)
        assert waiting.poll() is None, waiting.communicate()[1]
        assert not (tmp_path / "w" / "report.json").exists()
    finally:
        hold.release()
    out, err = waiting.communicate(timeout=600)
    assert waiting.returncode == 0, err[-3000:]
    assert "waiting" in out
    rep = json.loads((tmp_path / "w" / "report.json").read_text())
    assert rep["errors"] == 0 and rep["agreement"]["top1"] == 1.0
    assert any(f"used the running testbed {NAME!r}" in n for n in rep["notes"])
    assert len(dk.testbed_containers(docker_client, NAME, all_=False)) == 2, (
        "the run removed a testbed it did not start"
    )
    assert not is_held(NAME)


def test_the_testbed_of_a_killed_run_is_removed_by_the_next(tmp_path, docker_client, node_image):
    _, devices = _files(tmp_path)
    orphan = "edge-orphan-test"
    spec = docker_testbed.testbed_spec(
        load_devices(devices), orphan, "10.214.62.0/24", node_image, tmp_path / "ws", owner="run"
    )
    dk.up(docker_client, spec)  # up, labelled as a run's own, held by no one: its run is gone
    try:
        assert not is_held(orphan)
        assert dk.reap_orphans(docker_client) == [orphan]
        assert not dk.testbed_containers(docker_client, orphan) and not dk.testbed_networks(docker_client, orphan)
    finally:
        dk.down(docker_client, orphan)
