"""Scenarios: a world that moves while requests flow (links, CPU shares, devices leaving and
joining). Read and checked with the job, before anything starts; unrolled into timed changes."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from orchestrator.config import Job, Testbed
from orchestrator.errors import UserError
from orchestrator.scenario.model import Event, LinkRef, Scenario, load_scenario
from orchestrator.scenario.timeline import HELD_RATE_BPS, Change, Conditions, link_changes, timeline
from orchestrator.scenario.traces import MAHIMAHI_BIN_S, Trace, TraceFormat, read_trace

__all__ = [
    "HELD_RATE_BPS",
    "MAHIMAHI_BIN_S",
    "Change",
    "Conditions",
    "Event",
    "LinkRef",
    "Scenario",
    "Trace",
    "TraceFormat",
    "link_changes",
    "load_job_scenarios",
    "load_scenario",
    "read_trace",
    "timeline",
]


class _Config(Protocol):
    """What a job's configuration (orchestrator/run.py Config) offers here."""

    name: str
    testbed: Testbed
    devices_file: Path


def load_job_scenarios(job: Job, job_file: str, configs: Sequence[_Config]) -> dict[str, Scenario | None]:
    """Each configuration's scenario by configuration name (None: the world stands still): a
    `compare` entry's own `scenario` over the job's, checked against that configuration's devices.
    configs[0] is the job's own configuration, configs[i] its `compare[i - 1]`."""
    out: dict[str, Scenario | None] = {}
    for i, cfg in enumerate(configs):
        variant = job.compare[i - 1] if i > 0 else None
        if variant is not None and variant.scenario is not None:
            spec, field = variant.scenario, f"compare[{i - 1}].scenario"
        else:
            spec, field = job.scenario, "scenario"
        if spec is None:
            out[cfg.name] = None
            continue
        try:
            out[cfg.name] = load_scenario(
                spec, base_dir=Path(job.base_dir), testbed=cfg.testbed, file=job_file, field=field
            )
        except UserError as e:
            if i == 0 or field != "scenario" or cfg.devices_file == configs[0].devices_file:
                raise
            # the job's scenario fits its own devices but not those of a compare entry
            raise UserError(
                f"{e.message} (with compare[{i - 1}]'s devices {cfg.devices_file})", e.file, e.field
            ) from None
    return out
