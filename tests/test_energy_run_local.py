"""`orchestrator run` with objective energy on the local runtime: the plan's DVFS levels cannot be
set there (its nodes run under no CPU quota), which the report says; energy per inference is
reported predicted beside measured, per device and in all, each figure labelled."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from orchestrator.figures.energy import MEASURED_LABEL, PREDICTED_LABEL
from orchestrator.run import execute
from tests.test_energy_split import LEVELS


def _job(tmp: Path, model: Path) -> Path:
    (tmp / "devices.yaml").write_text(LEVELS)
    job = {
        "name": "e",
        "model": str(model),
        "devices": "devices.yaml",
        "runtime": "local",
        "algorithm": "optimal",
        "objective": "energy",
        "latency_budget": "10s",
        "stages": 2,
        "source": "phone",
        "duration_s": 3,  # a window that spans several stats samples (one every 0.5 s)
        "warmup": 2,
        "concurrency": 2,
    }
    p = tmp / "job.yaml"
    p.write_text(json.dumps(job))
    return p


def test_energy_run_reports_levels_not_applied_and_energy_split(tmp_path, tiny_vit, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the profile cache goes under ./.cache
    out = io.StringIO()
    run_dir, rep = execute(str(_job(tmp_path, tiny_vit)), out=str(tmp_path / "run"), console=Console(file=out))
    assert rep["errors"] == 0 and rep["requests"] > 100
    plan = json.loads((run_dir / "plan.json").read_text())
    assert [s["level"] for s in plan["stages"]] == [0.5, 0.5]

    # levels: asked of the runtime, which cannot; the run went on and says so
    assert set(rep["levels"]) == {s["device"] for s in plan["stages"]}
    for e in rep["levels"].values():
        assert e["cpus"] == 0.5 and e["applied"] is False and e["read_back"] is None
        assert "local runtime cannot change" in e["why"]
    notes = [n for n in rep["notes"] if n.startswith("DVFS levels not applied")]
    assert len(notes) == 1 and "phone at 0.5 CPUs" in notes[0] and "laptop at 0.5 CPUs" in notes[0]

    split = rep["energy_split"]
    assert split["images"] == rep["requests"] and split["window_s"] > 2.5 and split["notes"] == []
    assert set(split["devices"]) == {"phone", "laptop"}
    pred_sum = 0.0
    for row in split["devices"].values():
        p, m = row["predicted"], row["measured"]
        assert p["label"] == PREDICTED_LABEL and p["label"].startswith("modelled")
        assert m["label"] == MEASURED_LABEL
        assert m["label"].startswith("measured CPU time and bytes at the modelled power")
        assert m["compute_j"] > 0 and m["idle_j"] > 0 and m["cpu_s"] > 0
        assert m["computation_j"] == pytest.approx(m["compute_j"] + m["idle_j"], abs=1e-8)
        assert m["communication_j"] == m["radio_j"]
        # not applied: the CPU time is weighed at the device's own cpus and power
        assert m["level_cpus"] == 1.0
        pred_sum += p["total_j"]
        # both ends of the cut sent and received its tensors on every measured request: the radio
        # energy of the frames measured is the one the plan predicted for the tensors' sizes
        assert m["bytes_out"] > 0 and m["bytes_in"] > 0
        assert m["radio_j"] == pytest.approx(p["radio_j"], rel=1e-3)
        assert m["counted_bytes_out"] >= m["bytes_out"]  # the counters hold more: headers, the driver
    total = split["total"]
    assert total["predicted"]["total_j"] == pytest.approx(plan["predicted"]["energy_j"], abs=2e-6)  # 6 places
    assert pred_sum == pytest.approx(total["predicted"]["total_j"], abs=1e-5)
    assert total["measured"]["total_j"] == pytest.approx(
        sum(r["measured"]["total_j"] for r in split["devices"].values()), abs=1e-7
    )
    assert total["error_pct"] is not None
    assert "energy" in rep and set(rep["energy"]) >= {"phone", "laptop"}  # the older figure is still there

    md = (run_dir / "report.md").read_text()
    assert "## DVFS levels" in md and "## Energy per inference" in md
    assert "| all | predicted (modelled) |" in md and "| all | measured |" in md
    assert "DVFS levels not applied" in md
    assert "energy per inference" in out.getvalue()
