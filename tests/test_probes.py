"""node.probes on loopback: the transfer and ping probe against its sink, the busy loop, the facts,
and the hold probe against a real node, including one whose delay line holds twice what it is asked,
which the fidelity check must flag."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

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
    stats = node.servicer.Stats(None)  # the node saw one more: the first, not counted (it starts the delay line)
    assert [h.device for h in stats.holds] == ["tx"] and stats.holds[0].frames == 6
    assert stats.frames_in == 6  # the probe frames reached the node, and were dropped, not routed
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


def test_holds_probes_every_incoming_link_over_one_stream(node):
    got = probes.holds(node.address, [("a", 0.004), ("b", 0.012)], count=3)
    assert set(got) == {"a", "b"}
    for dev, ms in (("a", 4.0), ("b", 12.0)):
        assert got[dev]["frames"] == 3 and got[dev]["asked_ms"] == pytest.approx(ms, abs=0.01)
        assert ms <= got[dev]["held_ms"] < ms * (1 + TOLERANCE)
    with pytest.raises(ValueError, match="delays > 0"):
        probes.holds(node.address, [("a", 0.0)])


def test_sends_runs_each_transfer_in_its_slot_and_cuts_it_at_the_deadline():
    """Two peers on loopback addresses of their own, one transfer each in rounds 0 and 1."""
    port = free_port()
    sinks = [
        threading.Thread(target=probes.sink, args=(2, 20.0, port, ip), daemon=True) for ip in ("127.0.0.2", "127.0.0.3")
    ]
    for t in sinks:
        t.start()
    slot_ns, t0 = 400_000_000, time.time_ns() + 300_000_000
    plan = {"t0_ns": t0, "slot_ns": slot_ns, "until_ns": t0 + 2 * slot_ns, "port": port, "pings": 4}
    plan["transfers"] = [
        {"round": 1, "ip": "127.0.0.3", "n": 2_000_000},
        {"round": 0, "ip": "127.0.0.2", "n": 1_000_000},
    ]
    got = probes.sends(plan)["transfers"]
    assert [(g["round"], g["ip"], g["bytes"]) for g in got] == [
        (0, "127.0.0.2", 1_000_000),
        (1, "127.0.0.3", 2_000_000),
    ]
    for g in got:
        start = t0 + g["round"] * slot_ns
        assert g["first_ns"] >= start and g["last_ns"] <= start + slot_ns  # in its slot, stamped by the kernel
        assert not g["cut"] and g["mss"] > 0 and len(g["one_way_ms"]) == 4
    # a transfer that cannot end by its deadline stops there, and the sink reports what arrived
    threading.Thread(target=probes.sink, args=(2, 20.0, port, "127.0.0.4"), daemon=True).start()
    r = probes.send("127.0.0.4", 1 << 34, 2, port, deadline_ns=time.time_ns() + 300_000_000)  # pings first
    assert r["cut"] and 0 < r["bytes"] < 1 << 34 and r["marks"][-1][1] == r["bytes"]


def test_measure_runs_a_probe_beside_the_node(node):
    from orchestrator.driving.client import NodeClient, NodeError

    with NodeClient("rx", node.address) as c:
        assert c.measure("quota")["cores"] >= 1  # the probe's own JSON line, through the node
        assert c.measure("sink", [1, 0.5, free_port()], detach=True) == {}  # started, not waited for
        with pytest.raises(NodeError, match="no probe 'nope'"):
            c.measure("nope")
        with pytest.raises(NodeError, match=r"(?s)probe busy failed \(exit 2\).*invalid int"):
            c.measure("busy", ["x", "1"])
        with pytest.raises(NodeError, match="did not end within 0.5 s"):
            c.measure("busy", [1, 5], timeout_s=0.5)


def test_rounds_pair_every_device_once_per_round():
    from orchestrator.runtimes.docker_fidelity import _matching_rounds, _rounds

    devs = [f"d{i}" for i in range(5)]
    rounds = _rounds(devs)
    assert len(rounds) == 4 and sorted(p for r in rounds for p in r) == sorted(
        (a, b) for a in devs for b in devs if a != b
    )
    for r in rounds + _matching_rounds([("d0", "d1"), ("d0", "d2"), ("d3", "d1"), ("d4", "d2")]):
        assert len({a for a, _ in r}) == len(r) == len({b for _, b in r})  # sends once, receives once


@pytest.mark.parametrize("n", [2, 4, 6, 32])
def test_no_round_carries_a_pair_both_ways(n):
    """Two transfers crossing on one pair stall each other: an even count's half shift is split."""
    from orchestrator.runtimes.docker_fidelity import _matching_rounds, _rounds

    devs = [f"d{i}" for i in range(n)]
    rounds = _rounds(devs)
    assert len(rounds) == n and sorted(p for r in rounds for p in r) == sorted(
        (a, b) for a in devs for b in devs if a != b
    )
    retry = _matching_rounds([("d0", "d1"), ("d1", "d0"), ("d1", "d2")])
    for r in rounds + retry:
        assert len({a for a, _ in r}) == len(r) == len({b for _, b in r})
        assert not any((b, a) in r for a, b in r), r


def test_wire_rate_counts_the_headers_of_the_segment_size_in_use():
    from orchestrator.runtimes.docker_fidelity import _wire_rate

    # 1 MB a second of payload, arriving evenly
    marks = [(int(i * 1e7), i * 10_000) for i in range(101)]
    r = {"bytes": 1_000_000, "first_ns": 0, "last_ns": int(1e9), "first_bytes": 10_000, "marks": marks}
    assert _wire_rate(r | {"mss": 1448}) == pytest.approx(8e6 * 1514 / 1448)
    assert _wire_rate(r | {"mss": 1398}) == pytest.approx(8e6 * 1464 / 1398)  # an overlay's MTU 1450
    assert _wire_rate(r | {"bytes": 0, "first_ns": None}) == 0.0  # nothing arrived


def test_sends_spins_its_busy_loop_at_its_time():
    at = time.time_ns() + 200_000_000
    plan = {"t0_ns": at, "slot_ns": 1, "until_ns": at, "port": free_port(), "pings": 1, "transfers": []}
    r = probes.sends(plan | {"busy": {"at_ns": at, "procs": 1, "wall_s": 0.2}})
    assert r["transfers"] == [] and r["busy"]["wall_s"] == 0.2 and 0 < r["busy"]["cpu_s"] <= 0.2 * 1.05
    assert 0 <= r["busy"]["late_ms"] < 100  # it waited for its time, and started then
