"""SIGINT or SIGTERM at each phase of `orchestrator run`: everything the run started (containers,
networks, node processes) is gone within 10 s, report.json says `complete: false` and where the run
was, the command exits 130 / 143; a second signal during the clean-up leaves nothing either.

Phases too short to hit by timing are held with ORCHESTRATOR_PAUSE_AT (the run waits at the start
of that phase for the signal); the drive and the testbed's start are hit while they work."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from orchestrator.interrupts import PAUSE_ENV
from orchestrator.runtimes.docker_testbed import LABEL_OWNER
from tests.runtime_helpers import write_tiny_job

ROOT = Path(__file__).resolve().parents[1]
GONE_WITHIN_S = 10.0


def _job(tmp_path: Path, **extra) -> Path:
    devices = [
        {"name": "laptop", "cpus": 0.6, "memory": "1GiB", "bandwidth": "200mbit", "delay": "2ms"},
        {"name": "tablet", "cpus": 0.5, "memory": "1GiB", "bandwidth": "100mbit", "delay": "5ms"},
    ]
    return write_tiny_job(tmp_path, devices, name="interrupted", **extra)


class Run:
    """`orchestrator run` as a person starts it: a process of its own, its output in a file."""

    def __init__(self, job: Path, runtime: str, out: Path, pause_at: str | None = None) -> None:
        env = dict(os.environ)
        env.pop(PAUSE_ENV, None)
        if pause_at:
            env[PAUSE_ENV] = pause_at
        self.out = out
        self.log = out.parent / f"{out.name}.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "orchestrator", "run", "--job", str(job), "--runtime", runtime, "--out", str(out)],
            cwd=ROOT,
            env=env,
            stdout=self.log.open("w"),
            stderr=subprocess.STDOUT,
        )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, ready, timeout_s: float = 180.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not ready():
            if self.proc.poll() is not None:
                pytest.fail(f"the run ended (status {self.proc.returncode}) before the signal:\n{self.text()[-3000:]}")
            if time.monotonic() > deadline:
                self.proc.kill()
                pytest.fail(f"not ready after {timeout_s:.0f} s:\n{self.text()[-3000:]}")
            time.sleep(0.05)

    def nodes(self) -> list[psutil.Process]:
        return psutil.Process(self.proc.pid).children(recursive=True)

    def signal(self, sig: int, second: bool = False) -> float:
        t0 = time.monotonic()
        self.proc.send_signal(sig)
        if second:
            time.sleep(0.3)
            if self.proc.poll() is None:
                self.proc.send_signal(sig)
        return t0


def _own_objects(client, pid: int) -> list[str]:
    """Containers and networks of the testbed the run `pid` started for itself."""
    prefix = f"edge-{pid}-"
    runs = {"label": f"{LABEL_OWNER}=run"}  # the engine's summaries: no inspect racing the removal
    conts = [n.lstrip("/") for c in client.api.containers(all=True, filters=runs) for n in c["Names"]]
    nets = [n["Name"] for n in client.api.networks(filters=runs)]
    return [x for x in conts + nets if x.startswith(prefix)]


def _gone_within(check, t0: float) -> float:
    """Seconds from t0 until check() is empty; fails past GONE_WITHIN_S."""
    while left := check():
        if time.monotonic() - t0 > GONE_WITHIN_S:
            pytest.fail(f"still there {GONE_WITHIN_S:.0f} s after the signal: {left}")
        time.sleep(0.1)
    return time.monotonic() - t0


def _finished(run: Run, sig: int, phase: str, timeout_s: float = 60.0) -> dict:
    try:
        rc = run.proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        run.proc.kill()
        pytest.fail(f"the run did not end {timeout_s:.0f} s after the signal:\n{run.text()[-3000:]}")
    assert rc == 128 + sig, f"exit status {rc}, not {128 + sig}:\n{run.text()[-3000:]}"
    assert "Traceback" not in run.text(), run.text()[-3000:]
    rep = json.loads((run.out / "report.json").read_text())
    assert rep["complete"] is False
    assert rep["interrupted"] == {"signal": signal.Signals(sig).name, "phase": phase}
    return rep


PAUSED = [
    ("partitioning", signal.SIGINT, False),
    ("measuring stages", signal.SIGTERM, False),
    ("deploying", signal.SIGINT, True),
    ("checking fidelity", signal.SIGTERM, False),
    ("writing the report", signal.SIGINT, False),
]


@pytest.mark.parametrize(("phase", "sig", "second"), PAUSED, ids=[p[0].replace(" ", "-") for p in PAUSED])
def test_a_docker_run_stopped_at_a_phase_leaves_nothing(tmp_path, docker_client, node_image, phase, sig, second):
    run = Run(_job(tmp_path), "docker", tmp_path / "run", pause_at=phase)
    run.wait_for(lambda: "paused at" in run.text())
    if phase != "writing the report":  # the report is written once the testbed is down
        assert _own_objects(docker_client, run.proc.pid), "the run's own testbed should be up by now"
    t0 = run.signal(sig, second)
    _gone_within(lambda: _own_objects(docker_client, run.proc.pid), t0)
    rep = _finished(run, sig, phase)
    if phase == "writing the report":  # everything was measured: the report has it, plots aside
        assert rep["requests"] == 20 and not rep["errors"]
        assert (run.out / "latencies.csv").exists()


def test_a_docker_run_stopped_while_its_testbed_starts_leaves_nothing(tmp_path, docker_client, node_image):
    run = Run(_job(tmp_path), "docker", tmp_path / "run")
    run.wait_for(lambda: bool(_own_objects(docker_client, run.proc.pid)))  # the network exists, containers coming
    t0 = run.signal(signal.SIGTERM, second=True)
    _gone_within(lambda: _own_objects(docker_client, run.proc.pid), t0)
    _finished(run, signal.SIGTERM, "starting")


def test_a_docker_run_stopped_while_driving_reports_what_it_measured(tmp_path, docker_client, node_image):
    run = Run(_job(tmp_path, requests=100000, rate_hz=20), "docker", tmp_path / "run")
    run.wait_for(lambda: any((run.out / "stats").glob("*.jsonl")))  # the measured drive has begun
    time.sleep(3.0)
    t0 = run.signal(signal.SIGINT, second=True)
    took = _gone_within(lambda: _own_objects(docker_client, run.proc.pid), t0)
    rep = _finished(run, signal.SIGINT, "driving")
    assert 20 <= rep["requests"] < 100000, rep["requests"]  # ~20 per second for ~3 s were measured
    assert rep["agreement"]["top1"] == 1.0
    assert len((run.out / "latencies.csv").read_text().splitlines()) > 20
    assert any("plots not drawn (interrupted)" in n for n in rep["notes"])
    print(f"containers and network gone {took:.1f} s after SIGINT")


@pytest.mark.parametrize(("phase", "sig"), [("deploying", signal.SIGTERM), ("driving", signal.SIGINT)])
def test_a_local_run_stopped_leaves_no_node_process(tmp_path, phase, sig):
    driving = phase == "driving"
    job = _job(tmp_path, requests=100000, rate_hz=20) if driving else _job(tmp_path)
    run = Run(job, "local", tmp_path / "run", pause_at=None if driving else phase)
    if driving:
        run.wait_for(lambda: any((run.out / "stats").glob("*.jsonl")))
        time.sleep(2.0)
    else:
        run.wait_for(lambda: "paused at" in run.text())
    nodes = run.nodes()
    assert any("node" in " ".join(p.cmdline()) for p in nodes), [p.cmdline() for p in nodes]
    t0 = run.signal(sig, second=True)
    _gone_within(lambda: [p.pid for p in nodes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE], t0)
    rep = _finished(run, sig, phase)
    assert (rep["requests"] > 0) == driving
