"""HDR statistics agree with numpy on the recorded samples within the histogram's precision."""

from __future__ import annotations

import numpy as np
import pytest

from orchestrator.figures.latency import decode, encode, histogram_of, per_second, summary


@pytest.mark.parametrize("dist", ["lognormal", "uniform", "bimodal"])
def test_percentiles_match_numpy(dist):
    rng = np.random.default_rng(1)
    if dist == "lognormal":
        ms = rng.lognormal(mean=3.0, sigma=0.8, size=20_000)
    elif dist == "uniform":
        ms = rng.uniform(0.05, 2000.0, size=20_000)
    else:
        ms = np.concatenate([rng.normal(20, 2, 15_000).clip(1), rng.normal(900, 50, 5_000)])
    s = summary(histogram_of(ms))
    ordered = np.sort(ms)
    # 3 significant digits: a value is within 0.1% of its bucket (plus the 1 µs floor); the rank
    # conventions of HdrHistogram and numpy's inverted CDF may differ by one sample
    for name, q in (("p50", 50), ("p90", 90), ("p95", 95), ("p99", 99), ("p99.9", 99.9)):
        want = float(np.percentile(ms, q, method="inverted_cdf"))
        k = int(np.searchsorted(ordered, want))
        lo, hi = ordered[max(0, k - 1)], ordered[k]
        assert lo * (1 - 2e-3) - 2e-3 <= s[name] <= hi * (1 + 2e-3) + 2e-3, (name, s[name], lo, hi)
        assert s[name] == pytest.approx(want, rel=1e-2), name
    assert s["min"] == pytest.approx(ms.min(), rel=2e-3, abs=2e-3)
    assert s["max"] == pytest.approx(ms.max(), rel=2e-3, abs=2e-3)
    assert s["mean"] == pytest.approx(ms.mean(), rel=2e-3)
    assert s["stddev"] == pytest.approx(ms.std(), rel=1e-2)
    assert s["count"] == len(ms)


def test_encoded_histogram_round_trips():
    h = histogram_of([1.0, 2.5, 40.0, 40.0, 1234.5])
    back = decode(encode(h))
    assert summary(back) == summary(h)


def test_empty_histogram_is_not_measured():
    assert summary(histogram_of([])) is None


def test_per_second_series():
    done = [0.1, 0.5, 0.9, 1.2, 3.7]
    lat = [10.0, 20.0, 30.0, 40.0, 50.0]
    series = per_second(done, lat)
    assert [s["throughput_fps"] for s in series] == [3, 1, 0, 1]
    assert series[0]["p50_ms"] == pytest.approx(20.0, rel=1e-3)
    assert series[2]["p50_ms"] is None
