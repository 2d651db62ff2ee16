"""node.probes on loopback: the transfer and ping probe against its sink, the busy loop, the facts,
and the hold probe against a real node, including one whose delay line holds twice what it is asked,
which the fidelity check must flag."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import pytest

from node import probes, server
from node.server import NodeServer
from orchestrator.runtimes.docker_fidelity import TOLERANCE, link_row
from orchestrator.runtimes.local import free_port
from tests.conftest import ROOT


def _probe_cli(*args: str) -> dict:
    r = subprocess.run(
        [sys.executable, "-m", "node.probes", *args], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_send_measures_bytes_and_one_way_delay_against_the_sink():
    port = free_port()
    sink = threading.Thread(target=probes.sink, args=(2, 20.0, port, "127.0.0.1"), daemon=True)
    sink.start()
    n = 3_000_000
    r = probes.send("127.0.0.1", n, 8, port)
    sink.join(timeout=10)
    assert not sink.is_alive()  # it served its two connections and ended
    assert r["bytes"] == n and r["first_ns"] <= r["last_ns"] and 0 < r["first_bytes"] <= n
    assert r["marks"] and r["marks"][-1][1] == n
    assert len(r["one_way_ms"]) == 8 and r["one_way_ms"] == sorted(r["one_way_ms"])
    assert 0 <= r["one_way_ms"][0] < 50  # loopback: well under a frame of any emulated link


def test_busy_counts_cpu_time_over_wall_time():
    r = probes.busy(1, 0.3)
    assert r["wall_s"] == 0.3
    assert 0 < r["cpu_s"] <= 0.3 * 1.05  # one spinning process cannot get more than the wall time


def test_stage_times_a_model_run_back_to_back(tmp_path):
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.eye(64, dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "mm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])],  # symbolic: drawn as 1
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 64])],
        [w],
    )
    model = tmp_path / "mm.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), model)
    r = _probe_cli("stage", str(model), "--window-s", "0.2")
    assert r["threads"] == 1 and r["runs"] >= 1
    assert 0 < r["mean_s"] and r["mean_s"] * r["runs"] >= 0.2  # the window is full runs, measured whole
    with pytest.raises(ValueError, match="window > 0"):
        probes.stage(str(model), 0.0)


def test_facts_probes_print_one_json_line():
    assert _probe_cli("quota")["cores"] >= 1
    assert isinstance(_probe_cli("netem")["netem"], bool)


@pytest.fixture()
def node():
    ns = NodeServer("rx", 0).start()
    try:
        yield ns
    finally:
        ns.stop()


def _transfer(one_way_ms: float) -> dict:
    """A transfer probe's figures for a link that met its rate, `one_way_ms` of network delay."""
    return {"bytes": 1_000_000, "first_ns": 0, "last_ns": int(0.8e9), "first_bytes": 0, "one_way_ms": [one_way_ms] * 4}


def test_hold_reads_what_the_node_really_held(node):
    r = _probe_cli("hold", node.address, "--from", "tx", "--hold-s", "0.02", "--count", "5")
    assert r["frames"] == 5
    assert r["asked_ms"] == pytest.approx(20.0, abs=0.01)  # stamped by the link sender, exactly
    assert 20.0 <= r["held_ms"] < 20.0 * (1 + TOLERANCE)  # released on time, never early
    stats = node.servicer.Stats(None)
    assert [h.device for h in stats.holds] == ["tx"] and stats.holds[0].frames == 5
    assert stats.frames_in == 5  # the probe frames reached the node, and were dropped, not routed
    row = link_row("tx", "rx", 10_000_000, 0.02, _transfer(0.05), r)
    assert not row["flagged"] and row["node_hold_ms"] == pytest.approx(r["held_ms"], abs=1e-3)


def test_a_node_that_holds_twice_the_delay_is_flagged(node, monkeypatch):
    real = server.sleep_until

    def twice(due_ns: int) -> None:  # the planted fault: the delay line sleeps twice what is left
        now = server.time.time_ns()
        real(now + 2 * max(0, due_ns - now))

    monkeypatch.setattr(server, "sleep_until", twice)
    r = probes.hold(node.address, "tx", 0.02, count=5, gap_s=0.05)  # apart: each frame finds the line idle
    assert r["asked_ms"] == pytest.approx(20.0, abs=0.01)
    assert r["held_ms"] >= 38.0
    row = link_row("tx", "rx", 10_000_000, 0.02, _transfer(0.05), r)
    assert row["flagged"] and row["delay_error"] > 0.8 and row["error"] is not None and abs(row["error"]) < TOLERANCE
    # the configured hold alone (what the check added before) would have hidden it
    assert not link_row("tx", "rx", 10_000_000, 0.02, _transfer(0.05), r | {"held_ms": 20.0})["flagged"]
