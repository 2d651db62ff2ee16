"""`orchestrator run`: partition, deploy, drive, measure, write the run folder."""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import onnxruntime as ort
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from . import fidelity
from .config import Job, Testbed, load_devices, load_job
from .deploy import deploy
from .driver import Record, drive
from .energy import device_energy
from .errors import UserError
from .latency import encode, histogram_of, per_second, summary
from .metrics import HopSample, agreement, hop_figures, hop_samples, stage_figures, throughput
from .partition import partition
from .partition.graph import load_graph
from .partition.plan import Plan
from .report import (
    git_revision,
    host_facts,
    partition_view,
    versions,
    write_latencies,
    write_plots,
    write_report,
)
from .runtimes.docker import DockerDeployment, DockerRuntime, stage_plan_into
from .runtimes.local import LocalRuntime
from .stats_docker import DockerStatsCollector
from .stats_local import LocalStatsSampler, device_summary

_ORT_TYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
              "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(bool)": np.bool_,
              "tensor(uint8)": np.uint8}


def whole_session(model: Path, threads: int = 0) -> ort.InferenceSession:
    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
    return ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])


def synthetic_pool(sess: ort.InferenceSession, batch: int, size: int, seed: int) -> list[dict[str, np.ndarray]]:
    """Seeded random inputs shaped like the model's, the batch dimension set to `batch`."""
    rng = np.random.default_rng(seed)
    pool = []
    for _ in range(size):
        feeds = {}
        for inp in sess.get_inputs():
            dtype = _ORT_TYPES.get(inp.type)
            if dtype is None:
                raise UserError(f"input {inp.name} has type {inp.type}, which synthetic data cannot fill")
            shape = [d if isinstance(d, int) and d > 0 else (batch if i == 0 else 1) for i, d in enumerate(inp.shape)]
            if np.issubdtype(dtype, np.floating):
                feeds[inp.name] = rng.standard_normal(shape).astype(dtype)
            else:
                feeds[inp.name] = rng.integers(0, 2, size=shape).astype(dtype)
        pool.append(feeds)
    return pool


def run_folder(job: Job, out: str | None) -> Path:
    if out:
        d = Path(out)
    else:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        d = Path("runs") / f"{stamp}_{job.name}"
    d.mkdir(parents=True, exist_ok=True)
    return d


def link_fidelity(samples: list[HopSample], measured_ids: set[int], testbed: Testbed) -> list[dict]:
    """Achieved rate per shaped link: bytes over transmission time (queueing and delay excluded)."""
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
        out.append({"from": src, "to": dst, "configured_bps": cfg.rate_bps,
                    "achieved_bps": round(ach) if ach else None,
                    "configured_delay_ms": cfg.delay_s * 1e3, "achieved_delay_ms": None,
                    "error": round(ach / cfg.rate_bps - 1, 4) if ach else None,
                    "method": "hop timestamps, node pacing" if ach else
                    f"not measured: frames take under {MIN_MEASURABLE_S * 1e3:.0f} ms on this link"})
    return out


MIN_MEASURABLE_S = 0.005


def select_runtime(job: Job, requested: str | None) -> tuple[str, list[str]]:
    """docker where asked, or (auto) where an engine answers and has the node image; else local."""
    name = requested or job.runtime
    if name == "local":
        return "local", []
    from .runtimes.docker import engine, image_present

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


def execute(job_path: str, runtime: str | None = None, out: str | None = None,
            console: Console | None = None, fidelity_check: bool = True,
            testbed_name: str | None = None, subnet: str | None = None) -> tuple[Path, dict]:
    console = console or Console()
    job = load_job(job_path)
    testbed = load_devices(job.path(job.devices))
    model = job.path(job.model).resolve()
    if not model.exists():
        raise UserError(f"model file not found: {model}", job_path, "model")
    source = job.source or testbed.devices[0].name
    if source not in [d.name for d in testbed.devices]:
        raise UserError(f"unknown device {source!r}", job_path, "source")
    ds_notes = []
    if job.dataset.kind != "synthetic":
        ds_path = job.path(job.dataset.path) if job.dataset.path else None
        if job.dataset.kind == "imagenet" and (ds_path is None or not ds_path.exists()):
            ds_notes.append(f"dataset: the ImageNet files are absent ({ds_path or 'no path given'}): "
                            "synthetic inputs used instead, accuracy not measured")
            console.print(f"note: {ds_notes[-1]}")
        else:
            raise UserError("only synthetic data is available in this build", job_path, "dataset.kind")
    rt_name, notes = select_runtime(job, runtime)
    notes += ds_notes
    console.print(f"runtime: {rt_name}" + (f" ({notes[0]})" if notes and notes[0].startswith("runtime") else ""))

    run_dir = run_folder(job, out)
    t0 = time.perf_counter()
    plan: Plan = partition(model, testbed, algorithm=job.algorithm, objective=job.objective,
                           stages=job.stages, source=source, out_dir=run_dir)
    notes += list(getattr(plan, "notes", []) or [])
    console.print(f"partitioned {model.name} into {len(plan.stages)} stages "
                  f"({job.algorithm}) in {time.perf_counter() - t0:.2f} s -> {run_dir}")

    sess = whole_session(model, threads=1)
    pool = synthetic_pool(sess, job.batch, min(8, job.requests + job.warmup), job.dataset.seed)
    notes.append(f"synthetic inputs: {len(pool)} seeded random tensors, cycled (no dataset named)")
    total = job.warmup + job.requests
    runtime_obj: LocalRuntime | DockerRuntime
    if rt_name == "docker":
        kw = {k: v for k, v in (("testbed_name", testbed_name), ("subnet", subnet)) if v}
        runtime_obj = DockerRuntime(testbed, run_dir / "logs", workspace=run_dir, **kw)
    else:
        runtime_obj = LocalRuntime(testbed, run_dir / "logs")
    records: list[Record]
    fid: dict | None = None
    with runtime_obj:
        dep = runtime_obj.start()
        notes += dep.notes
        if isinstance(dep, DockerDeployment):
            plan = stage_plan_into(plan, dep.workspace, run_dir)
        loaded = deploy(plan, testbed, dep, source)
        if dep.tc_shaped:
            netem = any(v.netem for v in loaded.values())
            notes.append("links: tc htb class per peer on each sender's egress; delay by "
                         + ("netem" if netem else "the nodes themselves (this kernel has no netem)"))
        if isinstance(runtime_obj, DockerRuntime):
            if fidelity_check:
                console.print("checking fidelity (links and CPU caps between the containers)...")
                fid = fidelity.check(runtime_obj.containers, dep.ips, testbed,
                                     node_adds_delay=not any(v.netem for v in loaded.values()))
                console.print(f"fidelity checked in {fid['seconds']:.1f} s: "
                              + (f"{len(fid['flagged'])} off by more than 10%" if fid["flagged"] else "all within 10%"))
            else:
                notes.append("fidelity check switched off (--no-check)")
            sampler_cm = DockerStatsCollector(runtime_obj.client, runtime_obj.containers,
                                              {d.name: d.cpus for d in testbed.devices}, run_dir / "stats")
        else:
            sampler_cm = LocalStatsSampler(dep, testbed, run_dir / "stats")
        with sampler_cm as sampler, Progress(
            TextColumn("[bold]driving"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=console, transient=True) as bar:
            task = bar.add_task("requests", total=total)
            if isinstance(sampler, DockerStatsCollector):
                sampler.wait_samples(1)  # a first sample before the load, for CPU deltas
            records = drive(dep.nodes[source].control_address, pool, total, job.concurrency,
                            on_done=lambda r: bar.advance(task), timeout_s=job.timeout_s)
            if isinstance(sampler, DockerStatsCollector):
                sampler.wait_samples(1)  # and one that covers the end of the run
        samples = sampler.samples

    reference = [dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds), strict=True))
                 for feeds in pool]
    n = len(plan.stages)
    measured = [r for r in records if r.id >= job.warmup and not r.error and r.done_ns]
    errors = [r for r in records if r.error]
    measured_ids = {r.id for r in measured}
    latency_hist = histogram_of(r.latency_ms for r in measured)
    window = (min(r.sent_ns for r in measured) / 1e9, max(r.done_ns for r in measured) / 1e9) if measured else None
    hops = hop_samples(records, n, lambda a, b: testbed.link(a, b).delay_s)
    rep = {
        "job": job.name, "runtime": rt_name, "model": str(model), "algorithm": plan.algorithm,
        "objective": plan.objective, "source": source,
        "requests": len(measured), "warmup": job.warmup, "batch": job.batch, "concurrency": job.concurrency,
        "errors": len(errors), "first_error": errors[0].error if errors else None,
        "throughput_fps": throughput(measured, job.batch),
        "latency_ms": summary(latency_hist),
        "latency_histogram": encode(latency_hist),
        "per_second": per_second([r.done_ns / 1e9 for r in measured], [r.latency_ms for r in measured], job.batch),
        "stages": stage_figures(measured, n),
        "hops": hop_figures(hops, measured_ids),
        "agreement": agreement([r for r in records if not r.error], reference),
        "accuracy": {"top1": None, "top5": None, "why": "synthetic data has no labels"},
        "devices": device_summary(samples),
        "energy": device_energy(samples, testbed, window, len(measured) * job.batch),
        "nodes": {k: vars(v) for k, v in loaded.items()},
        "predicted": json.loads(json.dumps(getattr(plan, "predicted", None), default=lambda o: vars(o))),
        "fidelity": ({"links": fid["links"], "cpus": fid["cpus"], "flagged": fid["flagged"],
                      "seconds": fid["seconds"], "links_from_hops": link_fidelity(hops, measured_ids, testbed)}
                     if fid is not None else
                     {"links": link_fidelity(hops, measured_ids, testbed), "cpus": None, "flagged": []}),
        "configuration": {"job": job.model_dump(), "devices": testbed.model_dump(by_alias=True)},
        "versions": versions(), "host": host_facts(), "git_revision": git_revision(),
        "notes": notes,
    }
    write_latencies(run_dir / "latencies.csv", records, hops, n, job.warmup)
    rep["plots"] = write_plots(run_dir, rep, records, hops, samples, partition_view(plan, load_graph(model)))
    write_report(run_dir, rep)
    print_summary(console, rep, run_dir)
    return run_dir, rep


def print_summary(console: Console, rep: dict, run_dir: Path) -> None:
    t = Table(title=f"{rep['job']}: {rep['requests']} requests, {rep['runtime']} runtime")
    t.add_column("figure")
    t.add_column("value", justify="right")
    fps = rep["throughput_fps"]
    t.add_row("throughput", f"{fps:.2f} images/s" if fps else "not measured")
    for k, v in (rep["latency_ms"] or {}).items():
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
    t.add_row("errors", str(rep["errors"]))
    for f in (rep.get("fidelity") or {}).get("flagged") or []:
        t.add_row("[bold red]fidelity off >10%", f)
    console.print(t)
    console.print(f"run folder: {run_dir}")
