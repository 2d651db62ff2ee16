"""A run whose plan puts its stages below their devices' cpus, on the real engine: each
container's CPU quota is set to its level (a live update, read back from the engine and the
node's cgroup; the node resizes its threads), the stats and the measured energy follow it, and
the testbed, which outlives the run, is given back at the devices' own cpus.

Marked `docker`: skipped, with the reason, where no engine answers. The testbed has its own name
and subnet and is removed by label even when a test fails."""

from __future__ import annotations

import json
import os
import textwrap

import pytest

from orchestrator.config import load_devices
from orchestrator.run import execute

pytestmark = pytest.mark.docker

NAME = f"pv{os.getpid() % 100000}"
SUBNET = f"10.216.{100 + os.getpid() % 100}.0/24"
DEVICES = """
devices:
  - name: phone
    cpus: 0.8
    memory: 768MiB
    bandwidth: 100mbit
    power: {idle_w: 0.2, max_w: 5.0, levels: [{cpus: 0.4, max_w: 1.0}], tx_nj_per_bit: 50, rx_nj_per_bit: 30}
  - name: laptop
    cpus: 0.8
    memory: 768MiB
    bandwidth: 100mbit
    power: {idle_w: 0.5, max_w: 6.0, levels: [{cpus: 0.4, max_w: 1.5}], tx_nj_per_bit: 10, rx_nj_per_bit: 5}
"""


@pytest.fixture()
def testbed(docker_client, node_image, tmp_path):
    """The testbed up before the run (the run uses it and leaves it up), removed afterwards."""
    from orchestrator.runtimes import docker as dk
    from orchestrator.runtimes.docker_testbed import LABEL_DEVICE
    from orchestrator.runtimes.docker_testbed import testbed_spec as make_spec

    (tmp_path / "devices.yaml").write_text(textwrap.dedent(DEVICES))
    tb = load_devices(tmp_path / "devices.yaml")
    try:
        dk.up(docker_client, make_spec(tb, NAME, SUBNET, node_image, tmp_path / "ws"))
        yield {c.labels[LABEL_DEVICE]: c for c in dk.testbed_containers(docker_client, NAME)}
    finally:
        dk.down(docker_client, NAME)


def test_a_plans_levels_set_the_containers_cpu_quota(tmp_path, tiny_vit, testbed, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the profile cache goes under ./.cache
    job = {
        "name": "levels",
        "model": str(tiny_vit),
        "devices": "devices.yaml",
        "runtime": "docker",
        "algorithm": "optimal",
        "objective": "energy",
        "latency_budget": "20s",
        "stages": 2,
        "source": "phone",
        "duration_s": 3,
        "warmup": 2,
        "concurrency": 2,
        "measure_stages": False,
    }
    (tmp_path / "job.yaml").write_text(json.dumps(job))
    run_dir, rep = execute(str(tmp_path / "job.yaml"), runtime="docker", out=str(tmp_path / "run"), testbed_name=NAME)
    assert rep["errors"] == 0 and rep["requests"] > 0
    plan = json.loads((run_dir / "plan.json").read_text())
    assert sorted(s["device"] for s in plan["stages"]) == ["laptop", "phone"]
    assert [s["level"] for s in plan["stages"]] == [0.4, 0.4]

    measured_requests = _measured(run_dir)
    start = min(r["sent_ns"] for r in measured_requests) / 1e9
    end = max(r["done_ns"] for r in measured_requests) / 1e9
    for dev in ("phone", "laptop"):
        # set, and read back from the engine's HostConfig and the node's cgroup (set_cpus checks both)
        lv = rep["levels"][dev]
        assert lv["applied"] is True and lv["cpus"] == 0.4 and lv["read_back"] == pytest.approx(0.4, rel=0.01)
        assert "quota 0.4: 1 ORT threads" in (run_dir / "logs" / f"node_{dev}.log").read_text()
        # the stats taken while the measured requests ran carry the level as the cap
        lines = [json.loads(x) for x in (run_dir / "stats" / f"{dev}.jsonl").read_text().splitlines()]
        during = [x["cpu_cap"] for x in lines if start + 0.5 < x["time"] < end]
        assert during and set(during) == {0.4}
        measured = rep["energy_split"]["devices"][dev]["measured"]
        assert measured["level_cpus"] == 0.4 and measured["compute_j"] > 0
        # given back at the devices file's cpus once the run was measured
        cont = testbed[dev]
        cont.reload()
        assert cont.attrs["HostConfig"]["NanoCpus"] == 800_000_000
    assert not [n for n in rep["notes"] if n.startswith("DVFS levels not applied")]
    md = (run_dir / "report.md").read_text()
    assert "| phone | 0.4 | 0.4 | yes |" in md and "| laptop | 0.4 | 0.4 | yes |" in md


def _measured(run_dir) -> list[dict]:
    rows = [json.loads(x) for x in (run_dir / "requests.jsonl").read_text().splitlines()]
    return [r for r in rows if r.get("measured")]
