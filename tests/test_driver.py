"""The driver against real in-process nodes: closed and open loop, duration, errors, and the
coordinated-omission demonstration (a planted stall shows in the open loop's tail only)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest

from node.server import NodeServer
from orchestrator.driving.client import NodeClient, NodeError
from orchestrator.driving.driver import Feed, Record, drive
from orchestrator.figures.latency import histogram_of, summary
from tests.node_helpers import reference, src_and_a, stall_once


@pytest.fixture
def pipeline(tmp_path):
    """The 3-stage test model on two nodes: src runs stage 0 (and is the source), a runs 1-2."""
    with src_and_a(tmp_path, ["src", "a", "a"]) as servers:
        yield servers


class Feeds:
    """Feeds with key = index, x = a fixed random (2, 4) array per index; counts what was pulled."""

    def __init__(self, n: int | None = None) -> None:
        self.n = n
        self.pulled = 0
        self.xs: list[np.ndarray] = []
        self.rng = np.random.default_rng(3)

    def __iter__(self) -> Iterator[Feed]:
        while self.n is None or self.pulled < self.n:
            x = self.rng.standard_normal((2, 4)).astype(np.float32)
            self.xs.append(x)
            self.pulled += 1
            yield Feed({"x": x}, key=self.pulled - 1)


def _max_overlap(records: list[Record]) -> int:
    events = sorted([(r.sent_ns, 1) for r in records] + [(r.done_ns, -1) for r in records])
    most = now = 0
    for _, step in events:  # at equal stamps the end (-1) sorts first: [sent, done) intervals
        now += step
        most = max(most, now)
    return most


def _p99(records: list[Record]) -> float:
    return summary(histogram_of(r.latency_ms for r in records))["p99"]


def test_closed_loop_answers_all_with_concurrency_in_flight(pipeline):
    feeds = Feeds(100)  # more than asked for: the driver pulls only what it sends
    done: list[int] = []
    recs = drive(
        NodeClient("src", pipeline["src"].address),
        iter(feeds),
        total=40,
        concurrency=3,
        on_done=lambda r: done.append(r.id),
    )
    assert feeds.pulled == 40
    assert [r.id for r in recs] == list(range(40)) and sorted(done) == list(range(40))
    ref = reference(np.concatenate(feeds.xs[:40])).reshape(40, 2, 6)
    for r in recs:
        assert r.error == "" and r.done_ns > r.sent_ns
        assert r.intended_ns == r.sent_ns and r.latency_ms > 0
        np.testing.assert_allclose(r.outputs["y"], ref[r.key], rtol=1e-5, atol=1e-5)
        assert [t.stage for t in r.timings] == [-1, 0, 1, 2, 3]
    assert _max_overlap(recs) <= 3
    assert _max_overlap(recs) == 3  # and the window was used


def test_open_loop_follows_the_schedule(pipeline):
    rate = 100.0
    feeds = Feeds()
    recs = drive(NodeClient("src", pipeline["src"].address), iter(feeds), total=50, rate_hz=rate)
    assert len(recs) == 50 and feeds.pulled == 50
    assert all(r.error == "" for r in recs)
    t0 = recs[0].intended_ns
    for i, r in enumerate(recs):
        assert r.intended_ns == t0 + round(i * 1e9 / rate)
        assert r.sent_ns >= r.intended_ns
    late_ms = sorted((r.sent_ns - r.intended_ns) / 1e6 for r in recs)
    # the pipeline keeps up: sent on time (bounds leave room for a machine busy with other work)
    assert late_ms[len(late_ms) // 2] < 2.0, late_ms
    assert late_ms[int(0.9 * len(late_ms))] < 10.0, late_ms
    assert late_ms[-1] < 50.0, late_ms
    ref = reference(np.concatenate(feeds.xs)).reshape(50, 2, 6)
    for r in recs:
        np.testing.assert_allclose(r.outputs["y"], ref[r.key], rtol=1e-5, atol=1e-5)


def test_planted_stall_shows_in_open_loop_tail_not_closed_loop(pipeline):
    """Stage 1 stalls 1 s once. Closed loop (1 in flight): the sender waits out the stall, so
    only one request sees it and p99 stays low. Open loop (50 Hz, latency from the scheduled
    send): every request due during the stall is delayed, and p99 reports it."""
    src = NodeClient("src", pipeline["src"].address)
    stall_once(pipeline["a"], 1, call=20, seconds=1.0)
    closed = drive(src, iter(Feeds()), total=300, concurrency=1)
    assert all(not r.error for r in closed)
    slow = [r for r in closed if r.latency_ms >= 500]
    assert [r.id for r in slow] == [20]  # the stall is there, in one request
    assert _p99(closed) < 100, summary(histogram_of(r.latency_ms for r in closed))

    stall_once(pipeline["a"], 1, call=25, seconds=1.0)
    opened = drive(src, iter(Feeds()), duration_s=3.0, rate_hz=50)
    assert len(opened) == 150 and all(not r.error for r in opened)
    stats = summary(histogram_of(r.latency_ms for r in opened))
    assert stats["p99"] >= 500, stats
    affected = [r for r in opened if r.latency_ms >= 100]
    assert len(affected) >= 30, len(affected)  # ~50 requests were due during the 1 s stall
    # the late ones were sent late, but their latency counts from when they were due
    assert max(r.latency_ms for r in opened) >= 900


def test_duration_stops_sending(pipeline):
    src = NodeClient("src", pipeline["src"].address)
    feeds = Feeds()
    recs = drive(src, iter(feeds), duration_s=0.5, concurrency=2)
    assert recs and feeds.pulled == len(recs) and all(not r.error for r in recs)
    t0 = recs[0].sent_ns
    # a request is taken while the 0.5 s last; it may wait for its slot a moment past the end
    assert max(r.sent_ns for r in recs) - t0 < 0.5e9 + 0.05e9
    assert max(r.done_ns for r in recs) - t0 > 0.45e9

    feeds = Feeds()
    recs = drive(src, iter(feeds), duration_s=0.5, rate_hz=40, total=1000)
    assert len(recs) == 20 and feeds.pulled == 20  # due at 0, 25, ..., 475 ms
    recs = drive(src, iter(Feeds()), duration_s=10.0, rate_hz=40, total=5)
    assert len(recs) == 5  # whichever comes first


def test_feeds_ending_early_stop_the_run(pipeline):
    recs = drive(NodeClient("src", pipeline["src"].address), iter(Feeds(4)), total=10, concurrency=2)
    assert [r.key for r in recs] == [0, 1, 2, 3]
    assert drive(NodeClient("src", pipeline["src"].address), iter([]), total=10, rate_hz=10) == []


def test_errors_are_recorded_not_raised(pipeline, tmp_path):
    idle = NodeServer("idle", 0, "127.0.0.1").start()  # never loaded: not a source
    try:
        recs = drive(NodeClient("idle", idle.address), iter(Feeds(3)), total=3, concurrency=2)
    finally:
        idle.stop(0.2)
    assert len(recs) == 3 and all("not loaded as the source" in r.error for r in recs)
    wrong = iter([Feed({"x": np.ones((1, 5), np.float32)}, key=7)])  # wrong width: stage 0 fails
    (r,) = drive(NodeClient("src", pipeline["src"].address), wrong, total=1)
    assert r.key == 7 and r.error and r.outputs is None


def test_unanswered_requests_time_out(pipeline):
    stall_once(pipeline["a"], 1, call=0, seconds=1.5)
    t = time.monotonic()
    recs = drive(NodeClient("src", pipeline["src"].address), iter(Feeds()), total=3, concurrency=1, timeout_s=0.4)
    assert time.monotonic() - t < 1.4
    assert len(recs) == 1 and "no result within 0.4 s" in recs[0].error


def test_unreachable_source_raises():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here
    with pytest.raises(NodeError, match=r"node src at 127\.0\.0\.1:\d+: unreachable"):
        drive(NodeClient("src", f"127.0.0.1:{port}"), iter(Feeds(1)), total=1, timeout_s=0.5)


def test_feeds_error_raised_after_in_flight_are_home(pipeline):
    def broken():
        yield Feed({"x": np.ones((1, 4), np.float32)})
        raise OSError("disk on fire")

    with pytest.raises(OSError, match="disk on fire"):
        drive(NodeClient("src", pipeline["src"].address), broken(), total=5)


def test_arguments_are_checked():
    with pytest.raises(ValueError):
        drive(NodeClient("src", "127.0.0.1:1"), iter([]))
    with pytest.raises(ValueError):
        drive(NodeClient("src", "127.0.0.1:1"), iter([]), total=1, rate_hz=0)


def test_open_loop_in_flight_cap_keeps_the_schedule(pipeline):
    """At the cap the sender waits, sends late, and the lateness stays in the latency."""
    stall_once(pipeline["a"], 1, call=5, seconds=0.3)
    recs = drive(NodeClient("src", pipeline["src"].address), iter(Feeds()), total=30, rate_hz=100, max_in_flight=2)
    assert len(recs) == 30 and all(not r.error for r in recs)
    assert _max_overlap(recs) <= 2
    late = [r for r in recs if r.sent_ns - r.intended_ns > 100e6]
    assert late  # held back by the cap during the stall
    t0 = recs[0].intended_ns
    for i, r in enumerate(recs):
        assert r.intended_ns == t0 + round(i * 1e7)
    for r in late:
        assert r.latency_ms == (r.done_ns - r.intended_ns) / 1e6 > (r.done_ns - r.sent_ns) / 1e6 + 100


def test_source_going_away_mid_run_raises(pipeline):
    src = pipeline["src"]
    threading.Timer(0.3, src.stop, args=(0.1,)).start()
    t = time.monotonic()
    with pytest.raises(NodeError, match=r"node src at 127\.0\.0\.1:\d+: Drive: "):
        drive(NodeClient("src", src.address), iter(Feeds()), duration_s=3.0, rate_hz=50)
    assert time.monotonic() - t < 2.5
