"""The whole report of one configuration's run, as one dict: every figure computed from what the run
measured, beside what was planned and configured. Writers only write it; nothing adds to it later."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from orchestrator.config import Job, Testbed
from orchestrator.driving.clocks import ClockOffset, offsets_ns
from orchestrator.driving.deploy import LoadedNode
from orchestrator.driving.driver import Record
from orchestrator.driving.inputs import Inputs
from orchestrator.figures.compare import prediction_vs_measured
from orchestrator.figures.energy import device_energy, energy_split
from orchestrator.figures.fidelity import fidelity_figures
from orchestrator.figures.gpu_power import NvmlPowerSampler, gpu_energy
from orchestrator.figures.gpu_use import fallback_notes, gpu_use
from orchestrator.figures.latency import encode, histogram_of, per_second, summary
from orchestrator.figures.memory import memory_figures, memory_notes
from orchestrator.figures.metrics import HopSample, breakdown_table, hop_figures, stage_figures, throughput
from orchestrator.figures.partition_view import partition_view
from orchestrator.figures.provenance import git_revision, host_facts, versions
from orchestrator.figures.quality import accuracy, agreement
from orchestrator.partition.energy import energy_by_device
from orchestrator.partition.graph import ModelGraph
from orchestrator.partition.plan import Plan
from orchestrator.profiling.results import Profile
from orchestrator.runtimes.stats import StatsLine, device_summary


@dataclass(frozen=True)
class RunSetup:
    """What ran: one configuration of a job on a runtime, its plan and how its nodes were loaded."""

    job: Job
    configuration: str
    runtime: str
    model: Path
    source: str
    testbed: Testbed
    devices_file: Path
    run_dir: Path
    plan: Plan
    predicted_from_blocks: dict | None  # the plan's prediction before each stage was measured whole
    profile: Profile | None  # the block costs the plan was made from, where measured
    nodes: dict[str, LoadedNode]
    fidelity_check: dict | None  # the runtime's check between the real containers, where it ran
    graph: ModelGraph  # the model analysed for cutting, for the partition view
    notes: list[str]
    cuts: list[int] | None = None  # the plan's cuts in the graph's node order (its energy by device)
    levels: dict[str, dict] | None = None  # the DVFS levels put in force (driving.levels.apply_levels)


@dataclass(frozen=True)
class RunMeasurements:
    """What driving the pipeline measured, on the orchestrator's clock and the devices'."""

    records: list[Record]  # warm-up and measured, in the order they were sent
    measured_ids: set[int]
    repeats: list[list[Record]]  # each repeat's measured records that completed
    hops: list[HopSample]
    stats: dict[str, list[StatsLine]]  # per device, the stats samples
    gpu_power: NvmlPowerSampler
    clocks: dict[str, ClockOffset]
    host_busy: float  # share of the host's CPUs busy while driving
    inputs: Inputs
    reference: dict[int, dict[str, np.ndarray]]  # the whole model's outputs, keyed like Record.key
    output_name: str  # the model's logits, for accuracy


def _load(job: Job) -> dict:
    if job.rate_hz:
        mode = {"mode": "open", "rate_hz": job.rate_hz}
    else:
        mode = {"mode": "closed", "concurrency": job.concurrency}
    return mode | ({"duration_s": job.duration_s} if job.duration_s else {})


def _profile(prof: Profile) -> dict:
    return {
        "seconds": round(prof.seconds, 3),
        "cached": prof.cached,
        "notes": list(prof.notes),
        "device_total_ms": {d: round(prof.device_total_s(d) * 1e3, 3) for d in prof.devices},
    }


def _repeat_spread(fps: list[float]) -> dict:
    return {
        "throughput_fps_min": min(fps),
        "throughput_fps_max": max(fps),
        "spread_pct": round((max(fps) - min(fps)) / float(np.median(fps)) * 100, 2),
    }


def _taking_part(setup: RunSetup, measured: list[Record]) -> list[str]:
    """The devices an inference used: the plan's, the source, and any other a measured request
    passed through (a re-plan's), in that order."""
    out = [s.device for s in setup.plan.stages] + [setup.source]
    out += [t.device for r in measured for t in r.timings]
    return list(dict.fromkeys(d for d in out if d in {x.name for x in setup.testbed.devices}))


def _frame_bytes(run: RunMeasurements) -> dict[str, tuple[int, int]]:
    """Per device, the bytes of the frames it sent and received on the measured requests' hops
    between two devices (the tensors, as the nodes stamped them)."""
    sent: dict[str, int] = {}
    got: dict[str, int] = {}
    for h in run.hops:
        if h.id in run.measured_ids:
            sent[h.src] = sent.get(h.src, 0) + h.bytes
            got[h.dst] = got.get(h.dst, 0) + h.bytes
    return {d: (sent.get(d, 0), got.get(d, 0)) for d in {*sent, *got}}


def _predicted_by_device(setup: RunSetup) -> tuple[dict | None, str | None]:
    """The plan's modelled energy per inference by device (None, and why, where it cannot be had)."""
    plan = setup.plan
    if setup.cuts is None or len(setup.cuts) != len(plan.stages) - 1:
        return None, "predicted energy by device: the plan's cuts are not known"
    try:
        split = energy_by_device(
            setup.graph,
            setup.cuts,
            [s.device for s in plan.stages],
            setup.testbed,
            table=setup.profile.table if setup.profile is not None else None,
            source=setup.source,
            levels=[s.level for s in plan.stages],
        )
    except (ValueError, KeyError, IndexError) as e:
        return None, f"predicted energy by device not weighed: {e}"
    return split, None if split is not None else "predicted energy by device: a stage does not fit its device"


def build_report(setup: RunSetup, run: RunMeasurements) -> dict:
    """Every figure of the run, in the keys of report.json."""
    job, plan, testbed = setup.job, setup.plan, setup.testbed
    n = len(plan.stages)
    offsets = offsets_ns(run.clocks)
    measured = [r for r in run.records if r.id in run.measured_ids]
    errors = [r for r in run.records if r.error]
    images = len(measured) * job.batch
    latency_hist = histogram_of(r.latency_ms for r in measured)
    window = (min(r.intended_ns for r in measured) / 1e9, max(r.done_ns for r in measured) / 1e9) if measured else None
    per_repeat = [
        {"throughput_fps": throughput(rs, job.batch), "latency_ms": summary(histogram_of(r.latency_ms for r in rs))}
        for rs in run.repeats
    ]
    fps = [p["throughput_fps"] for p in per_repeat if p["throughput_fps"]]
    gpus = {d.name: d.gpu.index for d in testbed.devices if d.gpu is not None}
    on_gpu = gpu_use(testbed, plan, setup.nodes)
    predicted = plan.predicted.model_dump() if plan.predicted else None
    rep = {
        "job": job.name,
        "configuration": setup.configuration,
        "runtime": setup.runtime,
        "model": str(setup.model),
        "algorithm": plan.algorithm,
        "objective": plan.objective,
        "source": setup.source,
        "cut_tensors": [list(st.outputs) for st in plan.stages[:-1]],
        "requests": len(measured),
        "warmup": job.warmup,
        "batch": job.batch,
        "load": _load(job),
        "concurrency": job.concurrency,
        "errors": len(errors),
        "first_error": errors[0].error if errors else None,
        "throughput_fps": float(np.median(fps)) if fps else None,
        "latency_ms": summary(latency_hist),
        "latency_histogram": encode(latency_hist),
        "repeats": per_repeat if job.repeat > 1 else None,
        "repeat_spread": _repeat_spread(fps) if job.repeat > 1 and fps else None,
        "per_second": per_second([r.done_ns / 1e9 for r in measured], [r.latency_ms for r in measured], job.batch),
        "stages": [  # a stage no measured request passed through is still on its planned device
            s | {"device": s["device"] or setup.plan.stages[s["index"]].device}
            for s in stage_figures(measured, n, offsets=offsets)
        ],
        "hops": hop_figures(run.hops, run.measured_ids),
        "agreement": agreement([r for r in run.records if not r.error], run.reference),
        "accuracy": (
            accuracy(measured, run.inputs.labels, run.output_name)
            if not run.inputs.synthetic
            else {"top1": None, "top5": None, "why": "synthetic data has no labels"}
        ),
        "devices": device_summary(run.stats),
        "memory": memory_figures(plan, run.stats),
        "energy": device_energy(run.stats, testbed, window, images),
        "gpu_energy": {
            d: (
                gpu_energy(run.gpu_power.samples.get(i, []), window, images)
                if run.gpu_power.available
                else {"method": f"not measured: {run.gpu_power.error}"}
            )
            for d, i in gpus.items()
        }
        or None,
        "gpu_use": on_gpu or None,
        "nodes": {k: vars(v) for k, v in setup.nodes.items()},
        "predicted": predicted,
        "predicted_from_blocks": setup.predicted_from_blocks,
        "profile": _profile(setup.profile) if setup.profile is not None else None,
        "fidelity": fidelity_figures(setup.fidelity_check, run.hops, run.measured_ids, testbed, run.host_busy),
        "resolved": {
            "job": job.model_dump(),
            "devices": testbed.model_dump(by_alias=True),
            "devices_file": str(setup.devices_file),
        },
        "versions": versions(),
        "host": host_facts(),
        "git_revision": git_revision(),
        "notes": list(setup.notes) + fallback_notes(on_gpu),
        "host_cpu_busy": round(run.host_busy, 4),
    }
    rep["notes"] += memory_notes(rep["memory"])
    by_device, why = _predicted_by_device(setup)
    rep["levels"] = setup.levels or {}
    rep["energy_split"] = energy_split(
        run.stats,
        testbed,
        window,
        images,
        taking_part=_taking_part(setup, measured),
        batch=job.batch,
        predicted=predicted,
        predicted_by_device=by_device,
        frame_bytes=_frame_bytes(run),
        gpu=rep["gpu_energy"],
    )
    if why:
        rep["energy_split"]["notes"].append(why)
    rep["prediction_vs_measured"] = prediction_vs_measured(predicted, rep)
    rep["breakdown"] = breakdown_table(rep["stages"], rep["hops"], (rep["latency_ms"] or {}).get("mean"), setup.source)
    rep["clocks"] = {d: c.as_dict() for d, c in run.clocks.items()}
    rep["clock_offsets_ns"] = offsets
    rep["partition_view"] = partition_view(plan, setup.graph)
    rep["run_dir"] = str(setup.run_dir)
    return rep
