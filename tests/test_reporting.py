"""The report is built once, by the figures, and written as it is: no writer changes the dict it is
given, and report.json holds exactly what was passed. Checked on a real run of the local runtime."""

from __future__ import annotations

import copy
import json
import textwrap
from collections import namedtuple
from pathlib import Path

import pytest

from orchestrator.config import load_devices
from orchestrator.figures.compare import comparison_rows
from orchestrator.figures.fidelity import HOST_BUSY_FLAG, fidelity_figures, host_busy_share
from orchestrator.figures.metrics import hop_samples
from orchestrator.reporting.files import read_requests, read_stats, write_latencies, write_requests
from orchestrator.reporting.markdown import load_report, render_markdown, write_comparison, write_report
from orchestrator.reporting.plots import write_plots
from orchestrator.reporting.rebuild import rebuild
from orchestrator.run import execute

DEVICES = """
devices:
  - {name: phone, cpus: 1, memory: 1GiB, bandwidth: 200mbit}
  - {name: laptop, cpus: 1, memory: 2GiB}
"""


@pytest.fixture(scope="module")
def real_run(tmp_path_factory, tiny_vit) -> tuple[Path, dict]:
    tmp = tmp_path_factory.mktemp("reporting")
    (tmp / "devices.yaml").write_text(textwrap.dedent(DEVICES))
    job = {
        "name": "t",
        "model": str(tiny_vit),
        "devices": "devices.yaml",
        "runtime": "local",
        "stages": 2,
        "requests": 8,
        "warmup": 2,
        "concurrency": 2,
    }
    (tmp / "job.yaml").write_text(json.dumps(job))
    return execute(str(tmp / "job.yaml"), out=str(tmp / "run"))


def _as_json(rep: dict) -> dict:
    return json.loads(json.dumps(rep, default=str))


def test_report_json_is_the_report_the_run_returned(real_run):
    run_dir, rep = real_run
    assert load_report(run_dir) == _as_json(rep)
    for key in ("host_cpu_busy", "prediction_vs_measured", "breakdown", "clocks", "clock_offsets_ns", "partition_view"):
        assert key in rep, key
    assert rep["run_dir"] == str(run_dir)
    assert set(rep["plots"]) >= {"plots/latency_cdf.png", "plots/partition.png", "plots/timeline.png"}


def test_writers_leave_the_report_they_are_given_unchanged(real_run, tmp_path):
    run_dir, _ = real_run
    rep = load_report(run_dir)
    records, measured = read_requests(run_dir / "requests.jsonl")
    stats = read_stats(run_dir / "stats")
    testbed = load_devices(run_dir.parent / "devices.yaml")
    n = len(rep["stages"])
    hops = hop_samples(records, n, lambda a, b: testbed.link(a, b).delay_s, offsets=rep["clock_offsets_ns"])
    rep_before, records_before, stats_before = copy.deepcopy(rep), copy.deepcopy(records), copy.deepcopy(stats)

    write_latencies(tmp_path / "latencies.csv", records, hops, n, measured)
    write_requests(tmp_path / "requests.jsonl", records, measured)
    plots = write_plots(tmp_path, rep, records, measured, stats, rep["clock_offsets_ns"])
    md = render_markdown(rep)
    write_report(tmp_path, rep)
    assert rep == rep_before and records == records_before and stats == stats_before
    assert load_report(tmp_path) == rep
    assert (tmp_path / "report.md").read_text() == md
    assert plots == rep["plots"] and all((tmp_path / p).stat().st_size > 0 for p in plots)
    assert read_requests(tmp_path / "requests.jsonl") == (records, measured)

    rows = comparison_rows([("a", rep), ("b", rep)])
    rows_before = copy.deepcopy(rows)
    compared = write_comparison(tmp_path, rep, rows)
    assert rep == rep_before and rows == rows_before
    assert compared["comparison"] == rows and compared["plots"] == [*rep["plots"], "plots/comparison.png"]
    assert load_report(tmp_path) == compared
    assert "## Configurations compared" in (tmp_path / "report.md").read_text()


def test_rebuild_writes_the_report_it_returns(real_run):
    run_dir, _ = real_run
    rebuilt = rebuild(run_dir)
    assert load_report(run_dir) == rebuilt
    assert "## Stages" in (run_dir / "report.md").read_text()


CpuTimes = namedtuple("CpuTimes", "user system idle iowait")


def test_host_busy_share_counts_idle_and_iowait_as_not_busy():
    before = CpuTimes(10.0, 5.0, 80.0, 5.0)
    assert host_busy_share(before, CpuTimes(17.0, 8.0, 90.0, 5.0)) == pytest.approx(0.5)
    assert host_busy_share(before, before) == 0.0


def test_busy_host_is_flagged_without_changing_the_runtime_check(tmp_path):
    (tmp_path / "devices.yaml").write_text(textwrap.dedent(DEVICES))
    testbed = load_devices(tmp_path / "devices.yaml")
    checked = {"links": [], "cpus": [], "flagged": ["phone: CPU cap off"], "seconds": 1.0}
    busy = fidelity_figures(checked, [], set(), testbed, HOST_BUSY_FLAG + 0.05)
    assert busy["flagged"][0] == "phone: CPU cap off" and busy["flagged"][1].startswith("host CPUs 95% busy")
    assert checked["flagged"] == ["phone: CPU cap off"]
    assert fidelity_figures(None, [], set(), testbed, HOST_BUSY_FLAG)["flagged"] == []
