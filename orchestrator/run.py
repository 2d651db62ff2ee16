"""`orchestrator run`: for each configuration of a job, start the runtime, plan (profiling where
the algorithm needs measured costs), deploy, check fidelity, drive, measure, write the run folder."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import onnxruntime as ort
import psutil
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from orchestrator.config import Job, Testbed, load_devices, load_job
from orchestrator.driving.client import NodeClient
from orchestrator.driving.clocks import estimate_offsets, offsets_ns
from orchestrator.driving.deploy import deploy
from orchestrator.driving.driver import Record, drive
from orchestrator.driving.inputs import Inputs, open_inputs
from orchestrator.errors import UserError
from orchestrator.figures.compare import comparison_rows, prediction_vs_measured
from orchestrator.figures.energy import device_energy
from orchestrator.figures.gpu_power import NvmlPowerSampler, gpu_energy
from orchestrator.figures.latency import encode, histogram_of, per_second, summary
from orchestrator.figures.metrics import HopSample, breakdown_table, hop_figures, hop_samples, stage_figures, throughput
from orchestrator.figures.quality import accuracy, agreement
from orchestrator.partition import partition
from orchestrator.partition.graph import load_graph
from orchestrator.partition.plan import Plan
from orchestrator.profiling.stages import calibrated, measure_stages
from orchestrator.reporting.report import (
    git_revision,
    host_facts,
    partition_view,
    versions,
    write_comparison,
    write_latencies,
    write_plots,
    write_report,
    write_requests,
)
from orchestrator.runtimes import docker_fidelity as fidelity
from orchestrator.runtimes.docker import DockerDeployment, DockerRuntime, stage_plan_into
from orchestrator.runtimes.docker_stats import DockerStatsCollector
from orchestrator.runtimes.local import LocalRuntime
from orchestrator.runtimes.local_stats import LocalStatsSampler, device_summary

# algorithms that plan on measured per-device costs: the runtime is profiled before planning
PROFILED = {"optimal"}
MIN_MEASURABLE_S = 0.005
HOST_BUSY_FLAG = 0.90  # share of all host CPUs busy while driving, above which a run is flagged


def host_busy_share(before, after) -> float:
    """Share of the host's CPU time spent busy between two psutil.cpu_times() readings."""
    total = sum(after) - sum(before)
    idle = (after.idle - before.idle) + (getattr(after, "iowait", 0.0) - getattr(before, "iowait", 0.0))
    return max(0.0, 1.0 - idle / total) if total > 0 else 0.0


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


def whole_session(model: Path, threads: int = 0) -> ort.InferenceSession:
    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
    return ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])


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
        name = (v.name if v is not None else None) or (algorithm if v is None or v.algorithm else devices_file.stem)
        out.append(
            Config(
                name=name,
                algorithm=algorithm,
                objective=(v.objective if v is not None and v.objective else None) or job.objective,
                stages=v.stages if v is not None and v.stages else (job.stages if v is None or not v.devices else None),
                devices_file=devices_file,
                testbed=testbed,
                source=source,
            )
        )
    names = [c.name for c in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise UserError(f"two configurations are named {dup[0]!r}: give each compare entry a name", job_file, "compare")
    return out


def link_fidelity(samples: list[HopSample], measured_ids: set[int], testbed: Testbed) -> list[dict]:
    """Achieved rate per node-paced link: bytes over transmission time (queueing and delay excluded)."""
    acc: dict[tuple[str, str], list[float]] = {}
    for h in samples:
        rate = testbed.link(h.src, h.dst).rate_bps
        if h.id in measured_ids and rate and h.busy_s > 0 and h.bytes > 0:
            # a frame must hold the link long enough for a rate to show through per-frame overheads
            acc.setdefault((h.src, h.dst), [])
            if h.bytes * 8 / rate >= MIN_MEASURABLE_S:
                acc[(h.src, h.dst)].append(h.bytes * 8 / h.busy_s)
    out = []
    for (src, dst), rates in acc.items():
        cfg = testbed.link(src, dst)
        ach = float(np.median(rates)) if rates else None
        out.append(
            {
                "from": src,
                "to": dst,
                "configured_bps": cfg.rate_bps,
                "achieved_bps": round(ach) if ach else None,
                "configured_delay_ms": cfg.delay_s * 1e3,
                "achieved_delay_ms": None,
                "error": round(ach / cfg.rate_bps - 1, 4) if ach else None,
                "method": "hop timestamps, node pacing"
                if ach
                else f"not measured: frames take under {MIN_MEASURABLE_S * 1e3:.0f} ms on this link",
            }
        )
    return out


def select_runtime(name: str) -> tuple[str, list[str]]:
    """docker where asked, or (auto) where an engine answers and has the node image; else local."""
    if name == "local":
        return "local", []
    from orchestrator.runtimes.docker import engine, image_present

    client = engine()
    if name == "docker":
        if client is None:
            raise UserError("the docker runtime needs a Docker engine, and none answers", "--runtime")
        return "docker", []
    if client is None:
        return "local", ["runtime 'auto' chose the local runtime: no Docker engine answers"]
    if not image_present(client):
        return "local", ["runtime 'auto' chose the local runtime: the node image is not built (make image)"]
    return "docker", ["runtime 'auto' chose the docker runtime: an engine answers"]


def execute(
    job_path: str,
    runtime: str | None = None,
    out: str | None = None,
    console: Console | None = None,
    fidelity_check: bool = True,
    testbed_name: str | None = None,
    subnet: str | None = None,
) -> tuple[Path, dict]:
    """Run every configuration of the job; return the run folder and the first one's report."""
    console = console or Console()
    job = load_job(job_path)
    model = job.path(job.model).resolve()
    if not model.exists():
        raise UserError(f"model file not found: {model}", job_path, "model")
    configs = configurations(job, job_path)
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
            notes=list(rt_notes),
        )
        rep["run_dir"] = str(cfg_dir)
        reports.append((cfg.name, rep))
        print_summary(console, rep, cfg_dir)
    first = reports[0][1]
    if len(reports) > 1:
        first["comparison"] = comparison_rows(reports)
        write_comparison(run_dir, first)
        print_comparison(console, first["comparison"])
    return run_dir, first


def make_runtime(rt_name: str, testbed: Testbed, run_dir: Path, testbed_name: str | None, subnet: str | None):
    if rt_name == "docker":
        kw = {k: v for k, v in (("testbed_name", testbed_name), ("subnet", subnet)) if v}
        return DockerRuntime(testbed, run_dir / "logs", workspace=run_dir, **kw)
    return LocalRuntime(testbed, run_dir / "logs")


def plan_config(job: Job, cfg: Config, model: Path, dep, run_dir: Path, console: Console) -> tuple[Plan, dict | None]:
    """Partition for this configuration; profile the running nodes first where the algorithm needs it."""
    from orchestrator.profiling.blocks import cached_profile, profile

    table, prof_info = None, None
    prof = None
    if cfg.algorithm in PROFILED:
        ws = Path(dep.workspace) if isinstance(dep, DockerDeployment) else Path(".cache")
        prof = profile(model, cfg.testbed, dep, ws / ".profile_blocks" / model.stem, batch=job.batch, console=console)
    else:  # a profile measured earlier still makes the prediction better than FLOPs would
        prof = cached_profile(model, cfg.testbed, dep.runtime, batch=job.batch)
    if prof is not None:
        table = prof.table
        prof_info = {
            "seconds": round(prof.seconds, 3),
            "cached": prof.cached,
            "notes": list(prof.notes),
            "device_total_ms": {d: round(prof.device_total_s(d) * 1e3, 3) for d in prof.devices},
        }
        console.print(
            f"profiled {len(prof.block_names)} blocks on {len(prof.devices)} devices in "
            f"{prof.seconds:.1f} s" + (" (cached)" if prof.cached else "")
        )
    t0 = time.perf_counter()
    plan = partition(
        model,
        cfg.testbed,
        algorithm=cfg.algorithm,
        objective=cfg.objective,
        stages=cfg.stages,
        source=cfg.source,
        out_dir=run_dir,
        cost_table=table,
    )
    console.print(
        f"partitioned {model.name} into {len(plan.stages)} stages ({cfg.algorithm}, "
        f"{cfg.objective}) in {time.perf_counter() - t0:.2f} s: " + " > ".join(s.device for s in plan.stages)
    )
    return plan, prof_info


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
) -> dict:
    run_dir.mkdir(parents=True, exist_ok=True)
    testbed = cfg.testbed
    sess = whole_session(model, threads=1)
    inputs = open_inputs(job, job_file, sess)
    fid: dict | None = None
    all_records: list[Record] = []
    measured_ids: set[int] = set()
    repeats: list[list[Record]] = []
    try:
        with make_runtime(rt_name, testbed, run_dir, testbed_name, subnet) as rt:
            dep = rt.start()
            notes += dep.notes
            plan, prof_info = plan_config(job, cfg, model, dep, run_dir, console)
            notes += list(plan.notes)
            node_plan = stage_plan_into(plan, dep.workspace, run_dir) if isinstance(dep, DockerDeployment) else plan
            from_blocks = None
            if job.measure_stages and plan.predicted.throughput_fps:
                console.print("measuring each stage as a whole on its device...")
                t0 = time.perf_counter()
                measured = measure_stages(plan, node_plan, testbed, dep, batch=job.batch, timeout_s=job.timeout_s)
                from_blocks = plan.predicted.model_dump()
                on_source = [s.index for s in plan.stages if s.device == cfg.source]
                plan.predicted = calibrated(plan.predicted, measured, on_source[0] if on_source else None)
                plan.save(run_dir)
                notes.append(
                    f"prediction: each stage measured as a whole on its device in "
                    f"{time.perf_counter() - t0:.1f} s, busy ("
                    + ", ".join(
                        f"{s.device} {m.busy_s * 1e3:.0f} ms" for s, m in zip(plan.stages, measured, strict=True)
                    )
                    + "; the sum of its profiled blocks and the node's overhead said "
                    + ", ".join(f"{x * 1e3:.0f} ms" for x in from_blocks["stage_s"] or [])
                    + f"); a lone request {plan.predicted.latency_s * 1e3:.0f} ms (the profile said "
                    f"{from_blocks['latency_s'] * 1e3:.0f} ms)"
                )
            loaded = deploy(node_plan, testbed, dep, cfg.source)
            if getattr(dep, "tc_shaped", False):
                netem = any(v.netem for v in loaded.values())
                notes.append(
                    "links: tc htb class per peer on each sender's egress; delay by "
                    + ("netem" if netem else "the nodes themselves (this kernel has no netem)")
                )
            if isinstance(rt, DockerRuntime):
                if fidelity_check:
                    console.print("checking fidelity (links and CPU caps between the containers)...")
                    fid = fidelity.check(
                        rt.containers, dep.ips, testbed, node_adds_delay=not any(v.netem for v in loaded.values())
                    )
                    console.print(
                        f"fidelity checked in {fid['seconds']:.1f} s: "
                        + (f"{len(fid['flagged'])} off by more than 10%" if fid["flagged"] else "all within 10%")
                    )
                else:
                    notes.append("fidelity check switched off")
                sampler_cm = DockerStatsCollector(
                    rt.client, rt.containers, {d.name: d.cpus for d in testbed.devices}, run_dir / "stats"
                )
            else:
                sampler_cm = LocalStatsSampler(dep, testbed, run_dir / "stats")
            clocks = estimate_offsets({d: dep.client(d) for d in dep.nodes})
            offsets = offsets_ns(clocks)
            source = dep.client(cfg.source)
            gpus = {d.name: d.gpu.index for d in testbed.devices if d.gpu is not None}
            host_before = psutil.cpu_times()
            with sampler_cm as sampler, NvmlPowerSampler(list(gpus.values())) as gpu_power:
                if isinstance(sampler, DockerStatsCollector):
                    sampler.wait_samples(1)  # a first sample before the load, for CPU deltas
                for r in range(job.repeat):
                    label = f"run {r + 1}/{job.repeat}" if job.repeat > 1 else "driving"
                    warm = _drive(console, f"{label}: warm-up", source, inputs, job, job.warmup, None)
                    meas = _drive(
                        console,
                        label,
                        source,
                        inputs,
                        job,
                        job.requests if not job.duration_s else None,
                        job.duration_s,
                    )
                    for rec in warm + meas:
                        rec.id = len(all_records)
                        all_records.append(rec)
                    measured_ids |= {rec.id for rec in meas if not rec.error and rec.done_ns}
                    repeats.append([rec for rec in meas if not rec.error and rec.done_ns])
                if isinstance(sampler, DockerStatsCollector):
                    sampler.wait_samples(1)  # and one that covers the end of the run
            samples = sampler.samples
            host_busy = host_busy_share(host_before, psutil.cpu_times())
    finally:
        inputs.close()
    notes += inputs.notes

    n = len(plan.stages)
    measured = [r for r in all_records if r.id in measured_ids]
    errors = [r for r in all_records if r.error]
    hops = hop_samples(all_records, n, lambda a, b: testbed.link(a, b).delay_s, offsets=offsets)
    latency_hist = histogram_of(r.latency_ms for r in measured)
    window = (min(r.intended_ns for r in measured) / 1e9, max(r.done_ns for r in measured) / 1e9) if measured else None
    reference = {
        k: dict(zip([o.name for o in sess.get_outputs()], sess.run(None, arrays), strict=True))
        for k, arrays in inputs.kept.items()
    }
    per_repeat = [
        {"throughput_fps": throughput(rs, job.batch), "latency_ms": summary(histogram_of(r.latency_ms for r in rs))}
        for rs in repeats
    ]
    fps = [p["throughput_fps"] for p in per_repeat if p["throughput_fps"]]
    predicted = plan.predicted.model_dump() if plan.predicted else None
    rep = {
        "job": job.name,
        "configuration": cfg.name,
        "runtime": rt_name,
        "model": str(model),
        "algorithm": plan.algorithm,
        "objective": plan.objective,
        "source": cfg.source,
        "cut_tensors": [list(st.outputs) for st in plan.stages[:-1]],
        "requests": len(measured),
        "warmup": job.warmup,
        "batch": job.batch,
        "load": (
            {"mode": "open", "rate_hz": job.rate_hz}
            if job.rate_hz
            else {"mode": "closed", "concurrency": job.concurrency}
        )
        | ({"duration_s": job.duration_s} if job.duration_s else {}),
        "concurrency": job.concurrency,
        "errors": len(errors),
        "first_error": errors[0].error if errors else None,
        "throughput_fps": float(np.median(fps)) if fps else None,
        "latency_ms": summary(latency_hist),
        "latency_histogram": encode(latency_hist),
        "repeats": per_repeat if job.repeat > 1 else None,
        "repeat_spread": (
            {
                "throughput_fps_min": min(fps),
                "throughput_fps_max": max(fps),
                "spread_pct": round((max(fps) - min(fps)) / float(np.median(fps)) * 100, 2),
            }
            if job.repeat > 1 and fps
            else None
        ),
        "per_second": per_second([r.done_ns / 1e9 for r in measured], [r.latency_ms for r in measured], job.batch),
        "stages": stage_figures(measured, n, offsets=offsets),
        "hops": hop_figures(hops, measured_ids),
        "agreement": agreement([r for r in all_records if not r.error], reference),
        "accuracy": (
            accuracy(measured, inputs.labels, sess.get_outputs()[0].name)
            if not inputs.synthetic
            else {"top1": None, "top5": None, "why": "synthetic data has no labels"}
        ),
        "devices": device_summary(samples),
        "energy": device_energy(samples, testbed, window, len(measured) * job.batch),
        "gpu_energy": {
            d: (
                gpu_energy(gpu_power.samples.get(i, []), window, len(measured) * job.batch)
                if gpu_power.available
                else {"method": f"not measured: {gpu_power.error}"}
            )
            for d, i in gpus.items()
        }
        or None,
        "nodes": {k: vars(v) for k, v in loaded.items()},
        "predicted": predicted,
        "predicted_from_blocks": from_blocks,
        "profile": prof_info,
        "fidelity": (
            {
                "links": fid["links"],
                "cpus": fid["cpus"],
                "flagged": fid["flagged"],
                "seconds": fid["seconds"],
                "links_from_hops": link_fidelity(hops, measured_ids, testbed),
            }
            if fid is not None
            else {"links": link_fidelity(hops, measured_ids, testbed), "cpus": None, "flagged": []}
        ),
        "resolved": {
            "job": job.model_dump(),
            "devices": testbed.model_dump(by_alias=True),
            "devices_file": str(cfg.devices_file),
        },
        "versions": versions(),
        "host": host_facts(),
        "git_revision": git_revision(),
        "notes": notes,
    }
    rep["host_cpu_busy"] = round(host_busy, 4)
    if host_busy > HOST_BUSY_FLAG:
        rep["fidelity"]["flagged"].append(
            f"host CPUs {host_busy:.0%} busy while driving: the host itself may have been the bottleneck, "
            "so devices may have had less than their CPU caps"
        )
    rep["prediction_vs_measured"] = prediction_vs_measured(predicted, rep)
    rep["breakdown"] = breakdown_table(rep["stages"], rep["hops"], (rep["latency_ms"] or {}).get("mean"), cfg.source)
    rep["clocks"] = {d: c.as_dict() for d, c in clocks.items()}
    rep["clock_offsets_ns"] = offsets
    write_latencies(run_dir / "latencies.csv", all_records, hops, n, measured_ids)
    write_requests(run_dir / "requests.jsonl", all_records, measured_ids)
    rep["plots"] = write_plots(
        run_dir, rep, all_records, measured_ids, samples, partition_view(plan, load_graph(model)), offsets
    )
    write_report(run_dir, rep)
    return rep


def _drive(
    console: Console,
    label: str,
    source: NodeClient,
    inputs: Inputs,
    job: Job,
    total: int | None,
    duration_s: float | None,
) -> list[Record]:
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
            on_done=lambda r: bar.advance(task),
            timeout_s=job.timeout_s,
        )


def print_summary(console: Console, rep: dict, run_dir: Path) -> None:
    t = Table(title=f"{rep['job']} [{rep['configuration']}]: {rep['requests']} requests, {rep['runtime']} runtime")
    t.add_column("figure")
    t.add_column("value", justify="right")
    fps = rep["throughput_fps"]
    t.add_row("throughput", f"{fps:.2f} images/s" if fps else "not measured")
    for k in ("p50", "p90", "p99", "max"):
        v = (rep["latency_ms"] or {}).get(k)
        if v is not None:
            t.add_row(f"latency {k}", f"{v:.1f} ms")
    for s in rep["stages"]:
        c = s.get("compute_ms") or {}
        t.add_row(f"stage {s['index']} on {s['device']}", f"{c.get('p50', float('nan')):.1f} ms p50")
    for h in rep["hops"]:
        tm = h.get("transfer_ms") or {}
        t.add_row(f"hop {h['from']} -> {h['to']}", f"{tm.get('p50', float('nan')):.2f} ms p50, {h['bytes']} B")
    ag = rep["agreement"]
    if ag.get("max_abs_diff") is not None:
        t.add_row("agreement", f"max abs diff {ag['max_abs_diff']:.2e}, top-1 {ag['top1']}")
    acc = rep["accuracy"]
    t.add_row(
        "accuracy",
        f"top-1 {acc['top1']:.3f}, top-5 {acc['top5']:.3f}" if acc.get("top1") is not None else "not measured",
    )
    pv = rep.get("prediction_vs_measured") or {}
    if (pv.get("throughput_fps") or {}).get("error_pct") is not None:
        t.add_row(
            "predicted throughput",
            f"{pv['throughput_fps']['predicted']:.2f} images/s ({pv['throughput_fps']['error_pct']:+.1f}%)",
        )
    t.add_row("errors", str(rep["errors"]))
    for f in (rep.get("fidelity") or {}).get("flagged") or []:
        t.add_row("[bold red]fidelity off >10%", f)
    console.print(t)
    console.print(f"run folder: {run_dir}")


def print_comparison(console: Console, rows: list[dict]) -> None:
    t = Table(title="comparison")
    for col in ("configuration", "stages on", "throughput", "predicted", "p50 ms", "p99 ms"):
        t.add_column(col, justify="right" if col not in ("configuration", "stages on") else "left")
    for r in rows:
        t.add_row(
            r["name"],
            " > ".join(r["devices"]),
            f"{r['throughput_fps']:.2f}/s" if r["throughput_fps"] else "-",
            f"{r['predicted_fps']:.2f}/s" if r["predicted_fps"] else "-",
            f"{r['latency_p50_ms']:.1f}" if r["latency_p50_ms"] else "-",
            f"{r['latency_p99_ms']:.1f}" if r["latency_p99_ms"] else "-",
        )
    console.print(t)


def load_report(run_dir: Path) -> dict:
    p = Path(run_dir) / "report.json"
    if not p.exists():
        raise UserError("no report.json: not a run folder", str(run_dir))
    return json.loads(p.read_text())
