"""The per-second series reports the percentiles it names, against numpy on the same samples."""

from __future__ import annotations

import numpy as np
import pytest

from orchestrator.figures.latency import per_second


def test_each_second_has_its_own_p50_and_p99():
    rng = np.random.default_rng(7)
    # second 0: 1000 requests, 88% near 10 ms, 10% near 200 ms, 2% near 3 s: p50 10, p90 200, p99 3000
    first = np.concatenate([rng.uniform(9, 11, 880), rng.uniform(190, 210, 100), rng.uniform(2900, 3100, 20)])
    # second 2: 500 requests spread evenly over 1-1000 ms (p90 900, p99 990); second 1 is empty
    third = rng.uniform(1, 1000, 500)
    done = np.concatenate([rng.uniform(0.0, 0.999, first.size), rng.uniform(2.0, 2.999, third.size)])
    done[0] = 0.0  # seconds count from the first completion
    lat = np.concatenate([rng.permutation(first), third])
    series = per_second(list(done), list(lat), batch=4)
    assert [s["second"] for s in series] == [0, 1, 2]
    assert [s["throughput_fps"] for s in series] == [4000, 0, 2000]
    assert series[1]["p50_ms"] is None and series[1]["p99_ms"] is None
    for row, ms in ((series[0], first), (series[2], third)):
        # the histogram keeps 3 significant digits; numpy's inverted CDF takes the same rank
        for key, q in (("p50_ms", 50), ("p99_ms", 99)):
            want = float(np.percentile(ms, q, method="inverted_cdf"))
            assert row[key] == pytest.approx(want, rel=1e-2), (key, row, want)
        # a p90 reported as the p99 would be far off here
        assert abs(row["p99_ms"] - np.percentile(ms, 90)) > 50
