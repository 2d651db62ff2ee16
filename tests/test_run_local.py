"""`orchestrator run` on the local runtime, end to end, with real node processes."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from orchestrator.run import execute

ROOT = Path(__file__).resolve().parents[1]


def _write_job(tmp: Path, model: Path, devices: str, **extra) -> Path:
    (tmp / "devices.yaml").write_text(textwrap.dedent(devices))
    job = {
        "name": "t",
        "model": str(model),
        "devices": "devices.yaml",
        "runtime": "local",
        "requests": 12,
        "warmup": 2,
        "concurrency": 3,
        **extra,
    }
    p = tmp / "job.yaml"
    p.write_text(json.dumps(job))
    return p


def _node_children() -> list[psutil.Process]:
    return [p for p in psutil.Process().children(recursive=True) if "node" in " ".join(p.cmdline())]


THREE = """
devices:
  - {name: phone, cpus: 1, memory: 1GiB}
  - {name: tablet, cpus: 1, memory: 1GiB}
  - {name: laptop, cpus: 1, memory: 2GiB}
"""


def test_three_stage_run_writes_the_run_folder(tmp_path, tiny_vit):
    job = _write_job(tmp_path, tiny_vit, THREE, stages=3, source="phone")
    run_dir, rep = execute(str(job), out=str(tmp_path / "run"))
    assert rep["errors"] == 0
    assert rep["requests"] == 12 and rep["warmup"] == 2
    assert rep["agreement"]["max_abs_diff"] <= 1e-4 and rep["agreement"]["top1"] == 1.0
    assert rep["throughput_fps"] > 0
    lat = rep["latency_ms"]
    assert lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert [s["device"] for s in rep["stages"]] == ["phone", "tablet", "laptop"]
    assert all(s["compute_ms"]["p50"] > 0 for s in rep["stages"])
    # phone -> tablet -> laptop, then the result goes home to phone
    assert [(h["from"], h["to"]) for h in rep["hops"]] == [
        ("phone", "tablet"),
        ("tablet", "laptop"),
        ("laptop", "phone"),
    ]
    assert all(h["bytes"] > 0 for h in rep["hops"])
    for key in (
        "job",
        "runtime",
        "throughput_fps",
        "latency_ms",
        "stages",
        "hops",
        "agreement",
        "accuracy",
        "devices",
        "predicted",
        "fidelity",
    ):
        assert key in rep
    assert rep["accuracy"]["top1"] is None  # synthetic data: not measured, never 0
    for name in ("report.json", "report.md", "plan.json", "latencies.csv"):
        assert (run_dir / name).exists(), name
    rows = list(csv.DictReader(open(run_dir / "latencies.csv")))
    assert len(rows) == 14 and all(float(r["end_to_end_ms"]) > 0 for r in rows)
    assert {p.name for p in (run_dir / "stats").iterdir()} == {"phone.jsonl", "tablet.jsonl", "laptop.jsonl"}
    assert not _node_children(), "node processes left running"


def _two_op_model(path: Path, floats: int) -> Path:
    """x -> Relu -> Neg: the one cut carries a float32 tensor of `floats` elements."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", floats])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", floats])
    g = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["h"]), helper.make_node("Neg", ["h"], ["y"])], "two", [x], [y]
    )
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_link_of_10mbit_measures_within_10_percent(tmp_path):
    """A 0.6 MB activation crosses a 10 mbit link paced by the sending node: ~0.5 s a frame."""
    model = _two_op_model(tmp_path / "two.onnx", 150_000)
    devices = """
    devices:
      - {name: cam, cpus: 1, memory: 1GiB, bandwidth: 10mbit}
      - {name: hub, cpus: 1, memory: 1GiB}
    """
    job = _write_job(tmp_path, model, devices, stages=2, requests=4, warmup=1, concurrency=2)
    _, rep = execute(str(job), out=str(tmp_path / "run"))
    links = {(f["from"], f["to"]): f for f in rep["fidelity"]["links"]}
    cam_hub = links[("cam", "hub")]
    assert cam_hub["configured_bps"] == 10_000_000
    assert abs(cam_hub["achieved_bps"] / 10e6 - 1) <= 0.10, cam_hub
    hop = next(h for h in rep["hops"] if h["from"] == "cam")
    assert hop["bytes"] >= 600_000
    expected_ms = hop["bytes"] * 8 / 10e6 * 1e3
    assert hop["transfer_ms"]["p50"] == pytest.approx(expected_ms, rel=0.10)
    # back to back, frames queue behind each other: throughput is the link's, not more
    assert rep["throughput_fps"] <= 10e6 / 8 / hop["bytes"] * 1.10


def test_ctrl_c_leaves_no_node_running(tmp_path, fixture_copy):
    model = fixture_copy("squeezenet1_1.onnx")
    devices = """
    devices:
      - {name: cam, cpus: 1, memory: 1GiB, bandwidth: 1mbit}
      - {name: hub, cpus: 1, memory: 1GiB}
    """
    job = _write_job(tmp_path, model, devices, stages=2, requests=50, warmup=0, concurrency=1)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "run", "--job", str(job), "--out", str(tmp_path / "run")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    # wait until the nodes are up and driving has begun (the run folder gets its stats files)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not list((tmp_path / "run").glob("stats/*.jsonl")):
        time.sleep(0.2)
    time.sleep(1.0)
    kids = psutil.Process(proc.pid).children(recursive=True)
    assert len(kids) >= 2, "nodes did not start"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    gone, alive = psutil.wait_procs(kids, timeout=10)
    assert not alive, f"left running: {[p.pid for p in alive]}"
