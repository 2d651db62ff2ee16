"""The trace check's arithmetic (configured against achieved, bursts around changes, lateness) and
the tc commands of a change made in place while traffic flows: pure, no engine needed."""

from __future__ import annotations

import pytest

from node import tc
from orchestrator.runtimes.base import HELD_RATE_BPS, held_rate
from orchestrator.runtimes.docker_trace_check import BIN_S, FRAME_BITS, Step, allowed_bits, analyse, schedule
from orchestrator.scenario.timeline import Change


def _link(at: float, rate: int | None, delay: float | None = None) -> Change:
    return Change(at, "link", 0, src="a", dst="b", rate_bps=rate, delay_s=delay)


def test_a_zero_crawls_and_the_schedule_merges_what_does_not_change():
    assert held_rate(0) == HELD_RATE_BPS and held_rate(5_000) == 5_000
    steps = schedule([_link(0.0, 2_000_000), _link(1.0, 0), _link(2.0, 0), _link(3.0, None, 0.01)], 50_000_000)
    assert steps == [Step(0.0, 2_000_000), Step(1.0, HELD_RATE_BPS)]
    assert allowed_bits(steps, 0.5, 1.5) == pytest.approx(1_000_000 + HELD_RATE_BPS / 2)


def _bins(steps: list[Step], seconds: float, scale: float = 1.0) -> list[int]:
    """10-ms bins of bytes a link following `steps` exactly (times `scale`) would deliver."""
    n = round(seconds / BIN_S)
    return [round(allowed_bits(steps, k * BIN_S, (k + 1) * BIN_S) / 8 * scale) for k in range(n)]


def test_a_link_that_follows_its_steps_is_within_and_never_over():
    steps = [Step(0.0, 2_000_000), Step(2.5, 500_000), Step(4.0, 6_000_000)]
    res = analyse(steps, _bins(steps, 6.0), 6.0, [0.005, 0.012, 0.030])
    assert res["within_share"] == 1.0 and len(res["windows"]) == 6
    assert res["worst_overshoot"] <= 0.0
    assert res["lateness_ms"]["p50"] == pytest.approx(12.0) and res["lateness_ms"]["p99"] == pytest.approx(30.0)


def test_a_slow_link_and_a_burst_at_a_change_are_caught():
    steps = [Step(0.0, 2_000_000), Step(2.0, 500_000)]
    slow = analyse(steps, _bins(steps, 4.0, scale=0.8), 4.0, [])
    assert slow["within_share"] == 0.0 and all(w["error"] == pytest.approx(-0.2, abs=0.01) for w in slow["windows"])
    bins = _bins(steps, 4.0)
    bins[round(2.03 / BIN_S)] += 20 * FRAME_BITS // 8  # twenty frames let through at once, 30 ms after the change
    burst = analyse(steps, bins, 4.0, [])
    assert burst["worst_overshoot"] > 0.10  # against 2 Mbit/s, the higher rate around the change
    assert burst["changes"][0]["old_bps"] == 2_000_000 and burst["changes"][0]["new_bps"] == 500_000


def test_a_window_holds_whole_frames():
    steps = [Step(0.0, 50_000)]  # 100 ms holds less than half a frame
    bins = [0] * 400
    for k in range(0, 400, 25):  # one frame every 250 ms: 48 kbit/s
        bins[k] = FRAME_BITS // 8
    res = analyse(steps, bins, 4.0, [])
    assert res["within_share"] == 1.0  # off by less than one frame a second


def test_a_change_in_place_never_shrinks_the_queue_and_bursts_one_frame_at_most():
    cmds = [" ".join(c) for c in tc.change_link_commands("eth0", "1:10", 8_000, queue_floor=207)]
    assert cmds[0].startswith("tc class change dev eth0 parent 1: classid 1:10 htb rate 8000bit")
    assert f"burst {tc.MTU_FRAME // 10}b" in cmds[0]  # a crawl sends one frame at a time
    assert cmds[1] == "tc qdisc change dev eth0 parent 1:10 handle 10: pfifo limit 207"
    fast = " ".join(tc.change_link_commands("eth0", "1:10", 200_000_000)[0])
    assert "burst 25000b" in fast  # a millisecond of the rate at high rates
    swap = [" ".join(c) for c in tc.change_link_commands("eth0", "1:10", 8_000, 0.02, replace_leaf=True)]
    assert swap[1].startswith("tc qdisc replace dev eth0 parent 1:10 handle 10: netem delay 20000us")
