from __future__ import annotations

import numpy as np
import pytest

from orchestrator.driving.driver import Record
from orchestrator.figures.quality import accuracy, agreement


def _rec(key: int, logits: np.ndarray) -> Record:
    r = Record(id=key, sent_ns=0, key=key, intended_ns=0)
    r.outputs = {"logits": logits}
    return r


def test_accuracy_top1_and_top5():
    logits = np.array([[0.0, 9, 8, 7, 6, 5, 4], [9, 0, 1, 2, 3, 4, 5]], dtype=np.float32)
    labels = {0: np.array([1, 0])}  # both right at top-1
    assert accuracy([_rec(0, logits)], labels, "logits") == {"top1": 1.0, "top5": 1.0, "images": 2}
    labels = {0: np.array([5, 1])}  # first: 5th best -> top-5 only; second: worst -> neither
    assert accuracy([_rec(0, logits)], labels, "logits") == {"top1": 0.0, "top5": 0.5, "images": 2}


def test_accuracy_without_labels_is_not_measured():
    assert accuracy([_rec(0, np.zeros((1, 3)))], {}, "logits")["top1"] is None


def test_agreement_reports_largest_difference_and_top1():
    ref = {0: {"logits": np.array([[1.0, 2.0, 3.0]])}}
    same = agreement([_rec(0, np.array([[1.0, 2.0, 3.0]]))], ref)
    assert same["max_abs_diff"] == 0.0 and same["top1"] == 1.0
    off = agreement([_rec(0, np.array([[1.0, 4.0, 3.5]]))], ref)
    assert off["max_abs_diff"] == pytest.approx(2.0) and off["top1"] == 0.0
    assert agreement([_rec(7, np.zeros((1, 3)))], ref)["checked"] == 0


def test_predicted_latency_follows_the_load():
    from orchestrator.figures.compare import loaded_latency_s

    plan = {"latency_s": 1.0, "throughput_fps": 2.0}  # 2 stages of 0.5 s, say
    assert loaded_latency_s(plan, {"mode": "closed", "concurrency": 1}) == 1.0  # nothing to wait behind
    assert loaded_latency_s(plan, {"mode": "closed", "concurrency": 6}) == 3.0  # Little's law: 6 / 2 per s
    assert loaded_latency_s(plan, {"mode": "open", "rate_hz": 1.0}) == 1.0


def test_predicted_throughput_follows_the_load():
    from orchestrator.figures.compare import loaded_throughput_fps

    plan = {"latency_s": 1.0, "throughput_fps": 2.0}  # 2 stages of 0.5 s, say
    assert loaded_throughput_fps(plan, {"mode": "closed", "concurrency": 1}) == 1.0  # one request crosses it all
    assert loaded_throughput_fps(plan, {"mode": "closed", "concurrency": 6}) == 2.0  # the bottleneck is kept busy
    assert loaded_throughput_fps(plan, {"mode": "open", "rate_hz": 1.5}) == 1.5  # what arrives
    assert loaded_throughput_fps(plan, {"mode": "open", "rate_hz": 9.0}) == 2.0  # up to capacity


def test_one_request_at_a_time_is_the_lone_request_whatever_the_busy_steps():
    from orchestrator.figures.compare import loaded_latency_s, loaded_throughput_fps

    plan = {"latency_s": 0.4, "throughput_fps": 2.0}  # a busy step (0.5 s) measured above the lone request
    assert loaded_throughput_fps(plan, {"mode": "closed", "concurrency": 1}) == 2.5
    assert loaded_latency_s(plan, {"mode": "closed", "concurrency": 1}) == 0.4
    assert loaded_throughput_fps(plan, {"mode": "closed", "concurrency": 2}) == 2.0
    assert loaded_latency_s(plan, {"mode": "closed", "concurrency": 2}) == 1.0
