"""Profile a ViT-B/16 on the default 4-device testbed, then again from the cache.

Targets: the first call (start the nodes, profile every block on every device) under 2 minutes,
into an empty cache so that it measures profiling; the second call under 1 s, a cache hit that
returns the same per-block table as the first. The baseline each figure is printed against is
the other call of the same run. Exits 1 when a target is missed or could not be measured.

Run: .venv/bin/python bench/bench_profile.py [--devices devices/edge4.yaml] [--runtime local|docker|auto]
     [--warmup 2] [--reps 5] [--cache-dir DIR]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchlib import verdict  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from orchestrator.config import Testbed, load_devices  # noqa: E402
from orchestrator.models import ensure_vit  # noqa: E402
from orchestrator.profiling.cache import blocks_folder, cached_profile  # noqa: E402
from orchestrator.profiling.display import profile_to_rows  # noqa: E402
from orchestrator.profiling.measure import profile  # noqa: E402
from orchestrator.profiling.results import Profile  # noqa: E402
from orchestrator.runtimes import RUNTIMES  # noqa: E402
from orchestrator.runtimes.choice import make_runtime, select_runtime  # noqa: E402

FIRST_TARGET_S = 120.0
SECOND_TARGET_S = 1.0


def first_call(testbed: Testbed, model: Path, args: argparse.Namespace, console: Console) -> tuple[Profile, float]:
    """Profile on the runtime asked for; returns the profile and the seconds its nodes took to
    start (none start on a cache hit). A Docker testbed is one of its own, so that a default one in
    use elsewhere is left alone."""
    rt_name, notes = select_runtime(args.runtime)
    for note in notes:
        console.print(f"note: {note}")
    hit = cached_profile(model, testbed, rt_name, cache_dir=args.cache_dir)
    if hit is not None:
        return hit, 0.0
    runs = ROOT / "runs"
    work = Path(tempfile.mkdtemp(prefix="bench_profile_", dir=runs if runs.exists() else None))
    work.chmod(0o755)  # mkdtemp makes it private; the nodes run as their own user and must read it
    try:
        with make_runtime(
            rt_name, testbed, work, testbed_name=args.testbed_name, subnet=args.subnet, workspace=work
        ) as rt:
            t = time.perf_counter()
            dep = rt.start()
            start_s = time.perf_counter() - t
            prof = profile(
                model,
                testbed,
                dep,
                blocks_folder(dep.workspace, model),
                warmup=args.warmup,
                reps=args.reps,
                cache_dir=args.cache_dir,
                console=console,
            )
        return prof, start_s
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--devices", default=str(ROOT / "devices" / "edge4.yaml"))
    ap.add_argument("--runtime", choices=("auto", *RUNTIMES), default="local")
    ap.add_argument("--model", default=str(ROOT / "models" / "vit_b16.onnx"))
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--testbed-name", default="edge-profile", help="docker: the testbed's name")
    ap.add_argument("--subnet", default="10.214.0.0/24", help="docker: the testbed's network")
    ap.add_argument(
        "--cache-dir",
        type=Path,
        help="profile into this cache, e.g. .cache/profiles to fill the one runs use (default: an empty "
        "temporary one; a hit on the first call measures nothing and fails)",
    )
    ap.add_argument("--rows", action="store_true", help="print the per-block table")
    args = ap.parse_args()
    console = Console()

    model = ensure_vit(args.model)
    testbed = load_devices(args.devices)
    if args.cache_dir is not None:
        return measure(args, model, testbed, console)
    args.cache_dir = Path(tempfile.mkdtemp(prefix="bench_profile_cache_"))
    try:
        return measure(args, model, testbed, console)
    finally:
        shutil.rmtree(args.cache_dir, ignore_errors=True)


def measure(args: argparse.Namespace, model: Path, testbed: Testbed, console: Console) -> int:
    """Both calls, each against its target; the exit status."""
    t = time.perf_counter()
    p, start_s = first_call(testbed, model, args, console)
    total = time.perf_counter() - t

    nb = len(p.table.bounds) - 1
    console.print(
        f"model {model.name} ({p.model_sha256[:12]}), {nb} blocks, {len(testbed.devices)} devices, "
        f"runtime {p.runtime}, warmup {args.warmup}, reps {args.reps}"
    )
    console.print(
        f"first call: {total:.1f} s in all"
        + (f" (nodes started in {start_s:.1f} s, profiling {p.seconds:.1f} s)" if start_s else "")
        + (" [a cache hit: profiling not measured]" if p.cached else "")
        + f"; target < {FIRST_TARGET_S:.0f} s"
    )
    for n in p.notes:
        console.print(f"  note: {n}")
    summary = Table(title="per device")
    for col in ("device", "cpus", "threads", "chunks", "sum of blocks ms", "peak RSS MiB", "seconds"):
        summary.add_column(col, justify="right")
    for d in testbed.devices:
        dp = p.devices[d.name]
        summary.add_row(
            d.name,
            f"{d.cpus:g}",
            str(dp.threads),
            str(len(dp.chunks)),
            f"{p.device_total_s(d.name) * 1e3:.1f}",
            f"{dp.peak_rss_bytes / 1024**2:.0f}",
            f"{dp.seconds:.1f}",
        )
    console.print(summary)
    if args.rows:
        rows = profile_to_rows(p)
        tbl = Table(title="per block")
        for col in rows[0]:
            tbl.add_column(col, justify="right")
        for r in rows:
            tbl.add_row(*r.values())
        console.print(tbl)

    t = time.perf_counter()
    again = cached_profile(model, testbed, p.runtime, cache_dir=args.cache_dir)
    second = time.perf_counter() - t
    hit = again is not None and again.cached
    same = hit and again.table.bounds == p.table.bounds and again.table.block_s == p.table.block_s
    console.print(
        f"second call: {second * 1e3:.1f} ms, "
        + ("a cache hit" if hit else "NOT a cache hit")
        + (", the same per-block table" if same else ", a DIFFERENT per-block table" if hit else "")
        + f"; {total / second:.0f}x faster than the first call; target < {SECOND_TARGET_S:g} s"
    )
    missed = []
    if p.cached:
        missed.append("first call was a cache hit, profiling not measured (leave out --cache-dir)")
    elif total >= FIRST_TARGET_S:
        missed.append(f"first call {total:.1f} s")
    if not same:
        missed.append("second call not the cached table of the first")
    if second >= SECOND_TARGET_S:
        missed.append(f"second call {second:.2f} s")
    what = f"first call {total:.1f} s < {FIRST_TARGET_S:.0f} s, second {second * 1e3:.0f} ms < {SECOND_TARGET_S:g} s"
    return verdict(not missed, "; ".join(missed) or what)


if __name__ == "__main__":
    sys.exit(main())
