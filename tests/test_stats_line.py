"""The stats line: one schema for every runtime's stats/<device>.jsonl, written and read back."""

from __future__ import annotations

import json

from orchestrator.runtimes.docker_stats import sample_line
from orchestrator.runtimes.stats import StatsLine, device_summary

# the run folder's contract (the README's "Stats" paragraph): these keys in every line, null where not measured
KEYS = {
    "time",
    "cpu_cores",
    "cpu_cap",
    "cpu_of_cap",
    "throttled_periods",
    "throttled_s",
    "memory_bytes",
    "memory_limit",
    "memory_peak_bytes",
    "memory_resident_bytes",
    "memory_page_cache_bytes",
    "bytes_in",
    "bytes_out",
}


def test_a_line_round_trips_and_keeps_the_contract_keys():
    line = StatsLine(time=1.5, cpu_cores=0.4, cpu_cap=0.5, cpu_of_cap=0.8, memory_bytes=10, frames_in=3)
    written = json.loads(line.to_json())
    assert KEYS <= set(written) and written["throttled_s"] is None
    assert StatsLine.from_json(line.to_json()) == line
    assert StatsLine.from_json('{"time": 2.0, "cpu_of_cap": 0.5}') == StatsLine(time=2.0, cpu_of_cap=0.5)


def test_an_engine_sample_becomes_a_line():
    sample = {
        "cpu_stats": {
            "cpu_usage": {"total_usage": 3_000_000_000},
            "system_cpu_usage": 20_000_000_000,
            "online_cpus": 2,
            "throttling_data": {"periods": 50, "throttled_periods": 20, "throttled_time": 1_500_000_000},
        },
        "precpu_stats": {"cpu_usage": {"total_usage": 2_500_000_000}, "system_cpu_usage": 18_000_000_000},
        "memory_stats": {
            "usage": 300,
            "limit": 1000,
            "max_usage": 400,
            "stats": {"inactive_file": 100, "total_rss": 150, "total_cache": 120, "rss": 140, "cache": 110},
        },
        "networks": {"eth0": {"rx_bytes": 7, "tx_bytes": 9, "rx_packets": 1, "tx_packets": 2}},
    }
    line = sample_line(sample, cap=0.5)
    assert line is not None and KEYS <= set(json.loads(line.to_json()))
    assert line.cpu_cores == 0.5 and line.cpu_of_cap == 1.0
    assert (line.throttled_periods, line.periods, line.throttled_s) == (20, 50, 1.5)
    assert (line.memory_bytes, line.memory_limit, line.memory_peak_bytes) == (200, 1000, 400)
    assert (line.memory_resident_bytes, line.memory_page_cache_bytes) == (150, 120)  # cgroup v1, hierarchical
    v2 = {**sample, "memory_stats": {"usage": 300, "limit": 1000, "stats": {"anon": 160, "file": 130}}}
    assert (sample_line(v2, cap=0.5).memory_resident_bytes, sample_line(v2, cap=0.5).memory_page_cache_bytes) == (
        160,
        130,
    )
    assert (line.bytes_in, line.bytes_out, line.frames_in) == (7, 9, None)
    assert sample_line({}, cap=0.5) is None


def test_device_summary_reads_lines():
    rows = [
        StatsLine(time=0.0, cpu_of_cap=None, memory_bytes=50, bytes_in=0, bytes_out=0),
        StatsLine(time=1.0, cpu_of_cap=0.5, memory_bytes=60, memory_peak_bytes=80, bytes_in=10, bytes_out=20),
        StatsLine(
            time=2.0,
            cpu_of_cap=1.0,
            memory_bytes=70,
            memory_peak_bytes=90,
            memory_resident_bytes=45,
            memory_page_cache_bytes=25,
            bytes_in=30,
            bytes_out=40,
        ),
    ]
    assert device_summary({"phone": rows})["phone"] == {
        "peak_memory_bytes": 90,
        "peak_resident_bytes": 45,
        "peak_page_cache_bytes": 25,
        "cpu_mean_of_cap": 0.75,
        "cpu_peak_of_cap": 1.0,
        "bytes_out": 40,
        "bytes_in": 30,
        "samples": 3,
    }
