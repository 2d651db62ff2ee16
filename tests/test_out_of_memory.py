"""A stage that outgrows its device at run time is killed by the device's cgroup, and the run says
"device X ran out of memory (limit Y, peak Z)" and ends (static) or fails over (failover), never
hangs. The tablet's limit holds its stage loaded, not the activations of batch 64, which the first
request grows past it. The memory model, which counts the batch, would refuse the plan:
`memory_check: warn` runs it all the same."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

from tests.runtime_helpers import write_tiny_job

ROOT = Path(__file__).resolve().parents[1]
TIGHT = "200MiB"  # loads the tiny ViT's second half, and not its batch-64 activations


def _job(tmp_path: Path, tight: str, adapt: str = "static", spare: bool = False) -> Path:
    devices = [
        {"name": "laptop", "cpus": 0.6, "memory": "2GiB", "bandwidth": "200mbit", "delay": "1ms"},
        {"name": "tablet", "cpus": 0.5, "memory": tight, "bandwidth": "200mbit", "delay": "1ms"},
    ]
    if spare:
        devices.append({"name": "phone", "cpus": 0.4, "memory": "2GiB", "bandwidth": "200mbit", "delay": "1ms"})
    return write_tiny_job(
        tmp_path,
        devices,
        name="oom",
        requests=6,
        warmup=0,
        concurrency=1,
        batch=64,
        agreement=2,
        fidelity_check=False,
        measure_stages=False,
        memory_check="warn",
        adapt=adapt,
    )


def _run(job: Path, out: Path) -> tuple[int, str, float]:
    t0 = time.monotonic()
    p = subprocess.run(
        [sys.executable, "-m", "orchestrator", "run", "--job", str(job), "--runtime", "docker", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return p.returncode, p.stdout + p.stderr, time.monotonic() - t0


OOM = re.compile(r"device tablet ran out of memory \(limit 200\.0 MiB, peak [^)]+\)")


def test_a_stage_that_outgrows_its_device_ends_the_run_saying_so(tmp_path, docker_client, node_image):
    rc, out, took = _run(_job(tmp_path, TIGHT), tmp_path / "run")
    assert rc == 1, out[-3000:]
    assert OOM.search(out), out[-3000:]
    rep = json.loads((tmp_path / "run" / "report.json").read_text())
    assert any(n.startswith("memory_check is warn") for n in rep["notes"]), rep["notes"]  # the model saw it coming
    assert rep["complete"] is False and OOM.search(rep["ended"]), rep["ended"]
    lost = [e for e in rep["events"] if e["kind"] == "lost"]
    assert lost and lost[0]["device"] == "tablet" and lost[0]["cause"].startswith("ran out of memory"), lost
    print(f"ended in {took:.0f} s: {rep['ended']}")


def test_under_failover_the_run_moves_off_the_device_that_ran_out(tmp_path, docker_client, node_image):
    rc, out, _ = _run(_job(tmp_path, TIGHT, adapt="failover", spare=True), tmp_path / "run")
    assert OOM.search(out), out[-3000:]
    rep = json.loads((tmp_path / "run" / "report.json").read_text())
    assert rc == 0 and rep["complete"] is True, out[-3000:]
    assert rep["errors"] == 0 and rep["agreement"]["top1"] == 1.0
    assert "tablet" not in rep["plans"][-1]["devices"], rep["plans"]
