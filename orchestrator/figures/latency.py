"""Latency statistics in an HDR histogram: 1 µs to 60 s at 3 significant digits.

Percentiles from a histogram are exact to its precision whatever the sample count, and the
encoded histogram kept in the run folder lets runs be merged and compared later.
"""

from __future__ import annotations

from collections.abc import Iterable

from hdrh.histogram import HdrHistogram

LOW_US = 1
HIGH_US = 60_000_000
DIGITS = 3
PERCENTILES = {"p50": 50.0, "p90": 90.0, "p95": 95.0, "p99": 99.0, "p99.9": 99.9}


def new_histogram() -> HdrHistogram:
    return HdrHistogram(LOW_US, HIGH_US, DIGITS)


def histogram_of(values_ms: Iterable[float]) -> HdrHistogram:
    h = new_histogram()
    for ms in values_ms:
        h.record_value(min(HIGH_US, max(LOW_US, round(ms * 1000.0))))
    return h


def summary(h: HdrHistogram) -> dict[str, float] | None:
    """min, mean, p50, p90, p95, p99, p99.9, max and stddev in milliseconds; None if empty."""
    if h.get_total_count() == 0:
        return None
    out = {"min": h.get_min_value() / 1000.0, "mean": h.get_mean_value() / 1000.0}
    for name, q in PERCENTILES.items():
        out[name] = h.get_value_at_percentile(q) / 1000.0
    out["max"] = h.get_max_value() / 1000.0
    out["stddev"] = h.get_stddev() / 1000.0
    out["count"] = h.get_total_count()
    return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in out.items()}


def encode(h: HdrHistogram) -> str:
    """The histogram's standard compressed, base64 encoding (HdrHistogram's own format)."""
    return h.encode().decode("ascii")


def decode(text: str) -> HdrHistogram:
    return HdrHistogram.decode(text.encode("ascii"))


def per_second(done_s: list[float], latency_ms: list[float], batch: int = 1) -> list[dict]:
    """Throughput and p50/p99 latency of the requests completed in each second of the run."""
    if not done_s:
        return []
    t0 = min(done_s)
    buckets: dict[int, list[float]] = {}
    for t, ms in zip(done_s, latency_ms, strict=True):
        buckets.setdefault(int(t - t0), []).append(ms)
    out = []
    for sec in range(max(buckets) + 1):
        vals = buckets.get(sec, [])
        h = histogram_of(vals)
        s = summary(h) or {}
        out.append({"second": sec, "throughput_fps": len(vals) * batch, "p50_ms": s.get("p50"), "p99_ms": s.get("p99")})
    return out
