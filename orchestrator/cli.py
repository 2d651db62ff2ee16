"""The `orchestrator` command line."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from rich.console import Console

from .errors import UserError


def _cmd_run(a: argparse.Namespace) -> int:
    from .run import execute

    _, rep = execute(a.job, runtime=a.runtime, out=a.out, fidelity_check=not a.no_check)
    return 1 if rep["errors"] else 0


def _cmd_partition(a: argparse.Namespace) -> int:
    from .config import load_devices

    testbed = load_devices(a.devices)
    from .partition import partition

    plan = partition(Path(a.model), testbed, algorithm=a.algorithm, objective=a.objective,
                     stages=a.stages, out_dir=Path(a.out))
    con = Console()
    for note in getattr(plan, "notes", []) or []:
        con.print(f"note: {note}")
    for s in plan.stages:
        con.print(f"stage {s.index} on {s.device}: {', '.join(s.inputs)} -> {', '.join(s.outputs)}")
    con.print(f"wrote {Path(a.out) / 'plan.json'}")
    return 0


def _cmd_verify(a: argparse.Namespace) -> int:
    from .partition.verify import verify_plan

    res = verify_plan(Path(a.plan), batch=a.batch)
    ok = res.max_abs_diff <= a.tolerance and res.top1_agreement == 1.0
    print(f"max abs diff {res.max_abs_diff:.3g} (tolerance {a.tolerance:g}), "
          f"top-1 agreement {res.top1_agreement:.4f}: {'OK' if ok else 'MISMATCH'}")
    return 0 if ok else 1


def _cmd_model_vit(a: argparse.Namespace) -> int:
    from .models.vit import build_vit

    path = build_vit(Path(a.out), image_size=a.image_size, patch=a.patch, layers=a.layers, hidden=a.hidden,
                     heads=a.heads, mlp=a.mlp, classes=a.classes, seed=a.seed)
    print(f"wrote {path}")
    return 0


def _client():
    from .runtimes.docker import engine

    client = engine()
    if client is None:
        raise RuntimeError("no Docker engine answers (is dockerd running, and may you use its socket?)")
    return client


def _cmd_testbed(a: argparse.Namespace) -> int:
    from . import testbed_cli

    return testbed_cli.command(a, _client())


def _cmd_stats(a: argparse.Namespace) -> int:
    from . import testbed_cli

    return testbed_cli.stats(a, _client())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="orchestrator", description="Edge-AI emulation testbed")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="partition, deploy, drive the dataset, write the run folder")
    r.add_argument("--job", required=True)
    r.add_argument("--runtime", choices=["docker", "local"])
    r.add_argument("--out", help="run folder (default runs/<UTC time>_<job>)")
    r.add_argument("--no-check", action="store_true", help="skip the fidelity check at the start (docker)")
    r.set_defaults(func=_cmd_run)

    pa = sub.add_parser("partition", help="write plan.json and the stage models, run nothing")
    pa.add_argument("--model", required=True)
    pa.add_argument("--devices", required=True)
    pa.add_argument("--algorithm", default="even")
    pa.add_argument("--objective", choices=["throughput", "latency"], default="throughput")
    pa.add_argument("--stages", type=int)
    pa.add_argument("--out", required=True)
    pa.set_defaults(func=_cmd_partition)

    v = sub.add_parser("verify", help="chain the stage models in one process and compare with the model")
    v.add_argument("--plan", required=True)
    v.add_argument("--batch", type=int, default=4)
    v.add_argument("--tolerance", type=float, default=1e-4)
    v.set_defaults(func=_cmd_verify)

    from .compose import DEFAULT_DEVICES, DEFAULT_NAME, DEFAULT_SUBNET

    tb = sub.add_parser("testbed", help="start, stop, show or check the Docker testbed")
    tb.add_argument("action", choices=["up", "down", "status", "check", "render"])
    tb.add_argument("--devices", default=DEFAULT_DEVICES, help=f"devices file (default {DEFAULT_DEVICES})")
    tb.add_argument("--runtime", choices=["docker"], default="docker")
    tb.add_argument("--name", default=DEFAULT_NAME, help=f"testbed name (default {DEFAULT_NAME})")
    tb.add_argument("--subnet", default=DEFAULT_SUBNET)
    tb.add_argument("--workspace", default="runs", help="host folder the nodes see (read-only), default runs")
    tb.add_argument("--out", help="render: file to write (default stdout); check: report file")
    tb.add_argument("--all", action="store_true", help="down: every testbed's containers, not just --name")
    tb.set_defaults(func=_cmd_testbed)

    st = sub.add_parser("stats", help="live per-device table: CPU of its cap, memory, bytes in and out")
    st.add_argument("--name", default=DEFAULT_NAME)
    st.add_argument("--follow", action="store_true", help="keep refreshing until Ctrl-C")
    st.set_defaults(func=_cmd_stats)

    m = sub.add_parser("model", help="build models")
    msub = m.add_subparsers(dest="kind", required=True)
    vit = msub.add_parser("vit", help="a ViT classifier (pixel_values -> logits) with seeded weights")
    vit.add_argument("--out", required=True)
    for flag, default in (("image-size", 224), ("patch", 16), ("layers", 12), ("hidden", 768), ("heads", 12),
                          ("mlp", 3072), ("classes", 1000), ("seed", 0)):
        vit.add_argument(f"--{flag}", type=int, default=default)
    vit.set_defaults(func=_cmd_model_vit)
    return p


def _sigterm(signum: int, frame: object) -> None:
    """SIGTERM unwinds like Ctrl-C, so runtimes stop what they started."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _sigterm)
    try:
        return args.func(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; everything started was stopped", file=sys.stderr)
        return 130
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
