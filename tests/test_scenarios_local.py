"""Scenarios played through `orchestrator run` on the local runtime, end to end: a ViT in 4
stages on edge4 (laptop > tablet > phone > watch, images from the laptop), a device crashing,
leaving and coming back under `static` and `failover`, link steps and a trace applied on time,
and `oracle` re-planning around a link that slows down. Each run takes some 10-20 s."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import psutil
import pytest

from orchestrator.run import execute
from tests.conftest import ROOT
from tests.scenario_run_helpers import changes_log, hops, only, requests_by_id, scenario_job

INITIAL = ["laptop", "tablet", "phone", "watch"]  # even, 4 stages: the phone holds stage 2 of 4


def _node_children() -> list[psutil.Process]:
    return [p for p in psutil.Process().children(recursive=True) if "node" in " ".join(p.cmdline())]


def _stages(request: dict) -> list[str]:
    """The devices that ran a request's stages, in order (its timings: source in, stages, source out)."""
    return [t[1] for t in request["timings"]][1:-1]


def _answered(run_dir, ids: list[int]) -> None:
    reqs = requests_by_id(run_dir)
    for i in ids:
        assert reqs[i]["error"] == "" and reqs[i]["done_ns"] > 0, reqs[i]


def test_failover_crash_then_join_loses_nothing(tmp_path, scenario_vit):
    events = [{"at": "3s", "device": "phone", "action": "crash"}, {"at": "6s", "device": "phone", "action": "join"}]
    job = scenario_job(tmp_path, scenario_vit, "failover", events, duration_s=10)
    run_dir, rep = execute(str(job), out=str(tmp_path / "run"))

    assert rep["adapt"] == "failover" and rep["complete"] is True and rep["ended"] is None
    assert rep["lost"] == [] and rep["errors"] == 0
    crash = only(rep["events"], "crash", device="phone")
    assert crash["applied_unix_s"] - crash["at_unix_s"] < 0.05
    assert 0 < crash["detected_unix_s"] - crash["applied_unix_s"] <= 1.0  # noticed within a second
    assert crash["detected_unix_s"] <= crash["replanned_unix_s"] <= crash["redeployed_unix_s"]
    assert crash["replan_s"] < 0.1
    # what the phone held is known by id, sent again under the new plan, and answered
    assert crash["resent"] and set(crash["resent"]) <= set(rep["resent"])
    _answered(run_dir, rep["resent"])

    plans = rep["plans"]
    assert [p["reason"] for p in plans] == ["initial", "lost phone", "join phone"]
    assert plans[0]["devices"] == INITIAL
    assert "phone" not in plans[1]["devices"] and len(plans[1]["devices"]) == 3
    assert "phone" in plans[2]["devices"]
    assert plans[1]["from_unix_s"] == crash["redeployed_unix_s"] == plans[0]["to_unix_s"]
    join = only(rep["events"], "join", device="phone")
    assert join["applied_unix_s"] <= join["replanned_unix_s"] <= join["redeployed_unix_s"]
    assert plans[2]["from_unix_s"] == join["redeployed_unix_s"]
    assert not any(e["kind"] == "lost" for e in rep["events"])  # the loss merged into the crash
    # requests sent after the join ran on the phone again
    after = [r for r in requests_by_id(run_dir).values() if r["sent_ns"] / 1e9 > join["redeployed_unix_s"] + 0.5]
    assert after and all(_stages(r) == plans[2]["devices"] for r in after)
    assert not _node_children(), "node processes left running (the revived one too)"


def test_static_crash_ends_the_run_with_one_line_and_status_1(tmp_path, scenario_vit):
    job = scenario_job(tmp_path, scenario_vit, "static", [{"at": "3s", "device": "phone", "action": "crash"}])
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    t0 = time.time()
    r = subprocess.run(
        [sys.executable, "-m", "orchestrator", "run", "--job", str(job), "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 1, r.stderr[-2000:]
    rep = json.loads((out / "report.json").read_text())  # the report of what was measured is written
    assert (out / "report.md").exists()
    assert rep["complete"] is False
    assert rep["ended"].startswith("device phone lost at ")
    crash = only(rep["events"], "crash", device="phone")
    assert crash["detected_unix_s"] - crash["applied_unix_s"] <= 1.0
    assert rep["ended_unix_s"] - crash["detected_unix_s"] <= 2.0  # ends at once, not at duration_s
    assert rep["ended_unix_s"] - t0 < 60
    # the one line names the device and the requests lost, numbered as report.json numbers them
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("device phone lost at")]
    assert len(lines) == 1 and lines[0] == rep["ended"]
    n = int(re.search(r": (\d+) request\(s\) lost", rep["ended"]).group(1))
    assert n == len(rep["lost"]) >= 1
    assert [int(i) for i in re.search(r"\(ids ([\d, ]+)\)", rep["ended"]).group(1).split(", ")] == rep["lost"]
    assert sorted(crash["lost"]) == rep["lost"]
    reqs = requests_by_id(out)
    assert all(reqs[i]["error"] == rep["ended"] for i in rep["lost"])
    assert [p["reason"] for p in rep["plans"]] == ["initial"]


def test_failover_leave_replans_before_the_node_stops(tmp_path, scenario_vit):
    job = scenario_job(tmp_path, scenario_vit, "failover", [{"at": "3s", "device": "phone", "action": "leave"}])
    run_dir, rep = execute(str(job), out=str(tmp_path / "run"))

    assert rep["complete"] is True and rep["lost"] == [] and rep["errors"] == 0
    leave = only(rep["events"], "leave", device="phone")
    assert leave["detected_unix_s"] is None  # announced: nothing to detect
    # the run moved off the phone first; the node was stopped after (applied: once it had exited)
    assert leave["at_unix_s"] <= leave["replanned_unix_s"] <= leave["redeployed_unix_s"] <= leave["applied_unix_s"]
    assert [p["reason"] for p in rep["plans"]] == ["initial", "leave phone"]
    assert "phone" not in rep["plans"][1]["devices"]
    assert not any(e["kind"] == "lost" for e in rep["events"])  # never taken for a crash
    _answered(run_dir, rep["resent"])
    log = changes_log(run_dir)
    assert [(c["kind"], c["device"], c["error"]) for c in log] == [("leave", "phone", "")]


def test_static_leave_ends_the_run(tmp_path, scenario_vit):
    job = scenario_job(tmp_path, scenario_vit, "static", [{"at": "3s", "device": "phone", "action": "leave"}])
    run_dir, rep = execute(str(job), out=str(tmp_path / "run"))

    assert rep["complete"] is False
    assert rep["ended"].startswith("device phone left at ")
    leave = only(rep["events"], "leave", device="phone")
    assert rep["ended_unix_s"] - leave["at_unix_s"] < 1.0
    assert sorted(leave["lost"]) == rep["lost"]
    assert [p["reason"] for p in rep["plans"]] == ["initial"]
    assert (run_dir / "report.json").exists()


def test_link_step_and_trace_apply_on_time(tmp_path, scenario_vit):
    # a trace on tablet -> phone (stage 1 to 2) with a dead moment: a frame that begins crawling
    # then goes on at the next step's rate (it would take 150 s at the crawl)
    (tmp_path / "trace.txt").write_text("0 20\n1 5\n2 0\n2.5 8\n3 8\n4 12\n")
    events = [
        {"at": "2s", "link": {"from": "laptop", "to": "tablet"}, "bandwidth": "50mbit", "delay": "5ms"},
        {"at": "1s", "link": {"from": "tablet", "to": "phone"}, "trace": str(tmp_path / "trace.txt")},
    ]
    job = scenario_job(tmp_path, scenario_vit, "static", events)
    run_dir, rep = execute(str(job), out=str(tmp_path / "run"))

    assert rep["complete"] is True and rep["errors"] == 0
    t0 = rep["scenario"]["t0_unix_s"]
    assert rep["scenario"]["changes"] == 6 and rep["scenario"]["failed"] == 0  # 1 step + 5 trace steps (8, 8 merged)
    assert rep["scenario"]["late_ms"]["p99"] <= 50.0
    log = changes_log(run_dir)
    assert sorted((c["at_s"], c["link"], c["rate_bps"]) for c in log) == [
        (1.0, "tablet->phone", 20_000_000),
        (2.0, "laptop->tablet", 50_000_000),
        (2.0, "tablet->phone", 5_000_000),
        (3.0, "tablet->phone", 0),
        (3.5, "tablet->phone", 8_000_000),
        (5.0, "tablet->phone", 12_000_000),
    ]
    for c in log:
        assert c["error"] == "" and 0 <= c["late_ms"] <= 50.0, c
        assert c["applied_unix_s"] - t0 == pytest.approx(c["at_s"], abs=0.05)
    step = only(rep["events"], "link", link="laptop->tablet")
    trace = only(rep["events"], "link", link="tablet->phone")
    assert step["steps"] == 1 and trace["steps"] == 5
    assert step["at_unix_s"] - t0 == pytest.approx(2.0) and trace["at_unix_s"] - t0 == pytest.approx(1.0)
    assert step["late_ms_max"] <= 50.0 and trace["late_ms_max"] <= 50.0
    assert "50 Mbit/s, 5 ms" in step["detail"]
    assert rep["latency_ms"]["max"] < 5_000  # the dead moment held frames half a second, not minutes
    assert [p["reason"] for p in rep["plans"]] == ["initial"]  # static: no re-plan on a link


def test_oracle_replans_around_a_link_that_slows(tmp_path, scenario_vit):
    """optimal places on the links; the oracle knows laptop -> tablet falls to 0.1 Mbit/s at 3 s and
    moves off it (the static plan would send every frame across it)."""
    events = [{"at": "3s", "link": {"from": "laptop", "to": "tablet"}, "bandwidth": "0.1mbit"}]
    job = scenario_job(tmp_path, scenario_vit, "oracle", events, algorithm="optimal")
    run_dir, rep = execute(str(job), out=str(tmp_path / "run"))

    assert rep["complete"] is True and rep["lost"] == [] and rep["errors"] == 0
    plans = rep["plans"]
    assert ("laptop", "tablet") in hops(plans[0]), f"premise: the first plan uses laptop->tablet: {plans[0]}"
    assert [p["reason"] for p in plans] == ["initial", "oracle"]
    assert ("laptop", "tablet") not in hops(plans[1])
    ev = only(rep["events"], "link", link="laptop->tablet")
    assert ev["applied_unix_s"] <= ev["replanned_unix_s"] <= ev["redeployed_unix_s"] == plans[1]["from_unix_s"]
    assert ev["redeployed_unix_s"] - ev["at_unix_s"] < 1.0
    _answered(run_dir, rep["resent"])
    # frames after the re-plan went the new way
    after = [r for r in requests_by_id(run_dir).values() if r["sent_ns"] / 1e9 > ev["redeployed_unix_s"] + 0.5]
    assert after and all(_stages(r) == plans[1]["devices"] for r in after)


def test_adaptive_moves_off_a_fade_it_measures_and_back_when_it_returns(tmp_path, scenario_vit):
    """adaptive never reads the scenario: it sees laptop -> tablet fade from the nodes' link counters
    (a frame stuck on it) and moves off it, then sees it come back through rate probes and returns."""
    events = [
        {"at": "2s", "link": {"from": "laptop", "to": "tablet"}, "bandwidth": "0.1mbit"},
        {"at": "9s", "link": {"from": "laptop", "to": "tablet"}, "bandwidth": "200mbit"},
    ]
    job = scenario_job(tmp_path, scenario_vit, "adaptive", events, algorithm="optimal", duration_s=18)
    run_dir, rep = execute(str(job), out=str(tmp_path / "run"))

    assert rep["complete"] is True and rep["lost"] == [] and rep["errors"] == 0
    plans = rep["plans"]
    assert ("laptop", "tablet") in hops(plans[0]), f"premise: the first plan uses laptop->tablet: {plans[0]}"
    t0 = rep["scenario"]["t0_unix_s"]
    away = next((p for p in plans[1:] if ("laptop", "tablet") not in hops(p)), None)
    assert away is not None and away["reason"] == "measured", plans
    assert 2.0 < away["from_unix_s"] - t0 < 7.0, away  # noticed within a few ticks of the fade
    back = [p for p in plans if p["from_unix_s"] > t0 + 9.0 and ("laptop", "tablet") in hops(p)]
    assert back, f"no plan returned to the link once it came back: {[(p['reason'], p['devices']) for p in plans]}"
    assert len(plans) <= 5, "re-planned more often than the fade calls for"
