"""`orchestrator run`: for each configuration of a job, start the runtime, plan (profiling where
the algorithm needs measured costs), deploy, check fidelity, drive, measure, write the run folder."""

from __future__ import annotations

import contextlib
import json
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import psutil
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from common.ort_session import SessionSettings, open_session
from orchestrator.adapt.replan import Replanner
from orchestrator.adapt.world import ChangingWorld, WorldSetup
from orchestrator.config import AdaptPolicy, Job, Testbed, Variant, load_devices, load_job
from orchestrator.driving.client import NodeClient
from orchestrator.driving.clocks import estimate_offsets, offsets_ns
from orchestrator.driving.deploy import deploy
from orchestrator.driving.driver import DriveControl, Record, drive
from orchestrator.driving.inputs import Inputs, open_inputs
from orchestrator.driving.levels import apply_levels, levels_note, levels_text, restore_caps
from orchestrator.errors import UserError
from orchestrator.figures.compare import comparison_rows
from orchestrator.figures.disruption import disruption_figures
from orchestrator.figures.fidelity import host_busy_share
from orchestrator.figures.gpu_power import NvmlPowerSampler
from orchestrator.figures.metrics import hop_samples
from orchestrator.figures.report import RunMeasurements, RunSetup, build_report
from orchestrator.generation.job import GenerationSetup, prepare
from orchestrator.generation.report import generation_plots, generation_report, write_generations
from orchestrator.generation.run_steps import GenerationRun
from orchestrator.interrupts import Interrupted, current_phase, phase, shield, soft_stop, stopped
from orchestrator.partition import Limits, partition, place
from orchestrator.partition.plan import Plan
from orchestrator.partition.weights_store import WeightsStore
from orchestrator.profiling import cached_profile, profile
from orchestrator.profiling.cache import blocks_folder
from orchestrator.profiling.calibration import (
    at_levels,
    calibrated,
    calibration_note,
    measure_prefill,
    measure_stages,
    prefill_at_levels,
    prefill_note,
)
from orchestrator.profiling.results import Profile
from orchestrator.reporting.console import print_comparison, print_summary
from orchestrator.reporting.files import write_changes, write_latencies, write_requests
from orchestrator.reporting.markdown import write_comparison, write_report
from orchestrator.reporting.plots import write_plots
from orchestrator.runtimes.base import Deployment
from orchestrator.runtimes.choice import make_runtime, select_runtime
from orchestrator.scenario import load_job_scenarios
from orchestrator.scenario.model import Scenario

# algorithms that plan on measured per-device costs: the runtime is profiled before planning
PROFILED = {"optimal"}


@dataclass
class Config:
    """One configuration of a job: the job's own, or one of its `compare` variants."""

    name: str
    algorithm: str
    objective: str
    stages: int | None
    devices_file: Path
    testbed: Testbed
    source: str
    adapt: AdaptPolicy = "static"
    scenario: Scenario | None = None
    limits: Limits = field(default_factory=Limits)  # objective energy's latency budget and throughput floor


def _limits(job: Job, v: Variant | None, objective: str) -> Limits:
    """A configuration's limits: the variant's own, else the job's; none unless it minimises energy."""
    if objective != "energy":
        return Limits()
    return Limits(
        (v.latency_budget if v is not None and v.latency_budget else None) or job.latency_budget,
        (v.throughput_floor if v is not None and v.throughput_floor else None) or job.throughput_floor,
    )


def run_folder(job: Job, out: str | None) -> Path:
    if out:
        d = Path(out)
    else:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        d = Path("runs") / f"{stamp}_{job.name}"
    d.mkdir(parents=True, exist_ok=True)
    return d


def configurations(job: Job, job_file: str) -> list[Config]:
    """The job's own configuration first, then each `compare` entry over it."""
    out: list[Config] = []
    variants = [None, *job.compare]
    for i, v in enumerate(variants):
        where = f"compare[{i - 1}]" if v is not None else None
        devices_file = job.path(v.devices if v is not None and v.devices else job.devices)
        testbed = load_devices(devices_file)
        source = (v.source if v is not None and v.source else None) or job.source or testbed.devices[0].name
        if source not in [d.name for d in testbed.devices]:
            raise UserError(
                f"unknown device {source!r} (in {devices_file})", job_file, f"{where}.source" if where else "source"
            )
        algorithm = (v.algorithm if v is not None and v.algorithm else None) or job.algorithm
        objective = (v.objective if v is not None and v.objective else None) or job.objective
        if objective != "energy" and v is not None and (v.latency_budget or v.throughput_floor):
            raise UserError("latency_budget and throughput_floor are limits of objective: energy", job_file, where)
        name = (v.name if v is not None else None) or (algorithm if v is None or v.algorithm else devices_file.stem)
        out.append(
            Config(
                name=name,
                algorithm=algorithm,
                objective=objective,
                stages=v.stages if v is not None and v.stages else (job.stages if v is None or not v.devices else None),
                devices_file=devices_file,
                testbed=testbed,
                source=source,
                adapt=(v.adapt if v is not None and v.adapt else None) or job.adapt,
                limits=_limits(job, v, objective),
            )
        )
    names = [c.name for c in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise UserError(f"two configurations are named {dup[0]!r}: give each compare entry a name", job_file, "compare")
    return out


def execute(
    job_path: str,
    runtime: str | None = None,
    out: str | None = None,
    console: Console | None = None,
    fidelity_check: bool = True,
    testbed_name: str | None = None,
    subnet: str | None = None,
    wait_for_testbed: bool = False,
) -> tuple[Path, dict]:
    """Run every configuration of the job; return the run folder and the first one's report.

    A signal stops it (orchestrator/interrupts.py): the configuration in progress writes what it
    measured, with `complete: false`, and Interrupted is raised once it has."""
    console = console or Console()
    phase("starting")
    job = load_job(job_path)
    model = job.path(job.model).resolve()
    if not model.exists():
        raise UserError(f"model file not found: {model}", job_path, "model")
    configs = configurations(job, job_path)
    scenarios = load_job_scenarios(job, job_path, configs)  # a bad scenario ends here, before anything starts
    for i, cfg in enumerate(configs):
        cfg.scenario = scenarios.get(cfg.name)
        if cfg.scenario is not None and job.repeat > 1:
            raise UserError("a scenario plays once: repeat must be 1", job_path, "repeat")
        if cfg.adapt != "static" and cfg.algorithm == "user":
            field = f"compare[{i - 1}].adapt" if i else "adapt"
            raise UserError(f"{cfg.adapt} re-plans, which a manual plan (algorithm: user) cannot", job_path, field)
    generation = prepare_generation(job, job_path, model) if job.task == "generate" else None
    rt_name, rt_notes = select_runtime(runtime or job.runtime)
    console.print(f"runtime: {rt_name}" + (f" ({rt_notes[0]})" if rt_notes else ""))
    run_dir = run_folder(job, out)
    reports: list[tuple[str, dict]] = []
    for i, cfg in enumerate(configs):
        cfg_dir = run_dir if i == 0 else run_dir / "compare" / cfg.name
        if len(configs) > 1:
            console.rule(f"configuration {i + 1}/{len(configs)}: {cfg.name}")
        rep = run_config(
            job,
            job_path,
            cfg,
            model,
            rt_name,
            cfg_dir,
            console,
            fidelity_check=fidelity_check and job.fidelity_check,
            testbed_name=testbed_name,
            subnet=subnet,
            wait_for_testbed=wait_for_testbed,
            notes=list(rt_notes),
            generation=generation,
        )
        reports.append((cfg.name, rep))
        print_summary(console, rep, cfg_dir)
        if (stop := stopped()) is not None:  # the drive ended on a signal: no further configuration
            raise stop
    first = reports[0][1]
    if len(reports) > 1:
        first = write_comparison(run_dir, first, comparison_rows(reports))
        print_comparison(console, first["comparison"])
    return run_dir, first


def prepare_generation(job: Job, job_file: str, model: Path) -> GenerationSetup:
    """A generation job's decoder and prompts, read before anything starts; what it cannot do refused.
    A scenario plays on the clock of its first measured step, its sequences end the run."""
    if job.repeat > 1:
        raise UserError("a generation job generates its sequences once: repeat must be 1", job_file, "repeat")
    return prepare(job, job_file, model)


def plan_config(
    job: Job,
    cfg: Config,
    model: Path,
    dep: Deployment,
    run_dir: Path,
    console: Console,
    generation: GenerationSetup | None = None,
) -> tuple[Plan, Profile | None, list[int]]:
    """Partition for this configuration; profile the running nodes first where the algorithm needs it.
    A generation job is profiled and planned at its decode steps, its caches counted in memory."""
    table = None
    past = generation.past_tokens if generation is not None else None
    if cfg.algorithm in PROFILED:
        folder = blocks_folder(dep.workspace, model)
        prof = profile(model, cfg.testbed, dep, folder, batch=job.batch, console=console, past_tokens=past)
    else:  # a profile measured earlier still makes the prediction better than FLOPs would
        prof = cached_profile(model, cfg.testbed, dep.runtime, batch=job.batch, past_tokens=past)
    if prof is not None:
        table = prof.table
        console.print(
            f"profiled {len(prof.block_names)} blocks on {len(prof.devices)} devices in "
            f"{prof.seconds:.1f} s" + (" (cached)" if prof.cached else "")
        )
    t0 = time.perf_counter()
    how = {
        "algorithm": cfg.algorithm,
        "objective": cfg.objective,
        "stages": cfg.stages,
        "source": cfg.source,
        "cost_table": table,
        "batch": job.batch,
        "limits": cfg.limits,
        "cache_tokens": generation.held_cache_tokens if generation is not None else 0,
        "sequences": generation.sequences if generation is not None else None,
    }
    placed = place(model, cfg.testbed, memory_check=job.memory_check, **how)  # kept: a re-plan needs the cuts
    plan = partition(model, cfg.testbed, out_dir=run_dir, placed=placed, **how)
    console.print(
        f"partitioned {model.name} into {len(plan.stages)} stages ({cfg.algorithm}, "
        f"{cfg.objective}) in {time.perf_counter() - t0:.2f} s: " + " > ".join(s.device for s in plan.stages)
    )
    return plan, prof, list(placed[1].cuts)


def run_config(
    job: Job,
    job_file: str,
    cfg: Config,
    model: Path,
    rt_name: str,
    run_dir: Path,
    console: Console,
    *,
    fidelity_check: bool,
    testbed_name: str | None,
    subnet: str | None,
    notes: list[str],
    wait_for_testbed: bool = False,
    generation: GenerationSetup | None = None,
) -> dict:
    """One configuration, start to report. Interrupted in any phase but the drive, it writes a
    report.json of what it has (`complete: false`, the phase) after the runtime stopped, and re-raises."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with _reported_if_interrupted(run_dir, job, cfg, rt_name, notes):
        testbed = cfg.testbed
        sess = open_session(model, SessionSettings(threads=1))
        gen = GenerationRun(generation, job.timeout_s) if generation is not None else None
        inputs = (
            open_inputs(job, job_file, sess) if gen is None else Inputs(iter(()), True, notes=list(generation.notes))
        )
        fid: dict | None = None
        all_records: list[Record] = []
        measured_ids: set[int] = set()
        repeats: list[list[Record]] = []
        try:
            with make_runtime(
                rt_name,
                testbed,
                run_dir,
                testbed_name=testbed_name,
                subnet=subnet,
                wait=wait_for_testbed,
                console=console,
            ) as rt:
                dep = rt.start()
                notes += dep.notes
                phase("partitioning")
                plan, prof, cuts = plan_config(job, cfg, model, dep, run_dir, console, generation)
                notes += list(plan.notes)
                node_plan = rt.node_plan(plan, run_dir)
                from_blocks = None
                if job.measure_stages and plan.predicted.throughput_fps:
                    phase("measuring stages")
                    console.print("measuring each stage as a whole on its device...")
                    t0 = time.perf_counter()
                    measured = measure_stages(
                        plan,
                        node_plan,
                        testbed,
                        dep,
                        batch=job.batch,
                        timeout_s=job.timeout_s,
                        past_tokens=generation.past_tokens if generation is not None else None,
                    )
                    measured = at_levels(measured, plan, testbed)
                    seconds = time.perf_counter() - t0
                    before = plan.predicted
                    from_blocks = before.model_dump()
                    on_source = [s.index for s in plan.stages if s.device == cfg.source]
                    plan.predicted = calibrated(before, measured, on_source[0] if on_source else None)
                    plan.save(run_dir)
                    notes.append(calibration_note(plan.stages, measured, before, plan.predicted, seconds))
                    if gen is not None:
                        console.print("measuring each stage's prefill on its device...")
                        gen.measured_decode_s = [m.compute_s for m in measured]
                        prefill = measure_prefill(
                            plan,
                            node_plan,
                            testbed,
                            dep,
                            tokens=gen.setup.longest_prompt,
                            past_tokens=gen.setup.past_tokens,
                            timeout_s=job.timeout_s,
                        )
                        gen.prefill = prefill_at_levels(prefill, plan, testbed)
                        notes.append(prefill_note(plan.stages, gen.prefill))
                phase("deploying")
                loaded = deploy(node_plan, testbed, dep, cfg.source)
                if fidelity_check:
                    phase("checking fidelity")
                    fid = rt.fidelity_check(console)
                else:
                    notes.append("fidelity check switched off")
                caps_in_force: dict[str, float] = {}  # the devices a level moved off their cpus
                levels = apply_levels(rt, plan, testbed, caps_in_force)
                if levels:
                    console.print("DVFS levels: " + levels_text(levels))
                if (note := levels_note(levels)) is not None:
                    notes.append(note)
                phase("driving")
                clocks = estimate_offsets({d: dep.client(d) for d in dep.nodes})
                offsets = offsets_ns(clocks)
                source = dep.client(cfg.source)
                gpus = {d.name: d.gpu.index for d in testbed.devices if d.gpu is not None}
                host_before = psutil.cpu_times()
                world = WorldSetup(
                    policy=cfg.adapt,
                    scenario=cfg.scenario,
                    testbed=testbed,
                    replanner=Replanner(
                        model,
                        cfg.algorithm,
                        cfg.objective,
                        cfg.stages,
                        cfg.source,
                        run_dir,
                        job.batch,
                        cfg.limits,
                        cache_tokens=generation.held_cache_tokens if generation is not None else 0,
                        sequences=generation.sequences if generation is not None else None,
                    ),
                    table=prof.table if prof is not None else None,
                    plan=plan,
                    cuts=cuts,
                    until_s=job.duration_s,
                    offsets=offsets,
                    caps_in_force=caps_in_force,
                )
                with (
                    contextlib.ExitStack() as stack,
                    rt.stats_sampler(run_dir / "stats") as sampler,
                    NvmlPowerSampler(list(gpus.values())) as gpu_power,
                    ChangingWorld(world, rt, console) as changing,
                ):
                    sampler.take_sample()  # a first sample before the load, for CPU deltas
                    warming = DriveControl()
                    stack.enter_context(soft_stop(lambda why: (warming.end(why), changing.control.end(why))))
                    for r in range(job.repeat):
                        label = f"run {r + 1}/{job.repeat}" if job.repeat > 1 else "driving"
                        if gen is not None:
                            warm = gen.drive(console, f"{label}: warm-up", source, warmup=True, control=warming)
                        else:
                            warm = _drive(
                                console, f"{label}: warm-up", source, inputs, job, job.warmup, None, control=warming
                            )
                        if stopped() is not None:
                            break
                        if r == 0:  # the run numbers requests from the warm-up's first
                            changing.adaptation.id_offset = len(all_records) + len(warm)
                        if gen is not None:
                            meas = gen.drive(console, label, source, warmup=False, control=None, world=changing)
                        else:
                            meas = _drive(
                                console,
                                label,
                                source,
                                inputs,
                                job,
                                job.requests if not job.duration_s else None,
                                job.duration_s,
                                changing if r == 0 else None,
                            )
                        if r == 0:
                            id_offset = len(all_records) + len(warm)
                        for rec in warm + meas:
                            rec.id = len(all_records)
                            all_records.append(rec)
                        measured_ids |= {rec.id for rec in meas if not rec.error and rec.done_ns}
                        repeats.append([rec for rec in meas if not rec.error and rec.done_ns])
                        if changing.control.ended or stopped() is not None:
                            break
                    sampler.take_sample()  # and one that covers the end of the run
                    if gen is not None:
                        gen.read_caches(dep)
                disruption = changing.report(id_offset)
                if changing.changes:
                    write_changes(run_dir / "scenario.jsonl", changing.changes_log())
                stop = stopped()
                disruption |= {
                    "lost": [r.id for r in all_records if r.error],
                    "resent": [r.id for r in all_records if r.resent],
                    "complete": not disruption["ended"] and stop is None,
                }
                if stop is not None:
                    disruption["interrupted"] = {"signal": signal_name(stop.signum), "phase": "driving"}
                samples = sampler.samples
                host_busy = host_busy_share(host_before, psutil.cpu_times())
                notes += restore_caps(rt, testbed, caps_in_force)
        finally:
            inputs.close()
        notes += inputs.notes
        with shield():  # what was measured gets written, a signal or not
            phase("writing the report")
            n = len(plan.stages)
            hops = hop_samples(all_records, n, lambda a, b: testbed.link(a, b).delay_s, offsets=offsets)
            output_names = [o.name for o in sess.get_outputs()]
            reference = {
                k: dict(zip(output_names, sess.run(None, arrays), strict=True)) for k, arrays in inputs.kept.items()
            }
            setup = RunSetup(
                job=job,
                configuration=cfg.name,
                runtime=rt_name,
                model=model,
                source=cfg.source,
                testbed=testbed,
                devices_file=cfg.devices_file,
                run_dir=run_dir,
                plan=plan,
                predicted_from_blocks=from_blocks,
                profile=prof,
                nodes=loaded,
                fidelity_check=fid,
                graph=WeightsStore().graph(model),
                notes=notes,
                cuts=cuts,
                levels=levels,
            )
            measurements = RunMeasurements(
                records=all_records,
                measured_ids=measured_ids,
                repeats=repeats,
                hops=hops,
                stats=samples,
                gpu_power=gpu_power,
                clocks=clocks,
                host_busy=host_busy,
                inputs=inputs,
                reference=reference,
                output_name=output_names[0],
            )
            rep = build_report(setup, measurements) | disruption
            if gen is not None:
                rep |= generation_report(gen, model, plan, testbed, offsets, rep)
                write_generations(run_dir / "generations.jsonl", gen.sequences)
            rep |= disruption_figures(rep["events"], rep["plans"], all_records, measured_ids, job.batch)
            write_latencies(run_dir / "latencies.csv", all_records, hops, n, measured_ids)
            write_requests(run_dir / "requests.jsonl", all_records, measured_ids)
            if stopped() is None:
                rep = rep | {"plots": write_plots(run_dir, rep, all_records, measured_ids, samples, offsets)}
                if gen is not None:
                    rep["plots"] = rep["plots"] + generation_plots(run_dir, gen.sequences, rep)
            else:  # a person waits for the command to end: the plots can be drawn later
                rep["notes"] = [
                    *rep["notes"],
                    f"plots not drawn (interrupted): `orchestrator report {run_dir}` draws them",
                ]
            if (stop := stopped()) is not None and "interrupted" not in rep:  # while the report was written
                rep |= {
                    "complete": False,
                    "interrupted": {"signal": signal_name(stop.signum), "phase": current_phase()},
                }
            write_report(run_dir, rep)
            return rep


@contextlib.contextmanager
def _reported_if_interrupted(run_dir: Path, job: Job, cfg: Config, rt_name: str, notes: list[str]) -> Iterator[None]:
    """A configuration stopped before its drive was measured still leaves a report.json."""
    try:
        yield
    except Interrupted as e:
        _write_interrupted(run_dir, job, cfg, rt_name, e, notes)
        raise
    except KeyboardInterrupt:  # no handler installed (called as a library): Ctrl-C as Python raises it
        _write_interrupted(run_dir, job, cfg, rt_name, Interrupted(), notes)
        raise


def _write_interrupted(run_dir: Path, job: Job, cfg: Config, rt_name: str, e: Interrupted, notes: list[str]) -> None:
    """report.json for a configuration stopped before its drive was measured."""
    with shield():
        plan = run_dir / "plan.json"
        rep = {
            "job": job.name,
            "configuration": cfg.name,
            "runtime": rt_name,
            "requests": 0,
            "complete": False,
            "interrupted": {"signal": signal_name(e.signum), "phase": current_phase()},
            "errors": 0,
            "plan": str(plan.name) if plan.exists() else None,
            "notes": notes,
        }
        (run_dir / "report.json").write_text(json.dumps(rep, indent=2) + "\n")


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


def _drive(
    console: Console,
    label: str,
    source: NodeClient,
    inputs: Inputs,
    job: Job,
    total: int | None,
    duration_s: float | None,
    world: ChangingWorld | None = None,
    control: DriveControl | None = None,
) -> list[Record]:
    """One drive with a progress bar; `world` (the measured drive of a run) steers it, else `control`."""
    if total == 0:
        return []
    with Progress(
        TextColumn(f"[bold]{label}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task("requests", total=total)
        return drive(
            source,
            inputs.feeds,
            total=total,
            duration_s=duration_s,
            concurrency=job.concurrency,
            rate_hz=job.rate_hz,
            on_done=lambda r: (bar.advance(task), world.answered(r) if world is not None else None),
            timeout_s=job.timeout_s,
            control=world.control if world is not None else control,
            on_start=world.on_start if world is not None else None,
        )
