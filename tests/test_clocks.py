"""Clock offsets between the orchestrator and the nodes, and the metrics that remove them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from common import testbed_pb2 as pb
from node.server import NodeServer
from orchestrator.driving.client import NodeClient
from orchestrator.driving.clocks import ClockOffset, estimate_offsets, offsets_ns
from orchestrator.figures.metrics import (
    breakdown_table,
    hop_figures,
    hop_samples,
    stage_figures,
    timeline_rows,
)
from orchestrator.reporting import plots
from tests.node_helpers import drive, load_request, stub, write_stages

SHIFT = 3_000_000_000  # a node whose clock runs 3 s ahead


@dataclass
class Record:
    """What metrics read of a request record (orchestrator/driving/driver.py's has more)."""

    id: int
    sent_ns: int
    done_ns: int
    timings: list
    error: str = ""


def Timing(stage, device, recv_ns, start_ns, end_ns, send_ns, bytes_out) -> pb.StageTiming:  # noqa: N802
    return pb.StageTiming(
        stage=stage,
        device=device,
        recv_ns=recv_ns,
        start_ns=start_ns,
        end_ns=end_ns,
        send_ns=send_ns,
        bytes_out=bytes_out,
    )


@pytest.fixture
def servers():
    started: list[NodeServer] = []

    def start(**shifts: int) -> dict[str, NodeServer]:
        out = {}
        for name, shift in shifts.items():
            out[name] = NodeServer(name, 0, "127.0.0.1", clock_offset_ns=shift).start()
            started.append(out[name])
        return out

    yield start
    for s in started:
        s.stop(0.2)


def test_health_reports_the_shifted_clock(servers):
    s = servers(a=SHIFT)["a"]
    import time

    now = stub(s.address).Health(pb.Empty()).now_ns
    assert abs(now - time.time_ns() - SHIFT) < 200_000_000


def test_offsets_estimated_against_shifted_nodes(servers):
    nodes = servers(plain=0, ahead=SHIFT, behind=-SHIFT // 2)
    clocks = estimate_offsets({n: NodeClient(n, s.address) for n, s in nodes.items()}, probes=10)
    for name, want in (("plain", 0), ("ahead", SHIFT), ("behind", -SHIFT // 2)):
        c = clocks[name]
        assert isinstance(c, ClockOffset)
        assert 0 < c.rtt_ns < 100_000_000 and c.uncertainty_ns == (c.rtt_ns + 1) // 2
        # the truth lies within the uncertainty (plus a little for scheduling on a busy box)
        assert abs(c.offset_ns - want) <= c.uncertainty_ns + 2_000_000, (name, c)
    ns = offsets_ns(clocks)
    assert abs(ns["ahead"] - SHIFT) < 5_000_000 and abs(ns["behind"] + SHIFT // 2) < 5_000_000
    assert offsets_ns({"x": ClockOffset(30, 100, 50)}) == {"x": 0}  # below its noise: none
    assert offsets_ns({"x": ClockOffset(30, 100, 50)}, significant_only=False) == {"x": 30}
    assert set(clocks["ahead"].as_dict()) == {"offset_ns", "rtt_ns", "uncertainty_ns"}


def _total(h) -> float:
    return h.wait_ms + h.serialize_ms + h.transfer_ms + h.deserialize_ms


def _record(rid: int, shift: int, ser: int = 0, deser: int = 0) -> Record:
    """src -> a (stage 0, clock shifted) -> src; on the true clock each hop takes 2 ms."""
    ms = 1_000_000
    base = 1_000_000_000_000 + rid * 100 * ms
    tim = [
        Timing(-1, "src", base, 0, 0, base + ms, 100),
        Timing(0, "a", base + 3 * ms + shift, base + 4 * ms + shift, base + 9 * ms + shift, base + 10 * ms + shift, 50),
        Timing(1, "src", base + 12 * ms, 0, 0, 0, 0),
    ]
    tim[0].serialize_ns, tim[1].deserialize_ns = ser, deser
    tim[1].serialize_ns, tim[2].deserialize_ns = ser, deser
    return Record(id=rid, sent_ns=base - ms, done_ns=base + 13 * ms, timings=tim)


def test_metrics_with_offsets_remove_a_planted_shift():
    recs = [_record(i, SHIFT, ser=200_000, deser=300_000) for i in range(5)]
    wrong = hop_samples(recs, 1)
    right = hop_samples(recs, 1, offsets={"a": SHIFT})
    assert {(h.src, h.dst) for h in right} == {("src", "a"), ("a", "src")}
    for h in right:  # 2 ms = 0.2 serialisation + 1.5 transfer + 0.3 deserialisation
        assert (h.wait_ms, h.serialize_ms, h.deserialize_ms) == (0.0, 0.2, 0.3)
        assert h.transfer_ms == pytest.approx(1.5)
    for h in wrong:  # uncorrected: 3 s too long into a, and back home 3 s before leaving a
        assert _total(h) == pytest.approx(2 + SHIFT / 1e6 * (1 if h.dst == "a" else -1))
    first = next(h for h in right if h.id == 0 and h.dst == "a")  # a's receive stamp corrected, src's send not
    assert _total(first) == pytest.approx((recs[0].timings[1].recv_ns - SHIFT - recs[0].timings[0].send_ns) / 1e6)
    st = stage_figures(recs, 1, {"a": SHIFT})
    assert st[0]["compute_ms"]["p50"] == 5.0 and st[0]["queue_ms"]["p50"] == 1.0
    rows = timeline_rows(recs, 1, {"a": SHIFT})
    assert rows[0]["stages"][0][2] == recs[0].timings[1].start_ns - SHIFT
    assert rows[0]["hops"][0][4:] == (200_000, 300_000)


def test_breakdown_table_in_pipeline_order(tmp_path):
    recs = [_record(i, 0, ser=200_000, deser=300_000) for i in range(5)]
    hops = hop_figures(hop_samples(recs, 1), {r.id for r in recs})
    stages = stage_figures(recs, 1)
    rows = breakdown_table(stages, hops)
    assert [(r["part"], r["where"]) for r in rows] == [
        ("link wait", "src -> a"),
        ("serialisation", "src -> a"),
        ("transfer", "src -> a"),
        ("deserialisation", "src -> a"),
        ("queue", "stage 0 on a"),
        ("compute", "stage 0 on a"),
        ("link wait", "a -> src"),
        ("serialisation", "a -> src"),
        ("transfer", "a -> src"),
        ("deserialisation", "a -> src"),
    ]
    assert sum(r["share_pct"] for r in rows) == pytest.approx(100, abs=0.5)
    assert sum(r["mean_ms"] for r in rows) == pytest.approx(10.0)  # receive home - send to a + ingress
    e2e = breakdown_table(stages, hops, end_to_end_ms=14.0)
    assert next(r for r in e2e if r["part"] == "compute")["share_pct"] == pytest.approx(100 * 5 / 14, abs=0.1)
    # old hop figures without the (de)serialisation keys still tabulate
    old = [{k: v for k, v in h.items() if "serial" not in k} for h in hops]
    assert len(breakdown_table(stages, old)) == 6
    assert plots.breakdown(stages, hops, tmp_path / "b.png").stat().st_size > 0
    assert plots.timeline(timeline_rows(recs, 1), tmp_path / "t.png").stat().st_size > 0


def test_cross_device_hops_right_only_after_correction(servers, tmp_path):
    """Real nodes, the middle one 3 s ahead: hops into and out of it are off by 3 s until the
    estimated offsets are subtracted, then short and positive."""
    nodes = servers(src=0, a=SHIFT, b=0)
    stages = write_stages(tmp_path)
    addresses = {n: s.address for n, s in nodes.items()}
    for name, s in nodes.items():
        assert stub(s.address).Load(load_request(name, stages, ["src", "a", "b"], addresses, "src")).ok
    results = drive(nodes["src"].address, [np.ones((4, 4), np.float32)] * 5)
    recs = [
        Record(id=r.header.request_id, sent_ns=r.header.sent_ns, done_ns=1, timings=list(r.header.timings))
        for r in results
    ]
    offsets = offsets_ns(estimate_offsets({n: NodeClient(n, a) for n, a in addresses.items()}, probes=10))
    assert offsets["src"] == 0 == offsets["b"] and abs(offsets["a"] - SHIFT) < 5_000_000
    for h in hop_samples(recs, 3):
        if h.dst == "a":
            assert _total(h) > 2500
        elif h.src == "a":
            assert _total(h) < -2500
    after = hop_samples(recs, 3, offsets=offsets)
    for h in after:
        assert 0 <= h.transfer_ms < 500 and 0 <= h.wait_ms < 500, h
        assert h.serialize_ms > 0 and h.deserialize_ms > 0
