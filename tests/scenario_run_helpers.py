"""Shared by the end-to-end scenario tests (local and Docker): a job on edge4 with a scenario and a
policy, and what its run folder says."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import ROOT

EDGE4 = ROOT / "devices" / "edge4.yaml"


def scenario_job(tmp: Path, model: Path, adapt: str, events: list[dict], **extra) -> Path:
    """A job on devices/edge4.yaml, 4 stages, images from the laptop, the scenario inline."""
    job = {
        "name": f"scn_{adapt}",
        "runtime": "local",
        "model": str(model),
        "devices": str(EDGE4),
        "algorithm": "even",
        "stages": 4,
        "source": "laptop",
        "duration_s": 8,
        "warmup": 2,
        "concurrency": 2,
        "timeout_s": 60,
        "fidelity_check": False,
        "measure_stages": False,
        "adapt": adapt,
        "scenario": {"events": events},
        **extra,
    }
    p = tmp / "job.yaml"
    p.write_text(json.dumps(job))
    return p


def requests_by_id(run_dir: Path) -> dict[int, dict]:
    return {r["id"]: r for r in map(json.loads, (run_dir / "requests.jsonl").read_text().splitlines())}


def changes_log(run_dir: Path) -> list[dict]:
    """scenario.jsonl: every change applied, with its scheduled and applied times."""
    return [json.loads(line) for line in (run_dir / "scenario.jsonl").read_text().splitlines()]


def hops(plan: dict, source: str = "laptop") -> set[tuple[str, str]]:
    """The links a plan's frames cross: source -> first stage, stage to stage, last -> source."""
    path = [source, *plan["devices"], source]
    return {(a, b) for a, b in zip(path, path[1:], strict=False) if a != b}


def only(events: list[dict], kind: str, **match) -> dict:
    """The one event of `kind` (and matching fields)."""
    found = [e for e in events if e["kind"] == kind and all(e[k] == v for k, v in match.items())]
    assert len(found) == 1, f"{kind} {match}: {[(e['kind'], e['device'], e['link']) for e in events]}"
    return found[0]
