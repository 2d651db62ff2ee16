"""A whole run with one device whose clock is 3 s ahead: its offset is estimated and removed, so
the hops into and out of it measure the link, not the clocks."""

from __future__ import annotations

import json
import textwrap

import pytest

from node.server import CLOCK_OFFSET_ENV, clock_offset_from_env
from orchestrator.run import execute

AHEAD_NS = 3_000_000_000
DEVICES = """
devices:
  - {name: phone, cpus: 1, memory: 1GiB}
  - {name: tablet, cpus: 1, memory: 1GiB}
  - {name: laptop, cpus: 1, memory: 2GiB}
"""


def test_offsets_read_per_device_from_the_environment():
    env = {CLOCK_OFFSET_ENV: f"tablet={AHEAD_NS}, watch=-20000000"}
    assert clock_offset_from_env("tablet", env) == AHEAD_NS
    assert clock_offset_from_env("watch", env) == -20_000_000
    assert clock_offset_from_env("phone", env) == 0
    assert clock_offset_from_env("phone", {CLOCK_OFFSET_ENV: "7"}) == 7
    assert clock_offset_from_env("phone", {}) == 0
    with pytest.raises(ValueError, match=CLOCK_OFFSET_ENV):
        clock_offset_from_env("phone", {CLOCK_OFFSET_ENV: "tablet=1,oops"})


def test_hops_stay_small_and_positive_with_a_device_clock_ahead(tmp_path, tiny_vit, monkeypatch):
    # the local runtime's node processes inherit this process's environment
    monkeypatch.setenv(CLOCK_OFFSET_ENV, f"tablet={AHEAD_NS}")
    (tmp_path / "devices.yaml").write_text(textwrap.dedent(DEVICES))
    job = {
        "name": "skewed",
        "model": str(tiny_vit),
        "devices": "devices.yaml",
        "runtime": "local",
        "stages": 3,
        "source": "phone",
        "requests": 12,
        "warmup": 2,
        "concurrency": 2,
    }
    (tmp_path / "job.yaml").write_text(json.dumps(job))
    _, rep = execute(str(tmp_path / "job.yaml"), out=str(tmp_path / "run"))
    assert rep["errors"] == 0
    assert [s["device"] for s in rep["stages"]] == ["phone", "tablet", "laptop"]
    offsets = rep["clock_offsets_ns"]
    assert abs(offsets["tablet"] - AHEAD_NS) < 5_000_000 and offsets["phone"] == 0 == offsets["laptop"], offsets
    hops = {(h["from"], h["to"]): h for h in rep["hops"]}
    assert set(hops) == {("phone", "tablet"), ("tablet", "laptop"), ("laptop", "phone")}
    # a small tensor on unshaped loopback links: milliseconds, and not below zero by more than
    # the offsets' own uncertainty (half the best probe's round trip); left uncorrected, the hop
    # into the tablet would read 3 s too long and the one out of it 3 s below zero
    unc_ms = {d: c["uncertainty_ns"] / 1e6 for d, c in rep["clocks"].items()}
    for (a, b), h in hops.items():
        for part in ("transfer_ms", "link_wait_ms"):
            assert -(unc_ms[a] + unc_ms[b]) <= h[part]["p50"] and h[part]["p99"] < 500, (a, b, part, h[part])
