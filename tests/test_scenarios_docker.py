"""Scenarios played through `orchestrator run` on the Docker runtime, end to end, on the real
engine: edge4 in containers, a ViT in 4 stages (laptop > tablet > phone > watch, images from the
laptop). One `failover` run: the phone throttled (a live cgroup update the node re-reads), then
the tablet killed (`docker kill`) and started again; one `static` run: the phone leaves. Each run
takes some 30-60 s.

Marked `docker`: skipped, with the reason, where no engine answers. The testbed has its own name
and subnet and is removed by label even when a test fails."""

from __future__ import annotations

import json
import os

import pytest

from orchestrator.run import execute
from tests.scenario_run_helpers import changes_log, only, requests_by_id, scenario_job

pytestmark = pytest.mark.docker

NAME = f"pz{os.getpid() % 100000}"
SUBNET = f"10.215.{100 + os.getpid() % 100}.0/24"


@pytest.fixture()
def docker_run(docker_client, node_image, tmp_path):
    """execute() on this test's own testbed, removed afterwards whatever happened."""
    from orchestrator.runtimes import docker as dk

    def run(job):
        return execute(str(job), runtime="docker", out=str(tmp_path / "run"), testbed_name=NAME, subnet=SUBNET)

    try:
        yield run
    finally:
        dk.down(docker_client, NAME)


def test_failover_throttle_crash_and_join(tmp_path, scenario_vit, docker_run):
    events = [
        {"at": "2s", "device": "phone", "cpus": 0.2},
        {"at": "4s", "device": "tablet", "action": "crash"},
        {"at": "7s", "device": "tablet", "action": "join"},
    ]
    # a join redeploys in a second or two (more on a loaded host): time left after it for requests
    job = scenario_job(tmp_path, scenario_vit, "failover", events, duration_s=13)
    run_dir, rep = docker_run(job)

    assert rep["runtime"] == "docker"
    assert rep["complete"] is True and rep["lost"] == [] and rep["errors"] == 0
    # thermal: the container's quota changed live, the node re-read it (Requota), the stats follow
    cpus = only(rep["events"], "cpus", device="phone")
    assert cpus["errors"] == [] and cpus["late_ms_max"] <= 500.0
    log = {c["kind"]: c for c in changes_log(run_dir)}
    assert log["cpus"]["detail"] == "phone: 0.2 CPUs" and log["cpus"]["error"] == ""
    assert "quota 0.2: 1 ORT threads" in (run_dir / "logs" / "node_phone.log").read_text()
    caps = [json.loads(line) for line in (run_dir / "stats" / "phone.jsonl").read_text().splitlines()]
    before = [s["cpu_cap"] for s in caps if s["time"] < cpus["at_unix_s"] - 0.5]
    after = [s["cpu_cap"] for s in caps if s["time"] > cpus["applied_unix_s"] + 0.5]
    assert before and set(before) == {0.4} and after and set(after) == {0.2}

    # the tablet (stage 1 of 4) killed: noticed within a second, re-planned without it, nothing lost
    crash = only(rep["events"], "crash", device="tablet")
    assert 0 < crash["detected_unix_s"] - crash["applied_unix_s"] <= 1.0
    assert crash["replan_s"] < 0.1
    assert crash["resent"] and set(crash["resent"]) <= set(rep["resent"])
    reqs = requests_by_id(run_dir)
    assert all(reqs[i]["error"] == "" and reqs[i]["done_ns"] > 0 for i in rep["resent"])
    plans = rep["plans"]
    assert [p["reason"] for p in plans] == ["initial", "lost tablet", "join tablet"]
    assert plans[0]["devices"] == ["laptop", "tablet", "phone", "watch"]
    assert "tablet" not in plans[1]["devices"] and "tablet" in plans[2]["devices"]
    join = only(rep["events"], "join", device="tablet")
    assert join["applied_unix_s"] <= join["redeployed_unix_s"] == plans[2]["from_unix_s"]
    after_join = [r for r in reqs.values() if r["sent_ns"] / 1e9 > join["redeployed_unix_s"] + 0.5]
    assert after_join and all([t[1] for t in r["timings"]][1:-1] == plans[2]["devices"] for r in after_join)


def test_static_leave_ends_the_run(tmp_path, scenario_vit, docker_run):
    job = scenario_job(tmp_path, scenario_vit, "static", [{"at": "3s", "device": "phone", "action": "leave"}])
    run_dir, rep = docker_run(job)

    assert rep["runtime"] == "docker"
    assert rep["complete"] is False and rep["ended"].startswith("device phone left at ")
    leave = only(rep["events"], "leave", device="phone")
    assert rep["ended_unix_s"] - leave["at_unix_s"] < 1.0
    assert sorted(leave["lost"]) == rep["lost"]
    assert [p["reason"] for p in rep["plans"]] == ["initial"]
    assert (run_dir / "report.json").exists() and (run_dir / "report.md").exists()
    assert rep["requests"] > 0  # what was measured until then is reported
