"""Figures of a disrupted run from synthetic requests whose throughput and latency are known second
by second: recovery found where it is, none where there is none, the latency spike, the rows the
console and report.md show, and the plots drawn."""

from __future__ import annotations

import copy
import io

import pytest
from rich.console import Console

from orchestrator.driving.driver import Record
from orchestrator.figures.disruption import (
    disruption_figures,
    disruption_rows,
    fill_recovery,
    latency_spike,
    plan_rows,
    recovery,
)
from orchestrator.reporting.console import print_summary
from orchestrator.reporting.markdown import render_markdown
from orchestrator.reporting.plots import write_plots

T0 = 1_700_000_000.0  # unix seconds: the first measured request


def _records(rates: list[int], latency_ms: list[float] | float = 50.0, start_id: int = 0) -> list[Record]:
    """rates[k] answers spread evenly over second k after T0, each latency_ms (per second, or one
    for all) after it was due."""
    out = []
    for k, n in enumerate(rates):
        lat = latency_ms[k] if isinstance(latency_ms, list) else latency_ms
        for i in range(n):
            done = int((T0 + k + (i + 0.5) / n) * 1e9)
            rid = start_id + len(out)
            out.append(Record(rid, rid, done - int(lat * 1e6), done - int(lat * 1e6), done))
    return out


def _window_start(records: list[Record]) -> float:
    """Where per-second windows open: the first answer."""
    return min(r.done_ns for r in records) / 1e9


def test_recovery_is_the_first_second_from_which_throughput_stays_at_its_new_level():
    # 20/s, the event at 20 s, a dip, a climb, one relapse, then 12/s to the end
    rates = [20] * 20 + [2, 6, 12, 12, 5] + [12] * 20
    recs = _records(rates)
    w0 = _window_start(recs)
    assert recovery(recs, T0 + 20) == pytest.approx(w0 + 25, abs=1e-3)
    # the relapse at 24 s is what moved it: without it, 22 s is the first of three steady seconds
    recs = _records([20] * 20 + [2, 6, 12, 12, 12] + [12] * 20)
    assert recovery(recs, T0 + 20) == pytest.approx(w0 + 22, abs=1e-3)
    # an event that changed nothing: recovered at the first whole window after it
    assert recovery(_records([10] * 30), T0 + 10.5) == pytest.approx(_window_start(_records([10] * 30)) + 11, abs=1e-3)


def test_no_recovery_when_throughput_never_settles_or_stops():
    stopped = _records([10] * 10 + [3, 1] + [0] * 16 + [1])  # one straggler at 28 s, nothing else
    stopped.append(Record(10_000, 10_000, int((T0 + 30) * 1e9), int((T0 + 30) * 1e9), 0, error="lost"))
    assert recovery(stopped, T0 + 10) is None
    swinging = _records([10] * 10 + [20, 4] * 10)  # never within 10% of its median three seconds running
    assert recovery(swinging, T0 + 10) is None
    assert recovery(_records([10] * 10 + [10] * 30), T0 + 10, until_unix_s=T0 + 12) is None  # 2 s to the next event
    assert recovery([], T0) is None


def test_recovery_counts_answered_requests_only():
    recs = _records([10] * 10 + [10] * 10)
    failed = [Record(r.id, r.key, r.intended_ns, r.sent_ns, r.done_ns, error="lost on phone") for r in recs[100:]]
    assert recovery(recs[:100] + failed, T0 + 10) is None  # failed answers are not throughput


def test_latency_spike_compares_p99_before_and_after():
    recs = _records([10] * 20, latency_ms=[50.0] * 10 + [400.0] * 5 + [60.0] * 5)
    before, after = latency_spike(recs, T0 + 10)
    assert before == pytest.approx(50.0, rel=0.01)
    assert after == pytest.approx(400.0, rel=0.01)
    assert latency_spike(recs, T0 - 100) == (None, None)


def _events() -> list[dict]:
    base = {"applied_unix_s": None, "detected_unix_s": None, "replanned_unix_s": None, "redeployed_unix_s": None}
    return [
        base
        | {
            "kind": "crash",
            "device": "laptop",
            "link": None,
            "detail": "container killed",
            "at_unix_s": T0 + 20,
            "applied_unix_s": T0 + 20.004,
            "detected_unix_s": T0 + 20.45,
            "replanned_unix_s": T0 + 20.9,
            "redeployed_unix_s": T0 + 22.5,
            "replan_s": 0.35,
            "lost": [201, 202, 203],
            "resent": [201, 202],
        },
        base
        | {
            "kind": "link",
            "device": None,
            "link": "phone->laptop",
            "detail": "2mbit",
            "at_unix_s": T0 + 8,
            "applied_unix_s": T0 + 8.012,
            "replan_s": None,
            "lost": [],
            "resent": [],
        },
    ]


def _plans() -> list[dict]:
    return [
        {
            "index": 0,
            "from_unix_s": T0 - 3,
            "to_unix_s": T0 + 20.9,
            "devices": ["phone", "laptop"],
            "stages": [
                {"index": 0, "device": "phone", "blocks": [0, 5]},
                {"index": 1, "device": "laptop", "blocks": [6, 11]},
            ],
            "reason": "initial",
            "predicted_fps": 20.0,
        },
        {
            "index": 1,
            "from_unix_s": T0 + 20.9,
            "to_unix_s": None,
            "devices": ["phone", "tablet"],
            "stages": [{"index": 0, "device": "phone", "share": 0.3}, {"index": 1, "device": "tablet", "share": 0.7}],
            "reason": "lost laptop",
            "predicted_fps": None,
        },
    ]


def _run() -> tuple[list[Record], set[int]]:
    recs = _records([20] * 20 + [0, 2, 10, 12] + [12] * 20, latency_ms=[50.0] * 20 + [900.0] * 4 + [80.0] * 20)
    return recs, {r.id for r in recs}


def test_fill_recovery_adds_recovery_and_spike_per_event_and_leaves_its_input():
    recs, ids = _run()
    events = _events()
    before = copy.deepcopy(events)
    filled = fill_recovery(events, recs, ids)
    assert events == before
    crash, link = filled
    assert crash["recovered_unix_s"] == pytest.approx(_window_start(recs) + 23, abs=1e-3)  # 10/s at 22 s is off
    assert crash["p99_before_ms"] == pytest.approx(50.0, rel=0.01) and crash["p99_after_ms"] > 800
    assert link["recovered_unix_s"] is not None and link["recovered_unix_s"] < T0 + 20  # up to the crash, not past it
    assert {k: v for k, v in crash.items() if k in before[0]} == before[0]


def test_the_observed_loss_of_a_crashed_device_does_not_cut_its_recovery_short():
    recs, ids = _run()
    crash = _events()[0]
    seen = {"kind": "lost", "device": "laptop", "link": None, "detail": "no answer", "at_unix_s": T0 + 20.45}
    other = seen | {"device": "watch"}
    assert fill_recovery([crash, seen], recs, ids)[0]["recovered_unix_s"] == pytest.approx(T0 + 23.025, abs=1e-3)
    assert fill_recovery([crash, other], recs, ids)[0]["recovered_unix_s"] is None  # another device: a new event


def test_disruption_rows_count_each_step_from_its_event():
    recs, ids = _run()
    rep = disruption_figures(_events(), _plans(), recs, ids)
    assert rep["events_t0_unix_s"] == pytest.approx(T0 + 0.025 - 0.05, abs=1e-6)  # the first measured request due
    link, crash = disruption_rows(rep)  # in time order
    assert (link["kind"], link["where"], link["detected_ms"]) == ("link", "phone->laptop", None)
    assert link["applied_ms"] == pytest.approx(12.0, abs=1e-3)
    assert crash["where"] == "laptop" and crash["at_s"] == pytest.approx(20.025, abs=1e-3)
    assert crash["applied_ms"] == pytest.approx(4.0) and crash["detected_ms"] == pytest.approx(450.0)
    assert crash["replanned_ms"] == pytest.approx(900.0) and crash["replan_ms"] == pytest.approx(350.0)
    assert crash["redeployed_ms"] == pytest.approx(2500.0) and crash["recovered_s"] == pytest.approx(3.0, abs=0.1)
    assert (crash["lost"], crash["resent"]) == (3, 2)
    assert disruption_rows(rep | {"scenario": {"t0_unix_s": T0}})[1]["at_s"] == pytest.approx(20.0)  # its own origin
    first, second = plan_rows(rep)
    assert first["stages"] == "phone (blocks 0-5) > laptop (blocks 6-11)" and first["to_s"] == pytest.approx(20.925)
    assert second["stages"] == "phone (30% of compute) > tablet (70% of compute)" and second["to_s"] is None


def _report(recs: list[Record], ids: set[int]) -> dict:
    return {
        "job": "tunnel",
        "configuration": "failover",
        "runtime": "local",
        "model": "vit.onnx",
        "algorithm": "dp",
        "requests": len(ids),
        "warmup": 0,
        "batch": 1,
        "throughput_fps": 14.0,
        "latency_ms": {"p50": 50.0, "p99": 900.0},
        "stages": [],
        "hops": [],
        "agreement": {},
        "accuracy": {},
        "errors": 0,
        "lost": [201, 202, 203],
        "resent": [201, 202],
        "complete": True,
    } | disruption_figures(_events(), _plans(), recs, ids)


def test_console_and_markdown_show_a_line_per_event_and_the_plans():
    recs, ids = _run()
    rep = _report(recs, ids)
    md = render_markdown(rep)
    assert "| crash laptop at 20.0 s | applied +4 ms, detected +450 ms, re-planned +900 ms, redeployed +2500 ms" in md
    assert "| link phone->laptop at 8.0 s | applied +12 ms, recovered +0.0 s, 0 lost, 0 resent |" in md
    assert "## Disruption" in md and "## Plans" in md and "| 1 | 20.9 | end | phone (30% of compute)" in md
    assert "| requests lost / resent | 3 / 2 |" in md
    out = io.StringIO()
    print_summary(Console(file=out, width=200), rep, "run")
    text = out.getvalue()
    assert "crash laptop at 20.0 s" in text and "recovered +3.0 s" in text and "lost laptop" in text
    assert "## Disruption" not in render_markdown({k: v for k, v in rep.items() if k not in ("events", "plans")})


def test_many_link_changes_are_counted_in_one_summary_line():
    recs, ids = _run()
    steps = [
        {"kind": "link", "link": "phone->laptop", "detail": f"{k} mbit", "at_unix_s": T0 + 0.5 * k} for k in range(30)
    ]
    rep = _report(recs, ids) | {"events": [*steps, _events()[0]]}
    md = render_markdown(rep)
    assert "| 30 link changes | one line each under Disruption |" in md
    assert md.count("| link | phone->laptop |") == 30  # the full table still lists each
    assert "| crash laptop at 20.0 s |" in md


def test_plots_written_only_when_the_report_has_events(tmp_path):
    recs, ids = _run()
    rep = _report(recs, ids)
    made = write_plots(tmp_path / "a", rep, recs, ids, {})
    assert {"plots/disruption.png", "plots/placement.png"} <= set(made)
    for p in ("disruption.png", "placement.png"):
        assert (tmp_path / "a" / "plots" / p).stat().st_size > 20_000
    plain = write_plots(tmp_path / "b", {k: v for k, v in rep.items() if k != "events"}, recs, ids, {})
    assert not {"plots/disruption.png", "plots/placement.png"} & set(plain)
