"""The `orchestrator` command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from orchestrator import interrupts
from orchestrator.config import OBJECTIVES
from orchestrator.errors import UserError
from orchestrator.runtimes import DEFAULT_DEVICES, DEFAULT_NAME, DEFAULT_SUBNET, RUNTIMES


def _cmd_run(a: argparse.Namespace) -> int:
    from orchestrator.run import execute

    _, rep = execute(
        a.job,
        runtime=a.runtime,
        out=a.out,
        fidelity_check=not a.no_check,
        testbed_name=a.testbed,
        wait_for_testbed=a.wait,
    )
    return 1 if rep["errors"] or rep.get("ended") else 0  # a lost device that ended the run: 1


def _limits(a: argparse.Namespace):
    """--latency-budget / --throughput-floor, checked: limits of objective energy alone."""
    from orchestrator.partition import Limits
    from orchestrator.units import parse_delay

    if a.latency_budget is None and a.throughput_floor is None:
        return None
    flag = "--latency-budget" if a.latency_budget is not None else "--throughput-floor"
    if a.objective != "energy":
        raise UserError(f"{flag} is a limit of --objective energy", None, flag)
    try:
        budget = None if a.latency_budget is None else parse_delay(a.latency_budget)
    except ValueError as e:
        raise UserError(str(e), None, "--latency-budget") from None
    if budget is not None and budget <= 0:
        raise UserError(f"{a.latency_budget!r}: a latency budget must be more than 0", None, "--latency-budget")
    if a.throughput_floor is not None and not a.throughput_floor > 0:
        raise UserError(f"{a.throughput_floor!r}: a throughput floor must be more than 0", None, "--throughput-floor")
    return Limits(budget, a.throughput_floor)


def _sweep_spec(a: argparse.Namespace):
    """--sweep, checked: a sweep of objective energy's limits, planned by `optimal`."""
    from orchestrator.partition.sweep import parse_sweep

    if a.sweep is None:
        return None
    if a.objective != "energy":
        raise UserError("a sweep varies a limit of --objective energy: add --objective energy", None, "--sweep")
    if a.algorithm != "optimal":
        raise UserError("a sweep plans the least energy exactly: add --algorithm optimal", None, "--sweep")
    spec = parse_sweep(a.sweep)
    flag = "--" + spec.key.replace("_", "-")
    if getattr(a, spec.key) is not None:
        raise UserError(f"it sweeps {spec.key} and {flag} sets it too: give one", None, "--sweep")
    return spec


def _cmd_sweep(a: argparse.Namespace, spec, testbed, table, limits) -> int:
    """partition --sweep: print the points and reference plans, write pareto.json and pareto.png."""
    import json

    from orchestrator.partition.sweep import plan_sweep
    from orchestrator.reporting.plots import pareto

    _, sw = plan_sweep(a.model, testbed, spec, source=a.source, stages=a.stages, cost_table=table, fixed=limits)
    for line in sw.table():
        print(line)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    data = sw.to_json(model=a.model, devices_file=a.devices, source=a.source)
    (out / "pareto.json").write_text(json.dumps(data, indent=2) + "\n")
    pareto(data, out / "pareto.png")
    print(f"wrote {out / 'pareto.json'} and {out / 'pareto.png'}")
    return 0


def _cmd_partition(a: argparse.Namespace) -> int:
    from orchestrator.config import load_devices

    limits = _limits(a)
    spec = _sweep_spec(a)
    testbed = load_devices(a.devices)
    from orchestrator.partition import partition

    table = None
    if a.algorithm == "optimal":
        from orchestrator.profiling import cached_profile

        past = a.past_tokens
        prof = next(
            (
                p
                for rt in RUNTIMES
                if (p := cached_profile(a.model, testbed, rt, batch=1, past_tokens=past)) is not None
            ),
            None,
        )
        if prof is not None:
            table = prof.table
            print(f"note: block costs from the {prof.runtime} profile in the cache")
        else:
            print(
                "note: no profile cached for these devices: block costs estimated from FLOPs "
                "(`orchestrator profile` measures them)"
            )
    if spec is not None:
        return _cmd_sweep(a, spec, testbed, table, limits)
    plan = partition(
        Path(a.model),
        testbed,
        algorithm=a.algorithm,
        objective=a.objective,
        stages=a.stages,
        source=a.source,
        out_dir=Path(a.out),
        cost_table=table,
        limits=limits,
        cache_tokens=(a.context or 0) * (a.sequences or 1),
        sequences=a.sequences,
    )
    for note in getattr(plan, "notes", []) or []:
        print(f"note: {note}")
    for s in plan.stages:
        at = f" at {s.level:g} CPUs" if s.level is not None else ""
        print(f"stage {s.index} on {s.device}{at}: {', '.join(s.inputs)} -> {', '.join(s.outputs)}")
    pr = plan.predicted
    if pr is not None and pr.energy_j is not None:
        print(
            f"predicted (modelled): {pr.throughput_fps} inferences/s, latency {pr.latency_s * 1e3:.1f} ms, "
            f"{pr.energy_j * 1e3:.1f} mJ per inference (compute {pr.energy_compute_j * 1e3:.1f}, idle "
            f"{pr.energy_idle_j * 1e3:.1f}, radio {pr.energy_radio_j * 1e3:.1f})"
        )
    print(f"wrote {Path(a.out) / 'plan.json'}")
    return 0


def _cmd_verify(a: argparse.Namespace) -> int:
    from orchestrator.partition.verify import verify_plan

    res = verify_plan(Path(a.plan), batch=a.batch)
    ok = res.max_abs_diff <= a.tolerance and res.top1_agreement == 1.0
    print(
        f"max abs diff {res.max_abs_diff:.3g} (tolerance {a.tolerance:g}), "
        f"top-1 agreement {res.top1_agreement:.4f}: {'OK' if ok else 'MISMATCH'}"
    )
    return 0 if ok else 1


def _cmd_profile(a: argparse.Namespace) -> int:
    from orchestrator.config import load_devices
    from orchestrator.profiling import profile
    from orchestrator.profiling.cache import blocks_folder
    from orchestrator.profiling.display import profile_table
    from orchestrator.runtimes.choice import make_runtime, select_runtime

    testbed = load_devices(a.devices)
    model = Path(a.model)
    if not model.exists():
        raise UserError("model file not found", str(model))
    from rich.console import Console

    con = Console()
    rt_name, notes = select_runtime(a.runtime or "auto")
    con.print(f"runtime: {rt_name}" + (f" ({notes[0]})" if notes else ""))
    work = Path(a.workspace).resolve()
    work.mkdir(parents=True, exist_ok=True)
    with make_runtime(rt_name, testbed, work, workspace=work) as rt:
        dep = rt.start()
        folder = blocks_folder(dep.workspace, model)
        prof = profile(model, testbed, dep, folder, batch=a.batch, console=con, past_tokens=a.past_tokens)
    title = f"{model.name}: ms per block on each device ({rt_name} runtime" + (", cached)" if prof.cached else ")")
    con.print(profile_table(prof, title))
    for n in prof.notes:
        con.print(f"note: {n}")
    con.print(f"profiled in {prof.seconds:.1f} s")
    return 0


def _cmd_report(a: argparse.Namespace) -> int:
    from orchestrator.figures.compare import comparison_rows
    from orchestrator.reporting.markdown import load_report, write_comparison
    from orchestrator.reporting.rebuild import rebuild

    reps = [load_report(Path(d)) for d in a.run_dirs]
    for d in a.run_dirs:
        rebuild(Path(d))
        print(f"rebuilt {Path(d) / 'report.md'}")
    if len(a.run_dirs) > 1:
        out = Path(a.out or a.run_dirs[0])
        rows = comparison_rows([(f"{Path(d).name}", r) for d, r in zip(a.run_dirs, reps, strict=True)])
        write_comparison(out, reps[0], rows)
        print(f"compared {len(reps)} runs in {out / 'report.md'}")
    return 0


def _cmd_model_vit(a: argparse.Namespace) -> int:
    from orchestrator.models.vit import build_vit

    path = build_vit(
        Path(a.out),
        image_size=a.image_size,
        patch=a.patch,
        layers=a.layers,
        hidden=a.hidden,
        heads=a.heads,
        mlp=a.mlp,
        classes=a.classes,
        seed=a.seed,
    )
    print(f"wrote {path}")
    return 0


def _cmd_model_gpt(a: argparse.Namespace) -> int:
    from orchestrator.models.gpt import build_gpt

    try:
        path = build_gpt(
            Path(a.out),
            layers=a.layers,
            hidden=a.hidden,
            heads=a.heads,
            kv_heads=a.kv_heads,
            mlp=a.mlp,
            vocab=a.vocab,
            context=a.context,
            seed=a.seed,
        )
    except ValueError as e:
        raise UserError(str(e), None, "model gpt") from None
    print(f"wrote {path}")
    return 0


def _cmd_testbed(a: argparse.Namespace) -> int:
    from orchestrator.runtimes.choice import testbed_command

    return testbed_command(a.runtime)(a)


def _cmd_stats(a: argparse.Namespace) -> int:
    from orchestrator.runtimes import docker_commands

    return docker_commands.stats(a)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="orchestrator", description="Edge-AI emulation testbed")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="partition, deploy, drive the dataset, write the run folder")
    r.add_argument("--job", required=True)
    r.add_argument("--runtime", choices=RUNTIMES)
    r.add_argument("--out", help="run folder (default runs/<UTC time>_<job>)")
    r.add_argument("--no-check", action="store_true", help="skip the fidelity check at the start (docker)")
    r.add_argument(
        "--testbed",
        help=f"docker: the testbed to run on, started under that name where none runs (default: {DEFAULT_NAME!r} "
        "where it runs, else one of the run's own)",
    )
    r.add_argument("--wait", action="store_true", help="wait for a running testbed another run holds (default: refuse)")
    r.set_defaults(func=_cmd_run)

    pa = sub.add_parser("partition", help="write plan.json and the stage models, run nothing")
    pa.add_argument("--model", required=True)
    pa.add_argument("--devices", required=True)
    pa.add_argument("--algorithm", default="even")
    pa.add_argument("--objective", choices=OBJECTIVES, default="throughput")
    pa.add_argument("--latency-budget", help="--objective energy: a request's end-to-end limit (e.g. 300ms)")
    pa.add_argument("--throughput-floor", type=float, help="--objective energy: inferences per second at least")
    pa.add_argument(
        "--sweep",
        help="--objective energy: plan the least energy at N limits, e.g. latency_budget=200ms:2s:10 or "
        "throughput_floor=0.5:2:4, beside the fast-only, slow-only, throughput- and latency-optimal plans; "
        "writes pareto.json and pareto.png into --out (no stage files)",
    )
    pa.add_argument("--stages", type=int)
    pa.add_argument("--source", help="device where inputs come from and results return (for the prediction)")
    pa.add_argument(
        "--context", type=int, help="a decoder: tokens a sequence's cache holds at most (counted in memory)"
    )
    pa.add_argument(
        "--sequences", type=int, help="a decoder: sequences in flight (their caches counted; tokens/s weighed)"
    )
    pa.add_argument("--past-tokens", type=int, help="a decoder: the decode step whose cached profile plans it")
    pa.add_argument("--out", required=True)
    pa.set_defaults(func=_cmd_partition)

    v = sub.add_parser("verify", help="chain the stage models in one process and compare with the model")
    v.add_argument("--plan", required=True)
    v.add_argument("--batch", type=int, default=4)
    v.add_argument("--tolerance", type=float, default=1e-4)
    v.set_defaults(func=_cmd_verify)

    tb = sub.add_parser("testbed", help="start, stop, show or check the Docker (or Swarm) testbed")
    tb.add_argument("action", choices=["up", "down", "status", "check", "render"])
    tb.add_argument("--devices", default=DEFAULT_DEVICES, help=f"devices file (default {DEFAULT_DEVICES})")
    tb.add_argument("--runtime", choices=["docker", "swarm"], default="docker")
    tb.add_argument(
        "--init", action="store_true", help="up --runtime swarm: make this engine a single-node swarm if it is in none"
    )
    tb.add_argument("--name", default=DEFAULT_NAME, help=f"testbed name (default {DEFAULT_NAME})")
    tb.add_argument("--subnet", default=DEFAULT_SUBNET)
    tb.add_argument("--workspace", default="runs", help="host folder the nodes see (read-only), default runs")
    tb.add_argument("--out", help="render: file to write (default stdout); check: report file")
    tb.add_argument("--all", action="store_true", help="down: every testbed's containers, not just --name")
    tb.add_argument("--force", action="store_true", help="down: even a testbed a run holds")
    tb.add_argument(
        "--scenario", help="check: replay this scenario's link changes on saturated links, configured vs achieved"
    )
    tb.add_argument("--seconds", type=float, help="check --scenario: only the first SECONDS of the scenario")
    tb.add_argument("--json", help="check --scenario: write the figures to this file")
    tb.set_defaults(func=_cmd_testbed)

    st = sub.add_parser("stats", help="live per-device table: CPU of its cap, memory, bytes in and out")
    st.add_argument("--name", default=DEFAULT_NAME)
    st.add_argument("--follow", action="store_true", help="keep refreshing until Ctrl-C")
    st.set_defaults(func=_cmd_stats)

    pr = sub.add_parser("profile", help="measure every block's time on every device, cached")
    pr.add_argument("--model", required=True)
    pr.add_argument("--devices", required=True)
    pr.add_argument("--runtime", choices=RUNTIMES)
    pr.add_argument("--batch", type=int, default=1)
    pr.add_argument("--past-tokens", type=int, help="a decoder: profile its decode step after this many tokens")
    pr.add_argument("--workspace", default="runs", help="folder the nodes read block models from")
    pr.set_defaults(func=_cmd_profile)

    rp = sub.add_parser("report", help="rebuild run folders' reports and plots; compare several runs")
    rp.add_argument("run_dirs", nargs="+")
    rp.add_argument("--out", help="where the comparison goes (default: the first run folder)")
    rp.set_defaults(func=_cmd_report)

    m = sub.add_parser("model", help="build models")
    msub = m.add_subparsers(dest="kind", required=True)
    vit = msub.add_parser("vit", help="a ViT classifier (pixel_values -> logits) with seeded weights")
    vit.add_argument("--out", required=True)
    for flag, default in (
        ("image-size", 224),
        ("patch", 16),
        ("layers", 12),
        ("hidden", 768),
        ("heads", 12),
        ("mlp", 3072),
        ("classes", 1000),
        ("seed", 0),
    ):
        vit.add_argument(f"--{flag}", type=int, default=default)
    vit.set_defaults(func=_cmd_model_vit)
    gpt = msub.add_parser(
        "gpt", help="a decoder-only transformer with a KV cache (HuggingFace/optimum names), seeded weights"
    )
    gpt.add_argument("--out", required=True)
    for flag, default in (
        ("layers", 12),
        ("hidden", 768),
        ("heads", 12),
        ("kv-heads", None),
        ("mlp", 3072),
        ("vocab", 50257),
        ("context", 1024),
        ("seed", 0),
    ):
        gpt.add_argument(
            f"--{flag}", type=int, default=default, help="default: --heads" if flag == "kv-heads" else None
        )
    gpt.set_defaults(func=_cmd_model_gpt)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    interrupts.install()  # SIGINT and SIGTERM stop what was started, then end the command
    try:
        return args.func(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        status = e.exit_status if isinstance(e, interrupts.Interrupted) else 130
        interrupts.ignore_further()
        print("interrupted; everything started was stopped", file=sys.stderr)
        return status
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
