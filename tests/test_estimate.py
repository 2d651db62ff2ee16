"""Measured conditions: link rates and device speed from request stamps built on known links."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from orchestrator import config
from orchestrator.adapt.estimate import (
    Estimate,
    LinkEstimate,
    apply_links,
    estimate,
    predicted_steps,
)
from orchestrator.adapt.replan import scaled
from orchestrator.config import Device, Link
from orchestrator.driving.driver import Record, Timing
from orchestrator.partition.costmodel import CostTable

S = 1_000_000_000
MBIT = 1_000_000
T0 = 1_700_000_000 * S  # stamps are unix nanoseconds

# phone is the source; stage 0 runs on the laptop; the result comes back to the phone
TESTBED = config.Testbed(
    devices=[Device(name="phone"), Device(name="laptop"), Device(name="tablet", bandwidth="20mbit")],
    links=[
        Link(**{"from": "phone", "to": "laptop", "bandwidth": "50mbit", "delay": "10ms"}),
        Link(**{"from": "laptop", "to": "phone", "bandwidth": "200mbit", "delay": "2ms"}),
    ],
)


def _const(v: float) -> Callable[[float], float]:
    return lambda t: v


UP, DOWN, COMPUTE = _const(50 * MBIT), _const(200 * MBIT), _const(0.005)


def pipeline(
    sends_s: list[float],
    *,
    in_bytes: int = 50_000,
    out_bytes: int = 4_000,
    up_bps: Callable[[float], float] = UP,
    up_delay_s: float = 0.010,
    compute_s: Callable[[float], float] = COMPUTE,
    down_bps: Callable[[float], float] = DOWN,
    down_delay_s: float = 0.002,
    laptop_clock_s: float = 0.0,
) -> list[Record]:
    """Records of requests through FIFO links and one FIFO stage: each link serves a frame at the
    rate it has when it takes the frame, the delay after; the laptop's stamps on its own clock."""
    up_free = cpu_free = down_free = 0.0
    lap = laptop_clock_s
    out = []
    for i, t in enumerate(sends_s):
        start = max(t, up_free)
        up_free = start + in_bytes * 8 / up_bps(start)
        arrive = up_free + up_delay_s
        c0 = max(arrive, cpu_free)
        cpu_free = c1 = c0 + compute_s(c0)
        start = max(c1, down_free)
        down_free = start + out_bytes * 8 / down_bps(start)
        home = down_free + down_delay_s

        def ns(x: float) -> int:
            return T0 + round(x * S)

        timings = [
            Timing(-1, "phone", ns(t), ns(t), ns(t), ns(t), in_bytes),
            Timing(0, "laptop", ns(arrive + lap), ns(c0 + lap), ns(c1 + lap), ns(c1 + lap), out_bytes),
            Timing(1, "phone", ns(home), 0, 0, 0, 0),
        ]
        out.append(Record(i, i, ns(t), ns(t), ns(home), timings))
    return out


def until(records: list[Record], t_s: float) -> list[Record]:
    """The records answered by t_s, as a live caller has them."""
    return [r for r in records if r.done_ns <= T0 + t_s * S]


def every(period_s: float, until_s: float, start_s: float = 0.0) -> list[float]:
    n = round((until_s - start_s) / period_s)
    return [start_s + k * period_s for k in range(n)]


def test_a_saturated_link_shows_its_rate_between_arrivals():
    # 50 kB at 2 Mbit/s holds the link 200 ms; one is sent every 50 ms: the queue only grows
    recs = pipeline(every(0.05, 4.0), up_bps=_const(2 * MBIT), up_delay_s=0.020)
    est = estimate(recs, TESTBED)
    rate, n, age = est.links[("phone", "laptop")]
    assert rate == pytest.approx(2 * MBIT, rel=0.01)
    assert n >= 10 and age == pytest.approx(0.0, abs=0.01)


def test_an_idle_link_shows_its_rate_from_send_to_arrival():
    recs = pipeline(every(0.5, 6.0), up_bps=_const(20 * MBIT), up_delay_s=0.010)
    est = estimate(recs, TESTBED)
    assert est.links[("phone", "laptop")].rate_bps == pytest.approx(20 * MBIT, rel=0.01)
    assert ("phone", "laptop") not in est.floored


def test_a_delay_longer_than_configured_reads_as_the_rate_that_predicts_the_transfer():
    recs = pipeline(every(0.5, 6.0), up_bps=_const(20 * MBIT), up_delay_s=0.030)  # configured: 10 ms
    rate = estimate(recs, TESTBED).links[("phone", "laptop")].rate_bps
    transfer = 50_000 * 8 / 20e6 + 0.030
    assert 50_000 * 8 / rate + 0.010 == pytest.approx(transfer, rel=0.01)


def test_frames_too_short_to_show_the_rate_keep_the_configured_one():
    # a 4 kB result on a 200 Mbit/s link: 0.16 ms, under the per-frame overheads of a real link
    recs = pipeline(every(0.5, 6.0))
    est = estimate(recs, TESTBED)
    assert ("laptop", "phone") in est.floored
    assert est.links[("laptop", "phone")].rate_bps == 200 * MBIT
    unshaped = config.Testbed(devices=[Device(name="phone"), Device(name="laptop")])
    assert estimate(recs, unshaped).links[("laptop", "phone")].rate_bps == 0  # stays unshaped
    # the same result on a 1 Mbit/s link (32 ms) is measured
    slow = pipeline(every(0.5, 6.0), down_bps=_const(1 * MBIT))
    est = estimate(slow, TESTBED)
    assert ("laptop", "phone") not in est.floored
    assert est.links[("laptop", "phone")].rate_bps == pytest.approx(1 * MBIT, rel=0.01)


def drop_at(t_s: float, before: float, after: float) -> Callable[[float], float]:
    return lambda t: before if t < t_s else after


def test_a_rate_drop_shows_once_slow_frames_hold_the_link_most_of_the_window():
    # 50 -> 2 Mbit/s at 10 s; frames every 100 ms (8 ms each before, 200 ms after)
    recs = pipeline(every(0.1, 14.0), up_bps=drop_at(10.0, 50 * MBIT, 2 * MBIT))
    now = 10.0 + 1.8  # window 8.8..11.8 s: 12 fast frames, but fewer slow ones hold most of it
    live = until(recs, now)
    est = estimate(live, TESTBED, now_ns=T0 + round(now * S))
    link = est.links[("phone", "laptop")]
    fast = sum(1 for r in live if r.timings[0].send_ns >= T0 + 8.8 * S and r.timings[0].send_ns < T0 + 10 * S)
    assert fast > link.n_frames - fast  # a count median would still say 50 Mbit/s
    assert link.rate_bps == pytest.approx(2 * MBIT, rel=0.01)
    before = estimate(until(recs, 9.9), TESTBED, now_ns=T0 + round(9.9 * S))
    assert before.links[("phone", "laptop")].rate_bps == pytest.approx(50 * MBIT, rel=0.01)


def test_a_rate_rise_shows_within_the_window():
    recs = pipeline(every(0.25, 16.0), up_bps=drop_at(8.0, 2 * MBIT, 50 * MBIT))
    rates = {}
    for now in (8.5, 11.5):
        live = until(recs, now)
        rates[now] = estimate(live, TESTBED, now_ns=T0 + round(now * S)).links[("phone", "laptop")].rate_bps
    assert rates[8.5] == pytest.approx(2 * MBIT, rel=0.01)
    assert rates[11.5] == pytest.approx(50 * MBIT, rel=0.01)


def test_a_link_silent_for_longer_than_the_window_keeps_its_figure_with_its_age():
    recs = pipeline(every(0.1, 3.0), up_bps=_const(10 * MBIT))
    est = estimate(recs, TESTBED, now_ns=recs[-1].done_ns + 10 * S)
    rate, n, age = est.links[("phone", "laptop")]
    assert rate == pytest.approx(10 * MBIT, rel=0.01)
    last_in = recs[-1].timings[1].recv_ns
    assert age == pytest.approx(10.0 + (recs[-1].done_ns - last_in) / S, abs=1e-6)
    assert 1 <= n <= 30


def test_clock_offsets_are_taken_off_before_hops_are_measured():
    # idle: the service time runs from the phone's send to the laptop's arrival, across two clocks
    recs = pipeline(every(0.5, 6.0), up_bps=_const(20 * MBIT), laptop_clock_s=0.5)
    off = {"laptop": S // 2}
    right = estimate(recs, TESTBED, offsets=off).links[("phone", "laptop")].rate_bps
    assert right == pytest.approx(20 * MBIT, rel=0.01)
    wrong = estimate(recs, TESTBED).links[("phone", "laptop")].rate_bps
    assert wrong < 2 * MBIT
    # saturated: between arrivals on the one receiving clock, the offset cancels
    busy = pipeline(every(0.05, 4.0), up_bps=_const(2 * MBIT), laptop_clock_s=0.5)
    assert estimate(busy, TESTBED).links[("phone", "laptop")].rate_bps == pytest.approx(2 * MBIT, rel=0.01)


TABLE = CostTable(bounds=[0, 2, 4], block_s={"laptop": [0.02, 0.03], "phone": [0.2, 0.3]}, overhead_s={"laptop": 0.01})


def test_a_throttled_device_is_slower_than_the_table_by_its_factor():
    steps = predicted_steps(TABLE, [], ["laptop"])  # one stage holding both blocks
    assert steps == [("laptop", pytest.approx(0.05))]
    recs = pipeline(every(0.25, 12.0), compute_s=drop_at(6.0, 0.05, 0.10))  # CPU share halved at 6 s
    early = estimate(until(recs, 5.0), TESTBED, steps, now_ns=T0 + 5 * S)
    late = estimate(recs, TESTBED, steps)
    assert early.speed == {"laptop": pytest.approx(1.0, rel=0.01)}
    assert late.speed == {"laptop": pytest.approx(2.0, rel=0.01)}
    slowed = scaled(TABLE, late.speed)
    assert slowed.block_s["laptop"] == pytest.approx([0.04, 0.06])
    assert slowed.block_s["phone"] == TABLE.block_s["phone"]


def test_a_stage_found_on_another_device_is_not_counted():
    recs = pipeline(every(0.25, 4.0), compute_s=_const(0.5))
    assert estimate(recs, TESTBED, [("tablet", 0.05)]).speed == {}


def test_a_two_stage_table_split_across_devices():
    steps = predicted_steps(TABLE, [2], ["phone", "laptop"])
    assert steps == [("phone", pytest.approx(0.2)), ("laptop", pytest.approx(0.03))]


def test_a_link_not_in_use_takes_its_reverse_share_of_the_configured_rate():
    est = Estimate(links={("phone", "laptop"): LinkEstimate(2 * MBIT, 20, 0.1)})
    tb = apply_links(est, TESTBED)
    assert tb.link("phone", "laptop").rate_bps == 2 * MBIT
    assert tb.link("laptop", "phone").rate_bps == 8 * MBIT  # 200 Mbit/s at the reverse's 2/50
    assert tb.link("laptop", "phone").delay_s == pytest.approx(0.002)  # delays as configured
    assert tb.link("tablet", "phone") == TESTBED.link("tablet", "phone")  # no estimate either way
    assert tb.link("phone", "tablet") == TESTBED.link("phone", "tablet")


def test_the_reverse_rate_is_taken_as_it_is_where_a_direction_is_unshaped():
    est = Estimate(links={("tablet", "phone"): LinkEstimate(3 * MBIT, 20, 0.1)})
    assert apply_links(est, TESTBED).link("phone", "tablet").rate_bps == 3 * MBIT


def test_a_floor_is_not_passed_to_the_reverse_link():
    recs = pipeline(every(0.5, 6.0))  # the laptop -> phone results only give a floor
    est = estimate(recs, TESTBED)
    tb = apply_links(
        Estimate(links={k: v for k, v in est.links.items() if k[0] == "laptop"}, floored=est.floored), TESTBED
    )
    assert tb.link("phone", "laptop") == TESTBED.link("phone", "laptop")


def test_an_estimate_that_changes_nothing_leaves_the_testbed():
    est = Estimate(links={("phone", "laptop"): LinkEstimate(50 * MBIT, 20, 0.1)})
    assert apply_links(est, TESTBED) is TESTBED
