"""Soak: does anything grow while a pipeline serves request after request?

A small model (squeezenet1_1 from tests/fixtures by default) cut into 2 stages on 2 devices of one
CPU each (devices/local2.yaml), on each runtime in turn, with 10,000 requests on one Drive stream
from the source node, closed loop. For every node and for the orchestrator (this process) it reads
resident memory (RSS), threads and open file descriptors from the host, by the process id: a docker
node is its container's node process as the host sees it. Threads are held to the target without
gRPC core's event-engine pool (shown apart): that pool grows under load and ends a thread that has
idled 20 s, so its size at a moment says nothing about growth. Read once 1,000 requests are answered
(the warmed-up state: sessions, arenas, streams and thread pools are all made by then) and again
at the last one; the growth between them is the figure. The baseline is the first reading. Each
reading is the median of 11 samples over the 200 answers up to its mark, so that a thread a pool
starts for a moment (gRPC's own) is not taken for growth; a leak grows through the window. The
drive forgets each answered request (a run keeps every request's record for its report, about 2 KB
each: `--keep-records` shows that growth), and what setting up left free in this process is given
back before the drive, so that the orchestrator's baseline is the drive's own.

Target: every figure grows < 5%, and every request is answered without error. Exits 1 otherwise.
The outputs of the first and the last request are compared with the whole model run here.
Run: `.venv/bin/python bench/bench_soak.py [--requests 10000] [--runtime local|docker|both]`
(the docker runtime needs the node image: `make image`)."""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import psutil
from benchlib import ROOT, verdict
from rich.console import Console
from rich.table import Table

from common.ort_session import SessionSettings, open_session
from orchestrator.config import load_devices
from orchestrator.driving.deploy import deploy
from orchestrator.driving.driver import Feed, Record, drive
from orchestrator.driving.inputs import synthetic_pool
from orchestrator.partition import partition
from orchestrator.runtimes.choice import make_runtime

TARGET_PCT = 5.0
DEFAULT_SOAK_MODEL = ROOT / "tests" / "fixtures" / "squeezenet1_1.onnx"
DOCKER_NAME, DOCKER_SUBNET = "benchsoak", "10.213.252.0/24"
ORCHESTRATOR = "orchestrator"
FIGURES = ("rss", "own_threads", "fds")  # what the target is about
COUNTS = ("rss", "threads", "grpc_pool", "own_threads", "fds")  # what a reading holds
# gRPC core's event-engine threads: a pool that sizes itself to the load and ends an extra thread
# once it has idled 20 s, so one comes and goes while requests flow; shown, not held to the target
GRPC_POOL = "event_engine"
WINDOW, SAMPLES = 200, 11  # a reading: the median of SAMPLES samples over the WINDOW answers up to its mark


@dataclass(frozen=True)
class Reading:
    """One process at one moment, as the host sees it; what its fds point at and its threads'
    names are kept to say what grew."""

    rss: int
    threads: int  # all of them
    grpc_pool: int  # gRPC core's event-engine pool among them
    own_threads: int  # the others: the process's own and the rest of gRPC's
    fds: int
    fd_targets: tuple[str, ...] = ()
    thread_names: tuple[str, ...] = ()


def _listing(pid: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    proc = Path(f"/proc/{pid}")
    fds, names = [], []
    for fd in proc.joinpath("fd").iterdir():
        try:
            fds.append(os.readlink(fd))
        except OSError:  # closed meanwhile
            pass
    for task in proc.joinpath("task").iterdir():
        try:
            names.append(task.joinpath("comm").read_text().strip())
        except OSError:
            pass
    return tuple(sorted(fds)), tuple(sorted(names))


def read_process(pid: int) -> Reading:
    try:
        fds, names = _listing(pid)
    except PermissionError:
        raise SystemExit(f"cannot read /proc/{pid}: a container's process is read from the host as root") from None
    pool = names.count(GRPC_POOL)
    return Reading(psutil.Process(pid).memory_info().rss, len(names), pool, len(names) - pool, len(fds), fds, names)


def release_set_up() -> None:
    """Give back what this process freed while setting up (cutting the model, the reference run),
    so that its baseline is the drive's own and not set-up memory the allocator returns later."""
    gc.collect()
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


def median_reading(samples: list[Reading]) -> Reading:
    """Each figure's median over the samples; the listings of the last sample."""
    return replace(samples[-1], **{f: statistics.median_low(getattr(r, f) for r in samples) for f in COUNTS})


def what_grew(a: Reading, b: Reading) -> str:
    """The fds and threads there at the second reading and not at the first (by target, by name)."""
    parts = []
    for what, x, y in (("fds", a.fd_targets, b.fd_targets), ("threads", a.thread_names, b.thread_names)):
        new = Counter(y) - Counter(x)
        if new:
            parts.append(f"new {what}: " + ", ".join(f"{k} x{n}" if n > 1 else k for k, n in sorted(new.items())))
    return "; ".join(parts)


def growth_pct(before: float, after: float) -> float:
    return 100.0 * (after - before) / before if before else float("inf") if after else 0.0


@dataclass
class Soak:
    """What one runtime's soak found: readings per process at each mark, and how the drive went."""

    runtime: str
    marks: tuple[int, int]  # answered requests at the two readings
    readings: dict[str, tuple[Reading, Reading]]
    answered: int
    errors: int
    first_error: str
    max_abs_diff: float
    seconds: float

    def growth(self, proc: str) -> dict[str, float]:
        a, b = self.readings[proc]
        return {f: growth_pct(getattr(a, f), getattr(b, f)) for f in FIGURES}

    def row_ok(self, proc: str) -> bool:
        return all(g < TARGET_PCT for g in self.growth(proc).values())


def soak(
    runtime: str, model: Path, requests: int, first: int, concurrency: int, max_s: float, keep: bool = False
) -> Soak:
    """Start `runtime` with the two devices, load the 2-stage plan, drive `requests` requests and
    read every process at `first` and at the last answer. With `keep` the drive keeps every
    request's record, as a run does for its report."""
    testbed = load_devices(ROOT / "devices" / "local2.yaml")
    source = testbed.devices[0].name
    sess = open_session(model, SessionSettings(threads=1))
    arrays = synthetic_pool(sess, batch=1, size=1, seed=0)[0]
    names = [o.name for o in sess.get_outputs()]
    reference = dict(zip(names, sess.run(None, arrays), strict=True))
    del sess
    with tempfile.TemporaryDirectory(prefix="bench_soak_") as tmp:
        run_dir = Path(tmp)
        run_dir.chmod(0o755)  # docker nodes run as another user and read their stages here
        kw = {"testbed_name": DOCKER_NAME, "subnet": DOCKER_SUBNET} if runtime == "docker" else {}
        with make_runtime(runtime, testbed, run_dir, **kw) as rt:
            dep = rt.start()
            plan = partition(model, testbed, algorithm="even", stages=2, source=source, out_dir=run_dir / "plan")
            deploy(rt.node_plan(plan, run_dir), testbed, dep, source)
            pids = {ORCHESTRATOR: psutil.Process().pid} | {d: dep.nodes[d].pid for d in sorted(dep.nodes)}
            missing = [d for d, pid in pids.items() if pid is None]
            if missing:
                raise SystemExit(f"{runtime}: no process id for {', '.join(missing)}: cannot read them from the host")
            at = {first: sample_points(first, 0), requests: sample_points(requests, first)}
            when = {n: mark for mark, points in at.items() for n in points}
            samples: dict[int, list[dict[str, Reading]]] = {first: [], requests: []}
            answered = errors = 0
            first_error = ""
            diffs: list[float] = []
            lock = threading.Lock()

            def check(rec: Record) -> None:
                if rec.outputs is not None:
                    diffs.append(max(float(np.max(np.abs(rec.outputs[k] - reference[k]))) for k in names))

            def on_done(rec: Record) -> None:
                nonlocal answered, errors, first_error
                with lock:
                    answered += 1
                    if rec.error:
                        errors += 1
                        first_error = first_error or rec.error
                    if answered in (1, requests):
                        check(rec)
                    rec.outputs = None  # a run keeps them for its report; the soak has checked them
                    if answered in when:
                        samples[when[answered]].append({p: read_process(pid) for p, pid in pids.items()})

            def feeds():
                k = 0
                while True:
                    yield Feed(arrays, k)
                    k += 1

            release_set_up()
            t0 = time.perf_counter()
            drive(
                dep.client(source),
                feeds(),
                total=requests,
                duration_s=max_s,
                concurrency=concurrency,
                timeout_s=60.0,
                on_done=on_done,
                keep=keep,
            )
            seconds = time.perf_counter() - t0
            if answered < requests:  # the time bound ended it early: read where it stopped
                samples[requests] = [{p: read_process(pid) for p, pid in pids.items()}]
            if not samples[first]:
                raise SystemExit(f"{runtime}: only {answered} requests answered in {max_s:g} s: nothing to compare")
    readings = {p: tuple(median_reading([s[p] for s in samples[m]]) for m in (first, requests)) for p in pids}
    marks = (first, min(answered, requests))
    return Soak(runtime, marks, readings, answered, errors, first_error, max(diffs, default=float("nan")), seconds)


def sample_points(mark: int, after: int) -> list[int]:
    """The answer counts at which the reading for `mark` samples: up to WINDOW before it (and
    after `after`, the previous mark), evenly."""
    start = max(after + 1, mark - WINDOW)
    return sorted({round(start + k * (mark - start) / (SAMPLES - 1)) for k in range(SAMPLES)})


def mib(n: int) -> str:
    return f"{n / 2**20:.1f}"


def table(results: list[Soak]) -> Table:
    lo, hi = results[0].marks
    t = Table(title=f"soak: each process at {lo:,} and at {hi:,} answered requests (growth target < {TARGET_PCT:g}%)")
    cols = ("runtime", "process", "RSS MiB", "growth", "threads", "of them gRPC pool", "growth*", "fds", "growth")
    for col in (*cols, "verdict"):
        t.add_column(col, justify="left" if col in ("runtime", "process", "verdict") else "right")
    t.caption = f"* threads outside gRPC's event-engine pool ({GRPC_POOL!r} threads, which come and go with the load)"
    for s in results:
        for proc, (a, b) in s.readings.items():
            g = s.growth(proc)
            ok = s.row_ok(proc)
            t.add_row(
                s.runtime,
                proc,
                f"{mib(a.rss)} -> {mib(b.rss)}",
                f"{g['rss']:+.1f}%",
                f"{a.threads} -> {b.threads}",
                f"{a.grpc_pool} -> {b.grpc_pool}",
                f"{g['own_threads']:+.1f}%",
                f"{a.fds} -> {b.fds}",
                f"{g['fds']:+.1f}%",
                "[green]ok[/]" if ok else "[red]GROWS[/]",
            )
    return t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=DEFAULT_SOAK_MODEL)
    ap.add_argument("--requests", type=int, default=10_000, help="requests per runtime")
    ap.add_argument("--first", type=int, default=1_000, help="the first reading: after this many answers")
    ap.add_argument("--runtime", choices=("local", "docker", "both"), default="both")
    ap.add_argument("--concurrency", type=int, default=4, help="requests in flight")
    ap.add_argument("--max-s", type=float, default=900.0, help="stop sending after this long per runtime")
    ap.add_argument(
        "--keep-records",
        action="store_true",
        help="keep every request's record (timings, ids) as a run does: the orchestrator then grows by their size",
    )
    a = ap.parse_args()
    if not 0 < a.first < a.requests:
        ap.error("--first must be between 0 and --requests")
    console = Console() if sys.stdout.isatty() else Console(width=140)
    runtimes = ["local", "docker"] if a.runtime == "both" else [a.runtime]
    results: list[Soak] = []
    missed: list[str] = []
    for rt in runtimes:
        console.print(f"{rt}: {a.requests:,} requests through {a.model.name} in 2 stages...")
        s = soak(rt, a.model, a.requests, a.first, a.concurrency, a.max_s, a.keep_records)
        results.append(s)
        console.print(
            f"{rt}: {s.answered:,} answered in {s.seconds:.1f} s ({s.answered / s.seconds:.1f} requests/s), "
            f"{s.errors} errors{': ' + s.first_error if s.errors else ''}; first and last outputs against the "
            f"whole model: max abs diff {s.max_abs_diff:.2e}"
        )
        if s.answered < a.requests or s.errors:
            missed.append(f"{rt}: {s.answered - s.errors:,} of {a.requests:,} answered without error")
        if not s.max_abs_diff <= 1e-3:
            missed.append(f"{rt}: outputs differ from the whole model's by {s.max_abs_diff:.2e}")
        missed += [f"{rt} {p} grows" for p in s.readings if not s.row_ok(p)]
    console.print(table(results))
    for s in results:
        for proc, (x, y) in s.readings.items():
            if grew := what_grew(x, y):
                console.print(f"{s.runtime} {proc}: {grew}")
    worst = max(max(s.growth(p).values()) for s in results for p in s.readings)
    target = f"every process's RSS, threads and fds grow < {TARGET_PCT:g}% (worst {worst:+.1f}%), no request failed"
    if missed:
        console.print("; ".join(missed))
    return verdict(not missed, target)


if __name__ == "__main__":
    sys.exit(main())
